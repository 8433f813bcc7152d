"""Cluster mode's desired state: what every lb of a fleet should have, as one document. No I/O.

Theory of operation
-------------------
In cluster mode the fleet's admin state lives in etcd under `/lb/<name>/desired`, one JSON
document (one key: one revision to compare a write against, and a whole fleet of hundreds
of nodes is a few tens of KiB, far below etcd's value limit):

    {"format": 1, "versions": ["v1", "v2"], "target": "v2",
     "servers": {"web1": {"state": "drained", "version": "v2", "weight": 100,
                          "max_conns": 0, "address": "10.0.0.1:8080"}, ...}}

`state` is what an operator asked for: `ready`, `drained` (out of service: each lb drains
it, and when its requests in flight end is its own business) or `maint`. Health is not in it:
each lb checks the nodes from where it stands.

`document` makes a document from admin state (the state file's fields), `parse` checks one
read from etcd with the config's own rules (a document that fails is refused whole, never
applied in part), and `plan` is what it takes to go from this lb's state to a document: the
actions, in the order they must run (a node's settings before its state, so a node made
ready comes back with its new version; the version order and the target last).

A document carries the fleet's *changes*, not one lb's whole view: `patch` writes into the
stored document only what a command changed here (this lb's state before and after it), so
what is this lb's own (a `reload` of its config, a version its checks adopted) never
overwrites the fleet's. In the same spirit `plan`, given the `previous` document applied,
acts on a field only where the document changed it; without one (at start, or after a
refusal) it brings every field in line.

`known` is the set of servers the documents this lb applied listed: a server missing from
the new document is removed only if it was in `known` (another lb's `del server`), never
because this lb has a server the fleet never heard of (added by a reload of its own config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .config import parse_max_conns_value, parse_weight_value
from .errors import InvalidValue
from .nodes import DRAINED, DRAINING, MAINT, NEW, READY
from .values import check_name, check_version_label, format_hostport, parse_hostport

FORMAT = 1
WANTED_STATES = ("ready", "drained", "maint")
# this lb's admin state -> the state a document says for it
AS_WANTED = {READY: "ready", DRAINING: "drained", DRAINED: "drained", MAINT: "maint", NEW: "new"}
# (this lb's state as wanted, the document's) -> the transition table's event (lb/core/nodes.py)
EVENTS = {
    ("new", "ready"): "start", ("new", "drained"): "restore_drained", ("new", "maint"): "restore_maint",
    ("ready", "drained"): "drain", ("ready", "maint"): "maint",
    ("drained", "ready"): "ready", ("drained", "maint"): "maint",
    ("maint", "ready"): "ready",
    # ("maint", "drained"): none. Both are out of service, and the table has no way from maint
    # to drained but through service: the node stays in maint here.
}
# a node that joins from a document: Node starts NEW
JOIN_EVENTS = {"ready": "start", "drained": "restore_drained", "maint": "restore_maint"}


@dataclass(frozen=True)
class Action:
    kind: str          # add, address, version, weight, max_conns, state, remove, order, target
    name: str          # the server's, "" for order and target
    value: object = None


def server_entry(state: str, version: str, weight: int, max_conns: int, address: str) -> dict:
    return {"state": AS_WANTED.get(state, state), "version": version, "weight": weight, "max_conns": max_conns,
            "address": address}


def document(servers: dict[str, dict], versions: list[str], target: str | None) -> dict:
    """The document for this lb's admin state; `servers` maps a name to `server_entry`'s fields."""
    return {"format": FORMAT, "versions": list(versions), "target": target, "servers": dict(servers)}


def parse(raw: bytes | str) -> dict:
    """A document read from the store, checked. Raises InvalidValue naming the key path."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidValue(f"not JSON: {exc}") from None
    except RecursionError:                 # "[[[[..." nested past the parser's depth
        raise InvalidValue("nested too deeply to be a desired state") from None
    if not isinstance(doc, dict):
        raise InvalidValue(f"expected a mapping, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise InvalidValue(f"format: expected {FORMAT}, got {doc.get('format')!r} (written by another lb version?)")
    servers = doc.get("servers")
    if not isinstance(servers, dict):
        raise InvalidValue(f"servers: expected a mapping, got {servers!r}")
    checked = {}
    for name, entry in servers.items():
        checked[check_name_at(name)] = check_entry(name, entry)
    versions = doc.get("versions", [])
    if not isinstance(versions, list):
        raise InvalidValue(f"versions: expected a list, got {versions!r}")
    if len(set(map(str, versions))) != len(versions):
        raise InvalidValue(f"versions: a label twice in {versions!r}")
    for index, version in enumerate(versions):
        at(f"versions[{index}]", check_version_label, version)
    target = doc.get("target")
    if target is not None:
        at("target", check_version_label, target)
    return document(checked, versions, target)


def at(where: str, check, value):
    try:
        return check(value)
    except InvalidValue as exc:
        raise InvalidValue(f"{where}: {exc.message}") from None


def check_name_at(name) -> str:
    return at(f"servers.{name}", check_name, name)


def check_entry(name: str, entry) -> dict:
    where = f"servers.{name}"
    if not isinstance(entry, dict):
        raise InvalidValue(f"{where}: expected a mapping, got {entry!r}")
    state = entry.get("state")
    if state not in WANTED_STATES:
        raise InvalidValue(f"{where}.state: expected one of {', '.join(WANTED_STATES)}, got {state!r}")
    return {"state": state,
            "version": at(f"{where}.version", check_version_label, entry.get("version")),
            "weight": at(f"{where}.weight", parse_weight_value, entry.get("weight")),
            "max_conns": at(f"{where}.max_conns", parse_max_conns_value, entry.get("max_conns", 0)),
            "address": at(f"{where}.address", lambda a: format_hostport(*parse_hostport(a)), entry.get("address"))}


def plan(local: dict[str, dict], versions: list[str], target: str | None, doc: dict,
         known: set[str], previous: dict | None = None) -> list[Action]:
    """The actions that bring this lb (`local`: name -> server_entry fields, its state as
    AS_WANTED says; `versions` oldest first; its `target`) to `doc`; with the `previous`
    document applied, only where `doc` changed a field."""
    actions, states = [], []
    before = previous["servers"] if previous is not None else {}
    for name, want in doc["servers"].items():
        have = local.get(name)
        if have is None:
            actions.append(Action("add", name, want))
            continue
        was = before.get(name) if previous is not None else None
        for field in ("address", "version", "weight", "max_conns"):
            if have[field] != want[field] and (was is None or was[field] != want[field]):
                actions.append(Action(field, name, want[field]))
        if (have["state"], want["state"]) in EVENTS and (was is None or was["state"] != want["state"]
                                                         or have["state"] == "new"):
            states.append(Action("state", name, EVENTS[have["state"], want["state"]]))
    actions += states
    actions += [Action("remove", name) for name in local if name in known and name not in doc["servers"]]
    labels = set(versions) | {want["version"] for want in doc["servers"].values()}
    order = [v for v in doc["versions"] if v in labels]
    if [v for v in versions if v in order] != order and (previous is None or previous["versions"] != doc["versions"]):
        actions.append(Action("order", "", order))
    if doc["target"] is not None and doc["target"] != target and (previous is None
                                                                  or previous["target"] != doc["target"]):
        actions.append(Action("target", "", doc["target"]))
    return actions


def patch(base: dict, before: dict, after: dict, leaving: set[str]) -> dict:
    """`base` (the stored document) with what a command changed on this lb: each server whose
    entry differs between `before` and `after` (documents of this lb's state), one that went
    (`del server`), and the order and target when they changed. A server `leaving` this lb
    (deleted by the fleet, still draining here) is never written back."""
    servers = dict(base["servers"])
    for name, entry in after["servers"].items():
        if before["servers"].get(name) != entry and name not in leaving:
            servers[name] = entry
    for name in before["servers"].keys() - after["servers"].keys():
        servers.pop(name, None)
    versions, target = base["versions"], base["target"]
    if (before["versions"], before["target"]) != (after["versions"], after["target"]):
        versions, target = after["versions"], after["target"]
    return document(servers, versions, target)
