"""Cluster mode's desired state without etcd: the document, its checks, the plan that brings an
lb to it (lb/core/desired.py), and its application to a control plane (lb/control/desired.py).
Against a real etcd: tests/e2e/test_cluster.py."""

import asyncio
import json

import pytest

from lb.control.plane import Control
from lb.core import desired
from lb.core.config import parse_config
from lb.core.desired import Action, document, parse, plan, server_entry
from lb.core.commands import backend_config
from lb.core.errors import CommandError, InvalidValue


def entry(state="ready", version="v1", weight=100, max_conns=0, address="127.0.0.1:9001") -> dict:
    return server_entry(state, version, weight, max_conns, address)


def doc(servers: dict, versions=("v1",), target=None) -> dict:
    return document(servers, list(versions), target)


# (this lb's servers, its versions, its target, the document, known) -> the actions, in order
PLANS = [
    ("in step: nothing to do",
     {"web1": entry()}, ["v1"], None, doc({"web1": entry()}), {"web1"}, []),
    ("drained elsewhere: drained here",
     {"web1": entry()}, ["v1"], None, doc({"web1": entry("drained")}), set(), [Action("state", "web1", "drain")]),
    ("draining here counts as drained",
     {"web1": entry("draining")}, ["v1"], None, doc({"web1": entry("drained")}), set(), []),
    ("back in service",
     {"web1": entry("drained")}, ["v1"], None, doc({"web1": entry("ready")}), set(),
     [Action("state", "web1", "ready")]),
    ("maint from ready and from drained",
     {"web1": entry(), "web2": entry("drained")}, ["v1"], None,
     doc({"web1": entry("maint"), "web2": entry("maint")}), set(),
     [Action("state", "web1", "maint"), Action("state", "web2", "maint")]),
    ("maint stays maint when the document says drained (no way but through service)",
     {"web1": entry("maint")}, ["v1"], None, doc({"web1": entry("drained")}), set(), []),
    ("at start (new): the restore events",
     {"web1": entry("new"), "web2": entry("new"), "web3": entry("new")}, ["v1"], None,
     doc({"web1": entry(), "web2": entry("drained"), "web3": entry("maint")}), set(),
     [Action("state", "web1", "start"), Action("state", "web2", "restore_drained"),
      Action("state", "web3", "restore_maint")]),
    ("a new version is set before the node comes back, and ordered",
     {"web1": entry("drained")}, ["v1"], None, doc({"web1": entry("ready", "v2")}, ["v1", "v2"], "v2"), set(),
     [Action("version", "web1", "v2"), Action("state", "web1", "ready"), Action("order", "", ["v1", "v2"]),
      Action("target", "", "v2")]),
    ("settings",
     {"web1": entry()}, ["v1"], None, doc({"web1": entry(weight=0, max_conns=5, address="127.0.0.1:9009")}), set(),
     [Action("address", "web1", "127.0.0.1:9009"), Action("weight", "web1", 0), Action("max_conns", "web1", 5)]),
    ("a server added elsewhere joins",
     {"web1": entry()}, ["v1"], None, doc({"web1": entry(), "web9": entry("maint")}), {"web1"},
     [Action("add", "web9", entry("maint"))]),
    ("a server deleted elsewhere goes",
     {"web1": entry(), "web9": entry("maint")}, ["v1"], None, doc({"web1": entry()}), {"web1", "web9"},
     [Action("remove", "web9")]),
    ("a server the fleet never listed stays (this lb's own config)",
     {"web1": entry(), "web7": entry()}, ["v1"], None, doc({"web1": entry()}), {"web1"}, []),
    ("the order: the document's, for the versions this lb knows",
     {"web1": entry()}, ["v2", "v1", "v3"], None, doc({"web1": entry()}, ["v1", "v2", "v9"]), set(),
     [Action("order", "", ["v1", "v2"])]),
    ("the order holds already (other versions around it do not matter)",
     {"web1": entry()}, ["v1", "v0", "v2"], None, doc({"web1": entry()}, ["v1", "v2"]), set(), []),
    ("no target in the document: this lb's stays (its move ends by itself)",
     {"web1": entry()}, ["v1"], "v1", doc({"web1": entry()}), set(), []),
]


@pytest.mark.parametrize("why, local, versions, target, document_, known, actions", PLANS, ids=[p[0] for p in PLANS])
def test_the_plan_brings_an_lb_to_the_document(why, local, versions, target, document_, known, actions):
    assert plan(local, versions, target, document_, known) == actions


