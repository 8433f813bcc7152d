"""Skew protection: the version a request names, the versions that have an asset, and what
lb does once a version is gone. No I/O.

Theory of operation
-------------------
Pinning (pinning.py) keeps a *user* on one version through a cookie. A browser tab is not
a user: a tab opened on v1 may ask for its lazy chunk `/assets/chunk.<v1 hash>.js` after its
user was moved to v2 (a forward move, a v2 tab in the same cookie jar), or after the last v1
node left. v2 has no such file. `decide` looks, for each request, before the cookie:

1. **A named version.** The header `pinning.header` (`X-Lb-Version: v1`), then the query
   parameter `pinning.query` (`?dpl=v1`). A label that is malformed or was never a version
   of this pool is ignored. A version in service (ready capacity) is used as named; a
   version whose ready nodes all stand at weight 0 (one nobody is sent to yet: a canary
   before its bake) only when the request may override (`skew.override_from`: its peer's
   address, or a shared secret header); a version that was in the pool and has no ready
   node is *gone*: the rules below go on, and the response says `X-Lb-Version-Gone: v1`.
2. **An asset.** A GET or HEAD for an asset the index knows goes by the cookie's rules (its
   user's version usually has it: a chunk whose hash did not change between releases),
   and the versions that served it ride along. When that version answers 404, the answer
   is held back (`fall_back`): the request goes to the newest other version in service
   that has the asset, or, when none is, lb answers with its stored copy from the newest
   version that left service less than `skew.retention` ago (`STORE`); else the 404 goes.
3. Otherwise the cookie's rules (pinning.py), with the gone version, if any, to report.

A request routed by 1 or 2 does not set or rewrite the cookie: a tab's request does not
move its user (its first try, by the cookie's rules, may: as any request's does).

The index (`AssetIndex`) is learned from responses (lb/proxy/skew.py says which: a 200 to a
GET whose Cache-Control says `immutable`, or a path matching `skew.assets`). The control
plane owns it (lb/control/assets.py), bounded in entries, index bytes and stored bytes,
least recently learned or used out first; every data plane holds a copy (`AssetMap`) kept
up to date by `AssetsUpdate`s, as routing views are. When the store is full, new copies are
refused (their entries still route) until a version's retention passes and frees room: the
copies kept are those of the oldest versions, which leave service first.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import re
from collections import OrderedDict
from typing import NamedTuple

from .values import VERSION_RE

HEADER, QUERY, OVERRIDE, ASSET, STORE = "header", "query", "override", "asset", "store"
MAX_LABEL_BYTES = 32
MAX_PATH_BYTES = 1024                  # longer paths are not learned
INDEX_MAX_BYTES = 16 << 20             # the index's own size (paths, headers), apart from the store
GONE_HEADER = b"x-lb-version-gone"


class Asset(NamedTuple):
    """One version's answer for one asset path; `digest` names the stored copy (sha256, hex)."""
    path: bytes
    version: str
    digest: str | None = None
    size: int = 0
    headers: tuple = ()                 # the response's end-to-end headers, as (name, value) bytes

    @property
    def index_bytes(self) -> int:
        return 96 + len(self.path) + sum(len(n) + len(v) + 16 for n, v in self.headers)


class AssetsUpdate(NamedTuple):
    """What the control plane tells each data plane of the index: entries added (or replaced),
    entries dropped, and when each version out of service left it (wall-clock seconds)."""
    add: tuple = ()                     # Asset
    drop: tuple = ()                    # (path, version)
    retired: dict | None = None         # version -> left service at; None: unchanged
    full: bool = False                  # a whole index: forget the old one first
    store_full: bool = False            # copy no more (the control plane refuses them) until this is False


class Decision(NamedTuple):
    version: str | None                 # None: the cookie's rules decide
    how: str | None                     # HEADER, QUERY, OVERRIDE, ASSET, STORE
    gone: str | None = None             # a named version out of service, to say so
    stored: Asset | None = None         # STORE: the copy to answer with
    pin: str | None = None              # version None: the cookie's pin, for the cookie's rules
    fallback: dict | None = None        # version None: the versions that have this asset (a 404's)


