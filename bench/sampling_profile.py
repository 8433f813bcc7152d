"""Where lb's CPU goes per request: a sampling profile and the system calls, under wrk.

    .venv/bin/python bench/sampling_profile.py [--seconds 10] [--close] [--tls] [--h2] [--native]
        [--backends N] [--tag T]

The setup of bench/throughput.py (10 nginx backends, lb with one worker, `wrk -t1
-c50`): py-spy (the `bench` extra; never a runtime dependency) samples the worker at
200 Hz while wrk runs, and the stacks are folded into each function's *self* share
(samples where it was the innermost Python frame) and *total* share (anywhere on the
stack); then a shorter run under `strace -c -f` counts the system calls per request.
--tls: lb serves HTTPS (TLS 1.3, an ECDSA P-256 certificate made for the run) and wrk speaks
it; --h2: HTTP/2 over TLS under `h2load -c10 -m10` (bench/throughput.py --h2's load, no strace
run); --native also samples native frames (uvloop's Cython, OpenSSL), not only Python's.
Writes bench/results/profile[-T].json and prints the top of both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (RESULTS, ROOT, backends_running, cpu_times, make_certs, run_h2load,  # noqa: E402
                        run_wrk, start_haproxy, start_lb)

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from supervise import children  # noqa: E402  (the tests' helper: lb's processes seen from outside)


def fold(raw: str) -> tuple[Counter, Counter, int]:
    """py-spy's collapsed stacks -> (self samples, total samples) per function, and the total."""
    own, total, samples = Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return own, total, samples


def syscalls(pid: int, port: int, args, trace: Path) -> dict:
    """System calls per request of process `pid` over 3 s of wrk (strace -c -f)."""
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(trace)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    traced = run_wrk(port, 3, args.connections, args.close, args.scheme)
    tracer.terminate()
    tracer.wait(30)
    calls = {}
    for line in trace.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit():
            calls[fields[-1]] = int(fields[3])
    return {name: round(n / traced["requests"], 2) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
            if n / traced["requests"] >= 0.01}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--close", action="store_true", help="Connection: close (a new client connection each)")
    parser.add_argument("--tls", action="store_true", help="HTTPS (TLS 1.3, ECDSA P-256)")
    parser.add_argument("--h2", action="store_true", help="HTTP/2 over TLS under h2load -c10 -m10")
    parser.add_argument("--native", action="store_true", help="sample native frames too (py-spy --native)")
    parser.add_argument("--backends", type=int, default=10, help="pool size (one nginx serves them all)")
    parser.add_argument("--tag")
    args = parser.parse_args()
    args.tls = args.tls or args.h2
    args.scheme = "https" if args.tls else "http"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    report: dict = {"bench": "profile", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "load": (f"h2load -c10 -m10 -D{args.seconds}" if args.h2 else
                             f"wrk -t1 -c{args.connections} -d{args.seconds}s" + (" Connection: close" if args.close else ""))}
    with backends_running("lb-profile-", args.backends) as (workdir, ports, procs):
        certs = make_certs(workdir)["ecdsa"] if args.tls else None
        lb, port = start_lb(workdir, ports, False, procs, 1, tls=certs)
        worker = children(lb.pid)[0]

        def load(seconds):
            if args.h2:
                return run_h2load(port, seconds, workdir)
            return run_wrk(port, seconds, args.connections, args.close, args.scheme)
        load(2)                                                          # warm up
        before = cpu_times(lb.pid)
        out = workdir / "stacks.txt"
        sampler = subprocess.Popen([spy, "record", "--pid", str(worker), "--rate", "200", "--format", "raw",
                                    "--duration", str(args.seconds), "--output", str(out),
                                    # native stacks need the process paused while sampled
                                    *(["--native"] if args.native else ["--nonblocking"])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = load(args.seconds)
        sampler.wait(60)
        after = cpu_times(lb.pid)
        per = 1e6 / result["requests"]
        report["throughput"] = {**result, "user_us_per_request": round((after[0] - before[0]) * per, 1),
                                "sys_us_per_request": round((after[1] - before[1]) * per, 1)}
        own, total, samples = fold(out.read_text())
        report["samples"] = samples
        report["self_pct"] = {f: round(100 * n / samples, 1) for f, n in own.most_common(40)}
        report["total_pct"] = {f: round(100 * n / samples, 1) for f, n in total.most_common(40)}
        if shutil.which("strace") and not args.h2:
            report["syscalls_per_request"] = syscalls(worker, port, args, workdir / "strace-lb.txt")
            if shutil.which("haproxy"):          # the peer, the same way
                pid, peer_port = start_haproxy(workdir, ports, procs, tls=certs)
                run_wrk(peer_port, 2, args.connections, args.close, args.scheme)
                report["haproxy_syscalls_per_request"] = syscalls(pid, peer_port, args,
                                                                  workdir / "strace-haproxy.txt")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"profile{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    t = report["throughput"]
    print(f"{t['requests_per_s']:.0f} req/s, CPU/request {t['user_us_per_request']} user + "
          f"{t['sys_us_per_request']} sys µs; {report['samples']} samples")
    print("self %:")
    for name, pct in list(report["self_pct"].items())[:25]:
        print(f"  {pct:5.1f}  {name}")
    print("total %:")
    for name, pct in list(report["total_pct"].items())[:25]:
        print(f"  {pct:5.1f}  {name}")
    print("system calls per request:", report.get("syscalls_per_request"))
    print("HAProxy's, the same way:", report.get("haproxy_syscalls_per_request"))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
