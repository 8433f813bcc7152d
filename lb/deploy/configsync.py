"""The config file against the running lb: what a deploy changed that the file does not say.

A deploy changes the nodes and lb's state file, never the config file, so after
one the file's `version:` values are stale, and a new lb started on it with no
state file would begin from the old labels (lb/core/health.py then adopts what
the checks report, and says so). `lb check` lists the differences when an lb
answers on the config's admin socket (`--live`: it must answer, and a
difference exits 1); `lb deploy` prints the lines to change at its end, and
with `--write-config FILE` changes them (lb/core/configedit.py: in place,
comments and layout kept).
"""

from __future__ import annotations

import os

from ..core.configedit import StaleVersion, set_versions, stale_versions
from ..core.errors import ConfigError, DeployError
from ..files import atomic_write
from .client import request

LIVE_TIMEOUT_S = 5.0


def live_differences(config) -> list[StaleVersion]:
    """Ask the lb on the config's admin socket. Raises OSError/EOFError/TimeoutError when none
    answers, DeployError when it refuses."""
    path = config.resolve(config.admin.socket)
    reply = request(path, "show servers", LIVE_TIMEOUT_S)
    if not reply.get("ok"):
        raise DeployError(f"lb on {path} refused 'show servers': {reply.get('error')}")
    return stale_versions(config.backends, reply["servers"])


def check_editable(path: str) -> None:
    """Before a deploy starts: --write-config names a config lb can edit. Raises DeployError."""
    try:
        with open(path, encoding="utf-8") as handle:
            set_versions(handle.read(), {}, path)
        if not os.access(path, os.W_OK):
            raise DeployError(f"--write-config: {path}: not writable")
    except OSError as exc:
        raise DeployError(f"--write-config: {path}: {exc.strerror}") from None
    except ConfigError as exc:
        raise DeployError(f"--write-config: {exc.message}") from None


def write_versions(path: str, versions: dict[str, str]) -> dict:
    """Set the versions in the file (atomically, its mode kept); what a report shows."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        edited, edits, missing = set_versions(text, versions, path)
        if edits:
            atomic_write(path, edited, os.stat(path).st_mode & 0o7777)
    except OSError as exc:
        return {"file": path, "error": exc.strerror or str(exc)}
    except ConfigError as exc:
        return {"file": path, "error": exc.message}
    return {"file": path, "changed": [{"name": e.name, "line": e.line, "text": e.text, "was": e.old}
                                      for e in edits], "missing": missing}


def config_update(nodes: list[dict], versions: dict[str, str], write_to: str | None, finished: bool) -> dict | None:
    """What the end of a deploy says (and does) about the config file. `nodes`: the report's
    rows (name, was, version); `versions`: every node's version as lb has it now."""
    if write_to is None:
        moved = [{"name": row["name"], "was": row["was"], "version": row["version"]} for row in nodes
                 if row.get("version") not in (None, "?", row.get("was"))]
        return {"to_change": moved} if moved else None
    if not finished:
        return {"file": write_to, "error": "not written: the deploy did not finish"}
    return write_versions(write_to, versions)
