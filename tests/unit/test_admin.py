"""The admin socket's handler table against lb/core/commands.py's rows: every row resolves."""

import inspect

import pytest

from lb.control.admin import HANDLERS
from lb.core.commands import COMMANDS
from lb.deploy.ctlview import TABLES


def test_every_command_row_has_a_handler_and_every_handler_a_row():
    assert set(HANDLERS) == {c.words for c in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_each_handler_takes_its_rows_arguments(command):
    params = list(inspect.signature(HANDLERS[command.words]).parameters.values())[1:]   # after self
    required = [p for p in params if p.default is inspect.Parameter.empty]
    assert (len(required), len(params) - len(required)) == (len(command.args), len(command.optional))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_a_command_that_replaces_the_master_is_awaited_and_has_no_state_to_save(command):
    if command.replaces_master:
        assert inspect.iscoroutinefunction(HANDLERS[command.words]) and not command.mutates


def test_every_ctl_table_names_a_command_row():
    assert set(TABLES) <= {c.words for c in COMMANDS}