# -- what a request names ------------------------------------------------------------------
def label(raw: bytes | None) -> str | None:
    """A version label from a request (header value, query value), or None when malformed."""
    if raw is None or len(raw) > MAX_LABEL_BYTES:
        return None
    text = raw.decode("latin-1").strip()
    return text if VERSION_RE.match(text) else None


def query_value(target: bytes, name: bytes) -> bytes | None:
    """The first value of query parameter `name` in a request target, or None."""
    start = target.find(b"?")
    if start < 0:
        return None
    for part in target[start + 1:].partition(b"#")[0].split(b"&"):
        key, eq, value = part.partition(b"=")
        if eq and key == name:
            return value
    return None


def asset_path(target: bytes) -> bytes:
    """The path of a request target, without its query."""
    end = target.find(b"?")
    return target if end < 0 else target[:end]


def asset_key(target: bytes, query_name: bytes) -> bytes:
    """What the index knows an asset by: its path and query (`app.js?v=1` and `app.js?v=2` are
    two files, one a version's), without the version's own parameter (`?dpl=v1`) or fragment."""
    start = target.find(b"?")
    if start < 0:
        return target
    kept = [part for part in target[start + 1:].partition(b"#")[0].split(b"&")
            if part and part.partition(b"=")[0] != query_name]
    return target[:start] + (b"?" + b"&".join(kept) if kept else b"")


def may_copy(response_headers, request_headers) -> bool:
    """Whether a shared store may keep this answer for anyone (RFC 9111 3 and 3.5, as a careful
    shared cache): not when it sets a cookie or varies on anything but Accept-Encoding, nor
    when the request carried credentials and the answer does not say `public`."""
    public = False
    for name, value in response_headers:
        lname = name.lower()
        if lname == b"set-cookie":
            return False
        if lname == b"vary" and any(v.strip().lower() not in (b"accept-encoding", b"")
                                    for v in value.split(b",")):
            return False
        if lname == b"cache-control" and b"public" in value.lower():
            public = True
    return public or not any(name.lower() == b"authorization" for name, _ in request_headers)


def encoding_accepted(asset_headers, request_headers) -> bool:
    """Whether a stored copy's Content-Encoding (if any) is one the request accepts."""
    encoding = next((v.strip().lower() for n, v in asset_headers if n.lower() == b"content-encoding"), b"identity")
    if encoding == b"identity":
        return True
    accepted = b",".join(v for n, v in request_headers if n.lower() == b"accept-encoding").lower()
    codings = {part.split(b";")[0].strip() for part in accepted.split(b",")}
    return encoding in codings or b"*" in codings


def is_immutable(cache_control: bytes | None) -> bool:
    """Whether a response's Cache-Control says immutable (RFC 8246) and lets it be stored."""
    if not cache_control:
        return False
    directives = {d.strip().partition(b"=")[0].lower() for d in cache_control.split(b",")}
    return b"immutable" in directives and not directives & {b"no-store", b"private", b"no-cache"}


def glob_matcher(globs: tuple[str, ...]):
    """A predicate on paths (bytes) for `skew.assets`: '*' matches within and across '/'."""
    if not globs:
        return lambda path: False
    pattern = re.compile("|".join(fnmatch.translate(g) for g in globs).encode())
    return lambda path: pattern.match(path) is not None


class Override:
    """`skew.override_from`: who may reach a version nobody is sent to yet."""

    def __init__(self, entries: tuple):
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if isinstance(e, str)]
        self.secrets = [(n.lower().encode(), s.encode()) for n, s in (e for e in entries if isinstance(e, tuple))]

    def peer_allowed(self, peer: str | None) -> bool:
        """Whether the connection's peer address is one of the CIDRs (asked once a connection)."""
        if not peer or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def take_secret(self, head) -> bool:
        """Whether a request carries one of the shared secrets; the secrets' headers are taken
        out of `head.headers` either way (the app never sees them)."""
        names = {lname for lname, _ in self.secrets}
        taken = [(name.lower(), value.strip()) for name, value in head.headers if name.lower() in names]
        if not taken:
            return False
        head.headers = [(name, value) for name, value in head.headers if name.lower() not in names]
        return any(lname == name and _same(value, secret) for lname, secret in self.secrets
                   for name, value in taken)


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


