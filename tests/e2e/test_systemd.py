"""lb under systemd, emulated as systemd does it: socket activation (the test binds the socket
and starts `lb serve` with it at fd 3 and LISTEN_FDS/LISTEN_PID set), sd_notify (the test
owns NOTIFY_SOCKET), SIGUSR1 for logrotate, and the shipped unit files."""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import ROOT, START_TIMEOUT_S, Backend, Lb, admin_answers, free_port, get, wait_for
from supervise import activated_command

def listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


class ActivatedLb(Lb):
    """`lb serve` given its listening socket the way systemd's lb.socket gives it."""

    def _start(self) -> None:
        if not hasattr(self, "held"):
            self.held = [listening_socket(self.port)]        # systemd's copy, open across restarts
        self._stderr = open(self.stderr_path, "ab")
        fds = [sock.fileno() for sock in self.held]
        self.proc = subprocess.Popen(activated_command(fds, ["http"], ["serve", "-c", str(self.config_path)]),
                                     pass_fds=fds, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.master_pid = self.proc.pid
        wait_for(lambda: admin_answers(self.socket_path) or self.proc.poll() is not None, START_TIMEOUT_S,
                 "lb to serve")
        assert self.proc.poll() is None, self.stderr_path.read_text()


def test_a_restart_under_socket_activation_refuses_no_connection(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(ActivatedLb, tmp_path, [web.config()], workers=1)
    assert "socket from systemd" in lb.stderr_path.read_text()
    results, stop = [], threading.Event()

    def client() -> None:                                  # a new connection per request
        while not stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=20)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
            except OSError as exc:
                status = repr(exc)
            results.append((started, time.monotonic(), status))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(results) >= 50, 10, "requests before the restart")
        stopping_at = time.monotonic()
        assert lb.stop() == 0                              # systemctl restart: stop...
        lb._start()                                        # ...and start, on the same socket
        up_at = time.monotonic()
        count = len(results)
        wait_for(lambda: len(results) >= count + 50, 10, "requests after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert [r for r in results if r[2] != 200] == []
    # Some connections were made after the old lb stopped accepting and answered by the new
    # one: the kernel queued them meanwhile.
    assert any(stopping_at < started < up_at < ended for started, ended, _ in results)


def test_a_socket_from_systemd_that_the_config_does_not_name_is_refused(tmp_path):
    held = [listening_socket(), listening_socket()]
    config = tmp_path / "lb.yaml"
    config.write_text(f"listen: 127.0.0.1:{held[0].getsockname()[1]}\nworkers: 1\n"
                      f"metrics: {{listen: '127.0.0.1:{free_port()}'}}\n"
                      f"admin: {{socket: {tmp_path}/lb.sock}}\nstate_file: {tmp_path}/lb.state\n"
                      "backends: [{name: web1, address: '127.0.0.1:9', version: v1}]\n")
    fds = [sock.fileno() for sock in held]
    result = subprocess.run(activated_command(fds, ["http", "extra"], ["serve", "-c", str(config)]),
                            pass_fds=fds, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"systemd passed a socket on 127.0.0.1:{held[1].getsockname()[1]} that the config names in " \
           "neither listen nor metrics.listen" in result.stderr


def test_sd_notify_ready_reloading_mainpid_stopping(spawn, tmp_path, monkeypatch):
    path = os.path.join(tempfile.mkdtemp(prefix="lbn", dir="/tmp"), "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        web = spawn(Backend, "web1")
        lb = spawn(Lb, tmp_path, [web.config()], workers=1)

        def message() -> list[str]:
            return listener.recv(4096).decode().split("\n")

        assert message() == ["READY=1"]
        lb.signal(signal.SIGHUP)
        reloading = message()
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert message() == ["READY=1"]
        reply = lb.upgrade()
        assert reply["ok"], reply
        new_pid = reply["upgrade"]["new_pid"]
        assert message() == [f"MAINPID={new_pid}", "READY=1", f"STATUS=upgraded from pid {lb.proc.pid}"]
        lb.signal(signal.SIGTERM)
        assert message() == ["STOPPING=1"]
    finally:
        listener.close()


def test_sigusr1_reopens_the_access_log_without_losing_a_line(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=2)
    served, stop = [], threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=10)
        while not stop.is_set():
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            served.append(response.status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(served) >= 200, 10, "requests")
        rotated = lb.access_log.with_suffix(".log.1")
        lb.access_log.rename(rotated)                     # logrotate, then its postrotate:
        lb.signal(signal.SIGUSR1)
        count = len(served)
        wait_for(lambda: lb.access_log.exists() and len(served) >= count + 200, 10, "requests after")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert set(served) == {200}

    def lines() -> int:
        return sum(len(path.read_text().splitlines()) for path in (rotated, lb.access_log))

    wait_for(lambda: lines() == len(served), 5, "one line per request over both files")
    assert len(lb.access_log.read_text().splitlines()) >= 100
    assert get(lb.port, "/").status == 200


UNITS = ROOT / "config" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_shipped_units_pass_systemd_analyze_verify(tmp_path):
    # The unit's ExecStart must name an executable that exists: point it at this venv's Python.
    units = ("lb.service", "lb.socket", "lb-https.socket")
    for unit in units:
        text = (UNITS / unit).read_text().replace("/opt/lb/bin/python", sys.executable)
        (tmp_path / unit).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / unit) for unit in units)],
                            capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", output     # an unknown key is only a warning


def test_the_shipped_systemd_config_passes_lb_check_as_shipped_and_with_its_commented_lines(tmp_path):
    """config/systemd/lb.yaml as shipped, then with its HTTPS listener and file access log
    uncommented (the certificate made here, where the comment's /etc/lb/certs would be)."""
    shipped = (UNITS / "lb.yaml").read_text()
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-keyout", str(certs / "example.key"),
                    "-out", str(certs / "example.pem")], check=True, capture_output=True, timeout=60)
    uncommented = "\n".join(line.replace("# ", "", 1) if line.lstrip().startswith(("# - address", "#   tls:",
                                                                                   "# access_log:")) else line
                            for line in shipped.splitlines()).replace("/etc/lb/certs", str(certs))
    assert uncommented.count("0.0.0.0:443") == 1 and "\naccess_log: /var/log/lb/access.log" in uncommented
    uncommented = uncommented.replace("access_log: stdout", "# access_log: stdout")
    for name, text, expected in (("shipped.yaml", shipped, "2 backends"),
                                 ("https.yaml", uncommented, "2 backends, 1 certificates")):
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, "-m", "lb.cli", "check", "-c", str(tmp_path / name)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr


def test_the_logrotate_stanza_signals_the_master_only():
    stanza = (ROOT / "config" / "logrotate" / "lb").read_text()
    assert "/var/log/lb/access.log {" in stanza and "\n    create" not in stanza
    assert "systemctl kill --kill-whom=main --signal=SIGUSR1 lb.service" in stanza
    assert "access_log: /var/log/lb/access.log" in (UNITS / "lb.yaml").read_text()
    assert "LogsDirectory=lb" in (UNITS / "lb.service").read_text()
