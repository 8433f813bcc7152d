"""Drain and the admin socket end to end: a real lb, real backends, the real socket."""

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import aiohttp
import pytest

from conftest import ROOT, Backend, Lb, RawClient, free_port, get, steady_load, wait_for, wait_for_requests


async def ctl(lb, line, timeout_s=30.0):
    return await asyncio.to_thread(lb.ctl, line, timeout_s)


async def test_drain_update_ready_under_load_fails_nothing(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2, 3)]
    # Two workers: after the drain's reply neither sends web3 a new request.
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], health={"interval": "200ms"},
               slow_start="0s", workers=2)
    async with steady_load(lb, 6) as load:
        await wait_for_requests(load, 100)
        assert (await ctl(lb, "drain web3"))["ok"]
        drained_at = time.monotonic()
        waited = await ctl(lb, "wait web3 drained 10")
        assert waited["ok"] and waited["server"]["state"] == "drained"
        backends[2].stop()                                   # the update: stop...
        await wait_for_requests(load, len(load.records) + 100)
        web3 = spawn(Backend, "web3", port=backends[2].port)  # ...and start again
        ready_at = time.monotonic()
        assert (await ctl(lb, "ready web3"))["ok"]
        assert (await ctl(lb, "wait web3 up 10"))["ok"]       # checked before it gets traffic
        await wait_for_requests(load, len(load.records) + 300)
    assert load.failures == []
    during = [r for r in load.records if drained_at < r.sent < ready_at]
    assert len(during) > 100 and all(r.node != "web3" for r in during)
    assert any(r.node == "web3" for r in load.records if r.sent > ready_at)
    assert web3.proc.poll() is None


def test_request_in_flight_on_a_drained_node_completes(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends])
    result = {}
    thread = threading.Thread(target=lambda: result.update(resp=get(lb.port, "/slow?ms=1500")))
    thread.start()
    busy = wait_for(lambda: next((s["name"] for s in lb.ctl("show servers")["servers"]
                                  if s["inflight"] == 1), None), 5, "the request to be in flight")
    drain = lb.ctl(f"drain {busy}")
    assert drain["ok"] and drain["server"]["state"] == "draining"
    waited = lb.ctl(f"wait {busy} drained 10")
    thread.join(10)
    assert result["resp"].status == 200 and json.loads(result["resp"].body)["node"] == busy
    # It had to wait for the 1.5 s request (seen in flight within a poll or two).
    assert waited["ok"] and 0.2 < waited["waited_s"] < 5 and waited["server"]["inflight"] == 0


async def test_websocket_on_a_draining_node_gets_1001_at_the_deadline(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], drain={"timeout": "1s"})
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{lb.url}/ws") as short, \
                session.ws_connect(f"{lb.url}/ws") as long:
            assert lb.server("web1")["tunnels"] == 2
            assert (await ctl(lb, "drain web1"))["ok"]
            await short.send_str("still served while draining")
            assert (await asyncio.wait_for(short.receive(), 5)).data == "still served while draining"
            await short.close()                                   # ends before the deadline
            assert short.close_code == 1000
            await asyncio.to_thread(wait_for, lambda: lb.server("web1")["tunnels"] == 1, 0.8,
                                    "the short tunnel to close")
            started = time.monotonic()
            msg = await asyncio.wait_for(long.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
            assert 0.3 < time.monotonic() - started < 3
    waited = await ctl(lb, "wait web1 drained 5")
    assert waited["ok"] and waited["server"]["tunnels"] == 0, waited
    assert (await ctl(lb, "show stats"))["stats"]["totals"]["failed"] == {"drain_deadline": 1}


def test_a_websocket_client_busy_at_the_deadline_gets_a_clean_close_not_a_reset(spawn, tmp_path):
    """At the drain deadline lb sends close 1001 and half-closes; a client that was not
    reading and sends one more frame still reads the close frame and a clean end."""
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], drain={"timeout": "500ms"})
    with RawClient(lb.port) as client:
        client.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert client.head_lines()[0].startswith(b"HTTP/1.1 101")
        assert lb.ctl("drain web1")["ok"]
        wait_for(lambda: lb.server("web1")["state"] == "drained", 5, "the drain deadline")
        mask = b"\x01\x02\x03\x04"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"late"))
        # A text frame sent after the deadline, unread by the client: lb must read and drop it,
        # not close with it unread (that is a reset). It reaches lb before the close reply
        # below (one TCP stream), and lb closes only after that reply or 2 s.
        client.send(b"\x81\x84" + mask + payload)
        assert client._file.read(4) == b"\x88\x02\x03\xe9"  # close, 1001
        client.send(b"\x88\x82" + mask + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe9")))
        assert client.closed_by_peer()
        client.sock.settimeout(5)
        assert client.sock.recv(1) == b""                    # a clean end, not ECONNRESET


def test_a_drained_node_stays_drained_across_a_restart(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (4, 5)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends])
    assert lb.ctl("drain web5")["ok"] and lb.ctl("set weight web4 50")["ok"]
    lb.restart()
    assert lb.server("web5")["state"] == "drained"
    assert lb.server("web4")["weight"] == 50
    nodes = {json.loads(get(lb.port, "/").body)["node"] for _ in range(20)}
    assert nodes == {"web4"}


