"""lb/demo/spa.py: the single-page app's names, page, assets and routes, from tables."""

import hashlib
import json

import pytest

from lb import cli
from lb.demo.spa import IMMUTABLE, Site, asset_body, asset_hash, asset_paths, match_asset, page, parse_page

V1_APP = "/assets/app.83127b0b7af5.js"      # pinned: a simulated browser's cache outlives a release of lb


@pytest.mark.parametrize("version, name, expected", [
    ("v1", "app", "83127b0b7af5"),
    ("v1", "chunk-0", "edc9f159717e"),
    ("v2", "app", hashlib.sha256(b"v2:app").hexdigest()[:12]),
    ("2024.06.1", "chunk-3", hashlib.sha256(b"2024.06.1:chunk-3").hexdigest()[:12]),
])
def test_asset_hash_is_the_first_12_hex_of_sha256_of_version_and_name(version, name, expected):
    assert asset_hash(version, name) == expected


@pytest.mark.parametrize("version, chunks, names", [
    ("v1", 0, ["app"]),
    ("v1", 1, ["app", "chunk-0"]),
    ("v2", 3, ["app", "chunk-0", "chunk-1", "chunk-2"]),
])
def test_asset_paths_name_the_app_first_then_each_chunk_with_its_hash(version, chunks, names):
    assert asset_paths(version, chunks) == [f"/assets/{n}.{asset_hash(version, n)}.js" for n in names]


def test_two_versions_share_no_asset_path():
    assert asset_paths("v1", 8)[0] == V1_APP
    assert not set(asset_paths("v1", 8)) & set(asset_paths("v2", 8))


@pytest.mark.parametrize("version, node, chunks", [
    ("v1", "web1", 4),
    ("v2", "127.0.0.1:9001", 0),
    ("v3", "web3", 50),
    ('v"<&>\'', "a&b<c>", 2),                 # escaped in the page, given back as it was
])
def test_parse_page_gives_back_the_version_and_assets_page_names(version, node, chunks):
    assert parse_page(page(version, node, chunks)) == (version, asset_paths(version, chunks))


def test_the_page_has_the_tags_a_browser_needs():
    text = page("v1", "web1", 2).decode()
    assert text.startswith("<!doctype html>") and "<p>version v1 on node web1</p>" in text
    assert '<meta name="lb-version" content="v1">' in text
    assert f'<script src="{V1_APP}" defer></script>' in text
    assert ('<script type="application/json" id="lb-chunks">' + json.dumps(asset_paths("v1", 2)[1:])
            + "</script>") in text
    assert '"X-Lb-Version": version' in text and "/api/version" in text
    assert "<p>version v&lt;1&gt; on node a&amp;b</p>" in page("v<1>", "a&b", 1).decode()


VALID = page("v1", "web1", 2)


@pytest.mark.parametrize("document", [
    b"",
    b'{"node": "web1", "version": "v1"}',                          # what `/` answers without --spa
    VALID.replace(b'name="lb-version"', b'name="version"'),
    VALID.replace(b"defer></script>", b"></script>"),
    VALID.replace(b'id="lb-chunks">[', b'id="lb-chunks">{'),       # not JSON
    VALID.replace(b'id="lb-chunks">[', b'id="lb-chunks">{"a": [').replace(b'.js"]</script>', b'.js"]}</script>'),
    VALID.replace(b'id="lb-chunks">["', b'id="lb-chunks">[1, "'),  # not a list of paths
    b"\xff\xfe" + bytes(range(256)),
])
def test_parse_page_refuses_what_is_not_a_page(document):
    with pytest.raises(ValueError, match="not an lb demo page"):
        parse_page(document)


NATURAL = len(asset_body("v1", "chunk-2", 0))


@pytest.mark.parametrize("size, expected", [
    (0, NATURAL), (NATURAL - 1, NATURAL), (NATURAL, NATURAL), (NATURAL + 1, NATURAL + 1),
    (NATURAL + 2, NATURAL + 2), (NATURAL + 3, NATURAL + 3), (4096, 4096), (100_000, 100_000),
])
def test_asset_body_is_exactly_size_bytes_or_its_natural_length(size, expected):
    body = asset_body("v1", "chunk-2", size)
    assert len(body) == expected
    assert body.startswith(b'/* lb demo asset chunk-2 of v1 */ window.__lb=(window.__lb||[]).concat(["v1:chunk-2"]);')
    assert body == asset_body("v1", "chunk-2", size)


def test_asset_body_keeps_a_version_with_a_comment_end_inside_its_comment():
    body = asset_body('v*/"1', "app", 0)
    assert body.index(b"*/") == body.index(b" window.__lb") - 2
    assert body.endswith(b'.concat(["v*/\\"1:app"]);')


def hashed(name: str, version: str = "v1") -> str:
    return f"/assets/{name}.{asset_hash(version, name)}.js"


