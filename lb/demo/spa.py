"""The demo app's single-page mode (`lb backend --spa`): pages and assets as plain data. No I/O.

Theory of operation
-------------------
A release of a single-page app is one HTML page plus JavaScript files whose names carry a
hash of their content (`/assets/app.3f2a….js`). The page is never cached (`no-cache`); the
assets are cached forever (`immutable`), because a new release gives them new names. The
catch is skew: a browser that loaded v1's page asks for v1's lazy chunks minutes later, and a
server already on v2 has no such files (404, the browser's ChunkLoadError). lb's version
pinning exists to prevent exactly that, and this module is the app that shows it.

Here a version's asset hash is derived from the version and the asset's name
(`asset_hash`), so every node of one version serves the same names and no node of another
version knows them. `Site.answer(path)` decides the SPA routes (`/`, `/index.html`,
`/assets/…`, `/api/…`) as an `Answer` (status, headers, body); the backend renders it and
answers every other path as it always did. `parse_page` is the simulated browser's side:
the version a page declares and the assets it will load.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass

ASSET_PREFIX = "/assets/"
HASH_CHARS = 12
IMMUTABLE = b"public, max-age=31536000, immutable"
_META_RE = re.compile(r'<meta name="lb-version" content="([^"]*)">')
_APP_RE = re.compile(r'<script src="(/assets/app\.[0-9a-f]{%d}\.js)" defer></script>' % HASH_CHARS)
_CHUNKS_RE = re.compile(r'<script type="application/json" id="lb-chunks">(.*?)</script>', re.S)
# For humans in a browser: load the lazy chunks, then ask the API with the page's version.
_INLINE_JS = """(function () {
  var version = document.querySelector('meta[name="lb-version"]').content;
  var out = document.getElementById("lb-api");
  JSON.parse(document.getElementById("lb-chunks").textContent).forEach(function (src) {
    var tag = document.createElement("script");
    tag.src = src;
    tag.onerror = function () { out.textContent += " chunk failed: " + src; };
    document.head.appendChild(tag);
  });
  fetch("/api/version", {headers: {"X-Lb-Version": version}})
    .then(function (r) { return r.json(); })
    .then(function (j) { out.textContent += " api: " + j.version + " on " + j.node; });
})();"""


def asset_hash(version: str, name: str) -> str:
    """The hash in the file name of asset `name` ("app", "chunk-0", ...) of `version`."""
    return hashlib.sha256(f"{version}:{name}".encode()).hexdigest()[:HASH_CHARS]


def asset_names(chunks: int) -> list[str]:
    """The names in the page's order: "app", then "chunk-0" up to "chunk-<chunks - 1>"."""
    return ["app", *(f"chunk-{i}" for i in range(chunks))]


def asset_paths(version: str, chunks: int) -> list[str]:
    """The app's path first, then its lazy chunks' paths, as `version`'s page names them."""
    return [f"{ASSET_PREFIX}{name}.{asset_hash(version, name)}.js" for name in asset_names(chunks)]


def page(version: str, node: str, chunks: int) -> bytes:
    """The HTML page of `version` as served by `node`, naming its app and `chunks` lazy chunks."""
    app, *lazy = asset_paths(version, chunks)
    shown_version, shown_node = html.escape(version), html.escape(node)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="lb-version" content="{shown_version}">