def test_every_pair_of_states_has_an_event_or_a_reason_to_stay():
    for have in ("new", "ready", "drained", "maint"):
        for want in desired.WANTED_STATES:
            event = desired.EVENTS.get((have, want))
            if have == want or (have, want) == ("maint", "drained"):
                assert event is None
            else:
                assert event is not None, (have, want)


def test_a_document_round_trips_through_json():
    written = doc({"web1": entry("drained", "v2", 5, 3, "10.0.0.1:80")}, ["v1", "v2"], "v2")
    assert parse(json.dumps(written)) == written
    assert parse(json.dumps(written).encode()) == written


@pytest.mark.parametrize("raw, said", [
    ("{", "not JSON"),
    ("[]", "expected a mapping"),
    ('{"format": 2, "servers": {}}', "format: expected 1, got 2"),
    ('{"format": 1}', "servers: expected a mapping"),
    ('{"format": 1, "servers": {"web 1": {}}}', "servers.web 1"),
    ('{"format": 1, "servers": {"web1": []}}', "servers.web1: expected a mapping"),
    ('{"format": 1, "servers": {"web1": {"state": "draining"}}}', "servers.web1.state: expected one of ready, drained"),
    ('{"format": 1, "servers": {"web1": {"state": "ready", "version": "v1\\r\\nX: 1", "weight": 1, '
     '"address": "127.0.0.1:1"}}}', "servers.web1.version"),
    ('{"format": 1, "servers": {"web1": {"state": "ready", "version": "v1", "weight": 5000, '
     '"address": "127.0.0.1:1"}}}', "servers.web1.weight"),
    ('{"format": 1, "servers": {"web1": {"state": "ready", "version": "v1", "weight": 1, '
     '"address": "nowhere"}}}', "servers.web1.address"),
    ('{"format": 1, "servers": {}, "versions": "v1"}', "versions: expected a list"),
    ('{"format": 1, "servers": {}, "versions": ["v 1"]}', "versions[0]"),
    ('{"format": 1, "servers": {}, "target": 7}', "target"),
])
def test_a_bad_document_is_refused_whole_with_the_key_path(raw, said):
    with pytest.raises(InvalidValue) as caught:
        parse(raw)
    assert said in caught.value.message


# -- applied to a control plane -------------------------------------------------------------------

def control_with(tmp_path, loop) -> Control:
    config = parse_config(
        "backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n  - {name: web2, address: '127.0.0.1:9002'}\n"
        f"state_file: {tmp_path / 'lb.state'}\n"
        "cluster: {endpoints: ['127.0.0.1:1'], name: prod}\n")
    control = Control(config, loop)
    control.place_nodes()
    return control


async def test_applying_a_document_changes_the_pool_and_writes_the_state_file(tmp_path):
    control = control_with(tmp_path, asyncio.get_running_loop())
    pool = control.pool
    servers = {n: entry(address=pool.backends[n].address) for n in ("web1", "web2")}
    servers["web1"] = {**servers["web1"], "state": "drained", "weight": 3}
    servers["web9"] = entry("ready", "v2", address="127.0.0.1:9009")
    control.desired.apply(doc(servers, ["v1", "v2"]), 7)
    web1, web9 = pool.backends["web1"], pool.backends["web9"]
    assert (str(web1.admin_state), web1.weight) == ("draining", 3)
    assert (str(web9.admin_state), str(web9.health), web9.version) == ("ready", "down", "v2")  # checked first
    assert control.desired.revision == 7 and control.desired.known == {"web1", "web2", "web9"}
    saved = json.loads((tmp_path / "lb.state").read_text())
    assert saved["servers"]["web1"]["weight"] == 3 and saved["servers"]["web9"]["added"] is True
    # the same document again: nothing to do
    assert control.desired.apply(doc(servers, ["v1", "v2"]), 8) == []
    # web9 deleted elsewhere while it serves here: kept, and said (a document never empties a fleet)
    del servers["web9"]
    control.desired.apply(doc(servers, ["v1", "v2"]), 9)
    assert str(web9.admin_state) == "ready" and "web9" in pool.backends
    # drained first everywhere, then deleted: it goes once idle
    servers["web9"] = entry("drained", "v2", address="127.0.0.1:9009")
    control.desired.apply(doc(servers, ["v1", "v2"]), 10)
    web9.inflight = 1
    del servers["web9"]
    control.desired.apply(doc(servers, ["v1", "v2"]), 11)
    assert "web9" in control.removing and "web9" in pool.backends
    # web2 deleted elsewhere while in maint and idle here: gone at once
    servers["web2"] = {**servers["web2"], "state": "maint"}
    control.desired.apply(doc(servers, ["v1", "v2"]), 12)
    del servers["web2"]
    control.desired.apply(doc(servers, ["v1", "v2"]), 13)
    assert "web2" not in pool.backends
    assert json.loads((tmp_path / "lb.state").read_text())["cluster_known"] == ["web1"]     # web9: leaving


