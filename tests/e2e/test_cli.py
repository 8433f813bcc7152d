"""What an operator reaches for on the first day, with real processes: `lb --version`,
`lb ctl -c CONFIG`, tables on a terminal, ISO times in `show info`, and the audit log of
the admin commands that change something."""

import importlib.metadata
import os
import pty
import select
import signal
import subprocess
import time
from datetime import datetime, timezone

import yaml

from conftest import PYTHON, ROOT, Backend, Lb, wait_for

SERVER_COLUMNS = ["name", "address", "version", "weight", "state", "health", "inflight", "tunnels", "requests",
                  "errors"]
STATS_COLUMNS = ["name", "version", "requests", "2xx", "3xx", "4xx", "5xx", "lb_failures", "retries",
                 "connect_errors", "p50_ms", "p99_ms"]


def lb_command(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "lb.cli", *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def on_a_terminal(*args: str, timeout_s: float = 30.0) -> str:
    """What `lb ARGS` prints with its stdout on a terminal (a pseudo-terminal read here)."""
    ours, theirs = pty.openpty()
    try:
        proc = subprocess.Popen([PYTHON, "-m", "lb.cli", *args], stdout=theirs, stderr=subprocess.DEVNULL, cwd=ROOT)
    finally:
        os.close(theirs)
    out = b""
    deadline = time.monotonic() + timeout_s
    try:
        while (left := deadline - time.monotonic()) > 0 and select.select([ours], [], [], left)[0]:
            try:
                chunk = os.read(ours, 65536)
            except OSError:                  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(ours)
        proc.wait(10)
    return out.decode().replace("\r\n", "\n")


def test_lb_version_prints_the_installed_version():
    result = lb_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"lb {importlib.metadata.version('lb')}\n"


def test_lb_ctl_finds_the_admin_socket_from_the_config(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()])
    # A config whose socket is relative: to the config's folder, not to where lb ctl runs.
    beside = lb.socket_path.parent / "lb.yaml"
    beside.write_text(yaml.safe_dump({**lb.config, "admin": {"socket": lb.socket_path.name}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = lb_command("ctl", "-c", str(beside), "show", "servers", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert [s["name"] for s in yaml.safe_load(shown.stdout)["servers"]] == ["web1", "web2"]
    drained = lb_command("ctl", "-c", str(lb.config_path), "drain", "web2")
    assert drained.returncode == 0 and lb.server("web2")["state"] in ("draining", "drained")
    bad = tmp_path / "bad.yaml"
    bad.write_text("admin: {socket: 42}\nbackends: []\n")
    refused = lb_command("ctl", "-c", str(bad), "show", "servers")
    assert refused.returncode == 2 and f"lb ctl: {bad}: admin.socket" in refused.stderr


def test_lb_ctl_shows_servers_and_stats_as_tables_on_a_terminal_and_json_when_piped(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()])
    servers = on_a_terminal("ctl", "-s", str(lb.socket_path), "show", "servers").splitlines()
    assert servers[0].split() == SERVER_COLUMNS
    assert [line.split()[:3] for line in servers[1:]] == [["web1", web1.address, "v1"], ["web2", web2.address, "v1"]]
    stats = on_a_terminal("ctl", "-s", str(lb.socket_path), "show", "stats").splitlines()
    assert stats[0].split() == STATS_COLUMNS
    assert [line.split()[0] for line in stats[1:4]] == ["web1", "web2", "total"] and stats[4].startswith("since ")
    info = on_a_terminal("ctl", "-s", str(lb.socket_path), "show", "info")
    assert yaml.safe_load(info)["pid"] == lb.master_pid                # no table: indented JSON
    piped = lb_command("ctl", "-s", str(lb.socket_path), "show", "servers")
    assert piped.stdout.count("\n") == 1 and yaml.safe_load(piped.stdout)["ok"] is True


def test_show_info_gives_iso_8601_times_beside_the_epoch(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=2)
    info = lb.ctl("show info")
    stamped = [info, *info["workers"]]
    assert len(stamped) == 3
    for item in stamped:
        iso = datetime.strptime(item["started_iso"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert abs(iso.timestamp() - item["started"]) < 1.0, item


def audit_lines(lb: Lb) -> list[str]:
    """The audit log's messages, from lb's stderr (after its 'lb.audit INFO ')."""
    return [line.split(" lb.audit INFO ", 1)[1] for line in lb.stderr_path.read_text().splitlines()
            if " lb.audit INFO " in line]


def test_every_admin_command_that_changes_something_is_logged_with_its_sender_and_reply(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], workers=2)
    me = os.getuid()

    def ctl(*words: str) -> int:
        proc = subprocess.Popen([PYTHON, "-m", "lb.cli", "ctl", "-s", str(lb.socket_path), *words],
                                stdout=subprocess.DEVNULL, cwd=ROOT)
        proc.wait(30)
        return proc.pid

    drained = ctl("drain", "web1")
    refused = ctl("drain", "web11")
    ctl("show", "servers")
    ctl("wait", "web1", "drained", "5")
    ctl("frobnicate")
    readied = ctl("ready",  "web1")
    assert audit_lines(lb) == [
        f"uid {me} pid {drained}: drain web1 -> ok",
        f"uid {me} pid {refused}: drain web11 -> error: unknown server 'web11'; servers: web1, web2",
        f"uid {me} pid {readied}: ready web1 -> ok"]
    lb.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reload -> ok" in audit_lines(lb), 10, "the SIGHUP reload in the audit log")
    assert lb.upgrade()["ok"]                          # the new master logs to the same stderr
    maint = ctl("maint", "web2")
    assert audit_lines(lb)[-2:] == [f"uid {me} pid {os.getpid()}: upgrade -> ok",
                                    f"uid {me} pid {maint}: maint web2 -> ok"]
