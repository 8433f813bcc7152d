"""Throughput of lb: requests/s and lb's CPU microseconds per request.

Setup: 10 fast backends (nginx with one worker, or bench/fast_backend.py when
nginx is missing), lb over them, and `wrk -t1 -c50` for --seconds, with
keep-alive and with `Connection: close`; the backends are also measured
directly for reference. lb's CPU per request is utime+stime from
/proc/PID/stat over the run divided by the requests wrk completed.

    python bench/throughput.py [--seconds 10] [--connections 50] [--access-log] [--peers]
        [--backends 10,200]

--peers also runs HAProxy and nginx as proxies over the same backends, one
thread/worker each, and the Python floor (bench/floor_proxy.py: a uvloop proxy that
forwards bytes without parsing them), in the same run, and prints each as a ratio to
HAProxy, and lb as a ratio to the floor.

--tls runs lb, HAProxy and nginx (one process/thread/worker each) as HTTPS front doors
over the same backends, with the same certificates made for the run, TLS 1.3 only:
keep-alive requests (wrk) over an ECDSA P-256 certificate; a new connection per request
with wrk, which resumes its sessions (returning clients); and full handshakes
(`openssl s_time -new`, two at a time, a request each) with ECDSA P-256 and with RSA 2048.
CPU per request there is CPU per handshake plus its one request.

--h2 runs the same three with HTTP/2 over TLS (ALPN h2; TLS 1.3, ECDSA P-256): h2load with
10 connections x 10 concurrent streams; p99 comes from h2load's per-request log.

Writes bench/results/throughput.json and prints a table. Installs wrk and
nginx-light through bench/setup.sh when they are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKENDS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout_s: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s}s")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process and its children (nginx's master and worker, lb's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            child_user, child_system = cpu_times(int(child))
            user, system = user + child_user, system + child_system
    return user, system


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


HAPROXY_TIMEOUTS = """  timeout connect 2s
  timeout client 60s
  timeout server 60s"""


def start_haproxy(workdir: Path, ports: list[int], procs: list[subprocess.Popen], threads: int = 1,
                  maxconn: int = 4096, timeouts: str = HAPROXY_TIMEOUTS,
                  tls: tuple[Path, Path] | None = None, h2c_port: int | None = None,
                  reuse: str = "safe") -> tuple[int, int]:
    """HAProxy over the same backends: `threads` threads, leastconn, keep-alive and reuse both ways
    (`http-reuse` `reuse`: safe never sends a connection's first request over an idle backend
    connection, always does); `h2c_port`: a second bind there for HTTP/2 with prior knowledge (h2c)."""
    port = free_port()
    h2c = f"\n  bind 127.0.0.1:{h2c_port} proto h2" if h2c_port else ""
    ssl = ""
    if tls:
        pem = workdir / f"haproxy-{port}.pem"          # HAProxy reads the certificate and key from one file
        pem.write_bytes(tls[0].read_bytes() + tls[1].read_bytes())
        ssl = f" ssl crt {pem} ssl-min-ver TLSv1.3 alpn h2,http/1.1"
    servers = "\n".join(f"  server web{i + 1} 127.0.0.1:{p}" for i, p in enumerate(ports))
    conf = workdir / f"haproxy-{port}.cfg"
    conf.write_text(f"""global
  nbthread {threads}
  maxconn {maxconn}
defaults
  mode http
{timeouts}
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}{ssl}{h2c}
  maxconn {maxconn}
  default_backend be
backend be
  balance leastconn
  http-reuse {reuse}
{servers}
""")
    proc = subprocess.Popen(["haproxy", "-f", str(conf), "-db"], stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "haproxy.err", "wb"))
    procs.append(proc)
    wait_port(port, proc=proc)
    return proc.pid, port


def start_nginx_proxy(workdir: Path, ports: list[int], procs: list[subprocess.Popen],
                      threads: int = 1, tls: tuple[Path, Path] | None = None) -> tuple[int, int]:
    """nginx as a reverse proxy over the same backends: `threads` workers, least_conn, upstream keep-alive."""
    port = free_port()
    proxy_dir = workdir / f"nginx-proxy-{port}"
    proxy_dir.mkdir()
    servers = " ".join(f"server 127.0.0.1:{p};" for p in ports)
    ssl = (f" ssl http2; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; ssl_protocols TLSv1.3"
           if tls else "")
    conf = proxy_dir / "nginx.conf"
    conf.write_text(f"""worker_processes {threads}; daemon off; pid {proxy_dir}/nginx.pid;