# -- the decision ----------------------------------------------------------------------------
class View(NamedTuple):
    """What `decide` reads of the pool: ready capacity per version, the versions whose ready
    nodes stand at weight 0, every version the pool has had (oldest first)."""
    capacity: dict
    weightless: frozenset
    known: tuple


def decide(named: tuple, path: bytes | None, pin: str | None, may_override, view: View,
           assets: "AssetMap") -> Decision:
    """The skew rules for one request's first try (module docstring). `named`: ((label,
    HEADER|QUERY), ...) strongest first, labels already checked by `label()`; `path`: a GET's
    or HEAD's asset key when the index knows it, else None; `may_override`: a callable, asked
    only when a request names a weightless version. A known asset goes by the cookie's rules
    with `fallback` set: the versions that have it, for a 404 (`fall_back`)."""
    gone = None
    capacity = view.capacity
    for version, source in named:
        if version is None or version not in view.known:
            continue
        if capacity.get(version):
            return Decision(version, source)
        if version in view.weightless:
            if may_override():
                return Decision(version, OVERRIDE)
            continue
        gone = gone or version
    have = assets.by_path.get(path) if path is not None else None
    return Decision(None, None, gone, None, pin, have)


def fall_back(have: dict, answered: str, view: View, retired: dict, now: float, retention: float) -> Decision | None:
    """A known asset's request got a 404 from `answered`'s version: the newest other version in
    service that has it; else the stored copy of the newest that left less than `retention`
    ago (STORE); else None (the 404 stands). A version that left has no time in `retired`
    until the control plane says so: it left now."""
    capacity = view.capacity
    for version in reversed(view.known):
        if version != answered and version in have and capacity.get(version):
            return Decision(version, ASSET)
    for version in reversed(view.known):
        asset = have.get(version)
        if asset is not None and asset.digest and version != answered and \
                now - retired.get(version, now) < retention:
            return Decision(version, STORE, None, asset)
    return None


# -- the index -------------------------------------------------------------------------------
class AssetMap:
    """A data plane's copy of the index: path -> {version: Asset}, and when versions left."""

    def __init__(self):
        self.by_path: dict[bytes, dict[str, Asset]] = {}
        self.retired: dict[str, float] = {}
        self.store_full = False

    def apply(self, update: AssetsUpdate) -> None:
        self.store_full = update.store_full
        if update.full:
            self.by_path = {}
        for asset in update.add:
            self.by_path.setdefault(asset.path, {})[asset.version] = asset
        for path, version in update.drop:
            have = self.by_path.get(path)
            if have is not None:
                have.pop(version, None)
                if not have:
                    del self.by_path[path]
        if update.retired is not None:
            self.retired = dict(update.retired)

    def apply_one(self, asset: Asset) -> None:
        """An entry this data plane learned itself, before the control plane confirms it."""
        self.by_path.setdefault(asset.path, {})[asset.version] = asset

    def knows(self, path: bytes, version: str, stored: bool) -> bool:
        """Whether (path, version) is learned already (with a stored copy, when `stored`)."""
        asset = self.by_path.get(path, {}).get(version)
        return asset is not None and (asset.digest is not None or not stored)

    def __len__(self) -> int:
        return sum(len(have) for have in self.by_path.values())

    def snapshot(self) -> AssetsUpdate:
        return AssetsUpdate(tuple(a for have in self.by_path.values() for a in have.values()), (),
                            dict(self.retired), full=True, store_full=self.store_full)


