"""The state file: admin changes survive a restart of lb.

Every command that changes state writes the whole admin state (each node's
admin state, version, weight, address, whether it was added at run time, whether
its version is a claim no check has confirmed yet, the version order and the
declared target) atomically before its reply; at start `load_state` applies
it over the config through the transition table, so a restart in the middle
of a deploy keeps a drained node drained. A node that was draining comes back
drained: what it had in flight died with the old process.
"""

from __future__ import annotations

import json
import logging
import time

from ..core.commands import backend_config
from ..core.config import parse_max_conns_value, parse_weight_value
from ..core.errors import CommandError, InvalidValue
from ..core.nodes import DRAINED, DRAINING, MAINT, NEW, READY, Node, transition
from ..core.values import check_name, check_version_label, format_hostport, parse_hostport
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
    state = {"format": FORMAT, "versions": control.pool.versions, "target": control.pool.target, "servers": {
        n.name: {"state": str(n.admin_state), "version": n.version, "weight": n.weight, "max_conns": n.max_conns,
                 "address": n.address, "added": n.name not in config_names, "version_pending": n.version_pending}
        for n in control.pool.backends.values()}}
    if control.desired is not None:       # cluster mode: the servers the fleet listed (lb/control/desired.py)
        state["cluster_known"] = sorted(control.desired.known)
    try:
        atomic_write(path, json.dumps(state, indent=1))
    except OSError as exc:
        raise CommandError(f"the change is made but could not be saved to {path}: {exc.strerror}") from None


def saved_known(control) -> set[str]:
    """Cluster mode: the servers the fleet's desired state listed when the file was written."""
    try:
        with open(control.config.resolve(control.config.state_file), encoding="utf-8") as handle:
            known = json.load(handle).get("cluster_known", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in known if isinstance(name, str)} if isinstance(known, list) else set()


def load_state(control) -> list[str]:
    """Apply a saved state over the config (before `control.place_nodes()`); returns what it
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
    servers = state.get("servers") if isinstance(state, dict) else None
    for name, saved in (servers.items() if isinstance(servers, dict) else ()):
        entry = _checked(path, name, saved)
        if entry is None:
            continue
        node = pool.backends.get(name)
        if node is None and saved.get("added"):
            node = Node(backend_config({"name": name, "address": entry["address"], "version": entry["version"],
                                        "weight": entry["weight"]}), time.time())
            pool.backends[name] = node
        if node is None or node.admin_state != NEW:
            continue                          # removed from the config since
        transition(node, RESTORE_EVENTS[entry["state"]], control.now())
        control.set_version(node, entry["version"], pending=saved.get("version_pending") is True)
        control.set_weight(node, entry["weight"])
        control.set_max_conns(node, entry["max_conns"])
        if node.admin_state != READY:
            applied.append(f"{name} {node.admin_state}")
    versions = state.get("versions") if isinstance(state, dict) else None
    pool.restore_order(v for v in (versions if isinstance(versions, list) else ()) if v in pool.versions)
    target = state.get("target") if isinstance(state, dict) else None
    if isinstance(target, str) and target in pool.versions:
        control.set_target(target)           # a deploy was under way: its version move goes on
    return applied


def _checked(path: str, name, saved) -> dict | None:
    """One saved server, checked with the config's own rules (a version with a CR LF in it
    would end up in every pin cookie); None, with the reason in the log, when it fails."""
    where = f"servers.{name}"
    try:
        if not isinstance(saved, dict):
            raise InvalidValue(f"expected a mapping, got {saved!r}")
        check_name(name)
        state = saved.get("state", READY)
        if state not in RESTORE_EVENTS:
            where += ".state"
            raise InvalidValue(f"expected one of {', '.join(RESTORE_EVENTS)}, got {state!r}")
        where = f"servers.{name}.version"
        version = check_version_label(saved.get("version"))
        where = f"servers.{name}.weight"
        weight = parse_weight_value(saved.get("weight"))
        where = f"servers.{name}.max_conns"
        max_conns = parse_max_conns_value(saved.get("max_conns", 0))
        where = f"servers.{name}.address"
        address = format_hostport(*parse_hostport(saved.get("address")))
    except InvalidValue as exc:
        log.error("state file %s: %s: %s; that entry is ignored", path, where, exc.message)
        return None
    return {"state": state, "version": version, "weight": weight, "address": address, "max_conns": max_conns}
