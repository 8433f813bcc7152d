"""The config file's backend versions against the running lb's, and the edit that puts them
right: the `version:` of named backends, and nothing else. No I/O.

Theory of operation
-------------------
A deploy changes the nodes (and lb's state file), not the config file, so the
file goes stale; `lb deploy --write-config FILE` puts the new versions in it.
The YAML is composed, not loaded and dumped again: composing keeps each
scalar's position in the text, so each backend's `version` value is replaced
where it stands, in its own quoting, and every other byte (comments, order,
layout, anchors) stays as the operator wrote it. A backend with no `version:`
key gets one in its mapping's own style: `, version: V` inside a flow `{...}`,
or a line of its own under `name:` in a block mapping. The result is parsed
again and must equal the original with only those versions changed, or the
edit is refused: a surprise in an odd file must not be written over it.

`stale_versions` compares the file with what a running lb says of its nodes
(`show servers`: the label, and the version its last health check reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class VersionEdit:
    name: str
    old: str | None          # None: the backend had no `version:` key (the default)
    new: str
    line: int                # 1-based, in the edited text
    text: str                # that line as it now reads


def set_versions(text: str, versions: dict[str, str], source: str) -> tuple[str, list[VersionEdit], list[str]]:
    """`text` with each named backend's version set: (new text, the edits, names not in the
    file). Raises ConfigError when the file is not a config lb can edit safely."""
    items = _backend_items(text, source)
    splices, missing = [], []
    for name, new in versions.items():
        item = items.get(name)
        if item is None:
            missing.append(name)
            continue
        found = _key(item, "version")
        old = found[1].value if found else None
        if old != new or found[1].tag != "tag:yaml.org,2002:str":
            splices.append((*_splice(text, item, found, new), name, old, new))
    edited = text
    for start, end, replacement, *_ in sorted(splices, reverse=True):     # from the end: indexes hold
        edited = edited[:start] + replacement + edited[end:]
    _check(text, edited, versions, source)
    items, lines, edits = _backend_items(edited, source), edited.splitlines(), []
    for *_, name, old, new in sorted(splices):
        line = _key(items[name], "version")[1].start_mark.line
        edits.append(VersionEdit(name, old, new, line + 1, lines[line].strip()))
    return edited, edits, missing


def _backend_items(text: str, source: str) -> dict:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    found = _key(root, "backends") if isinstance(root, yaml.MappingNode) else None
    if found is None or not isinstance(found[1], yaml.SequenceNode):
        raise ConfigError(f"{source}: backends: expected a list of backends to edit")
    items = {}
    for item in found[1].value:
        name = _key(item, "name") if isinstance(item, yaml.MappingNode) else None
        if name is not None:
            items[str(name[1].value)] = item
    return items


def _key(mapping, key: str):
    return next(((k, v) for k, v in mapping.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def _splice(text: str, item, found, new: str) -> tuple[int, int, str]:
    """(start, end, replacement) for the version of one backend's mapping."""
    if found is not None:
        node = found[1]
        return node.start_mark.index, node.end_mark.index, _scalar(new, node.style)
    last = item.value[-1][1]
    if item.flow_style:
        return last.end_mark.index, last.end_mark.index, f", version: {_scalar(new, None)}"
    name_key = _key(item, "name")[0]
    line_end = text.find("\n", _key(item, "name")[1].end_mark.index)
    at = len(text) if line_end < 0 else line_end + 1
    prefix = "" if line_end >= 0 else "\n"
    return at, at, f"{prefix}{' ' * name_key.start_mark.column}version: {_scalar(new, None)}\n"


def _scalar(value: str, style: str | None) -> str:
    """`value` as a YAML string, in the quoting it replaces (plain when that reads back as
    the same string, double quotes otherwise)."""
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style is None and _plain_reads_back(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain_reads_back(value: str) -> bool:
    try:
        return yaml.safe_load(f"k: {value}") == {"k": value}
    except yaml.YAMLError:
        return False


def _check(text: str, edited: str, versions: dict[str, str], source: str) -> None:
    """The edited text parses to the original config but for those versions."""
    expected = yaml.safe_load(text)
    try:
        got = yaml.safe_load(edited)
    except yaml.YAMLError:              # an anchor on a version: the splice took it away
        got = None
    for backend in expected["backends"]:
        if isinstance(backend, dict) and backend.get("name") in versions:
            backend["version"] = versions[backend["name"]]
    if got != expected:
        raise ConfigError(f"{source}: could not set the versions without changing something else; "
                          f"nothing written")


@dataclass(frozen=True)
class StaleVersion:
    """A backend whose version in the config file is not what the running lb sees."""
    name: str
    configured: str
    running: str | None      # lb's label (None: lb has no such node)
    reported: str | None     # by its last health check, when it carried a version

    @property
    def should_be(self) -> str | None:
        return self.reported or self.running

    def describe(self) -> str:
        if self.running is None:
            return f"{self.name}: in the config ({self.configured}), not in the running lb (reload it?)"
        seen = f"lb runs it as {self.running}" + (f", its health check reports {self.reported}"
                                                  if self.reported and self.reported != self.running else "")
        return f"{self.name}: the config says version {self.configured}; {seen}: set `version: {self.should_be}`"


def stale_versions(backends, servers: list[dict]) -> list[StaleVersion]:
    """The config's backends (BackendConfig) whose version differs from what lb's `show
    servers` says of them: its label, or what the node's last health check reported."""
    running = {s["name"]: s for s in servers}
    stale = []
    for backend in backends:
        server = running.get(backend.name)
        if server is None:
            stale.append(StaleVersion(backend.name, backend.version, None, None))
            continue
        check = server.get("last_check") or {}
        reported = check.get("version") if check.get("ok") else None
        if backend.version != server["version"] or (reported and reported != backend.version):
            stale.append(StaleVersion(backend.name, backend.version, server["version"], reported))
    return stale
