"""lb/core/skew.py: every routing rule of skew protection, table by table, with `now` passed in."""

import pytest

from lb.core.skew import (ASSET, HEADER, INDEX_MAX_BYTES, OVERRIDE, QUERY, STORE, Asset, AssetIndex, AssetMap,
                          AssetsUpdate, Override, View, asset_key, asset_path, decide, encoding_accepted, fall_back, glob_matcher,
                          is_immutable, label, may_copy, query_value)

ORDER = ("v1", "v2", "v3")
COPY = "ab" * 32                       # a stored copy's digest


def mapping(*assets: Asset, retired: dict | None = None) -> AssetMap:
    assets_map = AssetMap()
    assets_map.apply(AssetsUpdate(add=assets, retired=retired or {}))
    return assets_map


@pytest.mark.parametrize("raw, expected", [
    (b"v1", "v1"), (b" v2 ", "v2"), (b"release-2026.12.03_1", "release-2026.12.03_1"),
    (None, None), (b"", None), (b"v1;drop", None), (b"-v1", None), (b"x" * 33, None), (b"\xff", None),
    (b"v1\r\n", "v1"),
])
def test_a_label_from_a_request_is_a_version_label_or_nothing(raw, expected):
    assert label(raw) == expected


@pytest.mark.parametrize("target, expected", [
    (b"/app?dpl=v1", b"v1"), (b"/app?a=1&dpl=v2&dpl=v3", b"v2"), (b"/app?dpl=", b""), (b"/app?dpl", None),
    (b"/app", None), (b"/app?xdpl=v1", None), (b"/app?dpl=v1#frag", b"v1"), (b"/app?a=b#dpl=v1", None),
])
def test_the_query_parameter(target, expected):
    assert query_value(target, b"dpl") == expected


@pytest.mark.parametrize("target, path", [(b"/a.js?v=1", b"/a.js"), (b"/a.js", b"/a.js"), (b"/?x", b"/")])
def test_an_asset_s_path_leaves_the_query_out(target, path):
    assert asset_path(target) == path


@pytest.mark.parametrize("value, immutable", [
    (b"public, max-age=31536000, immutable", True), (b"Immutable", True), (b"max-age=60", False),
    (None, False), (b"", False), (b"immutable, no-store", False), (b"private, immutable", False),
    (b"public, no-cache, immutable", False), (b"max-age=1,immutable", True), (b"immutableish", False),
])
def test_what_counts_as_an_immutable_response(value, immutable):
    assert is_immutable(value) is immutable


@pytest.mark.parametrize("globs, path, matches", [
    ((), b"/assets/a.js", False), (("/assets/*",), b"/assets/a.js", True), (("/assets/*",), b"/assets/x/a.js", True),
    (("/assets/*",), b"/api/x", False), (("/_next/static/*", "*.css"), b"/s/a.css", True),
    (("/assets/*.js",), b"/assets/a.css", False),
])
def test_skew_assets_globs(globs, path, matches):
    assert glob_matcher(globs)(path) is matches


# -- the decision: (named, path, pin, may override, capacity, weightless) -> (version, how, gone) ---------
EMPTY = mapping()
CASES = [
    # named, in service: used as named, stronger first
    ("header names v1 in service", [("v1", HEADER)], None, "v2", {"v1": 1, "v2": 1}, set(), ("v1", HEADER, None)),
    ("header beats query", [("v1", HEADER), ("v2", QUERY)], None, None, {"v1": 1, "v2": 1}, set(),
     ("v1", HEADER, None)),
    ("query when no header", [("v2", QUERY)], None, "v1", {"v1": 1, "v2": 1}, set(), ("v2", QUERY, None)),
    ("malformed header, the query holds", [(None, HEADER), ("v1", QUERY)], None, None, {"v1": 1}, set(),
     ("v1", QUERY, None)),
    ("a label never in the pool is ignored", [("v9", HEADER)], None, "v1", {"v1": 1}, set(), (None, None, None)),
    # gone: the cookie's rules, said in the response
    ("header names a gone version", [("v1", HEADER)], None, "v2", {"v2": 1}, set(), (None, None, "v1")),
    ("gone header, query in service", [("v1", HEADER), ("v2", QUERY)], None, None, {"v2": 1}, set(),
     ("v2", QUERY, None)),
    ("both gone: the first is said", [("v1", HEADER), ("v2", QUERY)], None, None, {"v3": 1}, set(),
     (None, None, "v1")),
    # weightless: only when the request may override
    ("weightless, may override", [("v3", HEADER)], None, None, {"v1": 1}, {"v3"}, ("v3", OVERRIDE, None)),
    ("weightless, may not", [("v3", HEADER)], None, "v1", {"v1": 1}, {"v3"}, (None, None, None)),
    ("nothing named", [], None, "v1", {"v1": 1}, set(), (None, None, None)),
]


