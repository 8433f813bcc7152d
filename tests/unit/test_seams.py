"""seams.py: every implementation a seam names has every member the seam declares."""

import ast
import importlib
import inspect
import textwrap
from typing import Protocol

import pytest

from lb.core.seams import SEAMS

from test_control import FakeDataPlane


def declared(protocol) -> set[str]:
    """The members a Protocol declares, its bases' included."""
    names = set()
    for cls in protocol.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        names |= set(cls.__dict__.get("__annotations__", {}))
        names |= {name for name in cls.__dict__ if not name.startswith("_")}
    return names


def provided(cls) -> set[str]:
    """What instances of `cls` have: its class's members and every `self.NAME = ...` in it."""
    names = {name for name in dir(cls) if not name.startswith("_")}
    for klass in cls.__mro__:
        if klass.__module__.startswith("lb."):
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
            names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                      and node.value.id == "self"}
    return names


def resolve(where: str):
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


CASES = [(protocol, where) for protocol, wheres in SEAMS.items() for where in wheres]


@pytest.mark.parametrize("protocol, where", CASES, ids=[f"{p.__name__}-{w}" for p, w in CASES])
def test_every_implementation_has_every_member(protocol, where):
    missing = declared(protocol) - provided(resolve(where))
    assert not missing, f"{where} lacks {sorted(missing)} of {protocol.__name__}"


def test_the_control_tests_fake_is_a_link_too():
    link = next(p for p in SEAMS if p.__name__ == "Link")
    assert not declared(link) - provided(FakeDataPlane)


def test_the_checker_sees_a_missing_member():
    class Half:
        def apply_view(self, view):
            pass
    link = next(p for p in SEAMS if p.__name__ == "Link")
    assert {"restarts", "info", "cut"} <= declared(link) - {n for n in dir(Half) if not n.startswith("_")}
