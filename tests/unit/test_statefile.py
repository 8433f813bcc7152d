"""statefile.py: admin states saved atomically and restored through the transition table,
every entry checked with the config's rules."""

import asyncio
import json
import logging

import pytest

from lb.control.plane import Control
from lb.control.statefile import load_state, save_state
from lb.core.config import parse_config
from lb.core.nodes import DRAINED, MAINT, NEW, READY


def make_control(tmp_path):
    config = parse_config(f"""
backends:
  - {{name: web1, address: '127.0.0.1:9001', version: v1}}
  - {{name: web2, address: '127.0.0.1:9002', version: v1}}
  - {{name: web3, address: '127.0.0.1:9003', version: v1}}
state_file: {tmp_path / 'lb.state'}
""", str(tmp_path / "lb.yaml"))
    return Control(config, asyncio.get_running_loop())


async def test_saved_states_come_back_through_the_table(tmp_path):
    control = make_control(tmp_path)
    control.place_nodes()
    nodes = control.pool.backends
    control.set_admin_state(nodes["web1"], "maint")
    control.set_admin_state(nodes["web2"], "drain")          # draining comes back drained
    nodes["web3"].version = "v2"
    control.pool.note_version("v2")
    save_state(control)
    again = make_control(tmp_path)
    assert sorted(load_state(again)) == ["web1 maint", "web2 drained"]
    states = {n.name: n.admin_state for n in again.pool.backends.values()}
    assert states == {"web1": MAINT, "web2": DRAINED, "web3": READY}
    assert again.pool.backends["web3"].version == "v2" and again.pool.versions == ["v1", "v2"]


async def test_a_version_move_in_progress_survives_a_restart(tmp_path):
    """A deploy's target and a label no check has confirmed come back: after a restart the
    version check still protects (it does not adopt the node the deploy is checking)."""
    control = make_control(tmp_path)
    control.place_nodes()
    control.pool.set_target("v2")
    control.pool.relabel(control.pool.backends["web1"], "v2", pending=True)
    save_state(control)
    again = make_control(tmp_path)
    load_state(again)
    assert again.pool.target == "v2" and again.pool.backends["web1"].version_pending
    assert again.pool.move_in_progress() is not None
    fresh = make_control(tmp_path / "elsewhere")              # no state file: nothing in progress
    assert fresh.pool.target is None and fresh.pool.move_in_progress() is None


@pytest.mark.parametrize("entry, where", [
    ({"state": "ready", "version": "v1\r\nSet-Cookie: x=1", "weight": 100, "address": "127.0.0.1:9001"},
     "servers.web1.version"),
    ({"state": "ready", "version": "v1", "weight": "100", "address": "127.0.0.1:9001"}, "servers.web1.weight"),
    ({"state": "sleeping", "version": "v1", "weight": 100, "address": "127.0.0.1:9001"}, "servers.web1.state"),
    ({"state": "maint", "version": "v1", "weight": 100, "address": "$(x):1"}, "servers.web1.address"),
    ("drained", "servers.web1"),
])
async def test_a_bad_entry_is_ignored_with_its_key_path_and_lb_starts(tmp_path, caplog, entry, where):
    (tmp_path / "lb.state").write_text(json.dumps({"format": 1, "servers": {
        "web1": entry,
        "web2": {"state": "drained", "version": "v1", "weight": 100, "address": "127.0.0.1:9002"}}}))
    control = make_control(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert load_state(control) == ["web2 drained"]
    assert f"{tmp_path / 'lb.state'}: {where}: expected" in caplog.text
    web1 = control.pool.backends["web1"]
    assert web1.admin_state == NEW and web1.version == "v1" and web1.weight == 100   # the config's
    control.place_nodes()
    assert web1.admin_state == READY


async def test_an_unreadable_state_file_starts_from_the_config(tmp_path, caplog):
    (tmp_path / "lb.state").write_text("{not json")
    control = make_control(tmp_path)
    assert load_state(control) == [] and "unreadable" in caplog.text


async def test_the_file_is_replaced_whole_and_private(tmp_path):
    control = make_control(tmp_path)
    control.place_nodes()
    save_state(control)
    path = tmp_path / "lb.state"
    assert json.loads(path.read_text())["servers"]["web1"]["state"] == "ready"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["lb.state"]       # no temp file left