class AssetIndex:
    """The control plane's index: every (path, version) learned, bounded by `max_entries` and
    `INDEX_MAX_BYTES` (least recently learned or used out first) and, for the stored copies
    (one file per digest, however many entries share it), by `store_bytes` (refused past it)."""

    def __init__(self, max_entries: int, store_bytes: int, max_asset_bytes: int):
        self.max_entries = max_entries
        self.store_bytes = store_bytes
        self.max_asset_bytes = max_asset_bytes
        self.entries: OrderedDict[tuple[bytes, str], Asset] = OrderedDict()
        self.index_bytes = 0
        self.digests: dict[str, list] = {}      # digest -> [size, entries using it]
        self.stored_bytes = 0
        self.full = False                        # a copy was refused for room since room was last freed

    def learn(self, asset: Asset) -> tuple[list[Asset], list[tuple[bytes, str]], list[str]]:
        """Add or refresh one entry. Returns (added, dropped keys, digests no entry uses any
        more: their files can go). A copy that does not fit in what is left of `store_bytes`
        is refused (the entry is kept without it, and `full` says so until room is freed):
        the copies kept are those of the versions that leave service first."""
        if len(asset.path) > MAX_PATH_BYTES or self.max_entries == 0:
            return [], [], [asset.digest] if asset.digest and asset.digest not in self.digests else []
        refused = []
        if asset.digest and asset.digest not in self.digests and \
                (asset.size > self.max_asset_bytes or self.stored_bytes + asset.size > self.store_bytes):
            refused = [asset.digest]
            self.full = self.full or asset.size <= self.max_asset_bytes
            asset = asset._replace(digest=None, size=0, headers=())
        key = (asset.path, asset.version)
        old = self.entries.get(key)
        if old is not None and (old.digest or not asset.digest):
            self.entries.move_to_end(key)
            return [], [], refused
        freed = self._remove(key) if old is not None else []
        self.entries[key] = asset
        self.index_bytes += asset.index_bytes
        if asset.digest:
            use = self.digests.setdefault(asset.digest, [asset.size, 0])
            if use[1] == 0:
                self.stored_bytes += asset.size
            use[1] += 1
        dropped, freed_more = self._bound(keep=key)
        return [asset], dropped, refused + freed + freed_more

    def touch(self, path: bytes, version: str) -> None:
        """An entry was used: it leaves last."""
        if (path, version) in self.entries:
            self.entries.move_to_end((path, version))

    def forget_version(self, version: str) -> tuple[list[tuple[bytes, str]], list[str]]:
        """Drop every entry of `version` (its retention passed). Returns (dropped, freed digests)."""
        keys = [key for key in self.entries if key[1] == version]
        freed = []
        for key in keys:
            freed += self._remove(key)
        if freed:
            self.full = False
        return keys, freed

    def _bound(self, keep) -> tuple[list, list[str]]:
        dropped, freed = [], []
        while self.entries and (len(self.entries) > self.max_entries or self.index_bytes > INDEX_MAX_BYTES):
            key = next(iter(self.entries))
            if key == keep:
                if len(self.entries) == 1:
                    break
                self.entries.move_to_end(key)
                continue
            freed += self._remove(key)
            dropped.append(key)
        return dropped, freed

    def _remove(self, key) -> list[str]:
        asset = self.entries.pop(key)
        self.index_bytes -= asset.index_bytes
        if not asset.digest:
            return []
        use = self.digests[asset.digest]
        use[1] -= 1
        if use[1]:
            return []
        del self.digests[asset.digest]
        self.stored_bytes -= asset.size
        return [asset.digest]


    def rows(self, capacity: dict, retired: dict) -> list[dict]:
        """Per version: paths learned, copies and their bytes, and where it stands."""
        rows: dict[str, dict] = {}
        for (_, version), asset in self.entries.items():
            row = rows.setdefault(version, {"version": version, "paths": 0, "stored": 0, "stored_bytes": 0})
            row["paths"] += 1
            if asset.digest:
                row["stored"] += 1
                row["stored_bytes"] += asset.size
        for version, row in rows.items():
            row["in_service"] = bool(capacity.get(version))
            row["left_service_at"] = retired.get(version)
        return list(rows.values())
