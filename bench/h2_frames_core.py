"""lb's frame layer (lb/core/http2/frames.py) against hyperframe, in one process, without sockets.

    .venv/bin/python bench/h2_frames_core.py [--rounds 20000] [--repeat 5] [--read-bytes 16384] [--tag T]

Reading: a client's stream of `--rounds` rounds of SETTINGS, WINDOW_UPDATE, HEADERS (a
~100-byte block, END_HEADERS | END_STREAM), DATA (4 KiB) and PING, fed in reads of
`--read-bytes` (frames split across reads, several per read), parsed by lb's FrameReader
(header block assembly on, as lb runs it) and by h2's FrameBuffer (hyperframe's
parse_frame_header + parse_body; the buffer lb's front door uses today); then each frame
type alone. Writing: a typical response, HEADERS (the block of bench/h2_frames.py's
response fields) and one DATA that ends the stream, `--rounds` times: lb's headers_frames +
data_frame against hyperframe's HeadersFrame + DataFrame .serialize(). The best of
`--repeat` runs (the machine may be busy). Prints µs per frame; writes
bench/results/h2-frames-core[-T].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import hpack
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, SettingsFrame, WindowUpdateFrame

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lb.core.http2 import frames  # noqa: E402

REQUEST_BLOCK = bytes(range(32, 132))          # ~100 bytes: a browser's GET once the dynamic table is warm
RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Fri, 27 Nov 2026 14:00:00 GMT"),
            (b"content-type", b"text/plain"), (b"content-length", b"13"), (b"via", b"1.1 lb")]
BODY = b"hello world!\n"
CLIENT_FRAMES = {
    "SETTINGS": SettingsFrame(0, settings={1: 65536, 3: 100, 4: 6291456, 6: 262144}).serialize(),
    "WINDOW_UPDATE": WindowUpdateFrame(0, window_increment=15663105).serialize(),
    "HEADERS": HeadersFrame(1, data=REQUEST_BLOCK, flags=["END_HEADERS", "END_STREAM"]).serialize(),
    "DATA": DataFrame(1, data=b"x" * 4096).serialize(),
    "PING": PingFrame(0, opaque_data=b"12345678").serialize(),
}


def reads(stream: bytes, size: int) -> list[bytes]:
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def parse_lb(chunks: list[bytes]) -> int:
    reader = frames.FrameReader(max_block_bytes=16384)
    count = 0
    for chunk in chunks:
        reader.feed(chunk)
        for _ in reader:
            count += 1
    return count


def parse_hyperframe(chunks: list[bytes]) -> int:
    buffer = FrameBuffer(server=False)
    buffer.max_frame_size = 16384
    count = 0
    for chunk in chunks:
        buffer.add_data(chunk)
        for _ in buffer:
            count += 1
    return count


def write_lb(rounds: int, block: bytes) -> int:
    headers_frames, data_frame = frames.headers_frames, frames.data_frame
    for stream_id in range(1, 2 * rounds, 2):
        headers_frames(stream_id, block)
        data_frame(stream_id, BODY, True)
    return 2 * rounds


def write_hyperframe(rounds: int, block: bytes) -> int:
    for stream_id in range(1, 2 * rounds, 2):
        HeadersFrame(stream_id, data=block, flags=["END_HEADERS"]).serialize()
        DataFrame(stream_id, data=BODY, flags=["END_STREAM"]).serialize()
    return 2 * rounds


def best_us_per_frame(run, arg, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        count = run(*arg)
        best = min(best, (time.perf_counter() - t0) / count)
    return round(best * 1e6, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--read-bytes", type=int, default=16384)
    parser.add_argument("--tag")
    args = parser.parse_args()
    mixed = reads(b"".join(CLIENT_FRAMES.values()) * args.rounds, args.read_bytes)
    assert parse_lb(mixed) == parse_hyperframe(mixed) == 5 * args.rounds
    report = {"bench": "h2-frames-core", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rounds": args.rounds, "read_bytes": args.read_bytes, "repeat": args.repeat, "unit": "µs per frame",
              "read": {}, "write": {}}
    cases = {"mixed": mixed, **{name: reads(one * args.rounds, args.read_bytes) for name, one in CLIENT_FRAMES.items()}}
    for name, chunks in cases.items():
        lb_us, hf_us = (best_us_per_frame(run, (chunks,), args.repeat) for run in (parse_lb, parse_hyperframe))
        report["read"][name] = {"lb": lb_us, "hyperframe": hf_us, "speedup": round(hf_us / lb_us, 1)}
        print(f"read  {name:14} lb {lb_us:7.3f}  hyperframe {hf_us:7.3f}  x{hf_us / lb_us:.1f}")
    block = hpack.Encoder().encode(RESPONSE)
    lb_us, hf_us = (best_us_per_frame(run, (args.rounds, block), args.repeat) for run in (write_lb, write_hyperframe))
    report["write"]["HEADERS+DATA"] = {"lb": lb_us, "hyperframe": hf_us, "speedup": round(hf_us / lb_us, 1)}
    print(f"write HEADERS+DATA     lb {lb_us:7.3f}  hyperframe {hf_us:7.3f}  x{hf_us / lb_us:.1f}")
    out = ROOT / "bench" / "results" / f"h2-frames-core{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
