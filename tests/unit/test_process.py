"""lb/process: the upgrade's state table and gate, and the message tables of both channels
(every kind one side sends has a handler on the other)."""

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from lb.core.errors import CommandError
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


class Master:
    """What `Upgrade.run` needs of serve.py's master (its `Host`), over a real control plane."""

    def __init__(self, control):
        self.control = control
        self.workers = self.admin_server = self
        self.metrics = None
        self.stop = asyncio.Event()
        self.reports_to = None                  # where the workers' reports go
        self.reclaimed = False                  # the admin socket's path, after a failure

    def send_reports_to(self, receiver) -> None:
        self.reports_to = receiver

    async def reclaim(self) -> None:
        self.reclaimed = True

    def successor_args(self) -> list[str]:
        return []

    def handed_sockets(self) -> list:
        return []


@pytest.fixture
async def upgrading(monkeypatch):
    """An `Upgrade` of a master whose new master serves, or fails, when the test settles the
    future it returns: handoff.Successor would start a real lb (tests/e2e/test_upgrade.py does)."""
    from lb.control.plane import Control
    from lb.core.config import parse_config

    loop = asyncio.get_running_loop()
    new_master = loop.create_future()

    class Starting:
        def __init__(self, loop, workers, config_args):
            pass

        async def start(self, state, sockets) -> dict:
            return await new_master

        def relay(self, report) -> None:
            pass

        def take_over(self) -> None:
            pass

    monkeypatch.setattr(upgrade, "Successor", Starting)
    # port 1: a thawed control plane starts its health checks, and they should reach nobody
    control = Control(parse_config("backends: [{name: web1, address: '127.0.0.1:1'}]"), loop)
    master = Master(control)
    yield upgrade.Upgrade(loop, master), new_master, master
    await control.stop()


async def frozen(gate) -> None:
    """Until `run` has frozen the gate (bounded)."""
    for _ in range(200):
        if gate.frozen:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the upgrade is {gate.state}, not frozen")


@pytest.mark.parametrize("relayed", [False, True], ids=["thaw", "hand_over"])
async def test_commands_wait_at_the_gate_while_frozen_and_pass_once_it_settles(upgrading, relayed):
    gate, new_master, master = upgrading
    assert not gate.frozen and gate.new_master is None
    await gate.settled()                                # serving: nothing to wait for
    running = asyncio.ensure_future(gate.run())
    await frozen(gate)
    waiting = asyncio.ensure_future(gate.settled())
    await asyncio.sleep(0)
    assert not waiting.done() and master.reports_to is not master.control.on_report    # held
    with pytest.raises(UpgradeRefused, match="in progress already"):
        await gate.run()                                # one at a time
    if relayed:
        new_master.set_result({"pid": 4242, "admin": "/run/lb.sock", "workers": 2})
        assert (await asyncio.wait_for(running, 1))["upgrade"]["new_pid"] == 4242
        assert gate.new_master == upgrade.NewMaster(4242, "/run/lb.sock") and gate.handed_over.done()
        assert master.stop.is_set()                     # this master retires
    else:
        new_master.set_exception(handoff.UpgradeFailed("the new master exited with code 1: bad config"))
        with pytest.raises(CommandError, match="serves on as before: the new master exited with code 1"):
            await asyncio.wait_for(running, 1)
        assert gate.new_master is None and not gate.handed_over.done() and not master.stop.is_set()
        assert master.reports_to == master.control.on_report and master.reclaimed
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

async def test_admin_waits_at_a_frozen_gate_and_is_relayed_to_the_new_master_once_handed_over(tmp_path,
                                                                                           upgrading):
    from lb.control.admin import Admin

    async def new_master_answers(reader, writer):
        line = await reader.readline()
        writer.write(b'{"ok": true, "relayed": "%s"}\n' % line.strip())
        await writer.drain()
        writer.close()

    path = str(tmp_path / "new.sock")
    server = await asyncio.start_unix_server(new_master_answers, path)
    gate, new_master, master = upgrading
    admin = Admin(master.control, None, gate)
    assert (await admin.execute("show servers"))["ok"]                # serving: answered here
    running = asyncio.ensure_future(gate.run())
    await frozen(gate)
    waiting = asyncio.ensure_future(admin.execute("show servers"))
    await asyncio.sleep(0.05)
    assert not waiting.done()                                         # frozen: it waits
    new_master.set_result({"pid": 4242, "admin": path, "workers": 1})
    await asyncio.wait_for(running, 2)
    assert (await asyncio.wait_for(waiting, 2)) == {"ok": True, "relayed": "show servers"}
    assert (await admin.execute("help")) == {"ok": True, "relayed": "help"}
    server.close()
    await server.wait_closed()
    Path(path).unlink(missing_ok=True)                                # the new master is gone
    refused = await admin.execute("help")
    assert not refused["ok"] and "new master pid 4242" in refused["error"]
