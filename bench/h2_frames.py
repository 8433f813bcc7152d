"""What lb's server-side HTTP/2 connection costs per request, in one process, without sockets:
lb's own (lb/core/http2/connection.py) beside the h2 library as lb's front door used it until
issue 29 (tests/unit/h2_reference.py: h2client.py's configuration, lb's ResponseEncoder, or
h2's own encoder with --h2-encoder).

    .venv/bin/python bench/h2_frames.py [--connection both|lb|h2] [--requests 20000] [--repeat 3] [--tag T]

A client-side h2 connection makes `--requests` GET requests (HEADERS, END_STREAM; h2load's
fields); the server connection receives each and answers it with HEADERS and one DATA frame
that ends the stream, as lb does for a small response that came whole. Prints the µs per
request of receiving (lb: feed + receive_frames; h2: receive_data), of send_headers +
send_data, and of data_to_send, the best of `--repeat` runs (the machine may be busy);
writes bench/results/h2-frames[-T].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import hpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from h2_reference import reference_connection  # noqa: E402
from lb.core.h2head import ResponseEncoder  # noqa: E402
from lb.core.http2.connection import ServerConnection  # noqa: E402

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"), (b":path", b"/"),
           (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")]
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Fri, 27 Nov 2026 14:00:00 GMT"),
            (b"content-type", b"text/plain"), (b"content-length", b"13"), (b"via", b"1.1 lb")]
BODY = b"hello world!\n"


def client_and_requests(count: int) -> tuple:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    preface = client.data_to_send()
    requests = []
    for i in range(count):
        stream_id = 1 + 2 * i
        client.send_headers(stream_id, REQUEST, end_stream=True)
        requests.append(client.data_to_send())
        del client.streams[stream_id]          # the client side is not measured: it keeps no stream
    return preface, requests


def run_h2(count: int, h2_encoder: bool) -> tuple[float, float, float]:
    preface, requests = client_and_requests(count)
    server = reference_connection()
    if h2_encoder:
        server.encoder = hpack.Encoder()
    server.receive_data(preface)
    server.data_to_send()
    receive = send = write = 0.0
    clock = time.perf_counter
    for data in requests:
        t0 = clock()
        events = server.receive_data(data)
        t1 = clock()
        stream_id = events[0].stream_id
        server.outbound_flow_control_window = 1 << 30     # no client acknowledges the DATA here
        server.send_headers(stream_id, RESPONSE)
        server.send_data(stream_id, BODY, end_stream=True)
        t2 = clock()
        server.data_to_send()
        t3 = clock()
        receive, send, write = receive + t1 - t0, send + t2 - t1, write + t3 - t2
    return receive, send, write


def run_lb(count: int) -> tuple[float, float, float]:
    preface, requests = client_and_requests(count)
    server = ServerConnection(ResponseEncoder(), 16384, 4 * 16384, 100, 16 << 20)
    server.initiate_connection()
    server.feed(preface)
    server.receive_frames(32)
    server.data_to_send()
    receive = send = write = 0.0
    clock = time.perf_counter
    for data in requests:
        t0 = clock()
        server.feed(data)
        events, _ = server.receive_frames(32)
        t1 = clock()
        stream_id = events[0][1]
        server.send_window = 1 << 30                      # no client acknowledges the DATA here
        server.send_headers(stream_id, RESPONSE)
        server.send_data(stream_id, BODY, end_stream=True)
        t2 = clock()
        server.data_to_send()
        t3 = clock()
        receive, send, write = receive + t1 - t0, send + t2 - t1, write + t3 - t2
    return receive, send, write


def measure(name: str, run, count: int, repeat: int) -> dict:
    best = min((run() for _ in range(repeat)), key=sum)
    per = 1e6 / count
    receive, send, write = (round(t * per, 2) for t in best)
    return {"connection": name, "receive_us": receive, "send_us": send, "data_to_send_us": write,
            "total_us": round(sum(best) * per, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connection", choices=["both", "lb", "h2"], default="both")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--h2-encoder", action="store_true", help="h2's own HPACK encoder (hpack.Encoder) for h2")
    parser.add_argument("--tag")
    args = parser.parse_args()
    results = []
    if args.connection in ("both", "h2"):
        name = "h2 (hpack.Encoder)" if args.h2_encoder else "h2 (lb's ResponseEncoder)"
        results.append(measure(name, lambda: run_h2(args.requests, args.h2_encoder), args.requests, args.repeat))
    if args.connection in ("both", "lb"):
        results.append(measure("lb/core/http2", lambda: run_lb(args.requests), args.requests, args.repeat))
    report = {"bench": "h2-frames", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "requests": args.requests, "repeat": args.repeat, "results": results}
    out = ROOT / "bench" / "results" / f"h2-frames{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for r in results:
        print(f"{r['connection']}: receive {r['receive_us']} µs, send {r['send_us']} µs, "
              f"data_to_send {r['data_to_send_us']} µs; total {r['total_us']} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