@pytest.mark.parametrize("path, version, chunks, expected", [
    (V1_APP, "v1", 4, "app"),
    (asset_paths("v1", 4)[1], "v1", 4, "chunk-0"),
    (asset_paths("v1", 4)[4], "v1", 4, "chunk-3"),
    (asset_paths("v1", 0)[0], "v1", 0, "app"),
    (asset_paths("v2", 4)[0], "v1", 4, None),                     # another version's app
    (asset_paths("v2", 4)[2], "v1", 4, None),                     # another version's chunk
    (asset_paths("v1", 5)[5], "v1", 4, None),                     # a chunk past this page's
    (hashed("chunk-01"), "v1", 4, None),                           # a name no page gives, hash and all
    (hashed("chunk-\u00b2"), "v1", 4, None),
    (hashed("chunk-"), "v1", 4, None),
    (hashed("main"), "v1", 4, None),
    (V1_APP.upper(), "v1", 4, None),
    (V1_APP[:-3] + ".css", "v1", 4, None),
    (V1_APP.replace("/assets/", "/assets/x/"), "v1", 4, None),
    (V1_APP.replace("/assets/", "/static/"), "v1", 4, None),
    ("/assets/app.js", "v1", 4, None),
    ("/assets/", "v1", 4, None),
    ("/assets/.js", "v1", 4, None),
    ("/", "v1", 4, None),
])
def test_match_asset_knows_only_its_own_versions_assets(path, version, chunks, expected):
    assert match_asset(path, version, chunks) == expected


SITE = Site("v1", "web1", chunks=3, asset_bytes=1000)


@pytest.mark.parametrize("path, status, content_type, cache_control", [
    ("/", 200, b"text/html; charset=utf-8", b"no-cache"),
    ("/index.html", 200, b"text/html; charset=utf-8", b"no-cache"),
    (V1_APP, 200, b"application/javascript", IMMUTABLE),
    (asset_paths("v1", 3)[3], 200, b"application/javascript", IMMUTABLE),
    (asset_paths("v2", 3)[3], 404, b"application/json", b"no-store"),
    ("/assets/anything", 404, b"application/json", b"no-store"),
    ("/api/version", 200, b"application/json", b"no-store"),
    ("/api/", 200, b"application/json", b"no-store"),
])
def test_site_answers_its_routes(path, status, content_type, cache_control):
    answer = SITE.answer(path)
    headers = dict(answer.headers)
    assert (answer.status, headers[b"content-type"], headers[b"cache-control"]) == (status, content_type, cache_control)


@pytest.mark.parametrize("path", ["/health", "/echo", "/ws", "/slow", "/index.htm", "/assets", "/api", "/apis/x"])
def test_site_leaves_every_other_path_to_the_backend(path):
    assert SITE.answer(path) is None


def test_site_answers_bodies_and_etags():
    assert SITE.answer("/").body == page("v1", "web1", 3)
    chunk = SITE.answer(asset_paths("v1", 3)[2])
    assert chunk.body == asset_body("v1", "chunk-1", 1000)
    assert dict(chunk.headers)[b"etag"] == f'"{asset_hash("v1", "chunk-1")}"'.encode()
    assert json.loads(SITE.answer("/api/x").body) == {"version": "v1", "node": "web1", "path": "/api/x"}


@pytest.mark.parametrize("argv, error", [
    ([], None),
    (["--spa", "--chunks", "0", "--asset-bytes", "0"], None),
    (["--spa", "--chunks", "-1"], "--chunks and --asset-bytes: expected a count from 0 up"),
    (["--asset-bytes", "-1"], "--chunks and --asset-bytes: expected a count from 0 up"),
    (["--fail-rate", "2"], "--fail-rate: expected a fraction from 0 to 1"),
    (["--detach"], "--replace and --detach need --pidfile"),
    (["--grace", "-1"], "--grace: expected seconds from 0 to 3600"),
    (["--grace", "2.5"], None),
])
def test_lb_backend_checks_its_arguments(argv, error):
    args = cli.build_parser().parse_args(["backend", "--listen", "127.0.0.1:9001", "--version", "v1", *argv])
    assert cli.backend_args_error(args) == error


@pytest.mark.parametrize("argv", [
    ["--name", "web1"],
    ["--spa"],
    ["--spa", "--chunks", "7", "--asset-bytes", "100", "--name", "web1", "--fail-rate", "0.5", "--warmup", "2"],
    ["--chunks", "7"],                                             # without --spa: no SPA to forward
    ["--grace", "3"],
])
def test_a_detached_backend_serves_with_the_same_arguments(argv):
    parser = cli.build_parser()
    given = parser.parse_args(["backend", "--listen", "127.0.0.1:9001", "--version", "v1", *argv])
    forwarded = parser.parse_args(["backend", *cli.backend_argv(given)])
    expected = vars(given) | ({} if given.spa else {"chunks": 4})
    assert vars(forwarded) == expected
