"""Skew protection with real processes: `lb backend --spa` nodes of two versions, lb with its
workers, requests as a browser's tabs make them (issue 28)."""

import os
import urllib.request

from conftest import Backend, Lb, get, wait_for
from lb.demo.spa import asset_paths, parse_page

CHUNKS = 3


def learned(lb: Lb, version: str, count: int, stored: bool = True) -> bool:
    """Whether the control plane's index holds `count` paths of `version` (with copies)."""
    rows = {row["version"]: row for row in lb.ctl("show assets")["assets"]}
    row = rows.get(version, {})
    return row.get("paths", 0) >= count and (not stored or row.get("stored", 0) >= count)


def open_tab(lb: Lb, cookie: str | None = None) -> tuple[str, list[str], str | None]:
    """A tab loads the page and its app asset: (page version, asset paths, cookie set)."""
    page = get(lb.port, "/", {"Cookie": cookie} if cookie else {})
    assert page.status == 200
    version, assets = parse_page(page.body)
    for path in assets:                       # the app and its chunks, loaded once: lb learns them
        assert get(lb.port, path, {"Cookie": cookie} if cookie else {}).status == 200
    return version, assets, page.getheader("Set-Cookie")


def test_a_v1_tab_keeps_its_chunks_and_api_across_a_move_its_version_s_end_an_upgrade_and_a_restart(
        spawn, tmp_path):
    web1 = spawn(Backend, "web1", "v1", args=("--spa", "--chunks", str(CHUNKS)))
    web2 = spawn(Backend, "web2", "v2", args=("--spa", "--chunks", str(CHUNKS)))
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config(weight=0)], health={"interval": "100ms", "rise": 1})
    version, assets, cookie = open_tab(lb)
    assert version == "v1" and cookie.startswith("lb_version=v1;")
    wait_for(lambda: learned(lb, "v1", len(assets)), 10, "lb to learn v1's assets")
    # v2 stands at weight 0: nobody may name it by default, not even from 127.0.0.1
    assert get(lb.port, "/api/x", {"X-Lb-Version": "v2"}).getheader("X-Backend-Version") == "v1"

    # Its user moves to v2 (a v2 tab in the same cookie jar): the v1 tab's late chunk still
    # comes from v1, and its API calls that name v1 go to v1; neither moves the cookie.
    assert lb.ctl("set weight web2 100")["ok"]
    wait_for(lambda: get(lb.port, "/api/x", {"Cookie": "lb_version=v2"}).getheader("X-Backend-Version") == "v2",
             10, "v2 in service")
    wait_for(lambda: get(lb.port, assets[-1], {"Cookie": "lb_version=v2"}).status == 200, 10,
             "the index to reach the workers")
    for _ in range(10):                           # each on a new connection: both workers route it
        chunk = get(lb.port, assets[-1], {"Cookie": "lb_version=v2"})
        assert (chunk.status, chunk.getheader("X-Backend-Version"), chunk.getheader("Set-Cookie")) == \
            (200, "v1", None)
    api = get(lb.port, "/api/x", {"Cookie": "lb_version=v2", "X-Lb-Version": "v1"})
    assert (api.status, api.getheader("X-Backend-Version"), api.getheader("Set-Cookie")) == (200, "v1", None)
    api = get(lb.port, "/api/x?dpl=v1", {"Cookie": "lb_version=v2"})
    assert api.getheader("X-Backend-Version") == "v1" and api.getheader("Set-Cookie") is None

    # v1's last node leaves: its chunk comes from lb's copy, a call naming v1 is told it is gone.
    assert lb.ctl("drain web1")["ok"] and lb.ctl("wait web1 drained 10s")["ok"]
    direct = get(web1.port, assets[-1]).body
    stored = get(lb.port, assets[-1], {"Cookie": "lb_version=v2"})
    assert (stored.status, stored.body, stored.getheader("Cache-Control")) == \
        (200, direct, "public, max-age=31536000, immutable")
    api = get(lb.port, "/api/x", {"Cookie": "lb_version=v2", "X-Lb-Version": "v1"})
    assert (api.getheader("X-Backend-Version"), api.getheader("X-Lb-Version-Gone")) == ("v2", "v1")
    assert get(lb.port, "/api/x", {"X-Lb-Version": "v9"}).getheader("X-Lb-Version-Gone") is None   # never a version
    web1.stop()                                  # no v1 process at all now
    rows = {row["version"]: row for row in lb.ctl("show assets")["assets"]}
    assert rows["v1"]["in_service"] is False and rows["v1"]["left_service_at"] is not None
    assert rows["v1"]["by_asset"] >= 10 and rows["v1"]["by_store"] >= 1 and rows["v1"]["by_gone"] == 1
    metrics = urllib.request.urlopen(f"http://{lb.config['metrics']['listen']}/metrics", timeout=10).read().decode()
    assert 'lb_skew_requests_total{how="store",version="v1"}' in metrics
    assert 'lb_skew_gone_total{version="v1"} 1.0' in metrics and "lb_skew_assets 4.0" in metrics

    assert lb.upgrade()["ok"]
    assert get(lb.port, assets[0]).body == get(lb.port, assets[0]).body != b""
    assert get(lb.port, assets[1]).status == 200
    lb.restart()
    for path in assets:
        assert get(lb.port, path).status == 200, path
    hows = [line["pin"]["how"] for line in lb.access_lines() if line.get("path", "").startswith("/assets/")
            and line.get("pin")]
    assert {"asset", "store"} <= set(hows)


