"""The deploy's gates: --gate's parser, the placeholders, the verdict on Prometheus' answers,
the inconclusive streak, the HTTP client against a real (canned) HTTP server, --min-requests'
evidence, and the gate options' checks."""

import json
import math
import threading
import time
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from lb.core.errors import DeployError
from lb.deploy.gates import (FAIL, INCONCLUSIVE, PASS, Gate, GateRunner, evaluate_gates, fill_query, nodes_regex,
                             parse_gate, parse_gates, verdict)
from lb.deploy.plan import VERIFY_UNREACHED, Options, evidence, lb_address, verify_env, verify_warnings

# -- the parser -------------------------------------------------------------------------


@pytest.mark.parametrize("text, gate", [
    ("err: sum(rate(x[1m])) < 0.5", Gate("err", "sum(rate(x[1m]))", "<", 0.5)),
    ("p99:histogram_quantile(0.99, rate(h[1m]))<=250", Gate("p99", "histogram_quantile(0.99, rate(h[1m]))", "<=", 250)),
    ("up: min(up{job=\"app\"}) == 1", Gate("up", "min(up{job=\"app\"})", "==", 1)),
    ("ratio: a / b > -1e-3", Gate("ratio", "a / b", ">", -0.001)),
    ("x: a > b >= 2", Gate("x", "a > b", ">=", 2)),             # the last operator is the bar
    ("n.1: count(x{code=~\"5..\"}) != 3", Gate("n.1", "count(x{code=~\"5..\"})", "!=", 3)),
    ("  spaced :  q   >   .5  ", Gate("spaced", "q", ">", 0.5)),
])
def test_a_gate_is_name_query_operator_threshold(text, gate):
    assert parse_gate(text) == gate


@pytest.mark.parametrize("text, message", [
    ("no colon < 1", "expected 'NAME: QUERY OP THRESHOLD'"),
    ("err: sum(x)", "expected 'NAME: QUERY OP THRESHOLD'"),
    ("err: sum(x) < high", "expected 'NAME: QUERY OP THRESHOLD'"),
    ("err: < 1", "expected 'NAME: QUERY OP THRESHOLD'"),
    ("bad name: x < 1", "expected 'NAME: QUERY OP THRESHOLD'"),
    ("err: x{job=\"{service}\"} < 1", "--gate err: unknown placeholder {service}"),
])
def test_a_bad_gate_is_refused_naming_it(text, message):
    with pytest.raises(DeployError) as info:
        parse_gate(text)
    assert message in info.value.message and (text in info.value.message or "--gate err" in info.value.message)


def test_two_gates_may_not_share_a_name():
    with pytest.raises(DeployError, match="--gate a: two gates have that name"):
        parse_gates(["a: x < 1", "a: y < 2"])


# -- placeholders ------------------------------------------------------------------------

@pytest.mark.parametrize("nodes, regex", [
    (["web1"], "web1"),
    (["web1", "web2"], "web1|web2"),
    (["web.1", "a-b_c"], "web\\\\.1|a-b_c"),       # '.' escaped for RE2, the backslash for the string
])
def test_nodes_become_an_escaped_regex_alternation(nodes, regex):
    assert nodes_regex(nodes) == regex


def test_placeholders_are_filled_and_promql_braces_left_alone():
    query = 'sum(rate(lb_requests{version="{version}",server=~"{nodes}",code=~"5.."}[1m])) / {old_version}'
    assert fill_query(query, "v2", "v1", ["web1", "web2"]) == \
        'sum(rate(lb_requests{version="v2",server=~"web1|web2",code=~"5.."}[1m])) / v1'


def test_verify_gets_lb_url_and_the_version_header():
    values = {"name": "web1", "host": "127.0.0.1", "port": 9001, "version": "v2", "old_version": "v1"}
    env = verify_env(values, Options(to="v2", update="true", lb_url="http://127.0.0.1:8080/",
                                     version_header="X-Release"))
    assert env["LB_URL"] == "http://127.0.0.1:8080" and env["LB_VERSION_HEADER"] == "X-Release: v2"
    assert env["LB_NODE"] == "web1" and env["LB_PORT"] == "9001" and env["LB_VERSION"] == "v2"


def listener(address, tls=False, redirect=False):
    return {"address": address, "tls": tls, "redirect_https": redirect}


# (show info's listeners and header, the ssh target's host, LB_URL and header, or the error)
LB_ADDRESSES = [
    ([listener("127.0.0.1:8080")], None, ("http://127.0.0.1:8080", "X-Lb-Version")),
    ([listener("0.0.0.0:80", redirect=True), listener("0.0.0.0:443", tls=True)], None,
     ("https://127.0.0.1:443", "X-Lb-Version")),
    ([listener("0.0.0.0:8080")], "lb1.example", ("http://lb1.example:8080", "X-Lb-Version")),
    ([listener("[::]:8080")], None, ("http://[::1]:8080", "X-Lb-Version")),
    ([listener("10.0.0.5:80")], "lb1.example", ("http://10.0.0.5:80", "X-Lb-Version")),
    ([listener("0.0.0.0:80", redirect=True)], None, "names no listener that serves"),
    ([], None, "names no listener that serves"),
]


