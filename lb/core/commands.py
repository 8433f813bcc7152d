"""The admin command table and the parsing of a command line. No I/O.

Every command is a row of `COMMANDS`: its words, required and optional
arguments, a one-line summary, and whether it changes state (then the state
file is written before the reply). The words are the row's key: the admin
socket's handlers (`lb.control.admin.HANDLERS`) and `lb ctl`'s tables
(`lb.deploy.ctlview.TABLES`) are tables keyed by them, which core cannot
import; tests check that every row resolves. `help` is generated from the
rows, and an unknown command or a wrong number of arguments answers with the
usage. Every command that changes something (`audited`: the pool's state, or
the master itself at an upgrade) goes to the audit log with who sent it and
its reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import MAX_CONNS_MAX, WEIGHT_MAX, BackendConfig, build, parse_max_conns_value, parse_weight_value
from .errors import CommandError, ConfigError, InvalidValue
from .values import check_version_label, parse_duration


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    args: tuple[str, ...]          # required argument names
    optional: tuple[str, ...]      # optional argument names, in order
    summary: str
    mutates: bool                  # changes the pool: the state file is written before the reply
    replaces_master: bool = False  # changes lb without a state file to write (upgrade)

    @property
    def audited(self) -> bool:
        """Logged in the audit trail: the command changes something."""
        return self.mutates or self.replaces_master

    @property
    def usage(self) -> str:
        parts = [*self.words, *self.args, *(f"[{name}]" for name in self.optional)]
        return " ".join(parts)


COMMANDS = [
    Command(("help",), (), (), "this list", False),
    Command(("show", "servers"), (), (), "every server with state, health and counters", False),
    Command(("show", "server"), ("NAME",), (), "one server", False),
    Command(("show", "info"), (), (), "pid, lb version, started, workers (pid, started, restarts), upgrades", False),
    Command(("show", "certs"), (), (), "per TLS listener: certificates, names, not-after, days left, SHA-256", False),
    Command(("show", "versions"), (), (), "versions, oldest first, with ready capacity", False),
    Command(("show", "assets"), (), (), "per version: asset paths learned, copies stored, requests routed by "
            "asset, header, query, served from the store", False),
    Command(("show", "stats"), (), ("NAME",), "totals and per server: codes, failures, p50/p99 over 60 s", False),
    Command(("show", "latency"), ("NAME[,NAME...]", "WINDOW"), ("raw",), "p50/p90/p99 of those servers together "
            "over the last WINDOW (1s..60s); raw: also the histogram's bucket counts, to merge", False),
    Command(("show", "cluster"), (), (), "(cluster mode) members: id, lb version, applied revision, lease left, "
            "per-node health", False),
    Command(("note", "deploy"), ("JSON",), (), "a deploy's progress, for the status page (lb deploy sends it)",
            False),
    Command(("drain",), ("NAME",), (), "no new requests; in-flight ones finish", True),
    Command(("wait",), ("NAME", "STATE"), ("TIMEOUT",), "block until drained|ready|maint|up", False),
    Command(("ready",), ("NAME",), (), "back into service", True),
    Command(("maint",), ("NAME",), (), "hold out of service", True),
    Command(("set", "version"), ("NAME", "VERSION"), (), "relabel a server's version", True),
    Command(("set", "weight"), ("NAME", "WEIGHT"), (), "0..1000", True),
    Command(("set", "target"), ("VERSION",), (), "declare the newest version", True),
    Command(("set", "maxconn"), ("NAME", "N"), (), "requests at once on a server, 0 = no cap; more wait "
            "(timeouts.queue)", True),
    Command(("add", "server"), ("NAME", "HOST:PORT"), ("VERSION", "WEIGHT"), "joins in maint", True),
    Command(("del", "server"), ("NAME",), (), "only when drained or maint", True),
    Command(("reload",), (), (), "re-read the config file and the certificates", True),
    Command(("upgrade",), (), (), "hitless upgrade: a new master (code and config on disk) takes the "
            "listeners; the reply once it serves", False, replaces_master=True),
]


def help_lines() -> list[str]:
    return [f"{c.usage:<48} {c.summary}" for c in COMMANDS]


def parse(line: str) -> tuple[Command, list[str]]:
    """The command row and its arguments. Raises CommandError with the usage."""
    words = line.split()
    if not words:
        raise CommandError("empty command; try 'help'")
    matches = [c for c in COMMANDS if tuple(words[:len(c.words)]) == c.words]
    if not matches:
        near = [c.usage for c in COMMANDS if c.words[0] == words[0]]
        if near:
            raise CommandError(f"usage: {' | '.join(near)}")
        known = sorted({c.words[0] for c in COMMANDS})
        raise CommandError(f"unknown command {' '.join(words[:2])!r}; commands: {', '.join(known)} "
                           f"('help' lists their usage)")
    command = max(matches, key=lambda c: len(c.words))
    args = words[len(command.words):]
    if not len(command.args) <= len(args) <= len(command.args) + len(command.optional):
        raise CommandError(f"usage: {command.usage}")
    return command, args


def parse_timeout(text: str) -> float:
    """A TIMEOUT argument: seconds ('30') or a duration ('30s', '2m'). Raises CommandError."""
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except InvalidValue:
        raise CommandError(f"expected a TIMEOUT in seconds or a duration (30, 30s, 2m), got {text!r}") from None


def check_version(version: str) -> None:
    """Raises CommandError unless `version` is a valid version label (the config's rule)."""
    try:
        check_version_label(version)
    except InvalidValue as exc:
        raise CommandError(exc.message) from None


def _whole_number(text: str, parse, command: str, high: int) -> int:
    """A number argument checked by the config's own parser. Raises CommandError."""
    try:
        return parse(int(text) if text.isdigit() else text)
    except InvalidValue:
        raise CommandError(f"'{command}' expects a whole number from 0 to {high}, got {text!r}") from None


def parse_maxconn(text: str) -> int:
    """A max_conns argument (0: no cap). Raises CommandError."""
    return _whole_number(text, parse_max_conns_value, "set maxconn", MAX_CONNS_MAX)


def parse_weight(text: str) -> int:
    """A WEIGHT argument. Raises CommandError."""
    return _whole_number(text, parse_weight_value, "set weight", WEIGHT_MAX)


def backend_config(fields: dict) -> BackendConfig:
    """A BackendConfig from admin arguments (or the state file), validated like the config
    file. Raises CommandError."""
    try:
        return build(BackendConfig, fields, "server", "add server")
    except ConfigError as exc:
        raise CommandError(exc.message.replace("add server: server.", "")) from None
