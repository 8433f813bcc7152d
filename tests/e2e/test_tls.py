"""TLS at the front door and towards backends: real lb processes, real TLS clients (ssl
sockets, aiohttp), certificates made here by trustme."""

import asyncio
import hashlib
import json
import socket
import ssl
import threading
import time
import warnings

import aiohttp
import pytest
import trustme

from conftest import Lb, RawClient, client_context, free_port, gone, port_open, steady_load, wait_for, wait_for_requests, write_cert
from h2_client import H2Client


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def served_cert(port: int, ca, server_hostname: str | None) -> tuple[set, str]:
    """The DNS names and the SHA-256 of the certificate lb serves for `server_hostname`."""
    context = client_context(ca)
    context.check_hostname = False            # see what comes, whatever it is
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            cert = tls.getpeercert()
            der = tls.getpeercert(binary_form=True)
    return {value for kind, value in cert["subjectAltName"] if kind == "DNS"}, hashlib.sha256(der).hexdigest()


@pytest.fixture
def tls_lb(spawn, tmp_path, module_backends, ca):
    certs = [write_cert(ca, tmp_path, "main", "lb.example", "127.0.0.1"),
             write_cert(ca, tmp_path, "other", "other.example", "*.wild.example")]
    return spawn(Lb, tmp_path, [b.config() for b in module_backends], tls={"certs": certs})