async def test_reload_adds_removes_and_changes_backends_without_failing_requests(spawn, tmp_path):
    web1, web2, web3, web4 = (spawn(Backend, f"web{i}") for i in (1, 2, 3, 4))
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config(), web3.config(weight=100)])
    assert lb.ctl("drain web1")["ok"]                      # a runtime state a reload must keep
    async with steady_load(lb, 4) as load:
        await wait_for_requests(load, 50)
        lb.write_config(backends=[web1.config(), web3.config(weight=300), web4.config()])
        reply = await ctl(lb, "reload")
        assert reply["ok"], reply
        await wait_for_requests(load, len(load.records) + 100)
    assert load.failures == []
    changed = "\n".join(reply["changed"])
    assert "added web4" in changed and "removed web2" in changed and "web3: weight 100 -> 300" in changed
    servers = {s["name"]: s for s in lb.ctl("show servers")["servers"]}
    assert servers["web1"]["state"] == "drained"           # not silently re-enabled
    assert servers["web4"]["state"] == "maint"             # new backends join in maint
    assert "web2" not in servers and servers["web3"]["weight"] == 300


def test_a_bad_config_is_refused_by_reload_and_the_running_one_stays(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    lb.write_config(backends=[{"name": "web1", "address": "9001"}])
    reply = lb.ctl("reload")
    assert not reply["ok"] and "backends[0].address: expected HOST:PORT, got '9001'" in reply["error"]
    assert get(lb.port, "/").status == 200


def test_sighup_reloads(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config()])
    lb.write_config(backends=[web1.config(), web2.config()])
    lb.signal(signal.SIGHUP)
    wait_for(lambda: any(s["name"] == "web2" for s in lb.ctl("show servers")["servers"]), 5,
             "web2 to join")
    assert lb.server("web2")["state"] == "maint" and lb.proc.poll() is None


@pytest.mark.parametrize("line, error", [
    (b"frobnicate\n", "unknown command 'frobnicate'"),
    (b"drain web11\n", "unknown server 'web11'; servers: web1"),
    (b"drain\n", "usage: drain NAME"),
    (b"wait web1 sleeping\n", "'wait' expects a state of drained, ready, maint, up"),
    (b"set weight web1 heavy\n", "'set weight' expects a whole number from 0 to 1000"),
    (b"del server web1\n", "'del server' expects a server in drained or maint"),
    (b"maint web1\xff\xfe\n", "not UTF-8 text"),
    (b"show stats web11\n", "unknown server 'web11'"),
    (b"add server evil $(touch${IFS}pwned):80\n", "address: expected HOST:PORT with HOST a host name or IP address"),
    (b"add server evil $(touch):80\n", "address: expected HOST:PORT with HOST a host name or IP address"),
    (b"add server evil -oProxyCommand=x:22\n", "address: expected HOST:PORT with HOST a host name or IP address"),
    (b"set version web1 v1\rSet-Cookie:x\n", "usage: set version NAME VERSION"),
    (b"set version web1 v1;x=1\n", "expected a version label"),
])
def test_bad_admin_commands_get_clear_errors(spawn, tmp_path, line, error):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(lb.socket_path))
        sock.sendall(line + b"show server web1\n")         # the connection goes on after an error
        reader = sock.makefile("rb")
        reply = json.loads(reader.readline())
        assert reply["ok"] is False and reply["error"].startswith(error), reply
        assert json.loads(reader.readline())["server"]["state"] == "ready"
    assert get(lb.port, "/").status == 200


def test_long_lines_garbage_and_half_lines_disturb_nothing(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(lb.socket_path))
        sock.sendall(b"drain " + b"x" * 10240 + b"\n")
        reply = json.loads(sock.makefile("rb").readline())
        assert not reply["ok"] and "longer than 4096 bytes" in reply["error"]
    with socket.socket(socket.AF_UNIX) as sock:              # half a command, then gone
        sock.connect(str(lb.socket_path))
        sock.sendall(b"drain web")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(lb.socket_path))
        sock.sendall(os.urandom(2000).replace(b"\n", b"") + b"\n")
        assert json.loads(sock.makefile("rb").readline())["ok"] is False
    assert lb.server("web1")["state"] == "ready"
    assert get(lb.port, "/").status == 200


