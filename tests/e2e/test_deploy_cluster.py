"""`lb deploy --cluster etcd://.../NAME` (issue 31): the fleet as a real etcd lists it, three
`lb serve` in cluster mode over the same backends, users who pick an lb per request with one
cookie jar, and the deploy run as the CLI a user runs. A state change sent to one lb reaches
every lb through etcd: these tests pass only with the lb side's desired state."""

import asyncio
import json
import time

import pytest

from lb.demo.users import Users

from conftest import Lb, free_port, get, wait_for, wait_for_requests
from etcd import EtcdCluster, make_pki
from test_cluster import kill_whole_lb, own_id
from test_deploy import FAST
from test_fleet import FleetDeploy, rows

LEASE_TTL_S = 4
CLUSTER_LB = {**FAST, "workers": 1, "health": {**FAST["health"], "interval": "100ms"}}
QUICK = ("--canary", "1", "--batch", "2", "--min-ready", "60%", "--bake", "1s", "--canary-bake", "1s")


@pytest.fixture
def etcd(tmp_path):
    made = []

    def make(size: int) -> EtcdCluster:
        made.append(EtcdCluster(tmp_path / f"etcd{len(made)}", size, free_port))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


def cluster_lbs(spawn, tmp_path, etcd: EtcdCluster, backends, count: int) -> list[Lb]:
    section = {"endpoints": etcd.endpoints, "name": "test", "lease_ttl": f"{LEASE_TTL_S}s"}
    lbs = [spawn(Lb, tmp_path, backends.configs(), cluster=section, **CLUSTER_LB) for _ in range(count)]
    ids = {own_id(lb) for lb in lbs}
    wait_for(lambda: {m["id"] for m in lbs[0].ctl("show cluster").get("members", [])} == ids, 15,
             "every lb to be listed in etcd")
    return lbs


class ClusterDeploy(FleetDeploy):
    """`lb deploy --cluster URL`."""

    def __init__(self, tmp_path, etcd: EtcdCluster, *args: str):
        super().__init__(tmp_path, [], "--cluster", f"etcd://{','.join(etcd.endpoints)}/test", *args)


def users_of(lbs: list[Lb]) -> Users:
    return Users("127.0.0.1", [lb.port for lb in lbs], slots=10, life=(10, 30), think_s=0.02)


async def test_a_deploy_through_etcd_updates_every_lb_fails_no_request_and_sends_nobody_back(
        spawn, detached_backends, tmp_path, etcd):
    store = etcd(3)
    backends = detached_backends(6)
    lbs = cluster_lbs(spawn, tmp_path, store, backends, 3)
    async with users_of(lbs) as users:
        await wait_for_requests(users, 200)
        deploy = await ClusterDeploy(tmp_path, store, "--to", "v2", "--update", backends.update_command(),
                                     *QUICK).start()
        code = await deploy.finish()
        await wait_for_requests(users, users.requests + 100)
    assert code == 0, (deploy.stderr, deploy.events[-5:])
    for lb in lbs:
        assert rows(lb) == {("v2", "ready", "up")}, lb.ctl("show servers")
    assert users.failures == []
    assert users.backward_flips(["v1", "v2"]) == []
    summary = deploy.summary
    assert sorted(summary["lbs"]) == sorted(own_id(lb) for lb in lbs) and summary["lost"] == summary["left"] == {}
    assert any("fleet of 3 lbs" in note for note in deploy.of("plan")[0]["notes"])
    # each state change went to one lb (the audit log in its stderr), which gave it to the others
    drains = [line for lb in lbs for line in lb.stderr_path.read_text().splitlines() if ": drain web" in line]
    assert len(drains) == 6, drains


async def test_with_etcd_down_the_deploy_refuses_to_start_and_the_lbs_serve_on(
        spawn, detached_backends, tmp_path, etcd):
    store = etcd(1)
    backends = detached_backends(2)
    lbs = cluster_lbs(spawn, tmp_path, store, backends, 2)
    store.kill(0)
    deploy = await ClusterDeploy(tmp_path, store, "--to", "v2", "--update", backends.update_command()).start()
    assert await deploy.finish() == 2
    assert f"etcd does not answer at {store.endpoints[0]}" in deploy.stderr
    assert "nothing was done, and the lbs serve on" in deploy.stderr
    assert deploy.of("step") == [] and deploy.of("plan") == []
    for lb in lbs:
        assert get(lb.port, "/").status == 200
        assert rows(lb) == {("v1", "ready", "up")}


async def test_the_deploy_goes_on_when_the_etcd_member_the_lbs_use_first_is_killed(
        spawn, detached_backends, tmp_path, etcd):
    store = etcd(3)
    backends = detached_backends(4)
    lbs = cluster_lbs(spawn, tmp_path, store, backends, 2)
    async with users_of(lbs) as users:
        await wait_for_requests(users, 100)
        deploy = await ClusterDeploy(tmp_path, store, "--to", "v2", "--update", backends.update_command(),
                                     *QUICK).start()
        await deploy.wait_event(lambda e: e["event"] == "step" and e["status"] == "ok")
        store.kill(0)
        code = await deploy.finish()
    assert code == 0, (deploy.stderr, deploy.events[-5:])
    assert deploy.of("etcd_unreachable") == []         # the deploy's reads of the members moved on too
    for lb in lbs:
        assert rows(lb) == {("v2", "ready", "up")}, lb.ctl("show servers")
    assert users.failures == []
    assert users.backward_flips(["v1", "v2"]) == []