def test_keep_alive_and_new_connections_over_tls_with_chunked_bodies(tls_lb, ca):
    context = client_context(ca)
    with RawClient(tls_lb.port, tls=context, server_hostname="lb.example") as client:
        for i in range(5):                          # one TLS connection, many requests
            body = b"x" * (1000 * i + 1)
            client.send(b"POST /echo HTTP/1.1\r\nHost: lb.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            resp = client.response()
            assert resp.status == 200
            echoed = json.loads(resp.body)
            assert echoed["body"] == body.decode()
            headers = {k.lower(): v for k, v in echoed["headers"]}
            assert headers["x-forwarded-proto"] == "https"
            assert "proto=https" in headers["forwarded"]
    for _ in range(5):                              # a new TLS connection per request
        with RawClient(tls_lb.port, tls=context, server_hostname="lb.example") as client:
            client.send(b"GET /bytes?n=200000 HTTP/1.1\r\nHost: lb.example\r\nConnection: close\r\n\r\n")
            resp = client.response()
            assert resp.status == 200 and len(resp.body) == 200000
    lines = wait_for(lambda: [e for e in tls_lb.access_lines() if e["path"] == "/bytes"][4:], 5, "access lines")
    assert lines[0]["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert lines[0]["tls"]["sni"] == "lb.example" and lines[0]["tls"]["cipher"]


async def test_aiohttp_over_tls_with_a_websocket(tls_lb, ca):
    context = client_context(ca)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{tls_lb.port}/", ssl=context) as resp:
            assert resp.status == 200
            assert "lb_version" in resp.cookies                 # pinning works over TLS
        async with session.ws_connect(f"https://127.0.0.1:{tls_lb.port}/ws", ssl=context) as ws:
            for i in range(3):
                await ws.send_str(f"hello {i}")
                message = await ws.receive(timeout=5)
                assert message.data == f"hello {i}"


def test_sni_chooses_the_certificate_and_an_unknown_name_gets_the_first(tls_lb, ca):
    main, _ = served_cert(tls_lb.port, ca, "lb.example")
    other, _ = served_cert(tls_lb.port, ca, "other.example")
    wild, _ = served_cert(tls_lb.port, ca, "a.wild.example")
    unknown, _ = served_cert(tls_lb.port, ca, "nobody.example")
    none, _ = served_cert(tls_lb.port, ca, None)
    assert "lb.example" in main and "other.example" in other and "*.wild.example" in wild
    assert unknown == main and none == main
    deeper, _ = served_cert(tls_lb.port, ca, "a.b.wild.example")      # a wildcard is one label
    assert deeper == main


def test_a_tls_1_1_client_is_refused_and_plain_http_on_the_tls_port_is_closed(tls_lb, ca):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)      # TLS 1.1 on purpose
        context = client_context(ca, minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
    context.set_ciphers("ALL:@SECLEVEL=0")     # this client does speak TLS 1.1 to a server that allows it
    with socket.create_connection(("127.0.0.1", tls_lb.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            context.wrap_socket(raw, server_hostname="lb.example")
    # lb ends the handshake (an alert, or its close once OpenSSL refused the ClientHello)
    assert isinstance(refused.value, ssl.SSLEOFError) or "PROTOCOL_VERSION" in str(refused.value).upper(), refused.value
    for _ in range(20):                      # plain HTTP: closed each time, no crash, no flood
        with socket.create_connection(("127.0.0.1", tls_lb.port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: lb.example\r\n\r\n")
            try:
                answer = raw.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert not answer.startswith(b"HTTP/1.1 200")
    with RawClient(tls_lb.port, tls=client_context(ca), server_hostname="lb.example") as client:
        client.send(b"GET / HTTP/1.1\r\nHost: lb.example\r\n\r\n")
        assert client.response().status == 200          # still serving
    assert tls_lb.stderr_path.read_text().count("\n") < 20, tls_lb.stderr_path.read_text()


def test_a_handshake_not_finished_in_time_is_closed(spawn, tmp_path, module_backends, ca):
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends], timeouts={"client_header": "1s"},
               tls={"certs": [write_cert(ca, tmp_path, "main", "lb.example")]})
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01")                 # the start of a ClientHello, then nothing
        started = time.monotonic()
        try:
            assert raw.recv(4096) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 8


def test_a_redirect_listener_answers_308_to_https(spawn, tmp_path, module_backends, ca):
    plain = free_port()
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends],
               tls={"certs": [write_cert(ca, tmp_path, "main", "lb.example")]},
               listen=[{"address": f"127.0.0.1:{plain}", "redirect_https": True}])
    wait_for(lambda: port_open(plain), 10, "the redirect listener")
    with RawClient(plain) as client:
        client.send(b"GET /a/b?c=d HTTP/1.1\r\nHost: shop.example:8081\r\n\r\n")
        resp = client.response()
        assert resp.status == 308 and resp.getheader("Location") == "https://shop.example/a/b?c=d"
        client.send(b"POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nhello")
        resp = client.response()                     # the same connection: the body was dropped
        assert resp.status == 308 and resp.getheader("Location") == "https://shop.example/form"
        client.send(b"GET / HTTP/1.1\r\n\r\n")
        assert client.response().status == 400       # no Host: no URL to send the client to
    lines = wait_for(lambda: [e for e in lb.access_lines() if e["status"] == 308][1:], 5, "access lines")
    assert lines[0]["backend"] is None and lines[0]["path"] == "/form"


def test_bad_certificates_are_refused_at_start_with_the_key_path_and_file(tmp_path, module_backends, ca):
    import subprocess
    import sys
    import yaml
    good = write_cert(ca, tmp_path, "good", "lb.example")
    other = write_cert(ca, tmp_path, "other", "other.example")
    expired = write_cert(ca, tmp_path, "expired", "old.example",
                         not_after=__import__("datetime").datetime(2020, 1, 1))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"cert": str(tmp_path / "missing.pem"), "key": good["key"]}, "listen[0].tls.certs[0].cert: cannot read"),
        ({"cert": good["cert"], "key": str(tmp_path / "missing.key")}, "listen[0].tls.certs[0].key: cannot read"),
        ({"cert": good["cert"], "key": other["key"]}, "listen[0].tls.certs[0].key: " + other["key"] + " is not the key of"),
        ({"cert": str(garbage), "key": good["key"]}, "holds no PEM certificate"),
        ({"cert": good["cert"], "key": str(garbage)}, "holds no usable PEM private key"),
        (expired, "expired on 2020-01-01"),
    ]
    for cert, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"listen": [{"address": f"127.0.0.1:{free_port()}", "tls": {"certs": [cert]}}],
                                        "backends": [b.config() for b in module_backends]}))
        for command in ("check", "serve"):
            done = subprocess.run([sys.executable, "-m", "lb.cli", command, "-c", str(path)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, (command, done.stderr)
            assert str(path) in done.stderr and message in done.stderr, (command, done.stderr)


def test_a_certificate_expiring_soon_is_warned_of(tmp_path, module_backends, ca):
    import datetime
    import subprocess
    import sys
    import yaml
    soon = write_cert(ca, tmp_path, "soon", "soon.example",
                      not_after=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3))
    path = tmp_path / "soon.yaml"
    path.write_text(yaml.safe_dump({"listen": [{"address": f"127.0.0.1:{free_port()}", "tls": {"certs": [soon]}}],
                                    "backends": [b.config() for b in module_backends]}))
    done = subprocess.run([sys.executable, "-m", "lb.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr and "expires in 3.0 days" in done.stderr and "soon.example" in done.stderr


def test_show_certs_and_the_expiry_metric(tls_lb, ca):
    reply = tls_lb.ctl("show certs")
    assert reply["ok"], reply
    [listener] = reply["certs"]
    assert listener["listener"] == f"127.0.0.1:{tls_lb.port}"
    first, second = listener["certs"]
    _, sha = served_cert(tls_lb.port, ca, "lb.example")
    assert first["sha256"].replace(":", "").lower() == sha
    assert set(first["names"]) == {"lb.example", "127.0.0.1"} and set(second["names"]) == {"other.example", "*.wild.example"}
    assert first["days_left"] > 300 and first["not_after"].endswith("Z")
    metrics_port = tls_lb.config["metrics"]["listen"].rsplit(":", 1)[1]
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    lines = [line for line in text.splitlines() if line.startswith("lb_tls_cert_expiry_seconds{")]
    assert len(lines) == 2 and all(float(line.rsplit(" ", 1)[1]) > 300 * 86400 for line in lines)


async def test_certificates_reload_under_load_with_no_failed_request(tls_lb, ca, tmp_path):
    _, before = served_cert(tls_lb.port, ca, "lb.example")
    context = client_context(ca)
    held = RawClient(tls_lb.port, tls=context, server_hostname="lb.example")   # established before
    try:
        async with steady_load(tls_lb, workers=4, tls=context) as load:
            await wait_for_requests(load, 50)
            renewed = ca.issue_cert("lb.example", "127.0.0.1")
            main = tmp_path / "main.pem"
            main.write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
            renewed.private_key_pem.write_to_path(str(tmp_path / "main.key"))
            reply = tls_lb.ctl("reload")
            assert reply["ok"], reply
            assert any("new certificates" in line for line in reply["changed"]), reply
            await wait_for_requests(load, load.requests + 100)
        assert load.failures == []
        _, after = served_cert(tls_lb.port, ca, "lb.example")
        assert after != before and after == hashlib.sha256(
            ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())).hexdigest()
        held.send(b"GET / HTTP/1.1\r\nHost: lb.example\r\n\r\n")
        assert held.response().status == 200               # the established connection goes on
    finally:
        held.close()


def test_a_bad_certificate_at_reload_is_refused_and_the_old_one_served(tls_lb, ca, tmp_path):
    _, before = served_cert(tls_lb.port, ca, "lb.example")
    (tmp_path / "main.key").write_bytes(ca.issue_cert("x.example").private_key_pem.bytes())   # not its key
    reply = tls_lb.ctl("reload")
    assert not reply["ok"] and "reload refused" in reply["error"] and "is not the key of" in reply["error"]
    assert "listen[0].tls.certs[0].key" in reply["error"]
    _, after = served_cert(tls_lb.port, ca, "lb.example")
    assert after == before
    _, again = served_cert(tls_lb.port, ca, "lb.example")      # and new handshakes go on
    assert again == before


class TlsBackend:
    """A keep-alive HTTPS backend (a thread per connection) that answers every request 200;
    counts the connections that carried proxied requests."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.proxied_connections = 0
        self.health_checks = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        counted = False
        try:
            conn.settimeout(10)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                buffer = b""
                while True:
                    while b"\r\n\r\n" not in buffer:
                        data = tls.recv(65536)
                        if not data:
                            return
                        buffer += data
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    if b"User-Agent: lb-health" in head:
                        self.health_checks += 1
                    elif not counted:
                        counted = True
                        self.proxied_connections += 1
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Backend-Version: v1\r\n\r\ntls-hello")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.sock.close()


def test_a_backend_over_tls_verified_against_its_ca(spawn, tmp_path, ca):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("web1.internal").configure_cert(server)
    backend = TlsBackend(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    wrong_ca = tmp_path / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    try:
        good = spawn(Lb, tmp_path, [{"name": "web1", "address": f"127.0.0.1:{backend.port}",
                                     "tls": {"ca": str(ca_file), "sni": "web1.internal"}}], workers=1)
        for _ in range(20):
            with RawClient(good.port) as client:
                client.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                resp = client.response()
                assert resp.status == 200 and resp.body == b"tls-hello"
        assert backend.proxied_connections == 1          # one pooled TLS connection, reused
        assert good.server("web1")["health"] == "up"
        wrong = spawn(Lb, tmp_path, [{"name": "web1", "address": f"127.0.0.1:{backend.port}",
                                      "tls": {"ca": str(wrong_ca), "sni": "web1.internal"}}],
                      health={"interval": "200ms", "fall": 1})
        wait_for(lambda: wrong.server("web1")["health"] == "down", 10, "the health check to fail")
        check = wrong.server("web1")["last_check"]
        assert "CERTIFICATE_VERIFY_FAILED" in check["error"] or "certificate verify failed" in check["error"], check
        with RawClient(wrong.port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert client.response().status in (502, 503)
    finally:
        backend.stop()


async def test_an_upgrade_of_lb_with_a_tls_listener_fails_no_request(tls_lb, ca):
    """The TLS listening socket passes to the new master like a plain one; keep-alive HTTPS
    users and one-connection-per-request users see nothing."""
    from lb.demo.users import Users
    context = client_context(ca)
    keep_alive = Users("127.0.0.1", tls_lb.port, slots=4, life=(20, 60), think_s=0.005, ssl=context)
    one_shot = Users("127.0.0.1", tls_lb.port, slots=2, life=(1, 1), think_s=0.0, ssl=context)
    async with keep_alive, one_shot:
        await wait_for_requests(keep_alive, 100)
        reply = await asyncio.to_thread(tls_lb.upgrade)
        assert reply["ok"], reply
        await wait_for_requests(keep_alive, keep_alive.requests + 100)
        await wait_for_requests(one_shot, 50)
    assert keep_alive.failures == [] and one_shot.failures == []
    assert tls_lb.ctl("show certs")["certs"][0]["certs"][0]["names"] == ["lb.example", "127.0.0.1"]


class HalfHandshake:
    """A TLS client that stops half-way: the ClientHello sent and the server's whole first
    flight read, its own Finished held back. lb's worker holds the connection in the middle
    of its handshake (asyncio has not yet made it a client connection) until `finish`."""

    def __init__(self, port: int, context: ssl.SSLContext):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="lb.example")
        while not self._step():
            self.sock.sendall(self.outgoing.read())
            data = self.sock.recv(65536)
            assert data, "lb closed the connection during the handshake"
            self.incoming.write(data)

    def _step(self) -> bool:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def finish(self, request: bytes) -> bytes:
        """Send the held Finished and `request`; everything lb sends until it closes."""
        self.tls.write(request)
        self.sock.sendall(self.outgoing.read())
        answer = b""
        while True:
            try:
                data = self.tls.read(65536)
                if not data:                # lb's close_notify
                    return answer
                answer += data
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return answer
            data = self.sock.recv(65536)
            if not data:
                return answer
            self.incoming.write(data)

    def close(self) -> None:
        self.sock.close()


def test_a_tls_handshake_in_progress_at_an_upgrade_is_finished_by_the_old_worker(tls_lb, ca):
    """An old worker that accepted a connection finishes its handshake and answers its
    request before it exits, as it does a request in flight: asyncio hands lb the
    connection only once the handshake is done, and a worker that left at once closed it
    under the client (an EOF in the client's handshake, or after its Finished)."""
    old_workers = tls_lb.worker_pids()
    client = HalfHandshake(tls_lb.port, client_context(ca))
    try:
        assert tls_lb.upgrade()["ok"]
        # The old worker without the connection has nothing to finish and exits; the other one,
        # had it not waited for the handshake, would be gone as soon.
        wait_for(lambda: sum(not gone(pid) for pid in old_workers) <= 1, 10, "an old worker to exit")
        time.sleep(0.2)
        answer = client.finish(b"GET / HTTP/1.1\r\nHost: lb.example\r\n\r\n")
    finally:
        client.close()
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200") and b"connection: close" in head, answer[:300]
    wait_for(lambda: all(gone(pid) for pid in old_workers), 10, "the old workers to exit")


def tls12_handshake(port: int, ca, ciphers: str) -> str:
    """The cipher a TLS 1.2 client offering only `ciphers` gets from lb (the test
    certificates are ECDSA), or raises ssl.SSLError when lb refuses them all."""
    context = client_context(ca, maximum=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="lb.example") as tls:
            return tls.cipher()[0]


def test_tls_1_2_offers_ecdhe_with_aead_only_by_default(tls_lb, ca):
    assert tls12_handshake(tls_lb.port, ca, "ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert tls12_handshake(tls_lb.port, ca, "ECDHE-ECDSA-CHACHA20-POLY1305") == "ECDHE-ECDSA-CHACHA20-POLY1305"
    for cbc in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"):
        with pytest.raises(ssl.SSLError):      # CBC (LUCKY13); Python's default list let the SHA-2 ones in
            tls12_handshake(tls_lb.port, ca, cbc)


def test_tls_ciphers_chooses_the_tls_1_2_list_and_a_bad_one_is_a_config_error(spawn, tmp_path, module_backends, ca):
    import subprocess
    import sys
    cert = write_cert(ca, tmp_path, "main", "lb.example")
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends],
               tls={"certs": [cert], "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"})
    assert tls12_handshake(lb.port, ca, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256") == \
        "ECDHE-ECDSA-AES256-GCM-SHA384"
    with pytest.raises(ssl.SSLError):
        tls12_handshake(lb.port, ca, "ECDHE-ECDSA-AES128-GCM-SHA256")
    lb.write_config(listen=[{"address": f"127.0.0.1:{free_port()}", "tls": {"certs": [cert], "ciphers": "NOPE"}}])
    done = subprocess.run([sys.executable, "-m", "lb.cli", "check", "-c", str(lb.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "listen[0].tls.ciphers: OpenSSL can choose no cipher from 'NOPE'" in done.stderr, \
        done.stderr


HSTS = "max-age=63072000; includeSubDomains; preload"


@pytest.fixture
def doors_lb(spawn, tmp_path, module_backends, ca):
    """Three front doors on one lb: TLS with HSTS (`port`), TLS without (`bare_port`) and plain
    HTTP with h2c (`plain_port`)."""
    cert = write_cert(ca, tmp_path, "main", "lb.example", "127.0.0.1")
    bare, plain = free_port(), free_port()
    lb = spawn(Lb, tmp_path, [b.config() for b in module_backends],
               tls={"certs": [cert], "hsts": {"max_age": "2y", "include_subdomains": True, "preload": True}},
               listen=[{"address": f"127.0.0.1:{bare}", "tls": {"certs": [cert]}},
                       {"address": f"127.0.0.1:{plain}", "http2": True}])
    wait_for(lambda: port_open(bare) and port_open(plain), 10, "the other listeners")
    lb.bare_port, lb.plain_port = bare, plain
    return lb


def http1(port: int, context: ssl.SSLContext | None, request: bytes = b"GET / HTTP/1.1\r\nHost: lb.example\r\n\r\n"):
    """One HTTP/1.1 exchange on a new connection (TLS when `context` is given)."""
    with RawClient(port, tls=context, server_hostname="lb.example") as client:
        client.send(request)
        return client.response()


def http2(port: int, context: ssl.SSLContext | None, **request) -> tuple[int, list]:
    """One HTTP/2 stream on a new connection (h2c when `context` is None): status and header fields."""
    client = H2Client(port, context)
    try:
        sid = client.request("/", **request)
        client.wait([sid])
        return client.status(sid), client.responses[sid]["headers"]
    finally:
        client.close()


def field(fields: list, name: bytes) -> list[bytes]:
    return [value for key, value in fields if key == name]


def test_the_pin_cookie_is_secure_over_https_and_not_over_plain_http(doors_lb, ca):
    for port in (doors_lb.port, doors_lb.bare_port):
        [cookie] = http1(port, client_context(ca)).headers.get_all("Set-Cookie")
        assert cookie.startswith("lb_version=") and cookie.endswith("; Secure"), cookie
        _, fields = http2(port, client_context(ca))
        [cookie] = field(fields, b"set-cookie")
        assert cookie.startswith(b"lb_version=") and cookie.endswith(b"; Secure"), cookie
    [cookie] = http1(doors_lb.plain_port, None).headers.get_all("Set-Cookie")
    assert cookie.startswith("lb_version=") and "Secure" not in cookie, cookie
    _, fields = http2(doors_lb.plain_port, None)
    [cookie] = field(fields, b"set-cookie")
    assert cookie.startswith(b"lb_version=") and b"Secure" not in cookie, cookie


def test_hsts_on_every_response_of_the_listener_that_sets_it_and_no_other(doors_lb, ca):
    bad_request = b"GET / HTTP/1.1\r\nHost: lb.example\r\nContent-Length: x\r\n\r\n"
    connect = [(b":method", b"CONNECT"), (b":authority", b"lb.example:443")]
    for port, context, sts in ((doors_lb.port, client_context(ca), HSTS), (doors_lb.bare_port, client_context(ca), None),
                               (doors_lb.plain_port, None, None)):
        served, refused = http1(port, context), http1(port, context, bad_request)     # lb's own answer: 400
        assert (served.status, refused.status) == (200, 400)
        assert served.getheader("Strict-Transport-Security") == refused.getheader("Strict-Transport-Security") == sts
        (status, fields), (error_status, error_fields) = http2(port, context), http2(port, context, fields=connect)
        assert (status, error_status) == (200, 405)
        expected = [sts.encode()] if sts else []
        assert field(fields, b"strict-transport-security") == field(error_fields, b"strict-transport-security") == expected
