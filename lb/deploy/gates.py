"""Prometheus gates for `lb deploy`: `--gate 'NAME: QUERY OP THRESHOLD'` on `--prometheus URL`.

Theory of operation
-------------------
A gate is a PromQL instant query and a bar: `err: sum(rate(http_5xx{version="{version}"}[1m])) < 0.5`
passes while the query's value is under 0.5. `parse_gate` reads the flag (a bad one is a
DeployError naming it, exit 2); `fill_query` puts the batch into the query (`{version}`,
`{old_version}`, `{nodes}` as an escaped regex alternation of the batch's node names, for
`instance=~"{nodes}"`-style matchers); `query` asks Prometheus' HTTP API
(`GET URL/api/v1/query?query=...`) with the standard library in a thread; `verdict` reads its
JSON answer into a pass, a fail or an inconclusive (HTTP or query error, no data, NaN): a
vector passes when every one of its samples meets the bar, and fails when any sample that is
a number misses it (a NaN beside it does not hide it).

`GateRunner` is what a bake drives: `await runner.evaluate(version, old_version, nodes)`
asks every gate (concurrently) and returns one `GateResult` a gate; `runner.failure(results)`
says whether the batch fails now: a gate that failed, or one inconclusive `tries` times in a
row (a Prometheus that is restarting or a scrape that has not happened yet is not a verdict;
one that stays silent is not a pass either). `evaluate_gates(...)` is the one-shot form.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass

from ..core.errors import DeployError

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
QUERY_TIMEOUT_S = 10.0
QUERY_SLACK_S = 1.0         # past the query's timeout, before the bake stops waiting for its thread
MAX_ANSWER_BYTES = 4 << 20
READ_CHUNK_BYTES = 64 << 10
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
             "==": operator.eq, "!=": operator.ne}
GATE_PLACEHOLDERS = ("version", "old_version", "nodes")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GATE_RE = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]{1,64})\s*:\s*(?P<query>\S.*?)\s*"
                      r"(?P<op><=|>=|==|!=|<|>)\s*(?P<threshold>" + _NUMBER + r")\s*$", re.S)
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(GATE_PLACEHOLDERS) + r")\}")
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


@dataclass(frozen=True)
class Gate:
    name: str
    query: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.name}: {self.query} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class GateResult:
    name: str
    outcome: str                   # PASS, FAIL or INCONCLUSIVE
    value: float | None            # the worst sample (the one that decided), when there is one
    detail: str                    # what a person reads: "0.12 < 0.5" or why inconclusive
    query: str = ""                # as sent, placeholders filled

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["value"] is not None and not math.isfinite(out["value"]):
            out["value"] = str(out["value"])          # JSON has no NaN/Inf
        return out


def parse_gate(text: str) -> Gate:
    """'NAME: QUERY OP THRESHOLD' -> Gate. Raises DeployError naming the gate."""
    match = _GATE_RE.match(text or "")
    if match is None:
        raise DeployError(f"--gate {text!r}: expected 'NAME: QUERY OP THRESHOLD' with OP one of "
                          f"{' '.join(OPERATORS)} and a number, e.g. 'errors: sum(rate(x[1m])) < 0.5'")
    unknown = set(re.findall(r"\{(\w+)\}", match["query"])) - set(GATE_PLACEHOLDERS)
    if unknown:
        raise DeployError(f"--gate {match['name']}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                          f"known: {', '.join('{' + p + '}' for p in GATE_PLACEHOLDERS)}")
    return Gate(match["name"], match["query"], match["op"], float(match["threshold"]))


def parse_gates(texts) -> list[Gate]:
    """Every --gate, names unique. Raises DeployError."""
    gates = [parse_gate(text) for text in texts]
    seen = set()
    for gate in gates:
        if gate.name in seen:
            raise DeployError(f"--gate {gate.name}: two gates have that name")
        seen.add(gate.name)
    return gates


def check_prometheus_url(url: str) -> str:
    """Raises DeployError unless `url` is an http(s) URL."""
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DeployError(f"--prometheus: expected http://HOST:PORT (Prometheus' own address), got {url!r}")
    return url.rstrip("/")


def nodes_regex(nodes) -> str:
    """The node names as a PromQL regex alternation, each RE2-escaped, inside a double-quoted
    PromQL string (so every backslash doubled): web1|web\\\\.2."""
    escaped = (_RE2_SPECIAL.sub(r"\\\1", name) for name in nodes)
    return "|".join(escaped).replace("\\", "\\\\")


def fill_query(query: str, version: str, old_version: str, nodes) -> str:
    values = {"version": version, "old_version": old_version, "nodes": nodes_regex(nodes)}
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], query)


def verdict(gate: Gate, answer: dict | None, error: str | None = None, query: str = "") -> GateResult:
    """A Prometheus instant-query answer (its decoded JSON) against the gate's bar. `error`:
    the request itself failed (HTTP, connection, not JSON)."""
    def inconclusive(why: str) -> GateResult:
        return GateResult(gate.name, INCONCLUSIVE, None, why, query)

    if error is not None:
        return inconclusive(error)
    if not isinstance(answer, dict) or answer.get("status") != "success":
        kind = answer.get("errorType", "error") if isinstance(answer, dict) else "error"
        text = answer.get("error", "no status") if isinstance(answer, dict) else f"not an object: {answer!r:.80}"
        return inconclusive(f"Prometheus answered {kind}: {text}")
    try:
        values = _sample_values(answer["data"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return inconclusive(f"an answer this gate cannot read ({type(exc).__name__}: {exc})")
    if not values:
        return inconclusive("no data (the query matched no series)")
    return _judge(gate, values, query)


def _judge(gate: Gate, values: list[float], query: str) -> GateResult:
    """Samples against the bar. One that is a number and misses the bar fails the gate, whatever
    a NaN beside it says; the value reported is the one furthest past the bar (on a pass, the
    closest to it). A NaN and no failure: inconclusive."""
    compare = OPERATORS[gate.op]

    def distance(value: float) -> float:
        return abs(value - gate.threshold)

    failing = [v for v in values if not math.isnan(v) and not compare(v, gate.threshold)]
    if failing:
        worst = max(failing, key=distance)
        series = f" ({len(failing)} of {len(values)} series)" if len(values) > 1 else ""
        return GateResult(gate.name, FAIL, worst, f"{worst:g} is not {gate.op} {gate.threshold:g}{series}", query)
    if any(math.isnan(v) for v in values):
        return GateResult(gate.name, INCONCLUSIVE, None, "NaN (a rate over no requests?)", query)
    closest = min(values, key=distance)
    series = f" ({len(values)} series)" if len(values) > 1 else ""
    return GateResult(gate.name, PASS, closest, f"{closest:g} {gate.op} {gate.threshold:g}{series}", query)


def _sample_values(data: dict) -> list[float]:
    kind = data["resultType"]
    if kind == "vector":
        return [float(item["value"][1]) for item in data["result"]]
    if kind == "scalar":
        return [float(data["result"][1])]
    raise ValueError(f"resultType {kind!r}; a gate needs an instant vector or a scalar")


class _PastDeadline(Exception):
    pass


def _read_answer(stream, deadline: float) -> bytes:
    """The body, up to MAX_ANSWER_BYTES, by the deadline (monotonic). urlopen's timeout bounds
    each socket read, not the whole: a server sending a byte every 100 ms never trips it, so
    read1 (one socket read at a time) and the clock between reads. Raises _PastDeadline."""
    chunks, size = [], 0
    while size < MAX_ANSWER_BYTES:
        if time.monotonic() > deadline:
            raise _PastDeadline
        chunk = stream.read1(min(READ_CHUNK_BYTES, MAX_ANSWER_BYTES - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _get(url: str, timeout_s: float) -> tuple[dict | None, str | None]:
    """GET url -> (decoded JSON, None) or (None, why), within about timeout_s in all (a read
    already begun at the deadline may take one socket timeout more). Prometheus answers a bad
    query with 400 and its JSON error body, which is the useful part."""
    deadline = time.monotonic() + timeout_s
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = _read_answer(response, deadline)
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(_read_answer(exc, deadline)), None
        except (_PastDeadline, OSError, ValueError):
            return None, f"HTTP {exc.code} {exc.reason}"
    except _PastDeadline:
        return None, f"timed out: no whole answer in {timeout_s:g}s"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"cannot reach Prometheus: {reason}"
    try:
        return json.loads(body), None
    except ValueError:
        return None, "Prometheus' answer is not JSON"


async def query(prometheus_url: str, promql: str, timeout_s: float = QUERY_TIMEOUT_S) -> tuple[dict | None, str | None]:
    """One instant query: (decoded JSON answer, None) or (None, why the request failed). Never
    longer than timeout_s + QUERY_SLACK_S: a server that trickles its headers holds the thread
    (urlopen reads them before _get sees the clock), not the bake."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        return await asyncio.wait_for(asyncio.to_thread(_get, url, timeout_s), timeout_s + QUERY_SLACK_S)
    except asyncio.TimeoutError:
        return None, f"timed out: no whole answer in {timeout_s:g}s"


