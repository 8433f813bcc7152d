"""What the h2 library costs lb per HTTP/2 request, in one process, without sockets.

    .venv/bin/python bench/h2_frames.py [--requests 20000]

A client-side h2 connection makes `--requests` GET requests (HEADERS, END_STREAM; h2load's
fields); lb's server-side connection (lb/proxy/h2frames.py's `LbH2Connection`, its
configuration and lb's ResponseEncoder, or h2's own encoder with --h2-encoder) receives each
and answers it with HEADERS and one DATA frame that ends the stream, as lb does for a small
response that came whole. Prints the µs per request of receive_data, of send_headers +
send_data, and of data_to_send; writes bench/results/h2-frames[-T].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h2.config
import h2.connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lb.core.h2head import ResponseEncoder  # noqa: E402
from lb.proxy.h2frames import LbH2Connection as _Connection  # noqa: E402

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"), (b":path", b"/"),
           (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")]
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Fri, 27 Nov 2026 14:00:00 GMT"),
            (b"content-type", b"text/plain"), (b"content-length", b"13"), (b"via", b"1.1 lb")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--h2-encoder", action="store_true", help="h2's own HPACK encoder (hpack.Encoder)")
    parser.add_argument("--tag")
    args = parser.parse_args()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server = _Connection(config=h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=False, normalize_inbound_headers=False,
        validate_outbound_headers=False, normalize_outbound_headers=False))
    if not args.h2_encoder:
        server.encoder = ResponseEncoder()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    requests = []
    for i in range(args.requests):
        stream_id = 1 + 2 * i
        client.send_headers(stream_id, REQUEST, end_stream=True)
        requests.append(client.data_to_send())
        del client.streams[stream_id]          # the client side is not measured: it keeps no stream
    receive = send = write = 0.0
    clock = time.perf_counter
    for data in requests:
        t0 = clock()
        events = server.receive_data(data)
        t1 = clock()
        stream_id = events[0].stream_id
        server.outbound_flow_control_window = 1 << 30     # no client acknowledges the DATA here
        server.send_headers(stream_id, RESPONSE)
        server.send_data(stream_id, b"hello world!\n", end_stream=True)
        t2 = clock()
        server.data_to_send()
        t3 = clock()
        receive, send, write = receive + t1 - t0, send + t2 - t1, write + t3 - t2
    per = 1e6 / args.requests
    report = {"bench": "h2-frames", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "requests": args.requests, "encoder": "h2 (hpack.Encoder)" if args.h2_encoder else "lb ResponseEncoder",
              "receive_us": round(receive * per, 2), "send_us": round(send * per, 2),
              "data_to_send_us": round(write * per, 2), "total_us": round((receive + send + write) * per, 2)}
    out = ROOT / "bench" / "results" / f"h2-frames{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['encoder']}: receive {report['receive_us']} µs, send {report['send_us']} µs, "
          f"data_to_send {report['data_to_send_us']} µs; total {report['total_us']} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
