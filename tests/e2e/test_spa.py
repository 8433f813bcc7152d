"""`lb backend --spa` as a real process: its page, its assets, another version's asset, its API;
and without --spa, the same paths answer the JSON they always did."""

import json

from conftest import Backend, RawClient, get
from lb.demo.spa import asset_body, asset_paths, match_asset, parse_page


def ask(client: RawClient, path: str, method: str = "GET"):
    client.send(f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return client.response(method)


def test_a_spa_backend_serves_its_page_and_assets_and_404s_another_versions(spawn):
    backend = spawn(Backend, "web1", "v1", args=("--spa", "--chunks", "3"))
    resp = get(backend.port, "/")
    assert (resp.status, resp.getheader("Content-Type"), resp.getheader("Cache-Control")) == \
        (200, "text/html; charset=utf-8", "no-cache")
    assert resp.getheader("X-Backend-Version") == "v1"
    version, assets = parse_page(resp.body)
    assert version == "v1" and assets == asset_paths("v1", 3)
    with RawClient(backend.port) as client:                  # as a browser: one keep-alive connection
        for path in assets:
            name = match_asset(path, "v1", 3)
            resp = ask(client, path)
            assert (resp.status, resp.getheader("Content-Type"), resp.getheader("Cache-Control")) == \
                (200, "application/javascript", "public, max-age=31536000, immutable"), path
            assert resp.getheader("ETag") == f'"{path.split(".")[-2]}"'
            assert resp.body == asset_body("v1", name, 4096) and len(resp.body) == 4096
        head = ask(client, assets[1], "HEAD")
        assert head.status == 200 and head.getheader("Content-Length") == "4096" and head.body == b""
        assert ask(client, asset_paths("v2", 3)[1]).status == 404   # the ChunkLoadError lb must prevent
        api = ask(client, "/api/x")
        assert api.status == 200 and api.getheader("Cache-Control") == "no-store"
        assert json.loads(api.body) == {"version": "v1", "node": "web1", "path": "/api/x"}
        health = ask(client, "/health")                       # every other path as before
        assert health.status == 200 and json.loads(health.body) == {"ok": True, "version": "v1"}
        assert health.getheader("X-Backend-Version") == "v1"


def test_without_spa_the_spa_paths_answer_json_as_before(spawn):
    backend = spawn(Backend, "web2", "v1")
    with RawClient(backend.port) as client:
        for path in ["/", "/index.html", asset_paths("v1", 1)[1], "/api/x"]:
            resp = ask(client, path)
            assert (resp.status, resp.getheader("Content-Type")) == (200, "application/json"), path
            assert json.loads(resp.body) == {"node": "web2", "version": "v1"}