@pytest.mark.parametrize("what, named, path, pin, capacity, weightless, expected", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("may", [True, False])
def test_named_versions(what, named, path, pin, capacity, weightless, expected, may):
    asked = []

    def may_override():
        asked.append(True)
        return may

    decision = decide(tuple(named), path, pin, may_override, View(capacity, frozenset(weightless), ORDER), EMPTY)
    if what.startswith("weightless"):
        expected = ("v3", OVERRIDE, None) if may else (None, None, None)
        assert asked == [True]
    else:
        assert asked == []                        # asked only for a weightless version
    assert (decision.version, decision.how, decision.gone) == expected
    if decision.version is None:
        assert decision.pin == pin                # the cookie's rules get the pin


A = b"/assets/chunk.js"
IN_V1 = Asset(A, "v1", COPY, 10, ((b"Content-Type", b"text/javascript"),))
IN_V2 = Asset(A, "v2", "cd" * 32, 10)
NO_COPY_V1 = Asset(A, "v1")


def test_a_known_asset_goes_by_the_cookie_with_its_versions_for_a_404_and_an_unknown_one_without():
    assets = mapping(IN_V1, IN_V2)
    view = View({"v1": 1, "v2": 1}, frozenset(), ORDER)
    known = decide((), A, "v2", lambda: False, view, assets)
    assert (known.version, known.how, known.pin, known.fallback) == (None, None, "v2", {"v1": IN_V1, "v2": IN_V2})
    assert decide((), None, "v2", lambda: False, view, assets).fallback is None


FALLBACKS = [
    # (what, entries, answered 404, capacity, retired, now, expected version, how)
    ("another version in service that has it", [IN_V1], "v2", {"v1": 1, "v2": 1}, {}, 100.0, ("v1", ASSET)),
    ("the newest other one", [IN_V1, IN_V2], "v3", {"v1": 1, "v2": 1, "v3": 1}, {}, 100.0, ("v2", ASSET)),
    ("never the one that said 404", [IN_V1, IN_V2], "v2", {"v1": 1, "v2": 1}, {}, 100.0, ("v1", ASSET)),
    ("a version in service before a copy", [IN_V1, IN_V2], "v3", {"v1": 1, "v3": 1}, {"v2": 50.0}, 100.0,
     ("v1", ASSET)),
    ("its version gone: the copy", [IN_V1], "v2", {"v2": 1}, {"v1": 50.0}, 100.0, ("v1", STORE)),
    ("the copy within retention", [IN_V1], "v2", {"v2": 1}, {"v1": 50.0}, 50.0 + 3599.0, ("v1", STORE)),
    ("past retention: the 404 stands", [IN_V1], "v2", {"v2": 1}, {"v1": 50.0}, 50.0 + 3600.0, (None, None)),
    ("gone and no copy: the 404 stands", [NO_COPY_V1], "v2", {"v2": 1}, {"v1": 50.0}, 100.0, (None, None)),
    ("gone just now (no time yet): the copy", [IN_V1], "v2", {"v2": 1}, {}, 100.0, ("v1", STORE)),
    ("the newest copy of two gone", [IN_V1, IN_V2], "v3", {"v3": 1}, {"v1": 10.0, "v2": 90.0}, 100.0,
     ("v2", STORE)),
    ("only the version that said 404 has it", [IN_V1], "v1", {"v1": 1}, {}, 100.0, (None, None)),
]


@pytest.mark.parametrize("what, entries, answered, capacity, retired, now, expected", FALLBACKS,
                         ids=[c[0] for c in FALLBACKS])
def test_where_a_404_for_a_known_asset_goes(what, entries, answered, capacity, retired, now, expected):
    have = {asset.version: asset for asset in entries}
    decision = fall_back(have, answered, View(capacity, frozenset(), ORDER), retired, now, 3600.0)
    assert ((decision.version, decision.how) if decision else (None, None)) == expected
    if decision is not None:
        assert (decision.stored is not None) == (decision.how == STORE)


def test_a_named_version_beats_the_asset_and_a_gone_one_is_still_said_with_it():
    assets = mapping(IN_V1)
    view = View({"v1": 1, "v2": 1}, frozenset(), ORDER)
    assert decide((("v2", HEADER),), A, None, lambda: False, view, assets)[:3] == ("v2", HEADER, None)
    view = View({"v1": 1, "v3": 1}, frozenset(), ORDER)
    gone = decide((("v2", HEADER),), A, "v3", lambda: False, view, assets)
    assert (gone.version, gone.gone, gone.pin, list(gone.fallback)) == (None, "v2", "v3", ["v1"])


# -- who may override -----------------------------------------------------------------------
@pytest.mark.parametrize("entries, peer, allowed", [
    (("127.0.0.0/8", "::1/128"), "127.0.0.1", True), (("127.0.0.0/8", "::1/128"), "::1", True),
    (("127.0.0.0/8", "::1/128"), "10.1.2.3", False), (("10.0.0.0/8",), "10.1.2.3", True),
    ((), "127.0.0.1", False), (("10.0.0.0/8",), "-", False), (("10.0.0.0/8",), "", False),
    (("fe80::/10",), "fe80::1%eth0", True),
])
def test_override_from_cidrs(entries, peer, allowed):
    assert Override(entries).peer_allowed(peer) is allowed


class Head:
    def __init__(self, headers):
        self.headers = headers


@pytest.mark.parametrize("headers, shown, left", [
    ([(b"X-Lb-Override", b"s" * 16)], True, []),
    ([(b"x-lb-override", b" " + b"s" * 16 + b" ")], True, []),
    ([(b"X-Lb-Override", b"s" * 15 + b"t")], False, []),
    ([(b"X-Other", b"1"), (b"X-Lb-Override", b"no"), (b"X-Lb-Override", b"s" * 16)], True, [(b"X-Other", b"1")]),
    ([(b"X-Other", b"1")], False, [(b"X-Other", b"1")]),
])
def test_a_secret_header_is_checked_and_always_taken_out(headers, shown, left):
    head = Head(list(headers))
    assert Override((("X-Lb-Override", "s" * 16),)).take_secret(head) is shown
    assert head.headers == left


# -- the index ---------------------------------------------------------------------------------
def test_the_index_learns_once_and_a_copy_replaces_an_entry_without_one():
    index = AssetIndex(10, 1000, 100)
    assert index.learn(Asset(A, "v1")) == ([Asset(A, "v1")], [], [])
    assert index.learn(Asset(A, "v1")) == ([], [], [])
    added, dropped, freed = index.learn(IN_V1)
    assert added == [IN_V1] and not dropped and not freed and index.stored_bytes == 10
    assert index.learn(NO_COPY_V1) == ([], [], [])            # a copy is never replaced by none


def test_entries_past_max_entries_go_least_recently_learned_or_used_first():
    index = AssetIndex(3, 1000, 100)
    paths = [b"/a%d" % i for i in range(4)]
    for path in paths[:3]:
        index.learn(Asset(path, "v1"))
    index.touch(paths[0], "v1")
    _, dropped, _ = index.learn(Asset(paths[3], "v1"))
    assert dropped == [(paths[1], "v1")] and len(index.entries) == 3


def test_index_bytes_are_bounded_too():
    index = AssetIndex(1000000, 0, 0)
    headers = ((b"X-Big", b"x" * 60000),)
    for i in range(400):
        index.learn(Asset(b"/a%d" % i, "v1", None, 0, headers))
    assert index.index_bytes <= INDEX_MAX_BYTES and len(index.entries) < 400


def test_a_full_store_refuses_new_copies_keeps_the_entries_and_frees_room_with_a_version_s_retention():
    index = AssetIndex(100, 25, 20)
    for i, version in enumerate(("v1", "v1", "v2")):
        added, dropped, freed = index.learn(Asset(b"/a%d" % i, version, "%064d" % i, 10))
        assert added[0].path == b"/a%d" % i and not dropped
    assert index.stored_bytes == 20 and index.full
    assert freed == ["%064d" % 2]                           # the refused copy's file goes
    assert index.entries[b"/a2", "v2"].digest is None        # the entry still routes
    too_big = index.learn(Asset(b"/big", "v2", "f" * 64, 21))
    assert too_big[0][0].digest is None and too_big[2] == ["f" * 64]
    dropped, freed = index.forget_version("v1")
    assert sorted(freed) == ["%064d" % 0, "%064d" % 1] and not index.full and index.stored_bytes == 0
    assert sorted(dropped) == [(b"/a0", "v1"), (b"/a1", "v1")]


def test_two_entries_with_one_copy_count_its_bytes_once_and_free_it_with_the_last():
    index = AssetIndex(100, 15, 20)
    index.learn(Asset(b"/a", "v1", COPY, 10))
    index.learn(Asset(b"/a", "v2", COPY, 10))                # the same file in both versions
    assert index.stored_bytes == 10 and not index.full
    assert index.forget_version("v1") == ([(b"/a", "v1")], [])
    assert index.forget_version("v2") == ([(b"/a", "v2")], [COPY])


def test_nothing_is_learned_with_max_assets_0_and_an_overlong_path_never():
    assert AssetIndex(0, 100, 100).learn(IN_V1) == ([], [], [COPY])
    assert AssetIndex(10, 100, 100).learn(Asset(b"/" + b"a" * 2000, "v1")) == ([], [], [])


def test_the_data_plane_s_map_follows_updates_and_a_snapshot_rebuilds_it():
    assets = mapping(IN_V1, Asset(b"/b", "v2"), retired={"v1": 5.0})
    assert assets.knows(A, "v1", stored=True) and not assets.knows(b"/b", "v2", stored=True)
    assert assets.knows(b"/b", "v2", stored=False) and len(assets) == 2
    assets.apply(AssetsUpdate(drop=((A, "v1"),), store_full=True))
    assert A not in assets.by_path and assets.retired == {"v1": 5.0} and assets.store_full
    copy = AssetMap()
    copy.apply(assets.snapshot())
    assert copy.by_path == assets.by_path and copy.retired == assets.retired and copy.store_full
    copy.apply(AssetsUpdate(add=(IN_V2,), full=True))
    assert list(copy.by_path) == [A] and not copy.store_full


@pytest.mark.parametrize("target, key", [
    (b"/a.js", b"/a.js"), (b"/a.js?v=1", b"/a.js?v=1"), (b"/a.js?dpl=v1", b"/a.js"),
    (b"/a.js?v=1&dpl=v1", b"/a.js?v=1"), (b"/a.js?dpl=v1&v=1#x", b"/a.js?v=1"), (b"/a.js?", b"/a.js"),
    (b"/a.js?xdpl=1", b"/a.js?xdpl=1"),
])
def test_an_asset_is_known_by_path_and_query_without_the_version_s_own_parameter(target, key):
    assert asset_key(target, b"dpl") == key


@pytest.mark.parametrize("response, request_headers, allowed", [
    ([(b"Cache-Control", b"max-age=1, immutable")], [], True),
    ([(b"Cache-Control", b"immutable"), (b"Set-Cookie", b"s=1")], [], False),
    ([(b"Vary", b"Accept-Encoding")], [], True),
    ([(b"Vary", b"Accept-Encoding, Cookie")], [], False),
    ([(b"Vary", b"*")], [], False),
    ([(b"Cache-Control", b"immutable")], [(b"Authorization", b"Bearer x")], False),
    ([(b"Cache-Control", b"public, immutable")], [(b"authorization", b"Bearer x")], True),
])
def test_what_the_store_may_keep_for_everyone(response, request_headers, allowed):
    assert may_copy(response, request_headers) is allowed


@pytest.mark.parametrize("stored, accept, ok", [
    ([], [], True), ([(b"Content-Encoding", b"gzip")], [(b"Accept-Encoding", b"gzip, br")], True),
    ([(b"Content-Encoding", b"br")], [(b"Accept-Encoding", b"gzip")], False),
    ([(b"Content-Encoding", b"gzip")], [], False), ([(b"Content-Encoding", b"gzip")], [(b"accept-encoding", b"*")], True),
    ([(b"content-encoding", b"GZIP")], [(b"Accept-Encoding", b"deflate;q=0.5, gzip;q=1")], True),
])
def test_a_copy_is_served_only_in_an_encoding_the_request_accepts(stored, accept, ok):
    assert encoding_accepted(stored, accept) is ok
