"""The status page (issue 32) on the metrics listener, over real sockets: the first paint has
the tables filled in, /status.json what the script redraws from. In a real browser:
tests/e2e/test_status_browser.py."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import Backend, Lb, free_port, get, wait_for


def fetch(lb: Lb, path: str) -> tuple[int, str, bytes]:
    port = lb.config["metrics"]["listen"].rsplit(":", 1)[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def snapshot(lb: Lb) -> dict:
    status, ctype, body = fetch(lb, "/status.json")
    assert status == 200 and ctype == "application/json"
    return json.loads(body)


def test_the_page_is_served_with_its_tables_filled_in_and_the_json_follows_the_pool(spawn, tmp_path):
    webs = [spawn(Backend, f"web{i}") for i in range(1, 4)]
    lb = spawn(Lb, tmp_path, [web.config() for web in webs], workers=1, health={"interval": "100ms"})
    status, ctype, body = fetch(lb, "/status")
    page = body.decode()
    assert status == 200 and ctype == "text/html; charset=utf-8"
    assert page.count('<tr class="node"') == 3 and '<th scope="row" data-key="name">web2</th>' in page
    assert '<th scope="col">Out because</th>' in page and "<caption" in page
    assert fetch(lb, "/status.js")[:2] == (200, "text/javascript") and fetch(lb, "/status.css")[0] == 200
    for _ in range(30):
        assert get(lb.port, "/").status == 200
    assert lb.ctl("drain web2")["ok"]
    wait_for(lambda: {n["name"]: n["why_out"] for n in snapshot(lb)["nodes"]}["web2"]
             in ("draining by an operator", "drained by an operator"), 5, "web2 shown out, and why")
    # the chart: requests per second of v1, sampled each second
    for _ in range(20):
        get(lb.port, "/")
    wait_for(lambda: any(rate > 0 for rate in snapshot(lb)["chart"]["versions"].get("v1", [])), 10,
             "a v1 rate in the chart")
    row = next(v for v in snapshot(lb)["versions"] if v["version"] == "v1")
    assert (row["nodes"], row["ready"]) == (3, 2)
    assert fetch(lb, "/nothing")[0] == 404 and b"/status" in fetch(lb, "/nothing")[2]


@pytest.mark.parametrize("path", ["/status", "/status.json"])
def test_the_page_is_off_with_status_disabled(spawn, tmp_path, path):
    lb = spawn(Lb, tmp_path, [spawn(Backend, "web1").config()], workers=1, status={"enabled": False})
    assert fetch(lb, path)[0] == 404
    assert fetch(lb, "/metrics")[0] == 200


async def test_a_deploy_in_progress_shows_on_the_page_and_its_result_after(spawn, detached_backends, tmp_path):
    from test_deploy import FAST, Deploy

    backends = detached_backends(3)
    lb = spawn(Lb, tmp_path, backends.configs(), workers=1, **FAST)
    deploy = await Deploy(lb, "--to", "v2", "--update", backends.update_command(), "--canary", "1", "--batch", "2",
                          "--bake", "1s", "--canary-bake", "3s", "--min-ready", "60%", "--min-requests", "0").start()
    await deploy.wait_event(lambda e: e["event"] == "bake" and e.get("canary"))

    def heard() -> dict:
        shown = snapshot(lb)["deploy"]
        return shown["note"] if shown else {}
    wait_for(lambda: heard().get("phase") == "baking" and heard().get("bake_until"), 5, "the canary's bake on the page")
    note = heard()
    assert note["to"] == "v2" and note["batch"]["canary"] and note["batch"]["nodes"] == ["web1"]
    assert note["plan"] == [["web1"], ["web2"], ["web3"]]           # --min-ready 60%: one at a time
    assert "; plan: web1 | web2 | web3 (0 of 3 nodes done)" in fetch(lb, "/status")[2].decode()
    assert await deploy.finish() == 0
    wait_for(lambda: heard().get("result") == "done", 5, "the result on the page")


# -- status.token_file and status.actions --------------------------------------------------------

TOKEN = "0123456789abcdef0123456789abcdef"


def guarded_lb(spawn, tmp_path, actions: bool = True) -> Lb:
    token_file = tmp_path / "status.token"
    token_file.write_text(TOKEN + "\n")
    webs = [spawn(Backend, "web1"), spawn(Backend, "web2")]
    return spawn(Lb, tmp_path, [web.config() for web in webs], workers=1,
                 status={"token_file": str(token_file), "actions": actions})


def call(lb: Lb, method: str, path: str, body: bytes | None = None, password: str | None = TOKEN,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    import base64
    port = lb.config["metrics"]["listen"].rsplit(":", 1)[1]
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if password is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"ops:{password}".encode()).decode())
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def csrf_of(lb: Lb) -> str:
    page = call(lb, "GET", "/status")[2].decode()
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def form(**fields: str) -> bytes:
    return urllib.parse.urlencode(fields).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_with_a_token_every_status_path_asks_for_it_and_metrics_stays_open(spawn, tmp_path):
    lb = guarded_lb(spawn, tmp_path, actions=False)
    for path in ("/status", "/status.json", "/status.js"):
        code, headers, _ = call(lb, "GET", path, password=None)
        assert code == 401 and headers["WWW-Authenticate"].startswith('Basic realm="lb status"')
        assert call(lb, "GET", path, password="wrong" * 8)[0] == 401
        assert call(lb, "GET", path)[0] == 200
    assert call(lb, "GET", "/metrics", password=None)[0] == 200
    code, headers, page = call(lb, "GET", "/status")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and b"<form" not in page
    assert call(lb, "POST", "/status/action", form(action="drain", name="web1"), **FORM)[0] == 404


def test_an_action_needs_the_pages_csrf_value_and_its_own_origin(spawn, tmp_path):
    lb = guarded_lb(spawn, tmp_path)
    csrf = csrf_of(lb)
    port = lb.config["metrics"]["listen"].rsplit(":", 1)[1]
    refused = [
        call(lb, "POST", "/status/action", form(action="drain", name="web1"), **FORM),                  # no csrf
        call(lb, "POST", "/status/action", form(action="drain", name="web1", csrf="x" * 32), **FORM),
        call(lb, "POST", "/status/action", form(action="drain", name="web1", csrf=csrf), password=None, **FORM),
        call(lb, "POST", "/status/action", form(action="drain", name="web1", csrf=csrf), Origin="http://evil.test",
             **FORM),
        call(lb, "POST", "/status/action", form(action="drain", name="web1", csrf=csrf),
             Content_Type="text/plain"),
        call(lb, "POST", "/status/action", form(action="shutdown", name="web1", csrf=csrf), **FORM),
        call(lb, "POST", "/status/action", form(action="drain", name="web1 web2", csrf=csrf), **FORM),
        call(lb, "POST", "/status/action", b"x" * 5000, **FORM),
    ]
    assert [code for code, _, _ in refused] == [403, 403, 401, 403, 415, 400, 400, 413], refused
    assert lb.server("web1")["state"] == "ready"
    code, headers, _ = call(lb, "POST", "/status/action", form(action="drain", name="web1", csrf=csrf),
                            Origin=f"http://127.0.0.1:{port}", **FORM)
    assert code == 303 and headers["Location"] == "/status"
    assert lb.server("web1")["state"] in ("draining", "drained")
    code, _, body = call(lb, "POST", "/status/action", form(action="weight", name="web2", weight="7", csrf=csrf),
                         Accept="application/json", **FORM)
    assert code == 200 and json.loads(body)["server"]["weight"] == 7
    code, _, body = call(lb, "POST", "/status/action", form(action="ready", name="nosuch", csrf=csrf),
                         Accept="application/json", **FORM)
    assert code == 409 and "unknown server 'nosuch'" in json.loads(body)["error"]
    audit = lb.stderr_path.read_text()
    assert "status page 127.0.0.1" in audit and "set weight web2 7" in audit


def raw(lb: Lb, data: bytes, timeout_s: float = 10) -> bytes:
    """What the metrics listener answers to `data` sent as is, until it closes (or timeout_s)."""
    import socket
    host, port = lb.config["metrics"]["listen"].rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def test_odd_input_gets_a_clear_answer_and_the_page_stays_up(spawn, tmp_path):
    lb = guarded_lb(spawn, tmp_path)
    auth = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    # a length that str.isdigit() takes but int() does not ("²" in Latin-1)
    answer = raw(lb, f"POST /status/action HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Type: "
                     f"application/x-www-form-urlencoded\r\nContent-Length: ".encode() + b"\xb2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    # a deploy's note of another shape is refused on the admin socket; the page is unharmed
    for note in ('{"batch":{"nodes":5}}', '{"to":"<!--<script>","steps":{"web1":3}}'):
        reply = lb.ctl("note deploy " + note)
        assert not reply["ok"] and "expects a deploy's JSON object" in reply["error"], reply
    assert lb.ctl('note deploy {"to":"<!--<script>","phase":"odd\\u0020but\\u0020fine"}')["ok"]
    code, _, page = call(lb, "GET", "/status")
    assert code == 200 and "Deploy to &lt;!--&lt;script&gt; (?): odd but fine" in page.decode()
    assert "<!--<script>" not in page.decode()
    assert "Traceback" not in lb.stderr_path.read_text()


def test_the_metrics_listener_takes_a_bounded_number_of_connections(spawn, tmp_path):
    import socket

    from lb.control.metrics import MAX_CLIENTS
    lb = spawn(Lb, tmp_path, [spawn(Backend, "web1").config()], workers=1)
    host, port = lb.config["metrics"]["listen"].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_CLIENTS)]
    try:
        # each holds a place until its 10 s for a head run out; the next one is turned away
        wait_for(lambda: raw(lb, b"", timeout_s=1).startswith(b"HTTP/1.1 503 "), 10, "a 503 past the bound")
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: raw(lb, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 "), 5,
             "the places given back")
    assert get(lb.port, "/").status == 200


@pytest.mark.parametrize("status, said", [
    ({"actions": True}, "status.actions: true needs status.token_file"),
    ({"token_file": "/nonexistent/token"}, "status.token_file: cannot read /nonexistent/token"),
])
def test_a_bad_status_section_is_refused_at_start(tmp_path, status, said):
    import subprocess
    import sys

    import yaml
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump({"backends": [{"name": "web1", "address": "127.0.0.1:9"}],
                                    "admin": {"socket": str(tmp_path / "lb.sock")}, "status": status,
                                    "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                                    "listen": f"127.0.0.1:{free_port()}", "state_file": str(tmp_path / "lb.state")}))
    result = subprocess.run([sys.executable, "-m", "lb.cli", "serve", "-c", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and said in result.stderr, result.stderr