error_log {proxy_dir}/error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream be {{ least_conn; {servers} keepalive 64; }}
  server {{ listen 127.0.0.1:{port}{ssl};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(proxy_dir)])
    procs.append(proc)
    wait_port(port, proc=proc)
    return proc.pid, port


def start_backends(workdir: Path, ports: list[int]) -> list[subprocess.Popen]:
    if shutil.which("nginx"):
        servers = "\n".join(
            f"server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; "
            f"return 200 '{{\"node\": \"web{i + 1}\", \"version\": \"v1\"}}'; }} }}"
            for i, port in enumerate(ports))
        conf = workdir / "nginx.conf"
        conf.write_text(f"""worker_processes 1; daemon off; pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 60s; {servers} }}
""")
        procs = [subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)])]
    else:
        procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "fast_backend.py"),
                                   str(port), f"web{i + 1}"]) for i, port in enumerate(ports)]
    for port in ports:
        wait_port(port)
    return procs


@contextlib.contextmanager
def backends_running(prefix: str, count: int = BACKENDS):
    """(workdir, backend ports, procs): a scratch folder with `count` backends up (one nginx
    serving them all); every process appended to `procs` is stopped at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        ports: list[int] = []
        while len(ports) < count:                # free_port() may hand out a port twice
            port = free_port()
            if port not in ports:
                ports.append(port)
        procs: list[subprocess.Popen] = []
        try:
            procs += start_backends(workdir, ports)
            yield workdir, ports, procs
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(15)


def start_lb(workdir: Path, ports: list[int], access_log: bool,
             procs: list[subprocess.Popen], workers: int = 1, tls: tuple[Path, Path] | None = None
             ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    backends = "\n".join(f"  - {{name: web{i + 1}, address: '127.0.0.1:{p}', version: v1}}"
                         for i, p in enumerate(ports))
    conf = workdir / f"lb-{port}.yaml"
    listen = (f"[{{address: '127.0.0.1:{port}', tls: {{certs: [{{cert: '{tls[0]}', key: '{tls[1]}'}}], "
              f"min_version: TLSv1.3}}}}]" if tls else f"127.0.0.1:{port}")
    conf.write_text(f"""listen: {listen}
workers: {workers}
admin: {{socket: {workdir}/lb-{port}.sock}}
metrics: {{listen: 127.0.0.1:{free_port()}}}
state_file: {workdir}/lb-{port}.state
access_log: {workdir / 'access.log' if access_log else 'off'}
backends:
{backends}
""")
    proc = subprocess.Popen([sys.executable, "-m", "lb.cli", "serve", "-c", str(conf)], cwd=ROOT,
                            stderr=open(workdir / "lb.err", "wb"))
    procs.append(proc)
    try:
        wait_port(port, proc=proc)
    except RuntimeError:
        sys.stderr.write((workdir / "lb.err").read_text())
        raise
    return proc, port


def start_floor(workdir: Path, ports: list[int], procs: list[subprocess.Popen], count: int = 1) -> tuple[int, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_proxy.py"), str(port), *map(str, ports)])
    procs.append(proc)
    wait_port(port, proc=proc)
    return proc.pid, port


def run_wrk(port: int, seconds: float, connections: int, close: bool, scheme: str = "http") -> dict:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
            f"{scheme}://127.0.0.1:{port}/"]
    if close:
        args[1:1] = ["-H", "Connection: close"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    match = re.search(r"(\d+) requests in", out)
    if not match:
        raise RuntimeError(f"wrk said: {out}{done.stderr}")
    requests = int(match.group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "latency_p50_ms": _latency(out, "50%"), "latency_p99_ms": _latency(out, "99%"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def _latency(out: str, percentile: str) -> float:
    match = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)\b", out)
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def box_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def measure(port: int, pid: int | None, seconds: float, connections: int, close: bool,
            scheme: str = "http") -> dict:
    def load() -> dict:
        return run_wrk(port, seconds, connections, close, scheme)
    if pid:
        return with_cpu(pid, load)
    busy0, total0 = box_busy()          # the backends alone: no process of ours to count
    result = load()
    busy1, total1 = box_busy()
    result["box_busy_pct"] = round(100 * (busy1 - busy0) / max(total1 - total0, 1), 1)
    return result


def make_certs(workdir: Path) -> dict[str, tuple[Path, Path]]:
    """Self-signed certificates for 127.0.0.1 made for the run: ECDSA P-256 and RSA 2048."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    made = {}
    for kind, key in (("ecdsa", ec.generate_private_key(ec.SECP256R1())),
                      ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))):
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(key, hashes.SHA256()))
        cert_path, key_path = workdir / f"{kind}.pem", workdir / f"{kind}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        made[kind] = (cert_path, key_path)
    return made


