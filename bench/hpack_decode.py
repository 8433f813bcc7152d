"""lb's HPACK decoder (lb/core/http2/hpack.py) against hpack's (what h2 uses), on the same
header blocks, in one process.

    .venv/bin/python bench/hpack_decode.py [--requests 2000] [--rounds 7] [--tag T]

For each shape of request (h2load's six fields; a Chrome-like list of 17 with cookies and a
new :path each time), hpack.Encoder (Huffman on, as h2 sends) encodes `--requests` header
lists on one connection, so the dynamic table is used as a client uses it. Each decoder then
decodes the blocks in order on a fresh connection; the rounds alternate between the two and
the median is kept. Prints the µs per block after the first (what a connection costs once it
is going) and of the first block of a connection (a fresh decoder each time, lb's memo of
Huffman strings warm); writes bench/results/hpack-decode[-T].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import hpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lb.core.http2.hpack import Decoder  # noqa: E402

H2LOAD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"), (b":path", b"/"),
          (b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")]
CHROME_UA = (b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
             b"Safari/537.36")
COOKIE = (b"_ga=GA1.1.1234567890.1718000000; session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; "
          b"_ga_XYZ123=GS1.1.1718000000.3.1.1718000100.0.0.0")


def chrome(i: int) -> list:
    """The i-th request of a page load: a new path each time, the rest as Chrome repeats it."""
    kind = ("script", "style", "image")[i % 3]
    path = b"/static/%s/%05x.%s?v=%d" % (kind.encode(), i, (b"js", b"css", b"webp")[i % 3], i % 7)
    return [(b":method", b"GET"), (b":authority", b"shop.example.com"), (b":scheme", b"https"), (b":path", path),
            (b"sec-ch-ua", b'"Not/A)Brand";v="8", "Chromium";v="126", "Google Chrome";v="126"'),
            (b"sec-ch-ua-mobile", b"?0"), (b"user-agent", CHROME_UA), (b"sec-ch-ua-platform", b'"Linux"'),
            (b"accept", b"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
            (b"sec-fetch-site", b"same-origin"), (b"sec-fetch-mode", b"no-cors"), (b"sec-fetch-dest", kind.encode()),
            (b"referer", b"https://shop.example.com/products/42"), (b"accept-encoding", b"gzip, deflate, br, zstd"),
            (b"accept-language", b"en-GB,en;q=0.9,fr;q=0.8"), (b"cookie", COOKIE), (b"priority", b"u=1, i")]


SHAPES = {"h2load": lambda i: H2LOAD, "chrome": chrome}


def blocks(shape, requests: int) -> list:
    encoder = hpack.Encoder()
    return [encoder.encode(shape(i)) for i in range(requests)]


def run_lb(encoded: list) -> float:
    decoder = Decoder()
    decode = decoder.decode
    decode(encoded[0])
    clock = time.perf_counter
    start = clock()
    for block in encoded[1:]:
        decode(block)
    return clock() - start


def run_hpack(encoded: list) -> float:
    decoder = hpack.Decoder()
    decode = decoder.decode
    decode(encoded[0], raw=True)
    clock = time.perf_counter
    start = clock()
    for block in encoded[1:]:
        decode(block, raw=True)
    return clock() - start


def first_block(encoded: list, decoders: int, make) -> float:
    """The seconds per first block, each on a fresh decoder (`make(block)` decodes one)."""
    clock = time.perf_counter
    start = clock()
    for _ in range(decoders):
        make(encoded[0])
    return (clock() - start) / decoders


def measure(name: str, requests: int, rounds: int) -> dict:
    encoded = blocks(SHAPES[name], requests)
    lb_runs, hpack_runs = [], []
    for _ in range(rounds):
        lb_runs.append(run_lb(encoded) / (requests - 1))
        hpack_runs.append(run_hpack(encoded) / (requests - 1))
    first_lb = min(first_block(encoded, 200, lambda b: Decoder().decode(b)) for _ in range(rounds))
    first_hpack = min(first_block(encoded, 200, lambda b: hpack.Decoder().decode(b, raw=True)) for _ in range(rounds))
    lb_us, hpack_us = statistics.median(lb_runs) * 1e6, statistics.median(hpack_runs) * 1e6
    return {"fields": len(SHAPES[name](1)), "block_bytes_after_first": round(sum(map(len, encoded[1:])) / (requests - 1), 1),
            "first_block_bytes": len(encoded[0]),
            "lb_us": round(lb_us, 2), "hpack_us": round(hpack_us, 2), "speedup": round(hpack_us / lb_us, 1),
            "lb_first_us": round(first_lb * 1e6, 2), "hpack_first_us": round(first_hpack * 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tag")
    args = parser.parse_args()
    report = {"bench": "hpack-decode", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "python": sys.version.split()[0], "hpack": hpack.__version__, "requests": args.requests,
              "rounds": args.rounds, "shapes": {}}
    for name in SHAPES:
        result = report["shapes"][name] = measure(name, args.requests, args.rounds)
        print(f"{name} ({result['fields']} fields, {result['block_bytes_after_first']} B a block after the first): "
              f"lb {result['lb_us']} µs, hpack {result['hpack_us']} µs per block ({result['speedup']}x); "
              f"first block lb {result['lb_first_us']} µs, hpack {result['hpack_first_us']} µs")
    out = ROOT / "bench" / "results" / f"hpack-decode{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
