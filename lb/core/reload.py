"""What a reload changes: old config + new config + the nodes as they run -> actions. No I/O.

Runtime admin states are kept. A backend new in the file joins in maint; one
gone from the file drains and is dropped once drained; a changed address
applies to new connections. A weight or version applies only when the file
changed it, so a reload never undoes a runtime `set` the file did not touch.
Settings that live in sockets, files or processes (listen, http, admin, metrics, status
(the page on the metrics listener, its token read at start), access_log, state_file, workers,
user, group) take effect at the next upgrade or restart; the reply says so. A TLS listener's
certificates are the exception: their files are named by the new config and re-read at every
reload (lb/tls.py swaps them in).
The control plane (lb/control/plane.py) carries the actions out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import BackendConfig, Config

ADD, ADDRESS, WEIGHT, VERSION, MAX_CONNS, KEEP, REMOVE, BALANCE, AT_RESTART = (
    "add", "address", "weight", "version", "max_conns", "keep", "remove", "balance", "at_restart")
RESTART_ONLY = ("access_log", "admin", "cluster", "group", "http", "listen", "metrics", "state_file", "status",
                "user", "workers")


@dataclass(frozen=True)
class RunningNode:
    """What the reload needs to know of a running node."""
    host: str
    port: int
    weight: int
    version: str
    max_conns: int = 0


@dataclass(frozen=True)
class Action:
    kind: str
    name: str | None = None          # the node, or the setting
    value: Any = None                # a BackendConfig (add), (host, port), a weight, a version...
    message: str = ""                # what the reply says changed ("" for nothing to say)


def plan_reload(old: Config, new: Config, running: dict[str, RunningNode],
                removing: set[str]) -> list[Action]:
    """The actions that take the running lb from `old` to `new`, in order."""
    actions: list[Action] = []
    before = {b.name: b for b in old.backends}
    for cfg in new.backends:
        node = running.get(cfg.name)
        if node is None:
            actions.append(Action(ADD, cfg.name, cfg,
                                  f"added {cfg.name} {cfg.host}:{cfg.port} {cfg.version} (maint)"))
            continue
        if cfg.name in removing:
            actions.append(Action(KEEP, cfg.name, None, ""))
        actions += _node_changes(cfg, node, before.get(cfg.name))
    wanted = {b.name for b in new.backends}
    for name in before:
        if name not in wanted and name in running:
            actions.append(Action(REMOVE, name, None, f"removed {name}"))
    if new.balance != old.balance:
        actions.append(Action(BALANCE, "balance", new.balance, f"balance: {old.balance} -> {new.balance}"))
    for setting in RESTART_ONLY:
        if setting == "listen" and _without_certs(new.listen) == _without_certs(old.listen):
            continue
        if getattr(new, setting) != getattr(old, setting):
            actions.append(Action(AT_RESTART, setting, None,
                                  f"{setting}: changed in the file; takes effect at the next upgrade or restart"))
    return actions


def _node_changes(cfg: BackendConfig, node: RunningNode, previous: BackendConfig | None) -> list[Action]:
    actions = []
    if (node.host, node.port) != cfg.address:
        actions.append(Action(ADDRESS, cfg.name, cfg.address,
                              f"{cfg.name}: address {node.host}:{node.port} -> {cfg.host}:{cfg.port}"))
    for kind, field in ((WEIGHT, "weight"), (VERSION, "version"), (MAX_CONNS, "max_conns")):
        wanted, now = getattr(cfg, field), getattr(node, field)
        file_changed = previous is None or getattr(previous, field) != wanted
        if file_changed and now != wanted:
            actions.append(Action(kind, cfg.name, wanted, f"{cfg.name}: {field} {now} -> {wanted}"))
    return actions


def _without_certs(listen: tuple) -> tuple:
    return tuple(dataclasses.replace(item, tls=dataclasses.replace(item.tls, certs=()))
                 if item.tls is not None else item for item in listen)


def running_config(new: Config, old: Config) -> Config:
    """The config the running lb goes on with: `new`, except for the restart-only settings;
    each running TLS listener takes its certificates from `new` when `new` has it too."""
    kept = dataclasses.replace(new, **{name: getattr(old, name) for name in RESTART_ONLY})
    certs = {item.address: item.tls.certs for item in new.listen if item.tls is not None}
    listen = tuple(dataclasses.replace(item, tls=dataclasses.replace(item.tls, certs=certs[item.address]))
                   if item.tls is not None and item.address in certs else item for item in old.listen)
    return dataclasses.replace(kept, listen=listen)