def run_s_time(port: int, seconds: float, clients: int = 2) -> dict:
    """Full TLS 1.3 handshakes: `clients` x `openssl s_time -new` (a new session each time, no
    resumption; each fetches / once). wrk cannot do this: it resumes its sessions.
    s_time sends `GET <www> HTTP/1.0` and no Host; a proxy forwarding that as HTTP/1.1 sends
    `Host:` empty (RFC 9112 3.2), which nginx backends answer 400 and close, so each request
    then cost a backend connection too (lb's 931 µs full handshake held ~115 µs of it,
    2026-12-03). The path carries a Host line, as wrk's requests have."""
    args = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3", "-time", str(int(seconds)),
            "-www", "/ HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Bench: s_time"]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(clients)]
    connections, elapsed = 0, 0.0
    for run in runs:
        out = run.communicate(timeout=seconds + 60)[0]
        match = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
        if not match:
            raise RuntimeError(f"openssl s_time said: {out}")
        connections += int(match.group(1))
        elapsed = max(elapsed, float(match.group(2)))
    return {"requests": connections, "requests_per_s": round(connections / max(elapsed, 0.001), 1),
            "latency_p50_ms": None, "latency_p99_ms": None, "non_2xx": 0, "socket_errors": 0}


def with_cpu(pid: int, load) -> dict:
    """Run `load()` (a dict with "requests") and add the CPU `pid` and its children spent
    per request, and how busy the whole machine was."""
    before = cpu_times(pid)
    busy0, total0 = box_busy()
    result = load()
    busy1, total1 = box_busy()
    after = cpu_times(pid)
    user, system = after[0] - before[0], after[1] - before[1]
    per = 1e6 / max(result["requests"], 1)
    result.update(box_busy_pct=round(100 * (busy1 - busy0) / max(total1 - total0, 1), 1),
                  cpu_s=round(user + system, 3), cpu_us_per_request=round((user + system) * per, 1),
                  user_us_per_request=round(user * per, 1), sys_us_per_request=round(system * per, 1))
    return result


def run_h2load(port: int, seconds: float, workdir: Path) -> dict:
    """h2load -c10 -m10 over TLS for `seconds`: requests/s, and p50/p99 from its request log."""
    log = workdir / f"h2load-{port}.log"
    args = ["h2load", "-c10", "-m10", "-t1", "-D", str(int(seconds)), "--warm-up-time=1", "--log-file", str(log),
            f"https://127.0.0.1:{port}/"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                      out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not match or not rate:
        raise RuntimeError(f"h2load said: {out}{done.stderr}")
    times = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line.strip())
    pick = (lambda q: round(times[min(len(times) - 1, int(q * len(times)))] / 1000, 2)) if times else (lambda q: None)
    return {"requests": int(match.group(2)), "requests_per_s": float(rate.group(1)),
            "latency_p50_ms": pick(0.50), "latency_p99_ms": pick(0.99),
            "non_2xx": int(match.group(4)) + int(match.group(5)), "socket_errors": 0,
            "h2load": out[out.find("finished in"):].split("\n", 1)[0]}


