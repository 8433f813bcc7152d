"""lb's etcd client (lb/control/etcd.py) against a real etcd (Debian's etcd-server, started by
tests/e2e/etcd.py): one member for the calls, three members for a member killed under them."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import free_port
from etcd import EtcdCluster
from lb.control.etcd import Compare, Delete, EtcdClient, EtcdError, Put, unchanged_since

TTL_S = 1                   # etcd's shortest lease with the harness's 0.5 s election timeout
WAIT_S = 10.0


@pytest.fixture
def etcd_cluster(tmp_path):
    """Start an etcd cluster of `size` members; every member is stopped at teardown."""
    started = []

    def start(size: int) -> EtcdCluster:
        cluster = EtcdCluster(tmp_path / f"etcd-{len(started)}", size, free_port)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
async def client_for():
    clients = []

    def make(endpoints: list[str], **kwargs) -> EtcdClient:
        clients.append(EtcdClient(endpoints, **kwargs))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def until(predicate, what: str, timeout_s: float = WAIT_S):
    """Await `predicate()` (a coroutine function) until it is truthy; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not (value := await predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.05)
    return value


async def next_events(events, count: int) -> list:
    return [await asyncio.wait_for(anext(events), WAIT_S) for _ in range(count)]


async def test_put_get_prefix_and_delete(etcd_cluster, client_for):
    client = client_for(etcd_cluster(1).endpoints)
    first = await client.put("/lb/t/nodes/web1", b'{"weight": 1}')
    second = await client.put("/lb/t/nodes/web2", "two")
    await client.put("/lb/t/nodesx", "outside the prefix")
    assert second == first + 1
    got = await client.get("/lb/t/nodes/web1")
    assert [(kv.key, kv.value, kv.mod_revision) for kv in got.kvs] == [("/lb/t/nodes/web1", b'{"weight": 1}', first)]
    assert got.revision == second + 1
    listed = await client.get_prefix("/lb/t/nodes/")
    assert [(kv.key, kv.value) for kv in listed.kvs] == [("/lb/t/nodes/web1", b'{"weight": 1}'), ("/lb/t/nodes/web2", b"two")]
    deleted = await client.delete("/lb/t/nodes/web1")
    assert deleted == got.revision + 1
    assert (await client.get("/lb/t/nodes/web1")).kvs == ()
    await client.delete("/lb/t/", prefix=True)
    assert (await client.get_prefix("/lb/")).kvs == ()


async def test_a_txn_writes_only_if_nobody_wrote_since_the_read(etcd_cluster, client_for):
    client = client_for(etcd_cluster(1).endpoints)
    created = await client.txn([Compare("/lb/t/target", "MOD", 0)], [Put("/lb/t/target", "v1")])
    assert created.succeeded
    read = await client.get("/lb/t/target")
    seen = read.kvs[0].mod_revision
    mine = await client.txn([unchanged_since("/lb/t/target", seen)], [Put("/lb/t/target", "v2")])
    assert mine.succeeded and mine.revision == seen + 1
    stale = await client.txn([unchanged_since("/lb/t/target", seen)], [Put("/lb/t/target", "v3")],
                             [Delete("/lb/t/loser")])
    assert not stale.succeeded and stale.revision == mine.revision
    assert (await client.get("/lb/t/target")).kvs[0].value == b"v2"
    again = await client.txn([Compare("/lb/t/target", "VALUE", "v2")], [Put("/lb/t/target", "v3")])
    assert again.succeeded


async def test_a_leases_key_stays_while_kept_alive_and_goes_when_it_expires_or_is_revoked(etcd_cluster, client_for):
    client = client_for(etcd_cluster(1).endpoints)
    kept, revoked, left = await client.grant(TTL_S), await client.grant(TTL_S), await client.grant(TTL_S)
    for name, lease in (("kept", kept), ("revoked", revoked), ("left", left)):
        await client.put(f"/lb/t/members/{name}", name, lease=lease.id)
    keepalive = client.keepalive(kept)
    await client.revoke(revoked)
    assert (await client.get("/lb/t/members/revoked")).kvs == ()

    async def gone(name):
        return (await client.get(f"/lb/t/members/{name}")).kvs == ()
    await until(lambda: gone("left"), "the key of a lease nobody renews to go")
    # the renewed lease outlives two of its TTLs (a span of time, not a condition to wait on)
    await asyncio.sleep(2 * TTL_S)
    assert not keepalive.done()
    assert (await client.get("/lb/t/members/kept")).kvs[0].lease == kept.id
    await client.close()
    assert keepalive.cancelled()
    await until(lambda: gone("kept"), "the key to go once its keepalive stopped")
    with pytest.raises(EtcdError, match="expired"):
        await client.keepalive_once(kept)


async def test_a_watch_sees_puts_and_deletes_in_order_and_resumes_from_a_revision(etcd_cluster, client_for):
    cluster = etcd_cluster(1)
    client = client_for(cluster.endpoints)
    before = (await client.get("/lb/")).revision
    live = client.watch("/lb/t/", before + 1)
    await client.put("/lb/t/a", "1")
    await client.put("/lb/other", "not watched")
    await client.put("/lb/t/b", "2")
    deleted = await client.delete("/lb/t/a")
    events = await next_events(live, 3)
    assert [(e.kind, e.key, e.value) for e in events] == [("put", "/lb/t/a", b"1"), ("put", "/lb/t/b", b"2"),
                                                           ("delete", "/lb/t/a", b"")]
    assert events[-1].mod_revision == deleted
    resumed = client.watch("/lb/t/", events[1].mod_revision + 1)
    assert [(e.kind, e.key) for e in await next_events(resumed, 1)] == [("delete", "/lb/t/a")]
    await live.aclose()
    await resumed.aclose()
    cluster.compact(deleted)
    with pytest.raises(EtcdError, match="compacted") as refused:
        await anext(client.watch("/lb/t/", before + 1))
    assert refused.value.compact_revision == deleted


async def test_three_members_a_killed_member_leaves_calls_and_a_watch_going(etcd_cluster, client_for):
    cluster = etcd_cluster(3)
    client = client_for(cluster.endpoints)
    start = (await client.put("/lb/t/k0", "0")) + 1
    watch = client.watch("/lb/t/", start)
    await client.put("/lb/t/k1", "1")
    assert [e.key for e in await next_events(watch, 1)] == ["/lb/t/k1"]
    cluster.kill(0)                                   # the member both the calls and the watch use
    # A write in flight while the other two elect a leader (when m0 led) waits out etcd's own
    # request timeout (6 s here) and may or may not apply: the caller re-reads. Here the
    # writes start once the two have a leader.
    await asyncio.to_thread(cluster.wait_healthy, cluster.members[1:])
    written = [await client.put(f"/lb/t/k{i}", str(i)) for i in (2, 3)]
    assert [kv.key for kv in (await client.get_prefix("/lb/t/")).kvs] == ["/lb/t/k0", "/lb/t/k1", "/lb/t/k2", "/lb/t/k3"]
    events = await next_events(watch, 2)
    assert [(e.key, e.mod_revision) for e in events] == [("/lb/t/k2", written[0]), ("/lb/t/k3", written[1])]
    await watch.aclose()
    alone = client_for([cluster.endpoints[0]], attempt_timeout_s=0.5)
    with pytest.raises(EtcdError, match=f"no endpoint answered; tried {cluster.endpoints[0]}: ") as refused:
        await alone.get("/lb/t/k0")
    assert refused.value.message.count(cluster.endpoints[0]) == 2   # both rounds
    cluster.restart(0)
    assert (await alone.get("/lb/t/k3")).kvs[0].value == b"3"
