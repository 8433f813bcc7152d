"""The state file: admin changes survive a restart of lb.

Every command that changes state writes the whole admin state (each node's
admin state, version, weight, address, whether it was added at run time, and
the version order) atomically before its reply; at start `load_state` applies
it over the config through the transition table, so a restart in the middle
of a deploy keeps a drained node drained. A node that was draining comes back
drained: what it had in flight died with the old process.
"""

from __future__ import annotations

import json
import logging
import time

from ..core.commands import backend_config
from ..core.errors import CommandError, LbError
from ..core.nodes import DRAINED, DRAINING, MAINT, NEW, READY, Node, transition
from ..files import atomic_write

log = logging.getLogger("lb.admin")

FORMAT = 1
RESTORE_EVENTS = {READY: "start", DRAINING: "restore_drained", DRAINED: "restore_drained",
                  MAINT: "restore_maint"}


def save_state(control) -> None:
    """Write the admin state atomically. Raises CommandError when it cannot."""
    config = control.config
    path = config.resolve(config.state_file)
    config_names = {b.name for b in config.backends}
    state = {"format": FORMAT, "versions": control.pool.versions, "servers": {
        n.name: {"state": str(n.admin_state), "version": n.version, "weight": n.weight,
                 "address": n.address, "added": n.name not in config_names}
        for n in control.pool.backends.values()}}
    try:
        atomic_write(path, json.dumps(state, indent=1))
    except OSError as exc:
        raise CommandError(f"the change is made but could not be saved to {path}: {exc.strerror}") from None


def load_state(control) -> list[str]:
    """Apply a saved state over the config (before `control.start()`); returns what it
    changed, for the log."""
    path = control.config.resolve(control.config.state_file)
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.error("state file %s unreadable (%s); starting from the config alone", path, exc)
        return []
    pool, applied = control.pool, []
    for name, saved in state.get("servers", {}).items():
        node = pool.backends.get(name)
        if node is None and saved.get("added"):
            try:
                node = Node(backend_config({"name": name, "address": saved["address"],
                                            "version": saved["version"], "weight": saved["weight"]}),
                            time.time())
            except (LbError, KeyError):
                continue
            pool.backends[name] = node
        event = RESTORE_EVENTS.get(saved.get("state", READY))
        if node is None or node.admin_state != NEW or event is None:
            continue                          # removed from the config since, or unreadable
        transition(node, event, control.now())
        node.version = saved.get("version", node.version)
        node.set_weight(saved.get("weight", node.weight))
        pool.note_version(node.version)
        if node.admin_state != READY:
            applied.append(f"{name} {node.admin_state}")
    for version in state.get("versions", []):
        if version in pool.versions:
            pool.set_target(version)
    return applied