@contextlib.contextmanager
def front_door(name: str, workdir: Path, ports: list[int], procs: list, args, tls: tuple[Path, Path]):
    """lb, HAProxy or nginx over TLS with `tls` (one process/thread/worker): (pid, port),
    stopped at the end of the block."""
    if name == "lb":
        proc, port = start_lb(workdir, ports, args.access_log, procs, 1, tls=tls)
        pid = proc.pid
    else:
        start = start_haproxy if name == "haproxy" else start_nginx_proxy
        pid, port = start(workdir, ports, procs, tls=tls)
    try:
        yield pid, port
    finally:
        if name == "lb":
            proc.terminate()
            proc.wait(40)
        else:
            os.kill(pid, 15)


def run_h2(args) -> dict[str, dict]:
    """lb, HAProxy and nginx with HTTP/2 over TLS, one after the other, the same certificate."""
    rows: dict[str, dict] = {}
    with backends_running("lb-bench-h2-") as (workdir, ports, procs):
        certs = make_certs(workdir)["ecdsa"]
        for name in ("lb", "haproxy", "nginx"):
            with front_door(name, workdir, ports, procs, args, certs) as (pid, port):
                run_h2load(port, 2, workdir)                               # warm up
                rows[f"{name} h2"] = with_cpu(pid, lambda: run_h2load(port, args.seconds, workdir))
    return rows


def write_peer_report(args, report: dict) -> int:
    """Write a --tls or --h2 report and print its rows and its ratios to HAProxy."""
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_rows(report["results"])
    print("\nas a ratio to HAProxy (req/s: higher is better; p99 and CPU: lower is better)")
    for name, values in report["ratios_to_haproxy"].items():
        print(f"{name:33} " + "  ".join(f"{k} {v}x" for k, v in values.items()))
    print(f"written: {args.out}")
    return 0


def report_h2(args, rows: dict) -> int:
    ratio = {f"{proxy} h2": {key: round(rows[f"{proxy} h2"][key] / rows["haproxy h2"][key], 2)
                             for key in ("requests_per_s", "latency_p99_ms", "cpu_us_per_request")
                             if rows["haproxy h2"][key]}
             for proxy in ("lb", "nginx")}
    report = {
        "bench": "throughput --h2", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "h2load": f"-c10 -m10 -t1 -D {args.seconds}", "tls": "TLSv1.3, ECDSA P-256",
        "versions": {"haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"]),
                     "h2load": _version(["h2load", "--version"])},
        "results": rows, "ratios_to_haproxy": ratio,
    }
    return write_peer_report(args, report)


