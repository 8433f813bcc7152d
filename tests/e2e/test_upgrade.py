"""The hitless upgrade of lb itself (`upgrade`, SIGUSR2): a new master takes the listening
sockets and the state, the old workers finish what they carry, no request fails."""

import asyncio
import json
import signal
import socket
import subprocess

import aiohttp

from conftest import PYTHON, ROOT, Backend, Lb, children, get, gone, wait_for, wait_for_requests
from lb.demo.users import Users


def old_processes_gone(masters: list[int], workers: list[int]) -> bool:
    return all(gone(pid) for pid in masters + workers)


async def test_three_upgrades_in_a_row_under_load_fail_nothing(spawn, tmp_path):
    backends = [spawn(Backend, f"web{i}") for i in (1, 2, 3, 4)]
    lb = spawn(Lb, tmp_path, [b.config() for b in backends], workers=2, access_log="off")
    keep_alive = Users("127.0.0.1", lb.port, slots=8, life=(20, 60), think_s=0.005)
    one_shot = Users("127.0.0.1", lb.port, slots=3, life=(1, 1), think_s=0.0)   # a new connection each
    async with keep_alive, one_shot:
        await wait_for_requests(keep_alive, 300)
        masters, workers = [], []
        for _ in range(3):
            masters.append(lb.master_pid)
            workers += lb.worker_pids()
            reply = await asyncio.to_thread(lb.upgrade)
            assert reply["ok"], reply
            assert reply["upgrade"]["old_pid"] == masters[-1] and len(reply["upgrade"]["workers"]) == 2
            await wait_for_requests(keep_alive, len(keep_alive.records) + 200)
        await wait_for_requests(one_shot, 100)
        assert await asyncio.to_thread(wait_for, lambda: old_processes_gone(masters, workers), 20,
                                       "every old master and worker to exit")
        await wait_for_requests(keep_alive, len(keep_alive.records) + 100)
    assert keep_alive.failures == [] and one_shot.failures == []
    assert keep_alive.backward_flips(["v1"]) == []
    info = lb.ctl("show info")
    assert info["upgrades"] == 3 and info["old_master"] is None and info["pid"] == lb.master_pid
    # Every request counted once, whichever generation of workers served it: the old ones'
    # reports reach the new master through their own.
    served = keep_alive.requests + one_shot.requests
    assert lb.ctl("show stats")["stats"]["totals"]["requests"] == served


def test_an_upgrade_to_a_broken_config_leaves_the_old_master_serving(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], workers=2)
    assert lb.ctl("drain web2")["ok"]
    workers = lb.worker_pids()
    lb.write_config(retries="many")
    result = subprocess.run([PYTHON, "-m", "lb.cli", "ctl", "-s", str(lb.socket_path), "upgrade"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    reply = json.loads(result.stdout)
    assert result.returncode == 1 and not reply["ok"]
    assert f"serves on as before: the new master exited with code 2: lb: {lb.config_path}: retries: " \
           "expected an integer from 0 to 10, got 'many'" in reply["error"]
    info = lb.ctl("show info")
    assert info["pid"] == lb.proc.pid and info["upgrades"] == 0 and lb.worker_pids() == workers
    assert lb.server("web2")["state"] in ("draining", "drained")     # the state is untouched
    assert all(get(lb.port, "/").status == 200 for _ in range(5))
    assert lb.ctl("ready web2")["ok"]                                # and the control plane runs on
    wait_for(lambda: lb.server("web2")["health"] == "up", 10, "web2 checked up again")


def test_an_upgrade_that_cannot_bind_a_new_listener_is_refused_with_the_reason(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lb.write_config(listen=[f"127.0.0.1:{lb.port}", f"127.0.0.1:{port}"])
        reply = lb.upgrade()
    assert not reply["ok"] and "cannot listen: Address already in use" in reply["error"], reply
    assert lb.ctl("show info")["pid"] == lb.proc.pid and get(lb.port, "/").status == 200


async def test_a_request_in_flight_on_the_old_workers_holds_a_drain_made_after_the_upgrade(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], workers=1, balance="round_robin")
    assert lb.ctl("drain web2")["ok"]                         # the slow request goes to web1
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{lb.url}/slow?ms=2500"))
        await asyncio.to_thread(wait_for, lambda: lb.server("web1")["inflight"] == 1, 5, "the slow request")
        assert (await asyncio.to_thread(lb.upgrade))["ok"]
        assert lb.ctl("ready web2")["ok"] and lb.ctl("drain web1")["ok"]
        # The new master's workers carry nothing on web1; the old one's do: not drained yet.
        assert lb.server("web1")["state"] == "draining" and lb.server("web1")["inflight"] == 1
        waited = await asyncio.to_thread(lb.ctl, "wait web1 drained 10")
        response = await slow
        assert response.status == 200 and (await response.json())["node"] == "web1"
        response.release()
    assert waited["ok"] and waited["server"]["inflight"] == 0 and waited["cut"] == 0


async def test_a_websocket_across_an_upgrade_works_until_the_drain_timeout_then_gets_1001(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=1, drain={"timeout": "3s", "client_grace": "1s"})
    old_master = lb.master_pid
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{lb.url}/ws") as ws:
            await ws.send_str("before")
            assert (await ws.receive(timeout=5)).data == "before"
            assert (await asyncio.to_thread(lb.upgrade))["ok"]
            await ws.send_str("after")
            assert (await ws.receive(timeout=5)).data == "after"
            assert not gone(old_master)                     # it waits for the tunnel
            msg = await ws.receive(timeout=10)              # the old worker's drain.timeout
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        async with session.get(lb.url) as response:         # the new master serves on
            assert response.status == 200
    await asyncio.to_thread(wait_for, lambda: gone(old_master), 10, "the old master to exit")
    counts = lb.ctl("show stats")["stats"]["totals"]["failed"]
    assert counts.get("drain_deadline") == 1


def test_an_idle_keep_alive_connection_is_closed_after_client_grace_and_a_busy_one_gets_connection_close(
        spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=1, drain={"timeout": "10s", "client_grace": "1s"})
    idle = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
    for sock in (idle, busy):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in sock.recv(65536)
    old_master = lb.master_pid
    assert lb.upgrade()["ok"]
    busy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")     # served by the old worker, then closed
    answer = b""
    while chunk := busy.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close\r\n" in answer.lower()
    assert idle.recv(10) == b""                             # closed after client_grace
    wait_for(lambda: gone(old_master), 5, "the old master to exit")
    idle.close()
    busy.close()


def test_sigusr2_upgrades_and_the_admin_socket_answers_throughout(spawn, tmp_path):
    web = spawn(Backend, "web1")
    lb = spawn(Lb, tmp_path, [web.config()], workers=1)
    old_master = lb.master_pid
    old_workers = lb.worker_pids()
    lb.signal(signal.SIGUSR2)
    answers = []
    new = wait_for(lambda: answers.append(lb.ctl("show info")) or answers[-1]["pid"] != old_master
                   and answers[-1]["pid"], 20, "a new master")
    lb.master_pid = new
    assert all(a["ok"] for a in answers)                   # every command answered, by one or the other
    wait_for(lambda: old_processes_gone([old_master], old_workers), 10, "the old master and worker to exit")
    assert lb.ctl("show info")["upgrades"] == 1 and len(children(new)) == 1
    assert "upgrade: pid %d serves" % new in lb.stderr_path.read_text()


async def test_a_wait_in_progress_at_the_upgrade_is_answered_by_the_new_master(spawn, tmp_path):
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], workers=2, balance="round_robin")
    assert lb.ctl("drain web2")["ok"]
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{lb.url}/slow?ms=3000"))
        await asyncio.to_thread(wait_for, lambda: lb.server("web1")["inflight"] == 1, 5, "the slow request")
        assert lb.ctl("ready web2")["ok"] and lb.ctl("drain web1")["ok"]
        # Sent to the old master before the upgrade: it waits there (or, if the old master has
        # not read it yet when it freezes, it is relayed). Either way the new master answers it.
        admin = socket.socket(socket.AF_UNIX)
        admin.connect(str(lb.socket_path))
        admin.sendall(b"wait web1 drained 20\n")
        assert (await asyncio.to_thread(lb.upgrade))["ok"]
        response = await slow
        assert response.status == 200
        response.release()
        admin.settimeout(20)
        waited = json.loads(await asyncio.to_thread(admin.makefile("rb").readline))
        admin.close()
    assert waited["ok"] and waited["server"]["state"] == "drained" and waited["cut"] == 0, waited


