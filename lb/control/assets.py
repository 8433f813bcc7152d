"""The asset index's owner: one index for every data plane, its store on disk, retention.

Theory of operation
-------------------
Data planes learn assets from responses and write the copies (lb/proxy/skew.py); their
reports carry the entries. `Assets.learned` puts each into the `AssetIndex` (lb/core/skew.py),
which bounds it; the files of copies no entry uses any more are deleted. What changed goes
to every data plane (`Link.apply_assets`) on the next sweep, in one `AssetsUpdate`.

Retention: when the view shows a version with no node in service, `left` records when it
left (wall-clock seconds, so that it survives a restart); when it is back, the record goes.
Past `skew.retention` its entries and copies are dropped.

The index and the departure times are saved beside the copies (`index.json`, written to a
temporary file and renamed, in a thread) at most every SAVE_INTERVAL_S while something
changed, and at stop; a new lb (a restart, or the new master of an upgrade) starts from
that file, and sweeps the folder of files no entry names. A file that cannot be read is
logged and set aside: lb starts with an empty index, never fails to start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter

from ..core.skew import Asset, AssetIndex, AssetsUpdate
from ..files import atomic_write, delete_copies, store_dir

log = logging.getLogger("lb.control")
SAVE_INTERVAL_S = 5.0
INDEX_FILE = "index.json"


class Assets:
    """The control plane's side of skew protection."""

    def __init__(self, config):
        self.index = AssetIndex(config.skew.max_assets, config.skew.store_bytes, config.skew.max_asset_bytes)
        self.configure(config)
        self.left: dict[str, float] = {}        # version -> when it left service (wall clock)
        self.counts: Counter = Counter()        # (how, version) -> requests, since start
        self._added: dict = {}                  # (path, version) -> Asset, for the next update
        self._dropped: set = set()
        self._left_changed = False
        self.versions: set = set()              # the pool's, as of the last view
        self._saving = False
        self._full_sent = False
        self._dirty = False
        self._saved_at = 0.0

    def configure(self, config) -> None:
        self.dir = store_dir(config)
        self.retention = config.skew.retention
        self.stores = config.skew.store_bytes > 0
        skew = config.skew          # a reload's new bounds hold from the next entry learned
        self.index.max_entries, self.index.store_bytes = skew.max_assets, skew.store_bytes
        self.index.max_asset_bytes = skew.max_asset_bytes

    # -- what comes in ---------------------------------------------------------------------
    def learned(self, assets: list, counts: Counter | None) -> None:
        """A report's entries and counters."""
        if counts:
            self.counts.update(counts)
        for asset in assets:
            added, dropped, freed = self.index.learn(asset)
            for entry in added:
                key = (entry.path, entry.version)
                self._added[key] = entry
                self._dropped.discard(key)
            self._drop(dropped, freed)

    def view(self, capacity: dict, versions, now: float) -> None:
        """The pool's versions and which are in service: note departures and returns."""
        self.versions = set(versions)
        for version in versions:
            if capacity.get(version):
                if self.left.pop(version, None) is not None:
                    self._left_changed = True
            elif version not in self.left:
                self.left[version] = now
                self._left_changed = True

    def tick(self, now: float) -> AssetsUpdate | None:
        """Retention, then what changed for the data planes (None: nothing); saves when due."""
        for version, since in list(self.left.items()):
            if now - since >= self.retention:
                if self.index.per_version[version]:
                    self._drop(*self.index.forget_version(version))
                elif version not in self.versions:
                    del self.left[version]    # no node has it and nothing is kept of it
                    self._left_changed = True
        update = None
        if self._added or self._dropped or self._left_changed or self.index.full != self._full_sent:
            update = AssetsUpdate(tuple(self._added.values()), tuple(self._dropped), dict(self.left),
                                  store_full=self.index.full)
            self._added, self._dropped, self._left_changed = {}, set(), False
            self._full_sent = self.index.full
            self._dirty = True
        if self._dirty and now - self._saved_at >= SAVE_INTERVAL_S:
            self.save(now)
        return update

    def snapshot(self) -> AssetsUpdate:
        return AssetsUpdate(tuple(self.index.entries.values()), (), dict(self.left), full=True,
                            store_full=self.index.full)

    def _drop(self, dropped, freed) -> None:
        for key in dropped:
            self._added.pop(key, None)
            self._dropped.add(key)
        if freed:
            delete_copies(self.dir, freed)

    # -- the file ----------------------------------------------------------------------------
    def save(self, now: float | None = None, in_thread: bool = True) -> None:
        """Write index.json: in a thread while lb runs (10,000 entries take 0.2-0.3 s to encode
        and write, too long for the master's loop), at once at a stop."""
        if self._saving:
            return                            # still dirty: the next tick tries again
        self._saved_at = now if now is not None else time.time()
        self._dirty = False
        if not self.index.entries and not self.left and not os.path.exists(self.dir):
            return
        entries, left = list(self.index.entries.values()), dict(self.left)
        try:
            loop = asyncio.get_running_loop() if in_thread else None
        except RuntimeError:
            loop = None                       # no loop (a tool, a test): here and now
        if loop is None:
            _write_index(self.dir, entries, left)
            return
        self._saving = True
        done = loop.run_in_executor(None, _write_index, self.dir, entries, left)
        done.add_done_callback(self._saved)

    def _saved(self, done) -> None:
        self._saving = False

    def load(self) -> None:
        """The index a previous lb saved; entries whose copy is gone are kept without it. A file
        that cannot be read is set aside (index.json.bad). Then the folder is swept: copies no
        entry names (a worker gone before it reported one, a second copy), and temporary files
        a killed writer left, older than a minute."""
        path = os.path.join(self.dir, INDEX_FILE)
        try:
            with open(path) as file:
                data = json.load(file)
            left = {str(v): float(t) for v, t in data.get("left", {}).items()}
            assets = [_decode(item) for item in data.get("assets", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("the asset index %s could not be read (%s); set aside as %s.bad, starting without it",
                        path, exc, INDEX_FILE)
            _set_aside(path)
            left, assets = {}, []
        self.left = left
        for asset in assets:
            if asset.digest and not os.path.exists(os.path.join(self.dir, asset.digest)):
                asset = asset._replace(digest=None, size=0, headers=())
            self._drop(*self.index.learn(asset)[1:])
        self._dropped.clear()
        self._sweep(time.time())

    def _sweep(self, now: float) -> None:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        stray = [name for name in names if len(name) == 64 and name not in self.index.digests]
        for name in names:
            if name.endswith(".tmp"):
                try:
                    if now - os.stat(os.path.join(self.dir, name)).st_mtime > 60:
                        stray.append(name)
                except OSError:
                    pass
        if stray:
            log.info("skew: %d stray files removed from %s", len(stray), self.dir)
            delete_copies(self.dir, stray)

    # -- what goes out ---------------------------------------------------------------------
    def rows(self, capacity: dict) -> list[dict]:
        rows = self.index.rows(capacity, self.left)
        by_version = {row["version"]: row for row in rows}
        for (how, version), count in self.counts.items():
            if how in ("asset", "store", "header", "query", "override", "gone", "store_missing"):
                row = by_version.setdefault(version, {"version": version, "paths": 0, "stored": 0,
                                                      "stored_bytes": 0, "in_service": bool(capacity.get(version)),
                                                      "left_service_at": self.left.get(version)})
                row[f"by_{how}"] = row.get(f"by_{how}", 0) + count
        return list(by_version.values())

    def info(self) -> dict:
        return {"entries": len(self.index.entries), "stored_bytes": self.index.stored_bytes,
                "store_bytes": self.index.store_bytes, "copies": len(self.index.digests),
                "full": self.index.full, "dir": self.dir}


def _write_index(folder: str, entries: list, left: dict) -> None:
    data = {"left": left, "assets": [_encode(a) for a in entries]}
    try:
        atomic_write(os.path.join(folder, INDEX_FILE), json.dumps(data), 0o640)
    except OSError as exc:
        log.warning("could not save the asset index in %s: %s", folder, exc)


def _set_aside(path: str) -> None:
    try:
        os.replace(path, path + ".bad")
    except OSError:
        pass


def _encode(asset: Asset) -> dict:
    return {"path": asset.path.decode("latin-1"), "version": asset.version, "digest": asset.digest,
            "size": asset.size, "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in asset.headers]}


def _decode(item: dict) -> Asset:
    return Asset(item["path"].encode("latin-1"), str(item["version"]), item.get("digest") or None,
                 int(item.get("size") or 0),
                 tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in item.get("headers") or ()))
