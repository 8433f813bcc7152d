"""A deploy's progress as the lbs' status page hears it (lb/deploy/progress.py, the admin side's
`note deploy`, and lb/core/statusview.py deploy_text), with `now` passed in."""

import asyncio
import json

import pytest

from lb.control.admin import Admin
from lb.control.plane import Control
from lb.core.commands import parse
from lb.core.config import parse_config
from lb.core.errors import CommandError
from lb.core.statusview import clean_note, deploy_text
from lb.deploy.progress import MAX_GATES, MAX_LINE_CHARS, Progress

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


def sent(line: str) -> dict:
    """What an lb reads of a note line: the admin parser's one argument, as JSON."""
    assert len(line.encode()) <= MAX_LINE_CHARS and line.isascii()
    command, args = parse(line)
    assert command.words == ("note", "deploy") and len(args) == 1
    return json.loads(args[0])


def test_gates_kept_are_bounded_and_the_line_fits_the_admin_socket():
    progress = Progress("v2")
    for i in range(50):
        progress.event("gate", {"kind": "prometheus", "name": f"gate {i}", "outcome": "pass"}, 0.0)
    for i in range(500):
        progress.event("step", {"node": f"web{i}", "step": "wait up", "direction": "forward", "status": "ok"}, 0.0)
    assert len(progress.record["gates"]) == MAX_GATES and "prometheus gate 49" in progress.record["gates"]
    note = sent(progress.line())
    assert note["steps"] == {} and len(note["gates"]) == MAX_GATES      # the steps went first


@pytest.mark.parametrize("nodes", [1, 30, 80, 200, 2000])
def test_a_batch_of_any_size_is_told_in_a_line_that_parses(nodes):
    progress = Progress("v2 with spaces")
    names = [f"web-node-with-a-long-name-{i}" for i in range(nodes)]
    progress.event("batch", {"index": 1, "of": 1, "nodes": names, "canary": False}, 0.0)
    for i in range(MAX_GATES):
        progress.event("gate", {"kind": "prometheus", "name": f"error rate {i}", "outcome": "pass"}, 0.0)
    for name in names:
        progress.event("step", {"node": name, "step": "wait drained", "direction": "forward", "status": "ok"}, 0.0)
    note = clean_note(sent(progress.line()))
    batch = note["batch"]
    assert batch["nodes"] == names[:len(batch["nodes"])] and len(batch["nodes"]) + batch.get("more", 0) == nodes
    assert note["to"] == "v2 with spaces"
    text = deploy_text({"at": 0.0, "note": note}, 0.0)
    assert ("more" in batch) == (nodes >= 200) and len(note["gates"]) == MAX_GATES
    assert (f" and {batch['more']} more; gates:" if "more" in batch else f"{names[-1]}; gates:") in text


def test_even_long_texts_are_cut_to_fit():
    progress = Progress("v" * 5000)
    progress.record.update(by=" " * 5000, phase="p" * 5000, result=" x" * 5000)
    note = sent(progress.line())
    assert note["to"] == "v" * 100 and note["result"] == " x" * 50


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


@pytest.mark.parametrize("text", ["[1]", "{", "x", json.dumps("string"), '{"batch":{"nodes":5}}',
                                  '{"batch":{"nodes":[1]}}', '{"batch":[]}', '{"steps":{"web1":3}}', '{"to":7}',
                                  '{"bake_until":"soon"}', '{"done":true}', '{"gates":[]}', "[" * 5000])
async def test_a_note_of_another_shape_is_refused(text):
    control = Control(parse_config("backends:\n  - {name: web1, address: '127.0.0.1:9001'}\n"),
                      asyncio.get_running_loop())
    with pytest.raises(CommandError, match="expects a deploy's JSON object"):
        Admin(control, None).note_deploy(text)
    assert control.deploy_note is None


def test_a_note_keeps_the_keys_it_knows():
    note = clean_note({"to": "v2", "phase": "baking", "from_a_newer_deploy": [1], "batch": {"index": 1, "x": 2},
                       "bake_until": 10})
    assert note == {"to": "v2", "phase": "baking", "batch": {"index": 1}, "bake_until": 10}
    assert deploy_text({"at": 0.0, "note": note}, 5.0) == \
        "Deploy to v2 (?): baking, batch 1 of ?: , bake ends in 5 s. Heard 5 s ago."


class Batch:
    def __init__(self, *nodes):
        self.nodes = nodes


def test_the_plan_is_told_and_how_far_it_got():
    progress = Progress("v2")
    progress.plan([Batch("web1"), Batch("web2", "web3")])
    progress.event("baked", {"nodes": ["web1"], "ok": True}, 0.0)
    note = clean_note(sent(progress.line()))
    assert note["plan"] == [["web1"], ["web2", "web3"]]
    assert "; plan: web1 | web2 web3 (1 of 3 nodes done)." in deploy_text({"at": 0.0, "note": note}, 0.0)
    big = Progress("v2")
    big.plan([Batch(*(f"web-node-with-a-long-name-{i}" for i in range(b * 50, b * 50 + 50))) for b in range(4)])
    assert clean_note(sent(big.line()))["plan"] is None          # a plan too long for a line is left out


@pytest.mark.parametrize("plan", ['"web1"', '["web1"]', '[[1]]'])
def test_a_plan_of_another_shape_is_refused(plan):
    with pytest.raises(ValueError, match="plan"):
        clean_note(json.loads('{"plan":' + plan + '}'))
