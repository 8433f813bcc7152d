"""`user:`: started as root, the master stays root and every worker drops to that user before it
serves; the certificates (root-only key files too) still load at start and at a reload. These
tests run as root (the CI box); they skip otherwise."""

import hashlib
import http.client
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest
import trustme

from conftest import PYTHON, ROOT, Backend, Lb, client_context, get, wait_for, write_cert
from lb import privileges
from lb.core.privileges import Identity
from lb.demo.spa import asset_paths
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


def test_the_new_master_of_an_upgrade_stays_root_and_its_workers_drop(spawn, tmp_path):
    backend = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [backend.config()], workers=2, user="nobody")
    reply = lb.upgrade()
    assert reply["ok"], reply
    assert ids(lb.master_pid)["Uid"] == [0, 0, 0, 0]
    workers = wait_for(lambda: len(lb.worker_pids()) == 2 and lb.worker_pids(), 5, "2 new workers")
    assert all(ids(pid)["Uid"] == [NOBODY.pw_uid] * 4 for pid in workers)
    assert get(lb.port).status == 200


@pytest.mark.parametrize("command", ["serve", "check"])
def test_an_unknown_user_stops_lb_before_it_serves_naming_the_key(tmp_path, command):
    config = tmp_path / "lb.yaml"
    config.write_text("backends: [{name: web1, address: '127.0.0.1:9'}]\nuser: no-such-user-here\n"
                      f"admin: {{socket: {tmp_path}/lb.sock}}\nstate_file: {tmp_path}/lb.state\n")
    done = subprocess.run([PYTHON, "-m", "lb.cli", command, "-c", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"lb: {config}: user: no such user in the user database, got 'no-such-user-here'" in done.stderr


def test_after_logrotate_the_master_makes_the_new_access_log_the_workers_to_reopen(spawn, tmp_path):
    """The folder is root's (as /var/log/lb): a worker that dropped to nobody cannot create
    the new file itself at SIGUSR1; the master creates it and hands it over."""
    folder = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        backend = spawn(Backend, "web1")
        lb = spawn(Lb, tmp_path, [backend.config()], workers=2, user="nobody", access_log=str(folder / "access.log"))
        lb.access_log = folder / "access.log"
        assert get(lb.port).status == 200
        wait_for(lb.access_lines, 5, "a line in the first file")
        lb.access_log.rename(folder / "access.log.1")            # logrotate, then its postrotate:
        lb.signal(signal.SIGUSR1)
        wait_for(lambda: get(lb.port).status == 200 and lb.access_log.exists() and lb.access_lines(), 10,
                 "a line in the new file")
        assert lb.access_log.stat().st_uid == NOBODY.pw_uid
        assert "cannot reopen" not in lb.stderr_path.read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_master_hands_over_no_file_through_a_symlink(tmp_path):
    target = tmp_path / "not-a-log"
    target.write_text("root's\n")
    (tmp_path / "access.log").symlink_to(target)
    with pytest.raises(OSError):
        privileges.hand_over(str(tmp_path / "access.log"), Identity("nobody", NOBODY.pw_uid, NOBODY.pw_gid, ()))
    assert target.stat().st_uid == 0


def test_workers_that_dropped_to_nobody_write_the_asset_store_s_copies(spawn, tmp_path):
    """The state's folder is root's (as /var/lib/lb): the master makes the store's folder the
    workers' before they start, or every copy would fail to be written."""
    folder = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        backend = spawn(Backend, "web1", args=("--spa", "--chunks", "1"))
        lb = spawn(Lb, tmp_path, [backend.config()], workers=2, user="nobody", state_file=str(folder / "lb.state"))
        for path in asset_paths("v1", 1):
            assert get(lb.port, path).status == 200
        wait_for(lambda: lb.ctl("show assets")["store"]["copies"] == 2, 10, "both copies stored")
        store = folder / "lb.state.assets"
        assert store.stat().st_uid == NOBODY.pw_uid and oct(store.stat().st_mode & 0o777) == "0o750"
        assert all(f.stat().st_uid == NOBODY.pw_uid for f in store.iterdir() if len(f.name) == 64)
        assert "cannot write asset copies" not in lb.stderr_path.read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
