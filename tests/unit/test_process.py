"""lb/process: the upgrade's state table and gate, and the message tables of both channels
(every kind one side sends has a handler on the other)."""

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from lb.process import arbiter, handoff, upgrade, worker
from lb.process.upgrade import FROZEN, HANDED_OVER, SERVING, THAWED, TRANSITIONS, UpgradeRefused, next_state

LB = Path(__file__).resolve().parents[2] / "lb"
EVENTS = sorted({event for _, event in TRANSITIONS})
STATES = list(upgrade.UpgradeState)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
def test_every_pair_of_state_and_event_moves_as_the_table_says_or_is_refused_naming_both(state, event):
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) == TRANSITIONS[state, event]
        return
    with pytest.raises(UpgradeRefused) as refused:
        next_state(state, event)
    if event == "freeze":                               # what an operator reads
        assert refused.value.message == upgrade.REFUSALS[state]
    else:
        assert f"'{event}'" in refused.value.message and str(state) in refused.value.message


def test_the_table_is_the_upgrade_of_the_design():
    """serving -> frozen -> handed over | thawed; a thawed master can be upgraded again and
    one that handed over is done."""
    assert TRANSITIONS == {(SERVING, "freeze"): FROZEN, (THAWED, "freeze"): FROZEN,
                           (FROZEN, "hand_over"): HANDED_OVER, (FROZEN, "thaw"): THAWED}
    assert not any(state == HANDED_OVER for state, _ in TRANSITIONS)
    assert set(upgrade.REFUSALS) == {s for s in STATES if (s, "freeze") not in TRANSITIONS}


@pytest.mark.parametrize("outcome, relayed", [("thaw", False), ("hand_over", True)])
async def test_commands_wait_at_the_gate_while_frozen_and_pass_once_it_settles(outcome, relayed):
    gate = upgrade.Upgrade(asyncio.get_running_loop(), host=None)
    assert not gate.frozen and gate.new_master is None
    await gate.settled()                                # serving: nothing to wait for
    gate._move("freeze")
    waiting = asyncio.ensure_future(gate.settled())
    await asyncio.sleep(0)
    assert gate.frozen and not waiting.done()
    if relayed:
        gate.new_master = upgrade.NewMaster(4242, "/run/lb.sock")
    gate._move(outcome)
    await asyncio.wait_for(waiting, 1)
    assert not gate.frozen and gate.state == (HANDED_OVER if relayed else THAWED)


# -- the message tables -------------------------------------------------------------------------

def sent_kinds(path: Path, receiver: str | None = None) -> set[str]:
    """The literal kinds a module sends: `X.send("kind", ...)` (X ending in `receiver`, if given)."""
    kinds = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "send" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            if receiver is None or ast.unparse(node.func.value).endswith(receiver):
                kinds.add(node.args[0].value)
    return kinds


@pytest.mark.parametrize("table, owner, kinds", [
    (worker.FROM_MASTER, worker.WorkerProcess, sent_kinds(LB / "process" / "arbiter.py")),
    (arbiter.FROM_WORKER, arbiter.Arbiter, sent_kinds(LB / "process" / "worker.py")),
    (handoff.FROM_OLD_MASTER, handoff.Inherited, sent_kinds(LB / "process" / "handoff.py", "self.channel")),
    (handoff.FROM_NEW_MASTER, handoff.Successor,
     sent_kinds(LB / "serve.py", "inherited") | set(handoff.TO_OLD_MASTER)),
], ids=["worker hears the arbiter", "arbiter hears a worker", "new master hears the old",
        "old master hears the new"])
def test_every_kind_a_side_sends_has_a_handler_on_the_other_and_every_row_resolves(table, owner, kinds):
    assert kinds and kinds <= set(table), f"no handler for {kinds - set(table)}"
    for kind, handler in table.items():
        assert callable(handler) and getattr(owner, handler.__name__) is handler, kind
        assert len(inspect.signature(handler).parameters) >= 2, kind      # (self, [member,] payload)


def test_what_the_arbiter_sends_its_predecessor_has_a_wire_form_or_is_left_out_on_purpose():
    assert set(handoff.TO_OLD_MASTER) == {"view", "cut", "collect"}
    assert set(handoff.TO_OLD_MASTER) < set(worker.FROM_MASTER)


# -- admin passes the one gate --------------------------------------------------------------------

async def test_admin_waits_at_a_frozen_gate_and_is_relayed_to_the_new_master_once_handed_over(tmp_path):
    from lb.control.admin import Admin
    from lb.control.plane import Control
    from lb.core.config import parse_config

    async def new_master(reader, writer):
        line = await reader.readline()
        writer.write(b'{"ok": true, "relayed": "%s"}\n' % line.strip())
        await writer.drain()
        writer.close()

    path = str(tmp_path / "new.sock")
    server = await asyncio.start_unix_server(new_master, path)
    control = Control(parse_config("backends: [{name: web1, address: '127.0.0.1:9001'}]"),
                      asyncio.get_running_loop())
    gate = upgrade.Upgrade(asyncio.get_running_loop(), host=None)
    admin = Admin(control, None, gate)
    assert (await admin.execute("show servers"))["ok"]                # serving: answered here
    gate._move("freeze")
    waiting = asyncio.ensure_future(admin.execute("show servers"))
    await asyncio.sleep(0.05)
    assert not waiting.done()                                         # frozen: it waits
    gate.new_master = upgrade.NewMaster(4242, path)
    gate._move("hand_over")
    assert (await asyncio.wait_for(waiting, 2)) == {"ok": True, "relayed": "show servers"}
    assert (await admin.execute("help")) == {"ok": True, "relayed": "help"}
    server.close()
    gate.new_master = upgrade.NewMaster(4242, str(tmp_path / "gone.sock"))
    refused = await admin.execute("help")
    assert not refused["ok"] and "new master pid 4242" in refused["error"]
