"""pinning.py: reading the pin, assignment by capacity, forward-only moves, rollback, overload."""

import random
from collections import Counter

import pytest

from lb.core.nodes import DOWN
from lb.core.pinning import ASSIGNED, BACKWARD, FORWARD, KEPT, MIN_RATE, PinCookie, Pinning
from lb.proxy.responses import pin_cookie_field, pin_cookie_line, pin_cookie_value

from routed_pool import RoutedPool


def make_pool(layout, target=None):
    """layout: version per node, e.g. ['v1', 'v1', 'v2']; versions ordered by first sight.
    Pinning decides over the data plane's routing table (`.table`)."""
    return RoutedPool(layout, target=target)


def pinning(seed=1):
    return Pinning("lb_version", 86400, 1.5, random.Random(seed))


def take_out(pool, *names):
    for name in names:
        pool.set_state(name, "drain", "idle")


@pytest.mark.parametrize("cookies, pin", [
    ([], None),
    ([b"lb_version=v1"], "v1"),
    ([b"a=1; lb_version=v2; b=2"], "v2"),
    ([b"a=1;lb_version=v2"], "v2"),
    ([b"session=x", b"lb_version=v2"], "v2"),              # two Cookie headers
    ([b"xlb_version=v1"], None),                          # another cookie's name
    ([b"lb_version=v9"], None),                           # unknown version
    ([b"lb_version=" + b"v" * 40], None),                 # oversized
    ([b"lb_version=v1<script>"], None),
    ([b"lb_version="], None),
])
def test_read_pin(cookies, pin):
    headers = [(b"Cookie", c) for c in cookies] + [(b"X-Other", b"lb_version=v1")]
    assert pinning().read_pin(headers, ["v1", "v2"]) == pin


@pytest.mark.parametrize("secure, plain_secure, tls_secure", [
    ("auto", False, True), (True, True, True), (False, False, False)])
def test_the_pin_cookie_is_secure_over_tls_with_auto_always_with_true_never_with_false(secure, plain_secure,
                                                                                       tls_secure):
    pins = Pinning("lb_version", 86400, 1.5, random.Random(1), secure=secure)
    for over_tls, with_secure in ((False, plain_secure), (True, tls_secure)):
        assert pins.pin_cookie("v2", over_tls) == PinCookie(b"lb_version", b"v2", 86400, with_secure)
        assert pins.pin_cookie("v2", over_tls) is pins.pin_cookie("v2", over_tls)     # made once


def test_each_front_door_renders_the_same_cookie_its_own_way():
    cookie = PinCookie(b"lb_version", b"v1", 86400, True)
    value = b"lb_version=v1; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400; Secure"
    assert pin_cookie_line(cookie) == b"Set-Cookie: " + value + b"\r\n"
    assert pin_cookie_field(cookie) == (b"set-cookie", value)
    assert pin_cookie_value(cookie._replace(secure=False)) == value[:-len(b"; Secure")]


@pytest.mark.parametrize("layout, expected", [
    (["v1"] * 5 + ["v2"] * 5, {"v1": 0.5, "v2": 0.5}),
    (["v1"] * 8 + ["v2"] * 2, {"v1": 0.8, "v2": 0.2}),
    (["v1", "v2", "v3", "v3"], {"v1": 0.25, "v2": 0.25, "v3": 0.5}),
])
def test_unpinned_clients_are_assigned_by_capacity(layout, expected):
    pool, pins = make_pool(layout), pinning()
    seen = Counter()
    for i in range(8000):
        version, how = pins.route(None, pool.table, now=i * 0.001)
        assert how == ASSIGNED
        seen[version] += 1
    for version, share in expected.items():
        assert abs(seen[version] / 8000 - share) < 0.03
    assert pins.assignments == seen


