"""The status page (issue 32) on the metrics listener, over real sockets: the first paint has
the tables filled in, /status.json what the script redraws from. In a real browser:
tests/e2e/test_status_browser.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from conftest import Backend, Lb, get, wait_for


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
    assert '<th scope="col">Out because</th>' in page and "<caption" in page and "<script>" in page
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
    assert "Deploy to v2" in fetch(lb, "/status")[2].decode()
    assert await deploy.finish() == 0
    wait_for(lambda: heard().get("result") == "done", 5, "the result on the page")
