"""A deploy's progress as the lbs' status page hears it (lb/deploy/progress.py, the admin side's
`note deploy`, and lb/core/statusview.py deploy_text), with `now` passed in."""

import asyncio
import json

import pytest

from lb.control.admin import Admin
from lb.control.plane import Control
from lb.core.commands import parse
from lb.core.config import parse_config
from lb.core.statusview import deploy_text
from lb.deploy.progress import MAX_GATES, MAX_NOTE_BYTES, Progress

EVENTS = [
    ("start", {"to": "v2", "phase": "deploying"}),
    ("batch", {"index": 1, "of": 3, "nodes": ["web1"], "canary": True}),
    ("step", {"node": "web1", "step": "drain", "direction": "forward", "status": "start"}),
    ("bake", {"nodes": ["web1"], "seconds": 30, "canary": True}),
    ("gate", {"kind": "check", "name": "logs", "outcome": "pass"}),
]


def test_the_record_follows_the_deploy():
    progress = Progress("v2")
    for kind, fields in EVENTS:
        assert progress.event(kind, fields, 1000.0)
    record = progress.record
    assert record["batch"] == {"index": 1, "of": 3, "nodes": ["web1"], "canary": True}
    assert (record["phase"], record["bake_until"], record["gates"]) == ("baking", 1030.0, {"check logs": "pass"})
    assert record["steps"] == {"web1": "drain start"}
    assert not progress.event("stats_row", {}, 1000.0)
    progress.event("baked", {"nodes": ["web1"], "ok": True}, 1031.0)
    assert (record["phase"], record["done"], record["bake_until"]) == ("baked", 1, None)
    progress.finish("done")
    assert record["result"] == "done"


def test_gates_kept_are_bounded_and_the_line_fits_the_admin_socket():
    progress = Progress("v2")
    for i in range(50):
        progress.event("gate", {"kind": "prometheus", "name": f"gate {i}", "outcome": "pass"}, 0.0)
    for i in range(500):
        progress.event("step", {"node": f"web{i}", "step": "wait up", "direction": "forward", "status": "ok"}, 0.0)
    assert len(progress.record["gates"]) == MAX_GATES and "prometheus gate 49" in progress.record["gates"]
    line = progress.line()
    assert len(line) <= MAX_NOTE_BYTES + len("note deploy ") and " " not in line[len("note deploy "):]
    command, args = parse(line)
    assert command.words == ("note", "deploy") and len(args) == 1


async def test_lb_keeps_the_note_and_the_page_says_it_in_words():
    control = Control(parse_config("backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n"),
                      asyncio.get_running_loop())
    admin = Admin(control, None)
    progress = Progress("v2")
    for kind, fields in EVENTS:
        progress.event(kind, fields, 1000.0)
    command, args = parse(progress.line())
    assert admin.note_deploy(*args) == {}
    at, note = control.deploy_note
    text = deploy_text({"at": 1000.0, "note": note}, 1010.0)
    assert text.startswith("Deploy to v2 (pid ") and "baking, batch 1 of 3 (canary): web1" in text
    assert "bake ends in 20 s" in text and "gates: check logs pass" in text and text.endswith("Heard 10 s ago.")
    assert deploy_text(None, 0.0) == "No deploy has reported to this lb since it started."


@pytest.mark.parametrize("text", ["[1]", "{", "x", json.dumps("string")])
async def test_a_note_that_is_not_a_json_object_is_refused(text):
    from lb.core.errors import CommandError
    control = Control(parse_config("backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n"),
                      asyncio.get_running_loop())
    with pytest.raises(CommandError):
        Admin(control, None).note_deploy(text)
    assert control.deploy_note is None
