"""nodes.py and commands.py: the admin state table, the node table, command parsing."""

import pytest

from lb.core.commands import COMMANDS, parse
from lb.core.config import BackendConfig
from lb.core.errors import CommandError
from lb.core.nodes import ADMIN_STATES, DRAINED, DRAINING, MAINT, NEW, READY, TRANSITIONS, Node, Pool, transition

EVENTS = ["drain", "ready", "maint", "idle", "deadline", "start", "join", "restore_drained",
          "restore_maint", "restore_draining"]
BIRTH = {"start": READY, "join": MAINT, "restore_drained": DRAINED, "restore_maint": MAINT,
         "restore_draining": DRAINING}
EXPECTED = {(NEW, event): BIRTH.get(event) for event in EVENTS} | {
    (state, event): None for state in ADMIN_STATES for event in BIRTH} | {
    (READY, "drain"): DRAINING, (DRAINING, "drain"): DRAINING, (DRAINED, "drain"): DRAINED,
    (MAINT, "drain"): None,
    (READY, "ready"): READY, (DRAINING, "ready"): READY, (DRAINED, "ready"): READY, (MAINT, "ready"): READY,
    (READY, "maint"): MAINT, (DRAINING, "maint"): MAINT, (DRAINED, "maint"): MAINT, (MAINT, "maint"): MAINT,
    (READY, "idle"): None, (DRAINING, "idle"): DRAINED, (DRAINED, "idle"): None, (MAINT, "idle"): None,
    (READY, "deadline"): None, (DRAINING, "deadline"): DRAINED, (DRAINED, "deadline"): None,
    (MAINT, "deadline"): None,
}


PATH_TO = {NEW: [], READY: ["start"], MAINT: ["join"], DRAINED: ["restore_drained"],
           DRAINING: ["start", "drain"]}


def backend(state=READY, name="web3"):
    """A node brought to `state` through the table itself."""
    node = Node(BackendConfig(name=name, address=("127.0.0.1", 9003)))
    for event in PATH_TO[state]:
        transition(node, event, now=0.0)
    assert node.admin_state == state
    return node


def test_the_expected_table_covers_every_pair():
    assert set(EXPECTED) == {(s, e) for s in (NEW, *ADMIN_STATES) for e in EVENTS}
    assert {k for k, v in EXPECTED.items() if v} == set(TRANSITIONS)


@pytest.mark.parametrize("state, event", list(EXPECTED))
def test_transitions(state, event):
    node = backend(state)
    expected = EXPECTED[state, event]
    if expected is None:
        with pytest.raises(CommandError) as info:
            transition(node, event, now=100.0)
        assert f"'{event}'" in info.value.message and f"web3 is {state}" in info.value.message
        assert node.admin_state == state
    else:
        assert transition(node, event, now=100.0) == expected
        assert node.admin_state == expected


def test_drain_start_time_is_kept_when_drained_again():
    node = backend()
    transition(node, "drain", now=10.0)
    transition(node, "drain", now=20.0)
    assert node.drain_started == 10.0


@pytest.mark.parametrize("line, words, args", [
    ("help", ("help",), []),
    ("show servers", ("show", "servers"), []),
    ("  show   server   web1 \n", ("show", "server"), ["web1"]),
    ("wait web3 drained", ("wait",), ["web3", "drained"]),
    ("wait web3 drained 30s", ("wait",), ["web3", "drained", "30s"]),
    ("add server web11 127.0.0.1:9011", ("add", "server"), ["web11", "127.0.0.1:9011"]),
    ("add server web11 127.0.0.1:9011 v2 50", ("add", "server"), ["web11", "127.0.0.1:9011", "v2", "50"]),
    ("set target v2", ("set", "target"), ["v2"]),
])
def test_parse(line, words, args):
    command, parsed = parse(line)
    assert command.words == words and parsed == args


@pytest.mark.parametrize("line, message", [
    ("", "empty command"),
    ("frobnicate web1", "unknown command 'frobnicate web1'; commands: add, del, drain, help"),
    ("drain", "usage: drain NAME"),
    ("drain web1 web2", "usage: drain NAME"),
    ("wait web1", "usage: wait NAME STATE [TIMEOUT]"),
    ("show", "usage: show servers | show server NAME | show info | show certs | show versions | show assets | show stats [NAME] "
             "| show latency NAME[,NAME...] WINDOW"),
    ("set colour web1 red", "usage: set version NAME VERSION | set weight NAME WEIGHT | set target VERSION"),
])
def test_parse_errors_carry_the_usage(line, message):
    with pytest.raises(CommandError) as info:
        parse(line)
    assert info.value.message.startswith(message), info.value.message


def test_every_command_has_a_unique_usage_and_summary():
    usages = [c.usage for c in COMMANDS]
    assert len(set(usages)) == len(usages) and all(c.summary for c in COMMANDS)


def test_the_audit_log_takes_every_command_that_changes_something_and_no_other():
    audited = {" ".join(c.words) for c in COMMANDS if c.audited}
    assert audited == {" ".join(c.words) for c in COMMANDS if c.mutates} | {"upgrade"}
    assert not any(c.words[0] in ("show", "help", "wait") for c in COMMANDS if c.audited)


def test_unknown_server_names_the_known_ones():
    pool = Pool([BackendConfig(name=f"web{i}", address=("127.0.0.1", 9000 + i)) for i in range(1, 11)])
    with pytest.raises(CommandError) as info:
        pool.get("web11")
    assert info.value.message == "unknown server 'web11'; servers: web1..web10"


def test_versions_keep_first_seen_order_and_target_is_newest():
    pool = Pool([BackendConfig(name="a", address=("h", 1), version="v2"),
                 BackendConfig(name="b", address=("h", 2), version="v1")])
    for node in pool.backends.values():
        transition(node, "start", 0.0)
    assert pool.versions == ["v2", "v1"]
    pool.set_target("v2")
    assert pool.versions == ["v1", "v2"]
    pool.note_version("v3")
    assert [row["version"] for row in pool.version_rows()] == ["v1", "v2", "v3"]
    assert pool.version_rows()[1]["ready_capacity"] == 100