def run_tls(args) -> dict[str, dict]:
    """lb, HAProxy and nginx as HTTPS front doors, one after the other, same certificates."""
    rows: dict[str, dict] = {}
    with backends_running("lb-bench-tls-") as (workdir, ports, procs):
        certs = make_certs(workdir)
        for kind in ("ecdsa", "rsa"):
            for name in ("lb", "haproxy", "nginx"):
                with front_door(name, workdir, ports, procs, args, certs[kind]) as (pid, port):
                    run_wrk(port, 2, args.connections, False, "https")        # warm up
                    if kind == "ecdsa":
                        rows[f"{name} tls keep-alive"] = measure(port, pid, args.seconds, args.connections,
                                                                 False, "https")
                        # wrk resumes its TLS sessions (lb's access log: 5,959 of 5,969 resumed)
                        rows[f"{name} tls resumed conn"] = measure(port, pid, args.seconds, args.connections,
                                                                   True, "https")
                    rows[f"{name} tls full handshake {kind}"] = with_cpu(pid, lambda: run_s_time(port, args.seconds))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--access-log", action="store_true", help="lb writes its access log to a file")
    parser.add_argument("--peers", action="store_true",
                        help="also HAProxy and nginx as proxies over the same backends (one thread/worker each)")
    parser.add_argument("--workers", default="1",
                        help="lb worker counts to run, e.g. 1,2 (peers get as many threads/workers)")
    parser.add_argument("--tls", action="store_true",
                        help="HTTPS front doors instead: lb, HAProxy and nginx, TLS 1.3, keep-alive and new connections")
    parser.add_argument("--h2", action="store_true",
                        help="HTTP/2 over TLS instead: lb, HAProxy and nginx under h2load -c10 -m10")
    parser.add_argument("--backends", default=str(BACKENDS),
                        help="pool sizes to run, e.g. 10,200 (one nginx serves them all): a row each for lb "
                             "(and HAProxy with --peers) whose CPU per request should not grow with the pool")
    parser.add_argument("--table", action="store_true",
                        help="the whole performance table: HTTP/1.1 keep-alive and close (HAProxy http-reuse always, "
                             "and a safe row), TLS, HTTP/2, 10 and 200 backends; lb against the best peer")
    parser.add_argument("--out", default=str(RESULTS / "throughput.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    pools = [int(n) for n in args.backends.split(",")]
    if not shutil.which("wrk") or not shutil.which("nginx") or ((args.peers or args.tls or args.h2)
                                                                and not shutil.which("haproxy")) \
            or (args.h2 and not shutil.which("h2load")):
        subprocess.run(["bash", str(ROOT / "bench" / "setup.sh")], check=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    if args.tls:
        return report_tls(args, run_tls(args))
    if args.h2:
        return report_h2(args, run_h2(args))
    if args.table:
        return report_table(args)
    if pools != [BACKENDS]:
        return report_pools(args, run_pools(args, pools))
    with backends_running("lb-bench-") as (workdir, ports, procs):
        rows["direct keep-alive"] = measure(ports[0], None, args.seconds, args.connections, False)
        for count in counts:
            # Rows for 1 keep their old names ("lb keep-alive"); "lb x2 keep-alive" for 2.
            tag = "" if count == 1 else f" x{count}"
            lb, lb_port = start_lb(workdir, ports, args.access_log, procs, count)
            run_wrk(lb_port, 2, args.connections, False)          # warm up pools and caches
            rows[f"lb{tag} keep-alive"] = measure(lb_port, lb.pid, args.seconds, args.connections, False)
            rows[f"lb{tag} Connection: close"] = measure(lb_port, lb.pid, args.seconds, args.connections, True)
            lb.terminate()
            lb.wait(40)
            if args.peers:
                peers = [("haproxy", start_haproxy), ("nginx", start_nginx_proxy)]
                if count == 1:
                    peers.append(("floor", start_floor))       # one process: no x2 row
                for name, start in peers:
                    pid, port = start(workdir, ports, procs, count)
                    run_wrk(port, 2, args.connections, False)
                    rows[f"{name}{tag} keep-alive"] = measure(port, pid, args.seconds, args.connections, False)
                    rows[f"{name}{tag} Connection: close"] = measure(port, pid, args.seconds,
                                                                     args.connections, True)
    report = {
        "bench": "throughput", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "backends": "nginx (1 worker)" if shutil.which("nginx") else "bench/fast_backend.py",
        "wrk": f"-t1 -c{args.connections} -d{args.seconds}s", "access_log": args.access_log,
        "results": rows,
    }
    if args.peers:
        report["versions"] = {"haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"])}
        report["ratios_to_haproxy"] = ratios(rows, counts)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_rows(rows)
    if args.peers:
        print("\nas a ratio to HAProxy (req/s: higher is better; latency and CPU: lower is better)")
        for name, ratio in report["ratios_to_haproxy"].items():
            print(f"{name:26} " + "  ".join(f"{k} {v}x" for k, v in ratio.items()))
    print(f"written: {args.out}")
    return 0


def run_pools(args, pools: list[int]) -> dict[str, dict]:
    """lb (one worker, least_conn) and, with --peers, HAProxy (leastconn) over each pool size."""
    rows: dict[str, dict] = {}
    for size in pools:
        with backends_running("lb-bench-", size) as (workdir, ports, procs):
            lb, lb_port = start_lb(workdir, ports, args.access_log, procs, 1)
            run_wrk(lb_port, 2, args.connections, False)
            rows[f"lb, {size} backends, keep-alive"] = measure(lb_port, lb.pid, args.seconds, args.connections, False)
            rows[f"lb, {size} backends, close"] = measure(lb_port, lb.pid, args.seconds, args.connections, True)
            lb.terminate()
            lb.wait(40)
            if args.peers:
                pid, port = start_haproxy(workdir, ports, procs, 1)
                run_wrk(port, 2, args.connections, False)
                rows[f"haproxy, {size} backends, keep-alive"] = measure(port, pid, args.seconds,
                                                                         args.connections, False)
                rows[f"haproxy, {size} backends, close"] = measure(port, pid, args.seconds, args.connections, True)
    return rows


def report_pools(args, rows: dict) -> int:
    report = {"bench": "throughput", "mode": "pools", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "wrk": f"-t1 -c{args.connections} -d{args.seconds}s", "results": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_rows(rows)
    print(f"written: {args.out}")
    return 0


def run_http1_peers(args) -> dict[str, dict]:
    """lb, HAProxy (http-reuse always, and safe for close) and nginx, HTTP/1.1, one at a time."""
    rows: dict[str, dict] = {}
    with backends_running("lb-bench-") as (workdir, ports, procs):
        lb, lb_port = start_lb(workdir, ports, args.access_log, procs, 1)
        run_wrk(lb_port, 2, args.connections, False)
        rows["lb keep-alive"] = measure(lb_port, lb.pid, args.seconds, args.connections, False)
        rows["lb close"] = measure(lb_port, lb.pid, args.seconds, args.connections, True)
        lb.terminate()
        lb.wait(40)
        for name, start in (("haproxy", lambda *a: start_haproxy(*a, reuse="always")),
                            ("haproxy-safe", start_haproxy), ("nginx", start_nginx_proxy)):
            pid, port = start(workdir, ports, procs)
            run_wrk(port, 2, args.connections, False)
            if name != "haproxy-safe":
                rows[f"{name} keep-alive"] = measure(port, pid, args.seconds, args.connections, False)
            rows[f"{name} close"] = measure(port, pid, args.seconds, args.connections, True)
            os.kill(pid, 15)
    return rows


TABLE = (   # path, lb's row, the peers' rows (HAProxy, nginx), lb's target as a ratio to the best peer
    ("HTTP/2 over TLS", "lb h2", ("haproxy h2", "nginx h2"), 3.0),
    ("HTTP/1.1 close", "lb close", ("haproxy close", "nginx close"), 1.5),
    ("TLS full handshake, ECDSA", "lb tls full handshake ecdsa",
     ("haproxy tls full handshake ecdsa", "nginx tls full handshake ecdsa"), 1.3),
    ("TLS resumed connection", "lb tls resumed conn", ("haproxy tls resumed conn", "nginx tls resumed conn"), 1.3),
    ("HTTP/1.1 keep-alive", "lb keep-alive", ("haproxy keep-alive", "nginx keep-alive"), 2.0),
    ("TLS keep-alive", "lb tls keep-alive", ("haproxy tls keep-alive", "nginx tls keep-alive"), None),
)


def table_lines(rows: dict) -> list[str]:
    """The README's table: CPU µs per request of each, lb's ratio to the best peer, its target."""
    cpu = {name: row.get("cpu_us_per_request") for name, row in rows.items()}
    lines = ["| path | lb | HAProxy | nginx | lb ÷ best peer | target |", "|---|---:|---:|---:|---:|---:|"]
    for path, lb, peers, target in TABLE:
        values = [cpu.get(lb), *(cpu.get(p) for p in peers)]
        best = min((v for v in values[1:] if v), default=None)
        ratio = f"{values[0] / best:.2f}" if values[0] and best else "-"
        lines.append(f"| {path} | " + " | ".join(f"{v:.1f}" if v else "-" for v in values) +
                     f" | {ratio} | {'≤ %.1f' % target if target else '-'} |")
    for size in (10, 200):
        keep, close = cpu.get(f"lb, {size} backends, keep-alive"), cpu.get(f"lb, {size} backends, close")
        if keep and close:
            lines.append(f"| lb with {size} backends, keep-alive / close | {keep:.1f} / {close:.1f} | "
                         f"{cpu.get(f'haproxy, {size} backends, keep-alive') or 0:.1f} / "
                         f"{cpu.get(f'haproxy, {size} backends, close') or 0:.1f} | - | - | - |")
    return lines


def report_table(args) -> int:
    args.peers = True                  # HAProxy beside lb in the pool rows too
    rows = {**run_http1_peers(args), **run_tls(args), **run_h2(args), **run_pools(args, [BACKENDS, 200])}
    report = {"bench": "throughput", "mode": "table", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "versions": {"haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"])},
              "wrk": f"-t1 -c{args.connections} -d{args.seconds}s", "results": rows,
              "table": table_lines(rows)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(report["table"]))
    print(f"written: {args.out}")
    return 0