def test_a_version_nobody_is_sent_to_is_reached_only_from_override_from(spawn, tmp_path):
    web1 = spawn(Backend, "web1", "v1")
    web2 = spawn(Backend, "web2", "v2")
    secret = "s3cret-for-the-canary-smoke-test"
    lb = spawn(Lb, tmp_path, [web1.config(), web2.config(weight=0)],
               skew={"override_from": ["10.0.0.0/8", {"header": "X-Lb-Override", "secret": secret}]})
    for _ in range(5):                            # 127.0.0.1 is not in override_from: ignored
        assert get(lb.port, "/", {"X-Lb-Version": "v2"}).getheader("X-Backend-Version") == "v1"
    canary = get(lb.port, "/", {"X-Lb-Version": "v2", "X-Lb-Override": secret})
    assert (canary.getheader("X-Backend-Version"), canary.getheader("Set-Cookie")) == ("v2", None)
    wrong = get(lb.port, "/", {"X-Lb-Version": "v2", "X-Lb-Override": secret[:-1] + "!"})
    assert wrong.getheader("X-Backend-Version") == "v1"


def test_the_store_stays_within_store_bytes(spawn, tmp_path):
    web1 = spawn(Backend, "web1", "v1", args=("--spa", "--chunks", "8", "--asset-bytes", "4096"))
    lb = spawn(Lb, tmp_path, [web1.config()], skew={"store_bytes": "12KiB"})
    paths = asset_paths("v1", 8)
    for path in paths:
        assert get(lb.port, path).status == 200
    wait_for(lambda: learned(lb, "v1", len(paths), stored=False), 10, "lb to learn every asset")
    store = lb.ctl("show assets")["store"]
    assert (store["stored_bytes"], store["copies"], store["full"]) == (12 * 1024, 3, True)
    files = lambda: [f for f in os.listdir(store["dir"]) if len(f) == 64]     # noqa: E731
    wait_for(lambda: len(files()) == 3, 10, "the refused copies' files to go")
    assert sum(os.path.getsize(os.path.join(store["dir"], f)) for f in files()) == 12 * 1024
    for path in paths:                            # the entries without a copy still route
        assert get(lb.port, path).status == 200
    assert len(files()) == 3
