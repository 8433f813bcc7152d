"""A real etcd for the tests (issue 31's store is tested on one, never a stand-in).

`ensure_installed()` installs Debian's `etcd-server` package (etcd 3.4) when the machine
lacks the `etcd` binary (idempotent: nothing happens when it is there; the tests run as
root, as CI does), and stops the system service the package may start: the tests run their
own members. `EtcdCluster(folder, size, free_port)` starts `size` members (1 or 3) on free
ports of 127.0.0.1, each with its data in `folder`, under a cluster token of its own, and
waits until every member answers /health with a leader. `kill(i)` ends one member with
SIGKILL (a crash: nothing is flushed); `restart(i)` starts it again on its data and ports.
`compact(revision)` drops history; `stop()` kills every member by its pid. With `tls` (a
`TlsFiles`: the members' certificate and key, and the CA clients must be signed by), the
members serve HTTPS on their client ports and ask every client for a certificate.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import debian

BINARY = "etcd"
PACKAGE = "etcd-server"
SERVICE = "etcd"
START_TIMEOUT_S = 30.0
# Elections in half a second instead of etcd's default second: a killed leader is replaced
# fast enough for the tests to wait on it (the heartbeat stays a tenth of the election).
HEARTBEAT_MS = 50
ELECTION_MS = 500


@dataclass(frozen=True)
class TlsFiles:
    cert: Path          # the members' certificate (for 127.0.0.1) and key
    key: Path
    ca: Path            # the CA that signed the clients' certificates and the members'
    client_cert: Path   # one the test itself uses (health, compact)
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_pki(folder: Path) -> tuple[TlsFiles, dict[str, Path]]:
    """A CA (trustme), etcd's certificate for 127.0.0.1 and a client's (`lb`, `lb-key`), and
    another CA that signed none of them (`other-ca`): the members' files and every path."""
    import trustme
    ca, other_ca = trustme.CA(), trustme.CA()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, pem in [("ca", ca.cert_pem), ("other-ca", other_ca.cert_pem)]:
        paths[name] = folder / f"{name}.pem"
        pem.write_to_path(str(paths[name]))
    for name, cert in [("etcd", ca.issue_cert("127.0.0.1")), ("lb", ca.issue_cert("lb.internal"))]:
        paths[name], paths[name + "-key"] = folder / f"{name}.pem", folder / f"{name}-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(paths[name]))
        cert.private_key_pem.write_to_path(str(paths[name + "-key"]))
    return TlsFiles(paths["etcd"], paths["etcd-key"], paths["ca"], paths["lb"], paths["lb-key"]), paths


def ensure_installed() -> str:
    """The etcd binary's path; installs the Debian package first when it is missing."""
    return debian.ensure_installed(BINARY, PACKAGE, SERVICE)


class EtcdMember:
    """One etcd process: its name, ports and data folder outlive a kill, for a restart."""

    def __init__(self, folder: Path, name: str, client_port: int, peer_port: int, tls: TlsFiles | None = None):
        self.folder = folder
        self.tls = tls
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.proc: subprocess.Popen | None = None
        self.log = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def start(self, binary: str, initial_cluster: str, token: str) -> None:
        client_url = self.client_url
        tls = [] if self.tls is None else ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                                           "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        self.log = open(self.folder / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "--name", self.name, "--data-dir", str(self.folder / f"{self.name}.etcd"),
             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
             "--initial-cluster-state", "new", "--heartbeat-interval", str(HEARTBEAT_MS),
             "--election-timeout", str(ELECTION_MS), "--logger", "zap", "--log-outputs", "stderr", *tls],
            stdout=self.log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """The member answers /health with a leader elected ({"health":"true"})."""
        try:
            context = self.tls.client_context() if self.tls else None
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=2, context=context) as answer:
                return json.loads(answer.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def log_tail(self) -> str:
        return (self.folder / f"{self.name}.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL, as a crash; waits until the process is reaped."""
        if self.running():
            self.proc.kill()
            self.proc.wait(10)
        self.close_log()

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class EtcdCluster:
    """`size` etcd members on free ports of 127.0.0.1, healthy when the constructor returns."""

    def __init__(self, folder: Path, size: int, free_port: Callable[[], int], tls: TlsFiles | None = None):
        self.binary = ensure_installed()
        folder.mkdir(parents=True, exist_ok=True)
        self.token = f"lb-test-{uuid.uuid4().hex[:12]}"
        self.members = [EtcdMember(folder, f"m{i}", free_port(), free_port(), tls) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for member in self.members:
                member.start(self.binary, self.initial_cluster, self.token)
            self.wait_healthy(self.members)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def wait_healthy(self, members: list[EtcdMember], timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for member in members:
            while not member.healthy():
                assert member.running(), f"etcd {member.name} exited: {member.log_tail()}"
                assert time.monotonic() < deadline, f"etcd {member.name} not healthy in {timeout_s}s: {member.log_tail()}"
                time.sleep(0.05)

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def restart(self, index: int) -> None:
        member = self.members[index]
        member.start(self.binary, self.initial_cluster, self.token)
        self.wait_healthy([member])

    def compact(self, revision: int) -> None:
        """Drops the history before `revision` (the client has no call for it: lb never compacts)."""
        body = json.dumps({"revision": str(revision), "physical": True}).encode()
        request = urllib.request.Request(f"http://{self.endpoints[0]}/v3/kv/compaction", data=body)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200, answer.read()

    def stop(self) -> None:
        """SIGKILL to every member, each reaped by its pid. The data is thrown away, and a
        SIGTERM makes a leader try to hand its leadership over for up to 6 s (measured)."""
        for member in self.members:
            member.kill()