async def test_a_refused_document_changes_nothing_and_is_said_once(tmp_path, caplog):
    control = control_with(tmp_path, asyncio.get_running_loop())
    for _ in range(3):
        control.desired._apply_raw(b'{"format": 9}', 5)
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(said) == 1 and "revision 5" in said[0] and "format: expected 1" in said[0]
    assert control.desired.revision == 0
    assert [str(n.admin_state) for n in control.pool.backends.values()] == ["ready", "ready"]


# -- only what changed: plan against the previous document, patch a command's change -----------

def test_with_the_previous_document_only_what_the_document_changed_is_applied():
    previous = doc({"web1": entry(), "web2": entry()})
    # this lb's checks adopted v2 on web1 and a reload set web2's weight to 50: the fleet's
    # document, unchanged for those fields, leaves them; its drain of web2 is applied
    local = {"web1": entry(version="v2"), "web2": entry(weight=50)}
    new = doc({"web1": entry(), "web2": entry("drained")})
    assert plan(local, ["v1", "v2"], None, new, set(), previous) == [Action("state", "web2", "drain")]
    # the fleet sets web1's version: applied, though the field differed before too
    new = doc({"web1": entry(version="v3"), "web2": entry()}, ["v1", "v3"])
    assert plan(local, ["v1", "v2"], None, new, set(), previous) == [Action("version", "web1", "v3"),
                                                                     Action("order", "", ["v1", "v3"])]


PATCHES = [
    ("a drain writes that node only, not this lb's own weight",
     {"web1": entry(), "web2": entry()}, {"web1": entry(), "web2": entry(weight=50)},
     {"web1": entry("drained"), "web2": entry(weight=50)}, set(),
     {"web1": entry("drained"), "web2": entry()}),
    ("an added server is written",
     {"web1": entry()}, {"web1": entry()}, {"web1": entry(), "web9": entry("maint")}, set(),
     {"web1": entry(), "web9": entry("maint")}),
    ("a deleted server goes",
     {"web1": entry(), "web9": entry("maint")}, {"web1": entry(), "web9": entry("maint")}, {"web1": entry()}, set(),
     {"web1": entry()}),
    ("a server leaving this lb (deleted by the fleet, draining here) is never written back",
     {"web1": entry()}, {"web1": entry(), "web9": entry()}, {"web1": entry(), "web9": entry("drained")}, {"web9"},
     {"web1": entry()}),
]


@pytest.mark.parametrize("why, base, before, after, leaving, servers", PATCHES, ids=[p[0] for p in PATCHES])
def test_a_command_writes_only_what_it_changed(why, base, before, after, leaving, servers):
    patched = desired.patch(doc(base), doc(before), doc(after), leaving)
    assert patched["servers"] == servers and patched["versions"] == ["v1"] and patched["target"] is None


def test_a_new_target_and_order_are_written_whole():
    patched = desired.patch(doc({"web1": entry()}), doc({"web1": entry()}), doc({"web1": entry()}, ["v1", "v2"], "v2"),
                            set())
    assert (patched["versions"], patched["target"]) == (["v1", "v2"], "v2")


@pytest.mark.parametrize("raw", ["[" * 100000, '{"format": 1, "servers": {}, "versions": ["v1", "v1"]}'])
def test_a_document_nested_too_deep_or_with_a_label_twice_is_refused(raw):
    with pytest.raises(InvalidValue):
        parse(raw)


# -- a command's change against an in-memory store (the real one: tests/e2e/test_cluster.py) ---