async def test_a_chain_of_upgrades_counts_the_oldest_workers_requests_at_the_newest_master(spawn, tmp_path):
    """A upgraded to B while A's worker still carries a request, then B to C: C hears of A's
    request through B (old masters nest), so a drain at C waits for it."""
    web1, web2 = spawn(Backend, "web1"), spawn(Backend, "web2")
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config()], workers=1)
    assert lb.ctl("drain web2")["ok"]                            # the slow request goes to web1
    first = lb.master_pid
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(session.get(f"{lb.url}/slow?ms=4000"))
        await asyncio.to_thread(wait_for, lambda: lb.server("web1")["inflight"] == 1, 5, "the slow request")
        assert (await asyncio.to_thread(lb.upgrade))["ok"]      # A -> B; A finishes the request
        second = lb.master_pid
        assert (await asyncio.to_thread(lb.upgrade))["ok"]      # B -> C while A still runs
        assert not gone(first) and lb.ctl("show info")["old_master"] == {"pid": second}
        assert lb.ctl("ready web2")["ok"] and lb.ctl("drain web1")["ok"]
        assert lb.server("web1")["inflight"] == 1                # A's request, counted at C
        waited = await asyncio.to_thread(lb.ctl, "wait web1 drained 20")
        response = await slow
        assert response.status == 200
        response.release()
    assert waited["ok"] and waited["cut"] == 0 and waited["waited_s"] > 1
    await asyncio.to_thread(wait_for, lambda: gone(first) and gone(second), 15, "both old masters to exit")


def test_the_pidfile_names_the_serving_master_across_an_upgrade_and_goes_at_a_clean_stop(spawn, tmp_path):
    web = spawn(Backend, "web1")
    # Started as an operator starts it, with a relative --pidfile: the new master works in /.
    lb = spawn(Lb, tmp_path, [web.config()], workers=1, cwd=tmp_path, serve_args=("--pidfile", "lb.pid"))
    pidfile = tmp_path / "lb.pid"

    def named() -> int | None:
        try:
            return int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None

    first = lb.master_pid
    wait_for(lambda: named() == first, 5, "the pid file to name the master")
    assert lb.upgrade()["ok"]
    wait_for(lambda: named() == lb.master_pid != first, 10, "the new master to write its pid")
    wait_for(lambda: gone(first), 10, "the old master to exit")
    assert named() == lb.master_pid                       # the old master left it to its successor
    assert lb.stop() == 0
    assert not pidfile.exists()