def print_rows(rows: dict) -> None:
    print(f"{'':33} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'user/sys':>11} "
          f"{'box busy %':>10} {'errors':>7}")
    for name, row in rows.items():
        cpu = row.get("cpu_us_per_request", "-")
        split = f"{row['user_us_per_request']}/{row['sys_us_per_request']}" if "user_us_per_request" in row else "-"
        p50, p99 = (f"{row[k]:.2f}" if row[k] is not None else "-" for k in ("latency_p50_ms", "latency_p99_ms"))
        print(f"{name:33} {row['requests_per_s']:>9.0f} {p50:>8} {p99:>8} {cpu:>11} {split:>11} {row['box_busy_pct']:>10} "
              f"{row['non_2xx'] + row['socket_errors']:>7}")


def report_tls(args, rows: dict) -> int:
    modes = ["tls keep-alive", "tls resumed conn", "tls full handshake ecdsa", "tls full handshake rsa"]
    ratio = {f"{proxy} {mode}": {key: round(rows[f"{proxy} {mode}"][key] / rows[f"haproxy {mode}"][key], 2)
                                 for key in ("requests_per_s", "latency_p99_ms", "cpu_us_per_request")
                                 if rows[f"haproxy {mode}"][key]}
             for mode in modes for proxy in ("lb", "nginx")}
    report = {
        "bench": "throughput --tls", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "wrk": f"-t1 -c{args.connections} -d{args.seconds}s", "tls": "TLSv1.3 only; ECDSA P-256 and RSA 2048",
        "versions": {"haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"])},
        "results": rows, "ratios_to_haproxy": ratio,
    }
    return write_peer_report(args, report)


def ratios(rows: dict, counts: list[int]) -> dict:
    out = {}
    for mode in [f"{'' if c == 1 else f'x{c} '}{m}" for c in counts for m in ("keep-alive", "Connection: close")]:
        base = rows[f"haproxy {mode}"]
        for proxy in ("lb", "nginx", "floor"):
            row = rows.get(f"{proxy} {mode}")
            if row is None:
                continue
            out[f"{proxy} {mode}"] = {
                key: round(row[key] / base[key], 2)
                for key in ("requests_per_s", "latency_p50_ms", "latency_p99_ms", "cpu_us_per_request")
                if base.get(key)}
        floor = rows.get(f"floor {mode}")
        if floor and floor.get("cpu_us_per_request"):
            out[f"lb {mode} / floor"] = {"cpu_us_per_request": round(
                rows[f"lb {mode}"]["cpu_us_per_request"] / floor["cpu_us_per_request"], 2)}
    return out


def _version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0].strip()


if __name__ == "__main__":
    sys.exit(main())
