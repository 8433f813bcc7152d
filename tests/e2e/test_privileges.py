"""`user:`: started as root, the master stays root and every worker drops to that user before it
serves; the certificates (root-only key files too) still load at start and at a reload. These
tests run as root (the CI box); they skip otherwise."""

import hashlib
import http.client
import os
import pwd
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from conftest import PYTHON, ROOT, Backend, Lb, client_context, wait_for, write_cert
from test_tls import served_cert

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
NOBODY = pwd.getpwnam("nobody")


def ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status (real, effective, saved, fs ids)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: [int(v) for v in rest.split()] for key, _, rest in (line.partition(":") for line in lines)
            if key in ("Uid", "Gid", "Groups")}


def root_only_cert(ca, folder: Path, stem: str) -> dict:
    made = write_cert(ca, folder, stem, "lb.example", "127.0.0.1")
    os.chmod(made["key"], 0o600)
    return made


def fingerprint(made: dict) -> str:
    """The SHA-256 of the leaf of a certificate file, as served_cert gives it."""
    pem = Path(made["cert"]).read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def https_get(port: int, ca) -> int:
    """One GET over a new TLS connection; its status."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_context(ca))
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_workers_drop_to_the_user_and_still_serve_log_and_reload_root_only_keys(spawn, tmp_path):
    ca = trustme.CA()
    backend = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [backend.config()], workers=2, user="nobody",
               tls={"certs": [root_only_cert(ca, tmp_path, "first")]})
    workers = wait_for(lambda: len(lb.worker_pids()) == 2 and lb.worker_pids(), 5, "2 workers")
    assert ids(lb.master_pid)["Uid"] == [0, 0, 0, 0] and ids(lb.master_pid)["Gid"] == [0, 0, 0, 0]
    for pid in workers:
        assert ids(pid) == {"Uid": [NOBODY.pw_uid] * 4, "Gid": [NOBODY.pw_gid] * 4,
                            "Groups": os.getgrouplist("nobody", NOBODY.pw_gid)}
    assert [https_get(lb.port, ca) for _ in range(4)] == [200] * 4
    # The access log file, opened before the drop in a folder only root may enter, takes lines.
    wait_for(lambda: len(lb.access_lines()) >= 4, 5, "access lines from the workers")
    renewed = root_only_cert(ca, tmp_path, "renewed")
    lb.write_config(listen=[{"address": f"127.0.0.1:{lb.port}", "tls": {"certs": [renewed]}}])
    reply = lb.ctl("reload")
    assert reply["ok"] and any("new certificates" in line for line in reply["changed"]), reply
    # Every worker loaded the new key, which only root may read (new connections reach both).
    assert [served_cert(lb.port, ca, "lb.example")[1] for _ in range(6)] == [fingerprint(renewed)] * 6
    assert "keeping the certificates in use" not in lb.stderr_path.read_text()


@pytest.mark.parametrize("command", ["serve", "check"])
def test_an_unknown_user_stops_lb_before_it_serves_naming_the_key(tmp_path, command):
    config = tmp_path / "lb.yaml"
    config.write_text("backends: [{name: web1, address: '127.0.0.1:9'}]\nuser: no-such-user-here\n"
                      f"admin: {{socket: {tmp_path}/lb.sock}}\nstate_file: {tmp_path}/lb.state\n")
    done = subprocess.run([PYTHON, "-m", "lb.cli", command, "-c", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"lb: {config}: user: no such user in the user database, got 'no-such-user-here'" in done.stderr