class MemoryStore:
    """etcd's get and txn, as lb/control/desired.py calls them; `before_txn` runs first (another
    lb's write), `fail_txn` makes the answer lost."""

    def __init__(self):
        self.value, self.mod, self.revision = None, 0, 1
        self.before_txn = None
        self.fail_txn = False
        self.txns = 0

    def put(self, value: str) -> None:
        self.revision += 1
        self.value, self.mod = value, self.revision

    async def get(self, key):
        from lb.control.etcd import KeyValue, Range
        return Range((KeyValue(key, self.value.encode(), self.mod),) if self.value is not None else (), self.revision)

    async def txn(self, compares, success, failure=()):
        from lb.control.etcd import EtcdError, TxnResult
        self.txns += 1
        if self.before_txn is not None:
            self.before_txn, hook = None, self.before_txn
            hook()
        if self.fail_txn:
            raise EtcdError("etcd /v3/kv/txn: the answer was lost, the write may have been applied")
        if int(compares[0].value) != self.mod:
            return TxnResult(False, self.revision)
        self.put(success[0].value)
        return TxnResult(True, self.revision)


def with_store(tmp_path, loop):
    control = control_with(tmp_path, loop)
    store = MemoryStore()
    control.desired.client = store
    return control, store


def stored(store) -> dict:
    return json.loads(store.value)


async def test_the_first_change_writes_the_lbs_state_and_the_next_only_what_changed(tmp_path):
    control, store = with_store(tmp_path, asyncio.get_running_loop())
    web1, web2 = control.pool.backends["web1"], control.pool.backends["web2"]
    payload, revision = await control.desired.change(lambda: control.set_admin_state(web1, "drain") and {})
    assert revision == store.mod and stored(store)["servers"]["web1"]["state"] == "drained"
    control.set_weight(web2, 50)                     # this lb's own (a reload): not the fleet's
    await control.desired.change(lambda: control.set_admin_state(web1, "ready") and {})
    assert stored(store)["servers"]["web1"]["state"] == "ready" and stored(store)["servers"]["web2"]["weight"] == 100
    # the same again: nothing to write
    txns = store.txns
    await control.desired.change(lambda: control.set_admin_state(web1, "ready") and {})
    assert store.txns == txns


async def test_a_change_another_lb_wrote_first_is_undone_here_and_the_command_runs_on_theirs(tmp_path):
    control, store = with_store(tmp_path, asyncio.get_running_loop())
    web1 = control.pool.backends["web1"]
    await control.desired.change(lambda: control.set_weight(web1, 10) or {})
    theirs = stored(store)
    theirs["servers"]["web2"]["weight"] = 7
    store.before_txn = lambda: store.put(json.dumps(theirs))
    runs = []

    def command():
        runs.append(str(web1.admin_state))
        control.set_admin_state(web1, "drain")
        return {}
    await control.desired.change(command)
    assert runs == ["ready", "ready"]                # undone, then run again on the newer document
    assert stored(store)["servers"]["web2"]["weight"] == 7 and stored(store)["servers"]["web1"]["state"] == "drained"
    assert control.pool.backends["web2"].weight == 7


async def test_an_unconfirmed_write_is_undone_here(tmp_path):
    control, store = with_store(tmp_path, asyncio.get_running_loop())
    web1 = control.pool.backends["web1"]
    store.fail_txn = True
    with pytest.raises(CommandError) as caught:
        await control.desired.change(lambda: control.add_node(backend_config(
            {"name": "web9", "address": "127.0.0.1:9009"})) and control.set_target("v2") or {})
    assert "undone on this lb" in caught.value.message
    assert "web9" not in control.pool.backends and control.pool.target is None and str(web1.admin_state) == "ready"


async def test_a_refused_stored_document_refuses_the_command_before_it_runs(tmp_path):
    control, store = with_store(tmp_path, asyncio.get_running_loop())
    store.put('{"format": 9}')
    ran = []
    with pytest.raises(CommandError) as caught:
        await control.desired.change(lambda: ran.append(1) or {})
    assert ran == [] and "refused" in caught.value.message and "nothing changed" in caught.value.message


async def test_a_deleted_document_is_written_again_by_the_next_change(tmp_path):
    control, store = with_store(tmp_path, asyncio.get_running_loop())
    web1 = control.pool.backends["web1"]
    await control.desired.change(lambda: control.set_weight(web1, 10) or {})
    store.revision += 1
    store.value, store.mod = None, 0                 # deleted by hand
    _, revision = await control.desired.change(lambda: control.set_weight(web1, 20) or {})
    assert revision == store.mod and stored(store)["servers"]["web1"]["weight"] == 20
    assert set(stored(store)["servers"]) == {"web1", "web2"}
