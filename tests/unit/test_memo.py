"""The one bounded memo (lb/core/memo.py), and every cache in lb made of it: filled with
hostile keys (long names, long Host values, endless new values), each holds no more than
its bounds, counted by the memo and measured by tracemalloc."""

import tracemalloc

import pytest

from lb.core import h2head
from lb.core.http1 import framing, heads, writer
from lb.core.memo import Memo


@pytest.mark.parametrize("puts, held", [
    ([("a", 1)], {"a"}),
    ([("a", 1), ("b", 1), ("c", 1)], {"a", "b", "c"}),
    ([("a", 1), ("b", 1), ("c", 1), ("d", 1)], {"d"}),          # a 4th entry: start over
    ([("a", 6), ("b", 5)], {"b"}),                               # 11 bytes > 10: start over
    ([("a", 5), ("b", 5)], {"a", "b"}),                          # exactly the bytes
    ([("a", 4), ("big", 7)], {"a"}),                             # over max_entry_bytes: never kept
    ([("a", 4), ("a", 4), ("a", 4)], {"a"}),                     # the same key counts once
])
def test_a_memo_holds_at_most_its_entries_and_bytes(puts, held):
    memo = Memo(3, 10, 6)
    for key, size in puts:
        memo.put(key, key.upper(), size)
    assert set(memo) == held and all(memo.get(k) == k.upper() for k in held)
    assert memo.bytes <= 10 and len(memo) <= 3


def _hostile_requests(i: int) -> None:
    """What peers can send to lb's caches: new long names, values, Hosts, Connection tokens,
    reasons, HTTP/2 fields, every time."""
    long = b"n" * 60_000 + b"%d" % i
    mid = b"m" * 100 + b"%d" % i
    for name in (long, mid, b"x-%d" % i):
        heads._split_headers([(name, b"v")], heads._RESPONSE_SPECIAL)
        heads._split_headers([(name, b"v")], heads._REQUEST_SPECIAL)
    for token in (mid, b"x%d" % i):
        framing.connection_tokens({b"connection": [b"close, " + token]})
    for reason in (b"R" * 100 + b"%d" % i, b"R%d" % i):
        writer._status_line(200, reason)
    for host in (b"h" * 16_000 + b"%d" % i, b"h%d.example" % i):
        heads._check_host(host, b"/")
    base = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
    h2head.request_head(base + [(b"x-" + b"n" * 8000 + b"%d" % i, b"1"), (mid, b"%d" % i)], has_body=False)
    h2head.ResponseEncoder().encode([(b"x-" + b"n" * 8000 + b"%d" % i, b"1"), (mid, b"%d" % i)])


MEMOS = {
    "HTTP/1 response names": lambda: heads._NAMES_SEEN[heads._RESPONSE_SPECIAL],
    "HTTP/1 request names": lambda: heads._NAMES_SEEN[heads._REQUEST_SPECIAL],
    "Connection tokens": lambda: framing._TOKENS_SEEN,
    "status lines": lambda: writer._STATUS_LINES,
    "Host values": lambda: heads._GOOD_HOSTS,
    "HTTP/2 fields found valid": lambda: h2head._checked,
    "HTTP/2 encoded response fields": lambda: h2head._encoded,
}


def test_every_cache_filled_with_hostile_keys_holds_only_its_bounds():
    for memo in MEMOS.values():
        memo().clear()
    tracemalloc.start()
    try:
        for i in range(300):
            _hostile_requests(i)
        before, _ = tracemalloc.get_traced_memory()
        for i in range(300, 3300):
            _hostile_requests(i)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = 0
    for what, memo in MEMOS.items():
        memo = memo()
        assert 0 < len(memo) <= memo.max_entries and memo.bytes <= memo.max_bytes, what
        assert all(len(k if isinstance(k, bytes) else b"".join(x for x in k if isinstance(x, bytes)))
                   <= memo.max_entry_bytes for k in memo), what
        bound += memo.max_bytes
    # 3,000 more rounds of new keys (each round ~100 KB of names and values) grow the memory
    # held by less than the memos' byte bounds plus per-entry overhead: not by what was sent
    assert after - before < 2 * bound, (after - before, bound)


def test_what_is_remembered_is_what_the_general_computation_gives():
    assert framing.connection_tokens({b"connection": [b"Keep-Alive, X-Foo"]}) == {b"keep-alive", b"x-foo"}
    assert framing.connection_tokens({b"connection": [b"Keep-Alive, X-Foo"]}) == {b"keep-alive", b"x-foo"}
    assert heads._split_headers([(b"Keep_Alive", b"1"), (b"CONNECTION", b"x"), (b"A", b"b")],
                                heads._RESPONSE_SPECIAL) == ([(b"A", b"b")], {b"connection": [b"x"]})
    assert writer._status_line(200, b"") == writer._status_line(200, b"") == b"HTTP/1.1 200 OK\r\n"