<title>lb demo {shown_version}</title>
<script src="{app}" defer></script>
<script type="application/json" id="lb-chunks">{json.dumps(lazy)}</script>
</head>
<body>
<p>version {shown_version} on node {shown_node}</p>
<p id="lb-api"></p>
<script>
{_INLINE_JS}
</script>
</body>
</html>
""".encode()


def parse_page(document: bytes) -> tuple[str, list[str]]:
    """(version, [app path, *chunk paths]) of a page `page()` wrote, as a browser would load
    them. Raises ValueError when `document` is not such a page."""
    text = document.decode("utf-8", "replace")
    meta, app, chunks = _META_RE.search(text), _APP_RE.search(text), _CHUNKS_RE.search(text)
    if not (meta and app and chunks):
        raise ValueError("not an lb demo page: expected the lb-version meta tag, the app script "
                         "and the lb-chunks list")
    try:
        lazy = json.loads(chunks.group(1))
    except ValueError:
        lazy = None
    if not (isinstance(lazy, list) and all(isinstance(path, str) for path in lazy)):
        raise ValueError(f"not an lb demo page: lb-chunks is not a list of paths: {chunks.group(1)[:80]!r}")
    return html.unescape(meta.group(1)), [app.group(1), *lazy]


def asset_body(version: str, name: str, size: int) -> bytes:
    """JavaScript naming `version` and `name`, padded with a comment to exactly `size` bytes
    (or its natural length, when that is longer). The same arguments give the same bytes."""
    comment = f"lb demo asset {name} of {version}".replace("*/", "* /")   # a version may hold "*/"
    label = json.dumps(f"{version}:{name}")
    text = f"/* {comment} */ window.__lb=(window.__lb||[]).concat([{label}]);".encode()
    missing = size - len(text)
    if missing <= 0:
        return text
    if missing < 3:
        return text + b" " * missing
    return text + b"\n//" + b"." * (missing - 3)


def match_asset(path: str, version: str, chunks: int) -> str | None:
    """The asset's name when `path` is one of `version`'s asset paths (with `chunks` lazy
    chunks), else None: any other version's, a chunk past `chunks`, or junk."""
    if not (path.startswith(ASSET_PREFIX) and path.endswith(".js")):
        return None
    name, _, digest = path[len(ASSET_PREFIX):-len(".js")].rpartition(".")
    if not _is_asset_name(name, chunks) or digest != asset_hash(version, name):
        return None
    return name


def _is_asset_name(name: str, chunks: int) -> bool:
    """One of `asset_names(chunks)`, without building the list (a request with many chunks)."""
    if name == "app":
        return True
    index = name.removeprefix("chunk-")
    return index != name and index.isascii() and index.isdigit() and str(int(index)) == index and int(index) < chunks


@dataclass(frozen=True)
class Answer:
    """A response this module decided: the backend adds its own headers and writes it."""
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True)
class Site:
    """The SPA one node serves: its version, its name, its lazy chunks and their size."""
    version: str
    node: str
    chunks: int = 4
    asset_bytes: int = 4096

    def answer(self, path: str) -> Answer | None:
        """The answer to a request for `path`, or None when the SPA does not own the path.
        Computed per request, nothing kept: 7 µs for the page, 3.5 µs for a 4 KiB asset, against
        the 130 µs of CPU the backend spends on any request, /health included (measured on the
        2-core dev box), so a memo would save under 5%."""
        if path in ("/", "/index.html"):
            return Answer(200, ((b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-cache")),
                          page(self.version, self.node, self.chunks))
        if path.startswith(ASSET_PREFIX):
            return self._asset(path)
        if path.startswith("/api/"):
            return _json(200, {"version": self.version, "node": self.node, "path": path})
        return None

    def _asset(self, path: str) -> Answer:
        """This version's asset, or 404: what a newer release answers for an older one's chunk."""
        name = match_asset(path, self.version, self.chunks)
        if name is None:
            return _json(404, {"error": "no such asset", "path": path, "version": self.version, "node": self.node})
        return Answer(200, ((b"content-type", b"application/javascript"), (b"cache-control", IMMUTABLE),
                            (b"etag", f'"{asset_hash(self.version, name)}"'.encode())),
                      asset_body(self.version, name, self.asset_bytes))


def _json(status: int, payload: dict) -> Answer:
    return Answer(status, ((b"content-type", b"application/json"), (b"cache-control", b"no-store")),
                  json.dumps(payload).encode())
