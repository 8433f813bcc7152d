"""reload.py: old config + new config + the nodes as they run -> the actions, in order."""

import pytest

from lb.core.config import parse_config
from lb.core.reload import ADD, ADDRESS, AT_RESTART, BALANCE, KEEP, REMOVE, VERSION, WEIGHT, RunningNode, plan_reload, running_config

BASE = """
listen: 127.0.0.1:8080
backends:
  - {name: web1, address: '127.0.0.1:9001', version: v1, weight: 100}
  - {name: web2, address: '127.0.0.1:9002', version: v1, weight: 100}
"""


def config(text=BASE, **replace):
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_config(text)


WEB1_V2 = {"version: v1, weight: 100}\n  - {name: web2": "version: v2, weight: 100}\n  - {name: web2"}


def running(**changes):
    nodes = {"web1": RunningNode("127.0.0.1", 9001, 100, "v1"), "web2": RunningNode("127.0.0.1", 9002, 100, "v1")}
    nodes.update(changes)
    return nodes


def kinds(actions):
    return [(a.kind, a.name, a.value) for a in actions]


CASES = [
    ("nothing changed", config(), running(), set(), []),
    ("a new backend", config(BASE + "  - {name: web3, address: '127.0.0.1:9003', version: v2}\n"),
     running(), set(), [(ADD, "web3", None)]),
    ("a backend gone", config(BASE.replace("  - {name: web2, address: '127.0.0.1:9002', version: v1, weight: 100}\n", "")),
     running(), set(), [(REMOVE, "web2", None)]),
    ("an address moved", config(**{"9002'": "9012'"}), running(), set(), [(ADDRESS, "web2", ("127.0.0.1", 9012))]),
    ("the file changed a weight", config(**{"v1, weight: 100}\n  - {name: web2": "v1, weight: 50}\n  - {name: web2"}),
     running(), set(), [(WEIGHT, "web1", 50)]),
    ("a runtime `set weight` the file did not touch stays", config(),
     running(web1=RunningNode("127.0.0.1", 9001, 7, "v1")), set(), []),
    ("a runtime `set version` the file did not touch stays", config(),
     running(web2=RunningNode("127.0.0.1", 9002, 100, "v2")), set(), []),
    ("the file moved a version the runtime had not", config(**WEB1_V2),
     running(), set(), [(VERSION, "web1", "v2")]),
    ("the file and the runtime agree already", config(**WEB1_V2),
     running(web1=RunningNode("127.0.0.1", 9001, 100, "v2")), set(), []),
    ("a backend being removed comes back", config(), running(), {"web2"}, [(KEEP, "web2", None)]),
    ("balance", config(BASE + "balance: round_robin\n"), running(), set(), [(BALANCE, "balance", "round_robin")]),
    ("listen only at restart", config(**{"8080": "8081"}), running(), set(), [(AT_RESTART, "listen", None)]),
    ("the cluster only at restart", config(BASE + "cluster: {store: etcd, endpoints: ['127.0.0.1:2379'], name: p}\n"),
     running(), set(), [(AT_RESTART, "cluster", None)]),
    ("the status page only at restart (its token, its actions)", config(BASE + "status: {enabled: false}\n"),
     running(), set(), [(AT_RESTART, "status", None)]),
]


@pytest.mark.parametrize("what, new, nodes, removing, expected", CASES, ids=[c[0] for c in CASES])
def test_plan_reload(what, new, nodes, removing, expected):
    actions = plan_reload(config(), new, nodes, removing)
    got = kinds(actions)
    if expected and expected[0][0] == ADD:
        assert [(k, n) for k, n, _ in got] == [(ADD, "web3")] and actions[0].value.version == "v2"
        assert actions[0].message == "added web3 127.0.0.1:9003 v2 (maint)"
    else:
        assert got == expected
    assert all(a.message for a in actions if a.kind != KEEP)


def test_the_running_config_keeps_the_restart_only_settings():
    old, new = config(), config(BASE.replace("8080", "8081") + "retries: 5\n")
    kept = running_config(new, old)
    assert kept.listen == old.listen and kept.retries == 5


TLS = BASE.replace("listen: 127.0.0.1:8080", "listen:\n  - 127.0.0.1:8080\n"
                   "  - {address: 127.0.0.1:8443, tls: {certs: [{cert: a.pem, key: a.key}], min_version: TLSv1.2}}")


@pytest.mark.parametrize("change, at_restart, certs", [
    ({}, False, ["a.pem"]),
    ({"cert: a.pem, key: a.key": "cert: b.pem, key: b.key"}, False, ["b.pem"]),           # certificates: now
    ({"{cert: a.pem, key: a.key}": "{cert: a.pem, key: a.key}, {cert: c.pem, key: c.key}"}, False, ["a.pem", "c.pem"]),
    ({"min_version: TLSv1.2": "min_version: TLSv1.3"}, True, ["a.pem"]),                  # the listener: at restart
    ({"127.0.0.1:8443": "127.0.0.1:9443"}, True, ["a.pem"]),
])
def test_a_reload_takes_new_certificates_and_leaves_the_listeners(change, at_restart, certs):
    old, new = config(TLS), config(TLS, **change)
    actions = plan_reload(old, new, running(), set())
    assert [(a.kind, a.name) for a in actions if a.kind == AT_RESTART] == ([(AT_RESTART, "listen")] if at_restart else [])
    kept = running_config(new, old)
    assert [item.address for item in kept.listen] == [item.address for item in old.listen]
    assert kept.listen[1].tls.min_version == old.listen[1].tls.min_version
    assert [c.cert for c in kept.listen[1].tls.certs] == certs