def test_capacity_follows_weight_and_health():
    pool = make_pool(["v1", "v1", "v2"])
    pool.node("web1").set_weight(300)
    pool.node("web2").health = DOWN
    pool.publish()
    assert pool.table.version_capacity() == {"v1": 300, "v2": 100}
    assert pool.nodes.version_capacity() == {"v1": 300, "v2": 100}     # the control plane agrees


# (layout, nodes taken out, pin, expected version, how)
MOVES = [
    (["v1", "v1", "v2"], [], "v1", "v1", KEPT),
    (["v1", "v1", "v2"], ["web1", "web2"], "v1", "v2", FORWARD),
    (["v1", "v2", "v3"], ["web1", "web2"], "v1", "v3", FORWARD),      # nearest newer with capacity
    (["v1", "v2", "v3"], ["web1"], "v1", "v2", FORWARD),
    (["v1", "v1", "v2"], ["web3"], "v2", "v1", BACKWARD),              # a rollback
    (["v1", "v2", "v3"], ["web3"], "v3", "v2", BACKWARD),              # the newest older one
    (["v1", "v2", "v3"], ["web2"], "v2", "v3", FORWARD),               # never back while newer exists
    (["v1", "v1"], ["web1", "web2"], "v1", None, KEPT),                # nothing at all
]


@pytest.mark.parametrize("layout, out, pin, version, how", MOVES)
def test_forward_only_moves_and_rollback(layout, out, pin, version, how):
    pool, pins = make_pool(layout), pinning()
    take_out(pool, *out)
    assert pins.route(pin, pool.table, now=0.0) == (version, how)
    if how in (FORWARD, BACKWARD):
        assert pins.migrations == Counter({(pin, version, how): 1})


def test_target_makes_a_version_newest():
    pool, pins = make_pool(["v2", "v1"], target="v2"), pinning()   # v2 seen first, declared newest
    assert pool.table.versions == ("v1", "v2")
    take_out(pool, "web2")
    assert pins.route("v1", pool.table, now=0.0) == ("v2", FORWARD)


def test_an_overloaded_version_sheds_forward_until_near_its_share():
    # 1 node left on v1, 9 on v2; every client pinned to v1 to begin with.
    pool, pins = make_pool(["v1"] + ["v2"] * 9), pinning()
    clients = ["v1"] * 200
    share_v1 = []
    for step in range(20):                                   # 20 rounds of every client, 1 s apart
        served = Counter()
        for i, pin in enumerate(clients):
            version, how = pins.route(pin, pool.table, now=step + i / 1000)
            assert version is not None and how in (KEPT, FORWARD)
            clients[i] = version
            served[version] += 1
        share_v1.append(served["v1"] / 200)
    assert share_v1[0] < 0.5                                 # shedding starts at once
    assert 0.05 < share_v1[-1] <= 0.15 + 0.02                # ~1.5 x its 10 % fair share
    assert all(c in ("v1", "v2") for c in clients)


def test_an_idle_pool_never_sheds():
    pool, pins = make_pool(["v1"] + ["v2"] * 9), pinning()
    for i in range(int(MIN_RATE) - 1):
        assert pins.route("v1", pool.table, now=i * 10.0) == ("v1", KEPT)


def test_retry_stays_in_version_then_moves_forward():
    pool, pins = make_pool(["v1", "v1", "v2"]), pinning()
    web1, web2, web3 = pool.table.routes.values()
    assert pins.retry_version("v1", pool.table, [web1]) == ("v1", KEPT)
    assert pins.retry_version("v1", pool.table, [web1, web2]) == ("v2", FORWARD)
    assert pins.retry_version("v1", pool.table, [web1, web2, web3]) == ("v1", KEPT)


def test_pool_choose_within_a_version():
    pool = make_pool(["v1", "v1", "v2"])
    assert {pool.table.choose(version="v2").name for _ in range(10)} == {"web3"}
    assert {pool.table.choose(version="v1").name for _ in range(10)} == {"web1", "web2"}
    assert pool.table.choose(version="v9") is None