@pytest.mark.parametrize("listeners, host, expected", LB_ADDRESSES)
def test_verify_finds_lbs_own_address_in_show_info(listeners, host, expected):
    info = {"listeners": listeners, "pinning_header": "X-Lb-Version"}
    if isinstance(expected, str):
        with pytest.raises(DeployError, match=expected):
            lb_address(info, host)
    else:
        assert lb_address(info, host) == expected


@pytest.mark.parametrize("verify, info, warned", [
    ("curl -H \"$LB_VERSION_HEADER\" $LB_URL/", {"override_from": False}, True),
    ("curl -H \"$LB_VERSION_HEADER\" $LB_URL/", {"override_from": True}, False),
    ("curl -H \"$LB_VERSION_HEADER\" $LB_URL/", {}, False),        # an lb that does not say: unknown, no warning
    (None, {"override_from": False}, False),                       # no --verify, nothing to warn of
])
def test_verify_warns_when_lb_lets_nobody_reach_a_version_with_no_users(verify, info, warned):
    warnings = verify_warnings(info, Options(to="v2", update="true", verify=verify))
    assert warnings == ([VERIFY_UNREACHED] if warned else [])
    if warned:
        assert "skew.override_from, which is empty" in warnings[0] and "$LB_HOST:$LB_PORT" in warnings[0]


# -- the verdict ---------------------------------------------------------------------------

def vector(*values, metric=None):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": metric or {"instance": f"i{i}"}, "value": [1700000000.0, v]} for i, v in enumerate(values)]}}


LT = Gate("err", "q", "<", 0.5)


@pytest.mark.parametrize("gate, answer, error, outcome, detail", [
    (LT, vector("0.1"), None, PASS, "0.1 < 0.5"),
    (LT, vector("0.5"), None, FAIL, "0.5 is not < 0.5"),
    (LT, vector("0.7"), None, FAIL, "0.7 is not < 0.5"),
    (LT, vector("0.1", "0.9", "0.2"), None, FAIL, "0.9 is not < 0.5 (1 of 3 series)"),
    (LT, vector("0.1", "0.4"), None, PASS, "0.4 < 0.5 (2 series)"),
    (Gate("up", "q", ">=", 1), vector("1"), None, PASS, "1 >= 1"),
    (Gate("eq", "q", "==", 0), vector("0"), None, PASS, "0 == 0"),
    (Gate("ne", "q", "!=", 0), vector("0"), None, FAIL, "0 is not != 0"),
    (Gate("gt", "q", ">", 0), vector("+Inf"), None, PASS, "inf > 0"),
    (LT, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "0.25"]}}, None, PASS, "0.25 < 0.5"),
    (LT, vector(), None, INCONCLUSIVE, "no data"),
    (LT, vector("NaN"), None, INCONCLUSIVE, "NaN"),
    (LT, {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"}, None, INCONCLUSIVE,
     "Prometheus answered bad_data: parse error at char 4"),
    (LT, {"status": "success", "data": {"resultType": "matrix", "result": []}}, None, INCONCLUSIVE,
     "resultType 'matrix'"),
    (LT, {"status": "success", "data": {"resultType": "vector", "result": [{"value": []}]}}, None, INCONCLUSIVE,
     "cannot read"),
    (LT, ["not", "an", "object"], None, INCONCLUSIVE, "not an object"),
    (LT, None, "cannot reach Prometheus: [Errno 111] Connection refused", INCONCLUSIVE, "cannot reach Prometheus"),
])
def test_the_verdict_on_an_answer(gate, answer, error, outcome, detail):
    result = verdict(gate, answer, error, "q")
    assert result.outcome == outcome and detail in result.detail, result
    json.dumps(result.to_dict())                  # NaN and Inf still make JSON


# (gate, sample values, outcome, the value reported): a number that misses the bar fails the
# gate even beside a NaN, and the value reported is the furthest past the bar
WORST = [
    (LT, ("NaN", "0.9"), FAIL, 0.9),
    (LT, ("0.9", "NaN"), FAIL, 0.9),
    (LT, ("NaN", "0.1"), INCONCLUSIVE, None),
    (LT, ("0.6", "0.9", "0.7"), FAIL, 0.9),
    (LT, ("0.6", "NaN", "0.9", "0.1"), FAIL, 0.9),
    (LT, ("0.1", "0.4", "0.3"), PASS, 0.4),              # a pass reports the closest to the bar
    (Gate("up", "q", ">=", 1), ("0.5", "0", "0.8"), FAIL, 0.0),
    (Gate("up", "q", ">=", 1), ("NaN", "0.2"), FAIL, 0.2),
    (Gate("eq", "q", "==", 0), ("0.1", "-3", "2"), FAIL, -3.0),
    (Gate("lt", "q", "<", 1), ("2", "+Inf"), FAIL, math.inf),
]