async def test_an_lb_killed_mid_deploy_leaves_the_fleet_and_catches_up_when_it_returns(
        spawn, detached_backends, tmp_path, etcd):
    store = etcd(1)
    backends = detached_backends(4)
    lbs = cluster_lbs(spawn, tmp_path, store, backends, 3)
    victim, victim_id = lbs[2], own_id(lbs[2])
    async with users_of(lbs[:2]) as users:              # users of the two lbs that stay
        await wait_for_requests(users, 100)
        deploy = await ClusterDeploy(tmp_path, store, "--to", "v2", "--update", backends.update_command(),
                                     *QUICK).start()
        await deploy.wait_event(lambda e: e["event"] == "bake")
        kill_whole_lb(victim)
        code = await deploy.finish()
    assert code == 0, (deploy.stderr, deploy.events[-5:])
    assert list(deploy.summary["left"]) == [victim_id] and deploy.summary["lost"] == {}
    assert [e["member"] for e in deploy.of("member_left")] == [victim_id]
    assert f"lb {victim_id} left the cluster" in deploy.stderr
    for lb in lbs[:2]:
        assert rows(lb) == {("v2", "ready", "up")}, lb.ctl("show servers")
    assert users.failures == []
    assert users.backward_flips(["v1", "v2"]) == []
    # back on its config (its state file says v1 for nodes not done at the kill): what it shows
    # first is the fleet's desired state, read from etcd before it serves
    victim._start()
    first = victim.ctl("show servers")["servers"]
    assert {(s["version"], s["state"]) for s in first} == {("v2", "ready")}, first
    await asyncio.to_thread(wait_for, lambda: rows(victim) == {("v2", "ready", "up")}, 10, "the nodes up")


async def test_members_a_change_names_as_not_applied_are_waited_for_until_they_apply_or_leave(etcd):
    """The deploy's side alone, on a real etcd with member records the test writes: the member a
    reply names as not applied is waited for by its applied_revision; one whose key goes has
    left; one still behind at the lb timeout is lost, and the change fails going forward."""
    from lb.control.etcd import EtcdClient
    from lb.deploy.client import Unreachable
    from lb.deploy.cluster import ClusterFleet

    store = etcd(1)
    client = EtcdClient(store.endpoints)

    async def write(name: str, applied: int) -> None:
        record = {"id": name, "host": "elsewhere", "admin_socket": f"/{name}.sock", "applied_revision": applied}
        await client.put(f"/lb/test/members/{name}", json.dumps(record))

    for name in ("slow", "leaving", "stuck"):
        await write(name, 0)
    fleet = await ClusterFleet.open(f"etcd://{store.endpoints[0]}/test")
    try:
        fleet.set_reconnect(3.0)
        reply = {"ok": True, "cluster": {"revision": 50, "applied": [], "not_applied": ["slow", "leaving"]}}
        started = time.monotonic()
        waiting = asyncio.create_task(fleet.wait_applied("x", "drain web1", reply))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await write("slow", 50)
        await client.delete("/lb/test/members/leaving")
        await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 2.0
        assert list(fleet.left) == ["leaving"] and fleet.lost == {} and fleet.labels == ["slow", "stuck"]
        with pytest.raises(Unreachable, match="lb stuck stopped answering: did not apply revision 51"):
            await fleet.wait_applied("x", "drain web1", {"ok": True, "cluster": {"revision": 51,
                                                                                 "not_applied": ["stuck"]}})
        assert time.monotonic() - started >= 3.0 and list(fleet.lost) == ["stuck"]
    finally:
        await fleet.close()
        await client.close()


async def test_a_deploy_reaches_an_etcd_that_asks_for_a_client_certificate(spawn, detached_backends, tmp_path):
    """etcd serving HTTPS with --client-cert-auth: the lbs reach it with cluster.tls, the deploy
    with --etcd-ca/--etcd-cert/--etcd-key; without them it refuses to start (exit 2)."""
    files, paths = make_pki(tmp_path / "pki")
    store = EtcdCluster(tmp_path / "etcd-tls", 1, free_port, files)
    try:
        backends = detached_backends(3)
        section = {"endpoints": store.endpoints, "name": "test", "lease_ttl": f"{LEASE_TTL_S}s",
                   "tls": {"ca": str(paths["ca"]), "cert": str(paths["lb"]), "key": str(paths["lb-key"])}}
        lbs = [spawn(Lb, tmp_path, backends.configs(), cluster=section, **CLUSTER_LB) for _ in range(2)]
        ids = {own_id(lb) for lb in lbs}
        wait_for(lambda: {m["id"] for m in lbs[0].ctl("show cluster").get("members", [])} == ids, 15,
                 "every lb to be listed in etcd")
        update = ("--to", "v2", "--update", backends.update_command(), *QUICK, "--min-requests", "0")  # no users
        plain = await ClusterDeploy(tmp_path, store, *update).start()
        assert await plain.finish() == 2 and "etcd does not answer" in plain.stderr, plain.stderr
        deploy = await ClusterDeploy(tmp_path, store, *update, "--etcd-ca", str(paths["ca"]),
                                     "--etcd-cert", str(paths["lb"]), "--etcd-key", str(paths["lb-key"])).start()
        assert await deploy.finish() == 0, (deploy.stderr, deploy.events[-5:])
        for lb in lbs:
            assert rows(lb) == {("v2", "ready", "up")}, lb.ctl("show servers")
        bad = await ClusterDeploy(tmp_path, store, *update, "--etcd-cert", str(paths["lb"])).start()
        assert await bad.finish() == 2 and "--etcd: cert and key go together" in bad.stderr, bad.stderr
    finally:
        store.stop()
