"""configedit.py: the versions of named backends changed in a config's text, nothing else;
the config's versions against what a running lb says."""

import pytest
import yaml

from lb.core.config import BackendConfig
from lb.core.configedit import StaleVersion, set_versions, stale_versions
from lb.core.errors import ConfigError
from lb.deploy.view import config_lines

# (the backend's lines as written, the new version, what they read afterwards)
EDITS = [
    ("  - {name: web1, address: 'h:1', version: v1}   # rack A\n", "v2",
     "  - {name: web1, address: 'h:1', version: v2}   # rack A\n"),
    ("  - {name: web1, address: 'h:1', version: 'v1'}\n", "v2",
     "  - {name: web1, address: 'h:1', version: 'v2'}\n"),
    ('  - {name: web1, address: "h:1", version: "v1"}\n', "v2",
     '  - {name: web1, address: "h:1", version: "v2"}\n'),
    ("  - {name: web1, address: 'h:1'}  # default version\n", "v2",
     "  - {name: web1, address: 'h:1', version: v2}  # default version\n"),
    ("  - name: web1   # first\n    address: h:1\n    version: v1 # old\n", "v2",
     "  - name: web1   # first\n    address: h:1\n    version: v2 # old\n"),
    ("  - address: h:1\n    name: web1\n", "v2",
     "  - address: h:1\n    name: web1\n    version: v2\n"),
    ("  - {name: web1, address: 'h:1', version: v1}\n", "1.0",          # would read back as a float
     "  - {name: web1, address: 'h:1', version: \"1.0\"}\n"),
    ("  - {name: web1, address: 'h:1', version: 2}\n", "2",             # an int label becomes a string
     "  - {name: web1, address: 'h:1', version: \"2\"}\n"),
]
HEAD, TAIL = "# the web tier\nlisten: 127.0.0.1:8080  # public\nbackends:\n", "# the end\n"


@pytest.mark.parametrize("written, version, expected", EDITS)
def test_only_the_version_value_changes(written, version, expected):
    text, edits, missing = set_versions(HEAD + written + TAIL, {"web1": version}, "lb.yaml")
    assert text == HEAD + expected + TAIL
    assert missing == [] and [(e.name, e.new) for e in edits] == [("web1", version)]
    assert edits[0].text in expected and yaml.safe_load(text)["backends"][0]["version"] == version


def test_several_backends_and_one_not_in_the_file():
    text = HEAD + "  - {name: web1, address: 'h:1'}\n  - {name: web2, address: 'h:2', version: v1}\n" + TAIL
    edited, edits, missing = set_versions(text, {"web2": "v2", "web1": "v2", "web9": "v2"}, "lb.yaml")
    assert missing == ["web9"]
    assert [(e.name, e.old, e.line) for e in edits] == [("web1", None, 4), ("web2", "v1", 5)]
    assert set_versions(edited, {"web1": "v2", "web2": "v2"}, "lb.yaml")[1] == []     # nothing left to do


@pytest.mark.parametrize("text, message", [
    ("backends: [", "not valid YAML"),
    ("listen: 127.0.0.1:8080\n", "backends: expected a list of backends to edit"),
])
def test_a_file_it_cannot_edit_is_refused(text, message):
    with pytest.raises(ConfigError) as info:
        set_versions(text, {"web1": "v2"}, "lb.yaml")
    assert message in info.value.message


def test_an_edit_that_would_change_something_else_is_refused():
    """An alias shares the node: changing it would change the other backend too."""
    text = HEAD + "  - {name: web1, address: 'h:1', version: &v v1}\n  - {name: web2, address: 'h:2', version: *v}\n"
    with pytest.raises(ConfigError) as info:
        set_versions(text, {"web1": "v2"}, "lb.yaml")
    assert "nothing written" in info.value.message


def backend(name, version):
    return BackendConfig(name=name, address=("127.0.0.1", 9001), version=version)


def server(name, version, reported=None, ok=True):
    return {"name": name, "version": version,
            "last_check": {"ok": ok, "version": reported} if reported or not ok else None}


@pytest.mark.parametrize("configured, running, expected", [
    ("v1", server("web1", "v1", "v1"), None),
    ("v1", server("web1", "v2", "v2"), StaleVersion("web1", "v1", "v2", "v2")),       # adopted
    ("v1", server("web1", "v1", "v2"), StaleVersion("web1", "v1", "v1", "v2")),       # mismatch, kept out
    ("v1", server("web1", "v2"), StaleVersion("web1", "v1", "v2", None)),             # set version, unchecked
    ("v1", server("web1", "v1", "v2", ok=False), None),                               # a failing check says nothing
    ("v1", None, StaleVersion("web1", "v1", None, None)),
])
def test_stale_versions(configured, running, expected):
    got = stale_versions([backend("web1", configured)], [running] if running else [])
    assert got == ([expected] if expected else [])


def test_a_stale_version_says_the_line_to_write():
    assert StaleVersion("web1", "v1", "v1", "v2").describe() == \
        "web1: the config says version v1; lb runs it as v1, its health check reports v2: set `version: v2`"
    assert "not in the running lb" in StaleVersion("web1", "v1", None, None).describe()


def test_the_deploy_summary_lines():
    assert config_lines(None) == []
    assert config_lines({"to_change": [{"name": "web1", "was": "v1", "version": "v2"}]})[1] == \
        "    web1: version: v1  ->  version: v2"
    written = config_lines({"file": "/etc/lb/lb.yaml", "changed": [{"name": "web1", "line": 7, "text": "version: v2",
                                                                     "was": "v1"}], "missing": ["web11"]})
    assert written == ["  config /etc/lb/lb.yaml: 1 version(s) changed:", "    line 7: version: v2",
                       "    not in the file (added at run time?): web11"]