@pytest.mark.parametrize("gate, values, outcome, value", WORST)
def test_any_failing_sample_fails_and_the_worst_is_reported(gate, values, outcome, value):
    result = verdict(gate, vector(*values), None, "q")
    assert (result.outcome, result.value) == (outcome, value), result
    if outcome == FAIL:
        assert result.detail.startswith(f"{value:g} is not {gate.op}"), result


def test_an_inconclusive_gate_fails_after_tries_in_a_row_and_a_pass_resets_the_count():
    runner = GateRunner("http://unused", [LT], tries=3)
    sequence = [(INCONCLUSIVE, False), (INCONCLUSIVE, False), (PASS, False), (INCONCLUSIVE, False),
                (INCONCLUSIVE, False), (INCONCLUSIVE, True)]
    for outcome, fails in sequence:
        result = verdict(LT, vector("0.1") if outcome == PASS else vector(), None)
        runner.streak["err"] = runner.streak["err"] + 1 if outcome == INCONCLUSIVE else 0
        assert (runner.failure([result]) is not None) == fails
        assert runner.pending([result]) == ([result] if outcome == INCONCLUSIVE and not fails else [])
    runner.reset()
    assert runner.streak == {"err": 0}
    assert runner.failure([verdict(LT, vector("0.9"), None)]).outcome == FAIL     # a fail fails at once


# -- the HTTP client, against a real HTTP server with canned answers -------------------------

class Canned(BaseHTTPRequestHandler):
    answers: dict = {}            # query -> (status, body)
    seen: list = []

    def do_GET(self):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)["query"][0]
        self.seen.append((parts.path, query))
        status, body = self.answers.get(query, (200, json.dumps(vector())))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    Canned.answers, Canned.seen = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_gates_ask_prometheus_over_http_and_read_its_answers(prometheus):
    Canned.answers = {
        'rate(e{version="v2"}[1m])': (200, json.dumps(vector("0.01"))),
        'rate(e{server=~"web1|web2"}[1m])': (200, json.dumps(vector("3"))),
        "bad(": (400, json.dumps({"status": "error", "errorType": "bad_data", "error": "unexpected end"})),
        "boom": (503, "<html>unavailable</html>"),
    }
    gates = parse_gates(['ok: rate(e{version="{version}"}[1m]) < 0.05', 'hot: rate(e{server=~"{nodes}"}[1m]) < 1',
                         "syntax: bad( < 1", "down: boom < 1", "empty: nothing < 1"])
    results = await evaluate_gates(prometheus, gates, "v2", "v1", ["web1", "web2"], timeout_s=5)
    assert [(r.name, r.outcome) for r in results] == [("ok", PASS), ("hot", FAIL), ("syntax", INCONCLUSIVE),
                                                     ("down", INCONCLUSIVE), ("empty", INCONCLUSIVE)]
    assert results[2].detail == "Prometheus answered bad_data: unexpected end"
    assert results[3].detail == "HTTP 503 Service Unavailable"
    assert ("/api/v1/query", 'rate(e{version="v2"}[1m])') in Canned.seen


async def test_a_prometheus_nobody_listens_on_is_inconclusive(prometheus):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]           # bound, not listening: connections are refused
        results = await evaluate_gates(f"http://127.0.0.1:{free}", [LT], "v2", "v1", ["web1"], timeout_s=5)
    assert results[0].outcome == INCONCLUSIVE and results[0].detail.startswith("cannot reach Prometheus")


async def test_the_runner_counts_inconclusive_answers_from_the_server(prometheus):
    runner = GateRunner(prometheus, parse_gates(["err: q < 1"]), tries=2)
    first = await runner.evaluate("v2", "v1", ["web1"])
    assert runner.failure(first) is None and runner.pending(first) == first
    second = await runner.evaluate("v2", "v1", ["web1"])
    assert runner.failure(second).outcome == INCONCLUSIVE and runner.streak == {"err": 2}
    Canned.answers = {"q": (200, json.dumps(vector("0")))}
    third = await runner.evaluate("v2", "v1", ["web1"])
    assert runner.failure(third) is None and runner.streak == {"err": 0}