def test_socket_mode_and_a_second_lb_refuses_the_same_socket(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    assert stat.S_IMODE(os.stat(lb.socket_path).st_mode) == 0o600
    second = tmp_path / "second.yaml"
    second.write_text(lb.config_path.read_text().replace(f"127.0.0.1:{lb.port}",
                                                         f"127.0.0.1:{free_port()}"))
    result = subprocess.run([sys.executable, "-m", "lb.cli", "serve", "-c", str(second)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert f"another lb is listening on the admin socket {lb.socket_path}" in result.stderr
    assert lb.ctl("help")["ok"]                                # the first one is untouched


def test_stale_socket_file_is_replaced(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])
    lb.signal(signal.SIGKILL)                                  # a crash leaves the file behind
    lb.proc.wait(5)
    assert lb.socket_path.exists()
    lb._start()
    assert lb.ctl("help")["ok"]


def test_lb_ctl_exit_codes(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()])

    def run(*words, sock=str(lb.socket_path)):
        return subprocess.run([sys.executable, "-m", "lb.cli", "ctl", "-s", sock, *words],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)

    ok = run("show", "servers")
    assert ok.returncode == 0 and json.loads(ok.stdout)["servers"][0]["name"] == "web1"
    bad = run("drain", "nope")
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False
    gone = run("help", sock=str(tmp_path / "nothing.sock"))
    assert gone.returncode == 2 and "nothing.sock" in gone.stderr
    helped = json.loads(run("help").stdout)["commands"]
    assert any(line.startswith("wait NAME STATE [TIMEOUT]") for line in helped)


def test_add_and_del_server(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2", version="v2")
    lb = spawn(Lb, tmp_path, [web1.config()], health={"interval": "200ms"}, slow_start="0s")
    added = lb.ctl(f"add server web2 {web2.address} v2 100")
    assert added["ok"] and added["server"]["state"] == "maint"
    assert lb.ctl("ready web2")["ok"] and lb.ctl("wait web2 up 10")["ok"]
    assert {json.loads(get(lb.port, "/").body)["node"] for _ in range(20)} == {"web1", "web2"}
    versions = lb.ctl("show versions")["versions"]
    assert [(v["version"], v["nodes"], v["ready_capacity"]) for v in versions] == [("v1", 1, 100), ("v2", 1, 100)]
    assert not lb.ctl("del server web2")["ok"]               # still ready
    assert lb.ctl("drain web2")["ok"] and lb.ctl("wait web2 drained 5")["ok"]
    lb.restart()                                            # runtime-added servers survive too
    assert lb.server("web2")["state"] == "drained"
    assert lb.ctl("del server web2")["ok"]
    assert [s["name"] for s in lb.ctl("show servers")["servers"]] == ["web1"]


def _lb_connections_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote end is `port` (lb's side of them)."""
    count = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":
            count += 1
    return count


def test_drain_closes_idle_pooled_connections_at_once(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], balance="round_robin")
    for _ in range(10):
        assert get(lb.port, "/").status == 200
    assert _lb_connections_to(web2.port) >= 1                 # pooled, idle
    assert lb.ctl("drain web2")["ok"]
    wait_for(lambda: _lb_connections_to(web2.port) == 0, 2, "pooled connections to web2 to close")


def test_drain_deadline_cuts_a_request_that_never_answers(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], drain={"timeout": "500ms"})
    result = {}
    thread = threading.Thread(target=lambda: result.update(resp=get(lb.port, "/slow?ms=5000")))
    thread.start()
    wait_for(lambda: lb.server("web1")["inflight"] == 1, 5, "the request to be in flight")
    assert lb.ctl("drain web1")["ok"]
    waited = lb.ctl("wait web1 drained 5")
    thread.join(10)
    assert waited["ok"] and waited["cut"] == 1 and waited["waited_s"] < 2
    assert result["resp"].status == 503
    entry = wait_for(lambda: [e for e in lb.access_lines() if e["status"] == 503], 5, "the access line")[0]
    assert entry["error"] == "the backend was drained before it answered"


async def test_many_admin_clients_at_once_do_not_disturb_traffic(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends])

    async def client():
        reader, writer = await asyncio.open_unix_connection(str(lb.socket_path))
        replies = []
        for _ in range(5):
            writer.write(b"show servers\n")
            replies.append(json.loads(await reader.readline()))
        writer.close()
        return replies

    async with steady_load(lb, 4) as load:
        await wait_for_requests(load, 20)
        results = await asyncio.wait_for(asyncio.gather(*(client() for _ in range(60))), 30)
        await wait_for_requests(load, len(load.records) + 50)
    assert all(r["ok"] and len(r["servers"]) == 2 for replies in results for r in replies)
    assert load.failures == []
