"""The rolling deploy's decisions: options, plan, steps, verdicts, saved progress. No I/O.

Theory of operation
-------------------
`lb deploy` is a client of the admin socket. This module decides; run.py acts
(admin commands, update commands, timers) and view.py shows.

- `plan()` puts the nodes not yet on the target version (config order, nodes in
  maint left alone) into batches: the first `canary` nodes, then `batch` at a
  time. A batch only takes as much in-service weight as `min_ready` leaves
  spare: weight in service (ready and up) minus `min_ready` of the total weight.
  The batch shrinks to fit; if not even one node fits, the deploy is refused.
- Each node walks `FORWARD` (drain, wait drained, update, set version, ready,
  wait up) and, to roll back, `BACK` (the same with the rollback command and the
  old version). A step is a row: what admin command or shell command it runs and
  which option bounds it. `NodeProgress` counts the steps done and whether the
  next one was started, so an interrupted deploy resumes at the step it was in,
  and a rollback knows whether a node's code was touched at all.
- After a batch is up it bakes; `judge()` compares the batch's 5xx rate and
  p99 over the bake with the baseline (the old-version nodes still in service
  over the same window) and requires no lb-made failure during the batch.
- `DeployState` is everything `--resume` needs, as a JSON-able dict.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

from ..core.values import VERSION_RE, check_name, check_version_label, parse_duration, parse_hostport
from ..core.errors import DeployError, InvalidValue
from .gates import check_prometheus_url, parse_gates       # the gates' parser (its queries run from run.py)

# Exit codes of `lb deploy`.
EXIT_DONE, EXIT_ROLLED_BACK, EXIT_USAGE, EXIT_STUCK, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

PLACEHOLDERS = ("name", "host", "port", "version", "old_version")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# A p99 over n requests rests on its n/100 slowest. Under 1000 that is a handful, and a
# freshly started process's first requests (imports, connections; measured 2-2.7x the old
# nodes' p99 in 1-2 s bakes, 0.6-1.1x in 4 s bakes) decide it alone.
MIN_P99_REQUESTS = 1000
P99_FLOOR_MS = 1.0         # baselines under 1 ms are read as 1 ms: below that it is noise
# The requests a bake must judge before its verdict means something (--min-requests). The
# error-rate bar is 1% by default: under 100 requests a single 5xx is already over it, and
# none says little; at 100, a release failing 5% of requests shows at least one 5xx with
# probability 1 - 0.95^100 = 99.4%, one failing 2% with 87%. (The p99 comparison needs
# MIN_P99_REQUESTS and says so in its note; a low-traffic site gives evidence with --verify.)
MIN_BAKE_REQUESTS = 100
BAKE_MAX_FACTOR = 5        # --bake-max defaults to 5x the bake it extends


# -- options -----------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    to: str
    update: str
    rollback: str | None = None           # default: `update` with the old version
    batch: str = "1"                      # N nodes or N% of the nodes
    canary: int = 1
    bake_s: float = 10.0
    canary_bake_s: float = 30.0
    max_error_rate: float = 0.01          # how far the batch's 5xx rate may exceed the baseline's
    max_p99_ratio: float = 2.0
    health_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    update_timeout_s: float = 600.0
    min_ready: str = "80%"
    rollback_done: bool = True            # roll back batches that had finished, too
    # gates (lb/deploy/gates.py and run.py's bake)
    verify: str | None = None             # once per node, up at weight 0, before it takes users
    verify_timeout_s: float = 60.0
    checks: tuple = ()                    # --check commands, every bake, every check_interval_s
    check_interval_s: float = 10.0
    check_timeout_s: float = 30.0
    prometheus: str | None = None
    gates: tuple = ()                     # --gate texts, parsed by gates.parse_gates
    gate_tries: int = 3
    min_requests: int = MIN_BAKE_REQUESTS
    bake_max_s: float | None = None       # None: BAKE_MAX_FACTOR x the bake
    allow_thin_bakes: bool = False
    lb_url: str | None = None             # what --verify gets as LB_URL (None: from lb's show info)
    version_header: str | None = None     # lb's pinning.header (None: from lb's show info)

    def __post_init__(self):
        object.__setattr__(self, "checks", tuple(self.checks))      # a list when read back from the state file
        object.__setattr__(self, "gates", tuple(self.gates))
        check_options(self)

    def bake_limit_s(self, bake_s: float) -> float:
        """How long a bake may extend to reach --min-requests."""
        return max(self.bake_max_s, bake_s) if self.bake_max_s is not None else BAKE_MAX_FACTOR * bake_s

    @property
    def min_ready_fraction(self) -> Fraction:
        return parse_percent(self.min_ready, "--min-ready")

    def batch_size(self, node_count: int) -> int:
        if self.batch.endswith("%"):
            return max(1, math.floor(parse_percent(self.batch, "--batch") * node_count))
        return int(self.batch)

    def command(self, direction: str) -> str:
        return self.update if direction == "forward" or not self.rollback else self.rollback

    def to_dict(self) -> dict:
        return asdict(self)


def check_options(opts: Options) -> None:
    """Raises DeployError naming the option that is wrong."""
    if not VERSION_RE.match(opts.to):
        raise DeployError(f"--to: expected a version label (letters, digits, '.', '_', '-'), got {opts.to!r}")
    templates = [("--update", opts.update), ("--rollback", opts.rollback), ("--verify", opts.verify),
                 *(("--check", check) for check in opts.checks)]
    for flag, template in templates:
        if template is not None and not template.strip():
            raise DeployError(f"{flag}: expected a shell command")
        unknown = set(re.findall(r"\{(\w+)\}", template or "")) - set(PLACEHOLDERS)
        if unknown:
            raise DeployError(f"{flag}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                              f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if not (opts.batch.isdigit() and int(opts.batch) >= 1) and not opts.batch.endswith("%"):
        raise DeployError(f"--batch: expected a number of nodes (3) or a percentage (30%), got {opts.batch!r}")
    if opts.batch.endswith("%"):
        parse_percent(opts.batch, "--batch")
    parse_percent(opts.min_ready, "--min-ready")
    if opts.canary < 0:
        raise DeployError(f"--canary: expected 0 or more nodes, got {opts.canary}")
    if not 0 <= opts.max_error_rate <= 1:
        raise DeployError(f"--max-error-rate: expected a fraction from 0 to 1, got {opts.max_error_rate}")
    if opts.max_p99_ratio < 1:
        raise DeployError(f"--max-p99-ratio: expected 1 or more, got {opts.max_p99_ratio}")
    check_gate_options(opts)


def check_gate_options(opts: Options) -> None:
    """Raises DeployError naming the option that is wrong."""
    if opts.gates and not opts.prometheus:
        raise DeployError("--gate needs --prometheus URL (the Prometheus that answers the queries)")
    if opts.prometheus:
        check_prometheus_url(opts.prometheus)
    parse_gates(opts.gates)
    if opts.gate_tries < 1:
        raise DeployError(f"--gate-tries: expected 1 or more, got {opts.gate_tries}")
    if opts.min_requests < 0:
        raise DeployError(f"--min-requests: expected 0 or more, got {opts.min_requests}")
    for flag, seconds in (("--check-interval", opts.check_interval_s), ("--verify-timeout", opts.verify_timeout_s),
                          ("--check-timeout", opts.check_timeout_s)):
        if seconds <= 0:
            raise DeployError(f"{flag}: expected a duration above 0, got {seconds:g}s")
    if opts.bake_max_s is not None and opts.bake_max_s < opts.bake_s:
        raise DeployError(f"--bake-max: expected at least the bake ({opts.bake_s:g}s), got {opts.bake_max_s:g}s")
    if opts.lb_url is not None and not re.match(r"^https?://[^/\s]+", opts.lb_url):
        raise DeployError(f"--lb-url: expected http://HOST:PORT (lb's own listener), got {opts.lb_url!r}")
    if opts.version_header is not None and not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", opts.version_header):
        raise DeployError(f"--version-header: expected a header name, got {opts.version_header!r}")


def parse_percent(text: str, flag: str) -> Fraction:
    """'80%' or '0.8' -> Fraction(4, 5). Raises DeployError."""
    try:
        value = Fraction(text[:-1]) / 100 if text.endswith("%") else Fraction(text)
    except (ValueError, ZeroDivisionError):
        value = None
    if value is None or not 0 <= value <= 1:
        raise DeployError(f"{flag}: expected a percentage (80%) or a fraction (0.8), got {text!r}")
    return value


def parse_seconds(text: str, flag: str) -> float:
    try:
        return parse_duration(text)
    except InvalidValue:
        raise DeployError(f"{flag}: expected a duration like 500ms, 30s or 2m, got {text!r}") from None


def fill(template: str, values: dict) -> str:
    """The command with {name} {host} {port} {version} {old_version} replaced, each value
    shell-quoted; other braces (a shell's ${VAR}) are left alone. The values were checked
    (check_servers) and are plain labels and addresses, so quoting changes nothing for
    them; it is the second line of defence. The LB_* environment variables are the
    recommended way to use them."""
    return _PLACEHOLDER_RE.sub(lambda m: shlex.quote(str(values[m.group(1)])), template)


def check_servers(servers: list[dict]) -> None:
    """What `show servers` returned, checked like the config before any of it reaches a
    shell command. Raises DeployError naming the entry."""
    for server in servers:
        try:
            check_name(server.get("name"))
            check_version_label(server.get("version"))
            parse_hostport(server.get("address"))
        except InvalidValue as exc:
            raise DeployError(f"lb listed a server this deploy will not use ({server.get('name')!r}): "
                              f"{exc.message}") from None


def command_env(values: dict) -> dict:
    return {"LB_NODE": values["name"], "LB_HOST": values["host"], "LB_PORT": str(values["port"]),
            "LB_VERSION": values["version"], "LB_OLD_VERSION": values["old_version"]}


def lb_address(info: dict, host: str | None) -> tuple[str, str]:
    """(LB_URL, the version header's name) from an lb's `show info`: its first listener that
    serves (not one that only redirects to HTTPS), reached on `host` (an ssh target's) or
    this machine when it listens on every address. Raises DeployError when it has none."""
    serving = [listener for listener in info.get("listeners", []) if not listener["redirect_https"]]
    if not serving:
        raise DeployError("--verify: lb's show info names no listener that serves; give --lb-url")
    address, tls = serving[0]["address"], serving[0]["tls"]
    listen_host, _, port = address.rpartition(":")
    if listen_host in ("0.0.0.0", "[::]", ""):
        listen_host = host or ("127.0.0.1" if listen_host != "[::]" else "[::1]")
    return f"{'https' if tls else 'http'}://{listen_host}:{port}", info.get("pinning_header", "X-Lb-Version")


VERIFY_UNREACHED = ("--verify: lb honours $LB_VERSION_HEADER for a version with no users yet only from "
                    "skew.override_from, which is empty: through $LB_URL the canary's verify reaches the old "
                    "version. Verify the node itself at $LB_HOST:$LB_PORT, or set skew.override_from")


def verify_warnings(info: dict, opts: Options) -> list[str]:
    """What a --verify user must hear before the deploy, from the first lb's `show info`: when
    nobody may override (skew.override_from empty), the canary, at weight 0 with no version-mate
    in service, is out of $LB_URL's reach. Not an error: a verify may test $LB_HOST:$LB_PORT
    directly. An lb whose show info does not say (older) gets no warning."""
    if opts.verify and info.get("override_from") is False:
        return [VERIFY_UNREACHED]
    return []


def verify_setup(info: dict, host: str | None, opts: Options) -> tuple[Options, list[str]]:
    """--verify's options completed from the first lb's `show info` (LB_URL and the version
    header where not given: lb_address) and what to warn of (verify_warnings). Raises
    DeployError."""
    if opts.lb_url is None or opts.version_header is None:
        url, header = lb_address(info, host)
        opts = replace(opts, lb_url=opts.lb_url or url, version_header=opts.version_header or header)
    return opts, verify_warnings(info, opts)


def verify_env(values: dict, opts: Options) -> dict:
    """--verify's environment: --update's, and lb's own address with the header that routes a
    request to the node's version (`curl -H "$LB_VERSION_HEADER" "$LB_URL/"`)."""
    return {**command_env(values), "LB_URL": opts.lb_url.rstrip("/"),
            "LB_VERSION_HEADER": f"{opts.version_header}: {values['version']}"}


# -- the plan ----------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    nodes: tuple[str, ...]
    canary: bool


def in_service(server: dict) -> bool:
    return server["state"] == "ready" and server["health"] == "up" and server["weight"] > 0


def spare_weight(servers: list[dict], min_ready: Fraction) -> Fraction:
    """Weight that may leave service: in service minus `min_ready` of the total."""
    total = sum(s["weight"] for s in servers)
    return sum(s["weight"] for s in servers if in_service(s)) - min_ready * total


def fit(names: list[str], servers: list[dict], size: int, min_ready: Fraction) -> list[str]:
    """The longest prefix of `names` (at most `size`) whose in-service weight fits the spare.
    Raises DeployError when not even the first fits."""
    by_name = {s["name"]: s for s in servers}
    spare, taken, cost = spare_weight(servers, min_ready), [], 0
    for name in names[:size]:
        server = by_name[name]
        node_cost = server["weight"] if in_service(server) else 0
        if cost + node_cost > spare:
            break
        taken.append(name)
        cost += node_cost
    if names and not taken:
        total = sum(s["weight"] for s in servers)
        left = spare_weight(servers, 0) - by_name[names[0]]["weight"]
        raise DeployError(f"taking {names[0]} out would leave {float(left / total):.0%} of the weight in "
                          f"service, under --min-ready {float(min_ready):.0%}; {suggest_min_ready(left, total)}")
    return taken


def suggest_min_ready(left: Fraction, total: int) -> str:
    """The --min-ready that lets this node go (whole percents, rounded down so that it fits)."""
    percent = math.floor(left * 100 / total) if total else 0
    if percent <= 0:
        return "no --min-ready above 0% lets it go: that would leave nothing in service (add nodes first)"
    return f"--min-ready {percent}% would let it go"


def plan(servers: list[dict], opts: Options) -> tuple[list[Batch], list[str]]:
    """The batches, and notes on the nodes left alone. Raises DeployError."""
    notes, todo = [], []
    for server in servers:
        name, state = server["name"], server["state"]
        if server["version"] == opts.to:
            continue
        if state == "maint":
            notes.append(f"{name} is in maint: left alone")
        elif state in ("draining", "drained"):
            raise DeployError(f"{name} is {state}, not from this deploy: 'ready' it first, or put it "
                              f"in 'maint' to leave it out of the deploy")
        else:
            todo.append(name)
    size, min_ready = opts.batch_size(len(servers)), opts.min_ready_fraction
    batches, rows = [], [dict(s) for s in servers]
    for names, canary, limit in ((todo[:opts.canary], True, opts.canary),
                                 (todo[opts.canary:], False, size)):
        while names:
            taken = fit(names, rows, limit, min_ready)
            batches.append(Batch(tuple(taken), canary))
            names = names[len(taken):]
            for row in rows:
                if row["name"] in taken:      # a batch is back in service before the next one
                    row.update(state="ready", health="up")
    return batches, notes


# -- the steps of one node -------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    admin: str | None = None        # admin command template, or None for the shell command
    timeout: str | None = None      # the Options field that bounds it


def _steps(command_step: str) -> tuple[Step, ...]:
    return (Step("drain", "drain {name}"),
            Step("wait drained", "wait {name} drained {timeout}", "drain_timeout_s"),
            Step(command_step, None, "update_timeout_s"),
            Step("set version", "set version {name} {version}"),
            Step("ready", "ready {name}"),
            Step("wait up", "wait {name} up {timeout}", "health_timeout_s"))


# `verify` (--verify) ends the way forward only: the node is up at weight 0 and nobody but the
# verify command (and requests that may override, skew.override_from) reaches it. Without
# --verify, the step is passed over without a word (run.py).
STEPS = {"forward": _steps("update") + (Step("verify", None, "verify_timeout_s"),), "back": _steps("rollback")}
COMMAND_INDEX = 2               # the shell command's place in both sequences


@dataclass
class NodeProgress:
    direction: str = "forward"
    done: int = 0                   # steps completed in `direction`
    running: bool = False           # the step at index `done` was started
    error: str | None = None

    @property
    def steps(self) -> tuple[Step, ...]:
        return STEPS[self.direction]

    @property
    def finished(self) -> bool:
        return self.done == len(self.steps)

    @property
    def next_step(self) -> Step | None:
        return None if self.finished else self.steps[self.done]

    @property
    def code_touched(self) -> bool:
        """Whether this node's update command ran (or may have run) at all."""
        return self.direction == "back" or self.done > COMMAND_INDEX or \
            (self.done == COMMAND_INDEX and self.running)

    def restart_at_ready(self) -> None:
        """Roll back a node whose code was never touched: only `ready` and `wait up` are left."""
        self.direction, self.running = "back", False
        self.done = [s.name for s in STEPS["back"]].index("ready")

    def restore_plan(self) -> str:
        """How a rollback brings this node back: 'none', 'ready' (code untouched,
        only put back) or 'back' (drain, rollback command, old version, ready)."""
        if self.direction == "back":
            return "back"
        if self.code_touched:
            return "back"
        return "ready" if self.done > 0 or self.running else "none"


# -- the bake verdict ----------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """A group of nodes over the bake: requests and 5xx counted, p99 from lb's window."""
    requests: int
    errors: int
    p99_ms: float | None = None
    latency_requests: int = 0
    label: str = ""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: list[str]
    numbers: dict = field(default_factory=dict)


def judge(batch: Sample, baseline: Sample | None, lb_failed: dict, opts: Options) -> Verdict:
    """Whether a baked batch passes. `lb_failed` counts lb-made failures during the batch."""
    reasons = []
    base_rate = baseline.error_rate if baseline else 0.0
    if batch.error_rate - base_rate > opts.max_error_rate:
        reasons.append(f"error rate {batch.error_rate:.1%} ({batch.errors} of {batch.requests}) against "
                       f"{base_rate:.1%} on {baseline.label if baseline else 'no baseline'}, over the bar "
                       f"of +{opts.max_error_rate:.1%}")
    ratio, p99_note = None, None
    samples = min(batch.latency_requests, baseline.latency_requests if baseline else 0)
    if baseline is None:
        p99_note = "p99 not compared: no baseline in service"
    elif samples < MIN_P99_REQUESTS:
        p99_note = f"p99 not compared: {samples} requests in the smaller group, {MIN_P99_REQUESTS} needed"
    elif batch.p99_ms is not None and baseline.p99_ms is not None:
        ratio = batch.p99_ms / max(baseline.p99_ms, P99_FLOOR_MS)
        if ratio > opts.max_p99_ratio:
            reasons.append(f"p99 {batch.p99_ms:.1f} ms against {baseline.p99_ms:.1f} ms on "
                           f"{baseline.label}: {ratio:.2f}x, over the bar of {opts.max_p99_ratio:g}x")
    failed = sum(lb_failed.values())
    if failed:
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(lb_failed.items()))
        reasons.append(f"lb failed {failed} client request(s) during the batch ({detail})")
    numbers = {"requests": batch.requests, "errors": batch.errors, "error_rate": round(batch.error_rate, 4),
               "p99_ms": batch.p99_ms, "baseline": baseline.label if baseline else None,
               "baseline_requests": baseline.requests if baseline else 0,
               "baseline_error_rate": round(base_rate, 4),
               "baseline_p99_ms": baseline.p99_ms if baseline else None,
               "p99_ratio": round(ratio, 2) if ratio is not None else None, "p99_note": p99_note,
               "lb_failed": failed}
    return Verdict(not reasons, reasons, numbers)


def evidence(requests: int, seconds: float, limit_s: float, opts: Options) -> tuple[str, str]:
    """--min-requests' outcome for a bake that judged `requests` in `seconds` (its limit
    `limit_s`): ('pass' | 'fail' | 'warn', what a person reads). Short of the minimum, a
    bake fails, or passes with a warning under --allow-thin-bakes."""
    needed = opts.min_requests
    if requests >= needed:
        return "pass", f"{requests} requests judged (--min-requests {needed})"
    detail = (f"thin bake: {requests} requests judged in {seconds:.0f}s, --min-requests {needed} not reached "
              f"by --bake-max {limit_s:g}s")
    if opts.allow_thin_bakes:
        return "warn", detail + "; passed anyway (--allow-thin-bakes)"
    return "fail", detail + " (--allow-thin-bakes lets it pass with a warning)"


def lb_made_failures(before: dict, after: dict) -> dict:
    """lb-made failures between two `show stats` totals: 5xx lb answered and connections cut
    mid-response. 400/408/431... are the clients' own doing, and `drain_deadline` (a
    tunnel closed at the drain deadline, a WebSocket with close 1001) is how long-lived
    connections end by design; neither counts against a deploy."""
    out = {}
    for reason, count in after.items():
        if (reason == "cut" or reason.startswith("5")) and count > before.get(reason, 0):
            out[reason] = count - before.get(reason, 0)
    return out


# -- what --resume needs ---------------------------------------------------------------

PHASES = ("deploy", "rollback", "done", "rolled_back", "stuck")
UNFINISHED = ("deploy", "rollback", "stuck")


@dataclass
class DeployState:
    options: dict
    batches: list[Batch]
    old_versions: dict[str, str]
    addresses: dict[str, tuple[str, int]]
    batch: int = 0                              # the batch in progress
    phase: str = "deploy"
    progress: dict[str, NodeProgress] = field(default_factory=dict)
    baked: list[str] = field(default_factory=list)     # nodes whose batch passed its bake
    failure: dict | None = None
    interrupted: bool = False
    targets: list[str] = field(default_factory=list)   # the lbs driven (-s), which --resume must give again
    weights: dict[str, int] = field(default_factory=dict)   # at the start: given back after `wait up` / `verify`
    bakes: list[dict] = field(default_factory=list)      # per bake: nodes, requests judged, gates' outcomes

    def node(self, name: str) -> NodeProgress:
        return self.progress.setdefault(name, NodeProgress())

    def to_dict(self) -> dict:
        return {"format": 1, "options": self.options, "phase": self.phase, "batch": self.batch,
                "batches": [{"nodes": list(b.nodes), "canary": b.canary} for b in self.batches],
                "old_versions": self.old_versions,
                "addresses": {n: list(a) for n, a in self.addresses.items()},
                "progress": {n: asdict(p) for n, p in self.progress.items()},
                "baked": self.baked, "failure": self.failure, "interrupted": self.interrupted,
                "targets": self.targets, "weights": self.weights, "bakes": self.bakes}

    @classmethod
    def from_dict(cls, data: dict) -> "DeployState":
        """Raises DeployError when the file is not a deploy state this version wrote."""
        try:
            if data.get("format") != 1 or data["phase"] not in PHASES:
                raise KeyError("format")
            return cls(options=data["options"],
                       batches=[Batch(tuple(b["nodes"]), b["canary"]) for b in data["batches"]],
                       old_versions=data["old_versions"],
                       addresses={n: (a[0], a[1]) for n, a in data["addresses"].items()},
                       batch=data["batch"], phase=data["phase"],
                       progress={n: NodeProgress(**p) for n, p in data["progress"].items()},
                       baked=data["baked"], failure=data.get("failure"),
                       interrupted=data.get("interrupted", False), targets=data.get("targets", []),
                       weights=data.get("weights", {}), bakes=data.get("bakes", []))
        except (KeyError, TypeError, IndexError, AttributeError):
            raise DeployError("not a deploy state file written by this lb") from None