class Trickle(BaseHTTPRequestHandler):
    """Answers a byte every 50 ms: in the body (headers at once), or in the headers themselves.
    Stops when the test ends (`stop`), so no thread outlives it."""
    in_headers = False
    stop = threading.Event()
    BYTES = 200                                    # 10 s of trickle: far past any timeout here

    def do_GET(self):
        if self.in_headers:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(self.BYTES))
            self.end_headers()
        self.wfile.flush()
        for _ in range(self.BYTES):
            if self.stop.wait(0.05):
                return
            self.wfile.write(b" ")
            self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def trickling():
    Trickle.stop = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    Trickle.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("in_headers, within_s", [
    (False, 1.8),              # the body: _get's own deadline, between reads
    (True, 2.8),               # the headers (inside urlopen): the bake stops waiting at timeout + 1 s
])
async def test_a_prometheus_that_trickles_its_answer_is_inconclusive_within_the_timeout(trickling, monkeypatch,
                                                                                        in_headers, within_s):
    monkeypatch.setattr(Trickle, "in_headers", in_headers)
    started = time.monotonic()
    try:
        results = await evaluate_gates(trickling, [LT], "v2", "v1", ["web1"], timeout_s=1)
        took = time.monotonic() - started
    finally:
        Trickle.stop.set()          # now: the loop's teardown (before the fixture's) waits for the thread
    assert results[0].outcome == INCONCLUSIVE and results[0].detail == "timed out: no whole answer in 1s", results
    assert took < within_s, took


# -- evidence and the options -------------------------------------------------------------

@pytest.mark.parametrize("requests, allow, outcome, text", [
    (150, False, "pass", "150 requests judged (--min-requests 100)"),
    (100, False, "pass", "100 requests judged"),
    (99, False, "fail", "thin bake: 99 requests judged in 50s, --min-requests 100 not reached by --bake-max 50s"),
    (0, True, "warn", "passed anyway (--allow-thin-bakes)"),
])
def test_a_bake_needs_min_requests(requests, allow, outcome, text):
    opts = Options(to="v2", update="true", allow_thin_bakes=allow)
    got, detail = evidence(requests, 50.2, 50, opts)
    assert got == outcome and text in detail


def test_the_bake_limit_is_5x_the_bake_unless_given():
    assert Options(to="v2", update="true").bake_limit_s(10) == 50
    assert Options(to="v2", update="true", bake_s=10, bake_max_s=20).bake_limit_s(30) == 30   # never under the bake
    assert Options(to="v2", update="true", bake_s=10, bake_max_s=20).bake_limit_s(10) == 20


@pytest.mark.parametrize("fields, message", [
    ({"gates": ("e: x < 1",)}, "--gate needs --prometheus URL"),
    ({"prometheus": "localhost:9090"}, "--prometheus: expected http://HOST:PORT"),
    ({"prometheus": "http://p:9090", "gates": ("e x < 1",)}, "--gate 'e x < 1': expected 'NAME: QUERY OP THRESHOLD'"),
    ({"gate_tries": 0}, "--gate-tries: expected 1 or more"),
    ({"min_requests": -1}, "--min-requests: expected 0 or more"),
    ({"check_interval_s": 0}, "--check-interval: expected a duration above 0"),
    ({"bake_s": 10, "bake_max_s": 5}, "--bake-max: expected at least the bake (10s)"),
    ({"verify": "curl {url}"}, "--verify: unknown placeholder {url}"),
    ({"checks": ("true", "grep {nmae}")}, "--check: unknown placeholder {nmae}"),
    ({"lb_url": "127.0.0.1:8080"}, "--lb-url: expected http://HOST:PORT"),
    ({"version_header": "X Lb"}, "--version-header: expected a header name"),
])
def test_bad_gate_options_are_refused_naming_the_flag(fields, message):
    with pytest.raises(DeployError) as info:
        Options(to="v2", update="true", **fields)
    assert message in info.value.message, info.value.message


def test_options_read_back_from_the_state_file_keep_their_gates():
    opts = Options(to="v2", update="true", verify="curl {host}", verify_timeout_s=5, checks=("a", "b"),
                   check_interval_s=2.5, check_timeout_s=4, prometheus="http://p:9090", gates=("e: x < 1",),
                   gate_tries=5, min_requests=7, bake_max_s=90, allow_thin_bakes=True,
                   lb_url="http://127.0.0.1:8080", version_header="X-Release")
    names = [f.name for f in fields(Options)]
    gate_fields = [f for f in fields(Options) if names.index(f.name) >= names.index("verify")]
    # every gate option away from its default, so the round trip below proves each one is kept
    assert [f.name for f in gate_fields if getattr(opts, f.name) == f.default] == []
    again = Options(**json.loads(json.dumps(opts.to_dict())))
    assert again == opts and again.checks == ("a", "b") and again.gates == ("e: x < 1",)