async def evaluate_gate(prometheus_url: str, gate: Gate, version: str, old_version: str, nodes,
                        timeout_s: float = QUERY_TIMEOUT_S) -> GateResult:
    promql = fill_query(gate.query, version, old_version, nodes)
    answer, error = await query(prometheus_url, promql, timeout_s)
    return verdict(gate, answer, error, promql)


async def evaluate_gates(prometheus_url: str, gates, version: str, old_version: str, nodes,
                         timeout_s: float = QUERY_TIMEOUT_S) -> list[GateResult]:
    """Every gate once, concurrently: one GateResult each, in the gates' order."""
    return list(await asyncio.gather(*(evaluate_gate(prometheus_url, g, version, old_version, nodes, timeout_s)
                                       for g in gates)))


class GateRunner:
    """The gates of one deploy across a bake: counts each gate's inconclusive answers in a row."""

    def __init__(self, prometheus_url: str, gates, tries: int = 3, timeout_s: float = QUERY_TIMEOUT_S):
        self.url, self.gates, self.tries, self.timeout_s = prometheus_url, list(gates), tries, timeout_s
        self.streak: dict[str, int] = {g.name: 0 for g in self.gates}

    def reset(self) -> None:
        """A new bake: earlier inconclusive answers do not count against it."""
        self.streak = {g.name: 0 for g in self.gates}

    async def evaluate(self, version: str, old_version: str, nodes) -> list[GateResult]:
        results = await evaluate_gates(self.url, self.gates, version, old_version, nodes, self.timeout_s)
        for result in results:
            self.streak[result.name] = self.streak[result.name] + 1 if result.outcome == INCONCLUSIVE else 0
        return results

    def failure(self, results: list[GateResult]) -> GateResult | None:
        """The result that fails the batch: a failed gate, or one inconclusive `tries` times in a row."""
        for result in results:
            if result.outcome == FAIL or (result.outcome == INCONCLUSIVE and self.streak[result.name] >= self.tries):
                return result
        return None

    def pending(self, results: list[GateResult]) -> list[GateResult]:
        """Inconclusive results that may still be retried."""
        return [r for r in results if r.outcome == INCONCLUSIVE and self.streak[r.name] < self.tries]
