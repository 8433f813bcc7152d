"""Cluster mode's membership: this lb's key in etcd, bound to a lease, and the fleet's list.

Theory of operation
-------------------
With `cluster:` set, the control plane owns one `Membership`. It grants a lease of
`cluster.lease_ttl` and writes `/lb/<name>/members/<id>` under it: a JSON record of who this
lb is (id, host, admin socket, pid, lb's version, start time), the generation of its routing
view, each node's admin state, health, version and in-flight count, and the store revision
of the desired state it has applied (lb/control/desired.py; 0 until desired state lives in
etcd). Every `REFRESH_S` (or third of the TTL, if shorter) it renews the lease when a third
of the TTL has passed since the last renewal, and writes the record again when it changed,
at most every `MIN_PUT_INTERVAL_S` (in-flight counts change all the time under load: the
bound keeps it to one write per interval). A new applied revision is written at once
(`poke`): a command's reply waits for every member to report it.

The member id is the host's name and the admin socket's path (`web-lb-1:/run/lb/lb.sock`):
two lbs on one host cannot share an admin socket (the second refuses to start), it stays the
same across a restart and an upgrade (the new master's write takes the key over, so a
restarted lb never shows twice), and an operator can tell from it where to reach the lb.
Two hosts with the same name and socket path (cloned machines) would write one key between
them: at each renewal the key's lease is read back, and another's lease there is logged as
an error once (and the key written again).

A graceful stop revokes the lease: the key goes at once. A killed lb's key goes when its
lease expires. etcd is never in a request's path: when it cannot be reached the loop goes
on renewing at its pace, and once a whole TTL passed without a renewal (the lease is gone)
it grants a new lease and writes the key again, pausing `backoff_s(failures)` between
attempts. `LINK` is the connection's state table: it says when to log (once when the
connection is lost, once when it is back, not per retry); `show info`, the
`lb_cluster_connected` metric and `show cluster` read it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

import lb

from ..core.config import ClusterConfig
from ..core.errors import CommandError
from .etcd import EtcdClient, EtcdError, KeyValue, Lease

log = logging.getLogger("lb.cluster")

REFRESH_S = 1.0                 # how often the record is compared and the lease's age checked
MIN_PUT_INTERVAL_S = 2.0        # the most often a changed record is written again
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 5.0     # between attempts to register while etcd is away
LEAVE_TIMEOUT_S = 2.0           # a stop's revoke, when etcd does not answer
SHOW_TIMEOUT_S = 5.0            # `show cluster` as a whole, when etcd is slow or hung


def members_prefix(name: str) -> str:
    return f"/lb/{name}/members/"


def member_id(host: str, admin_socket: str) -> str:
    return f"{host}:{admin_socket}"


def backoff_s(failures: int) -> float:
    """The pause after `failures` attempts in a row failed: doubling from BACKOFF_MIN_S, bounded."""
    return min(BACKOFF_MIN_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S)


def should_put(record: dict, last: dict | None, last_put_at: float, now: float) -> bool:
    """Write the record again: it changed, and MIN_PUT_INTERVAL_S passed since the last write
    or the applied revision is new (a command waits for it)."""
    if last is None or record.get("applied_revision") != last.get("applied_revision"):
        return True
    return record != last and now - last_put_at >= MIN_PUT_INTERVAL_S


# The link to etcd: (state, what happened) -> (new state, what the log says, or None).
# "unknown" until the first attempt; "up" once the member key is written or renewed.
UNKNOWN, UP, DOWN = "unknown", "up", "down"
LINK = {
    (UNKNOWN, "ok"): (UP, "registered"),
    (UNKNOWN, "error"): (DOWN, "unreachable"),
    (UP, "ok"): (UP, None),
    (UP, "error"): (DOWN, "lost"),
    (DOWN, "ok"): (UP, "back"),
    (DOWN, "error"): (DOWN, None),
}


def member_record(control, identity: dict) -> dict:
    """What this lb says of itself under its member key (no time in it: an unchanged lb
    writes nothing)."""
    nodes = [{"name": n.name, "version": n.version, "state": str(n.admin_state), "health": str(n.health),
              "inflight": n.inflight} for n in control.pool.backends.values()]
    applied = control.desired.revision if control.desired is not None else 0
    return {**identity, "version": lb.__version__, "started": round(control.started, 3),
            "generation": control.generation, "applied_revision": applied, "nodes": nodes}


MEMBER_FIELDS = ("version", "applied_revision", "generation", "started", "pid", "nodes")


def member_rows(kvs: tuple[KeyValue, ...], leases_left: list[int], prefix: str, own_id: str) -> list[dict]:
    """`show cluster`'s members from the keys under the prefix and their leases' seconds left."""
    rows = []
    for kv, left in zip(kvs, leases_left):
        member_id_ = kv.key[len(prefix):]
        row = {"id": member_id_, "self": member_id_ == own_id, "lease_left_s": left}
        try:
            record = json.loads(kv.value)
        except ValueError:
            record = None
        if isinstance(record, dict):    # a key a record lacks (another lb version's) shows as null
            row.update({key: record.get(key) for key in MEMBER_FIELDS})
        else:
            row["error"] = f"not a member record: {kv.value[:100]!r}"
        rows.append(row)
    return rows


class Membership:
    """This lb's member key in etcd while the control plane runs (start, stop, leave)."""

    def __init__(self, control, config: ClusterConfig, admin_socket: str, host: str | None = None,
                 tls=None):
        self.control = control
        self.config = config          # as at start: a reload does not move an lb between clusters
        self.prefix = members_prefix(config.name)
        self.id = member_id(host or socket.gethostname(), admin_socket)
        self.key = self.prefix + self.id
        self.identity = {"id": self.id, "host": host or socket.gethostname(), "admin_socket": admin_socket,
                         "pid": os.getpid()}
        self.client = EtcdClient(list(config.endpoints), tls=tls,       # tls: lb/tls.py etcd_context
                                 server_name=config.tls.sni if config.tls is not None else None)
        self.link = UNKNOWN
        self.last_error: str | None = None
        self.lease: Lease | None = None
        self.registrations = 0        # times the key was written under a new lease
        self.shared = False           # another lb writes the same member key (said once)
        self.wake = asyncio.Event()   # set by `poke`: look at the record now
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.link == UP

    def info(self) -> dict:
        """`show info`'s cluster entry."""
        return {"name": self.config.name, "endpoints": list(self.config.endpoints), "connected": self.connected,
                "last_error": self.last_error, "member_id": self.id}

    def poke(self) -> None:
        """The record changed in a way others wait for (the applied revision): write it now."""
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster membership")

    async def stop(self, leave: bool = False) -> None:
        """The loop ends; with `leave` the lease is revoked (the key goes now), else it
        expires (an upgrade: the new master's write takes the key over)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        lease, self.lease = self.lease, None
        if leave and lease is not None:
            try:
                await asyncio.wait_for(self.client.revoke(lease, LEAVE_TIMEOUT_S), LEAVE_TIMEOUT_S)
                log.info("cluster %s: left (lease %x revoked)", self.config.name, lease.id)
            except (EtcdError, asyncio.TimeoutError) as exc:
                log.warning("cluster %s: could not revoke the lease (%s); the member key goes when it "
                            "expires, within %.0fs", self.config.name, describe(exc), self.config.lease_ttl)
        await self.client.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            registrations = self.registrations
            try:
                await self._session()
            except EtcdError as exc:
                self._note("error", exc.message)
            except Exception:                   # a bug: said, and the loop goes on
                log.exception("cluster %s: membership failed", self.config.name)
            failures = 1 if self.registrations != registrations else failures + 1
            await asyncio.sleep(backoff_s(failures))

    async def _session(self) -> None:
        """Grant a lease, write the key, then keep both up to date; raises EtcdError once the
        lease is gone (expired, or not renewed for a whole TTL)."""
        loop = asyncio.get_running_loop()
        self.lease = lease = await self.client.grant(int(self.config.lease_ttl))
        last = member_record(self.control, self.identity)
        await self.client.put(self.key, json.dumps(last), lease.id, repeatable=True)   # only this lb writes it
        renewed = put_at = loop.time()
        self.registrations += 1
        self._note("ok")
        while True:
            try:                      # a 1 s lease is renewed in time
                await asyncio.wait_for(self.wake.wait(), min(REFRESH_S, lease.ttl_s / 3))
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                answered = False              # "reachable" is said only after a call was answered
                if loop.time() - renewed >= lease.ttl_s / 3:
                    await self.client.keepalive_once(lease)
                    renewed, answered = loop.time(), True
                    if not await self._still_ours(lease):
                        last = None               # written again below: this lb stays listed
                record = member_record(self.control, self.identity)
                if should_put(record, last, put_at, loop.time()) or last is None:
                    await self.client.put(self.key, json.dumps(record), lease.id, repeatable=True)
                    last, put_at, answered = record, loop.time(), True
                if answered:
                    self._note("ok")
            except EtcdError as exc:
                if "expired" in exc.message or loop.time() - renewed >= lease.ttl_s:
                    self.lease = None
                    raise
                self._note("error", exc.message)

    async def _still_ours(self, lease: Lease) -> bool:
        """Whether the member key is still under this lb's lease. Another lb with the same id
        (two hosts with one hostname and socket path) took it: said once, loudly."""
        found = await self.client.get(self.key)
        kv = found.kvs[0] if found.kvs else None
        if kv is None or kv.lease == lease.id:
            return kv is not None
        if not self.shared:
            self.shared = True
            try:
                other = json.loads(kv.value)
            except ValueError:
                other = {}
            log.error("cluster %s: the member key %s is written by another lb too (pid %s on %s): two hosts "
                      "share the hostname and admin socket path of this one; give each host its own name, or the "
                      "fleet counts them as one", self.config.name, self.key, other.get("pid"), other.get("host"))
        return False

    def _note(self, event: str, error: str | None = None) -> None:
        self.link, said = LINK[self.link, event]
        if error is not None:
            self.last_error = error
        if said == "registered":
            log.info("cluster %s: member %s registered in etcd (lease TTL %.0fs)", self.config.name, self.id,
                     self.config.lease_ttl)
        elif said == "back":
            log.warning("cluster %s: etcd reachable again; member %s registered", self.config.name, self.id)
        elif said is not None:
            log.warning("cluster %s: etcd %s (%s); lb serves on with its own state and keeps trying",
                        self.config.name, "unreachable" if said == "unreachable" else "connection lost", error)

    # -- show cluster ------------------------------------------------------------------------
    async def members(self) -> dict:
        """Every member listed in etcd now, with its lease's seconds left. Raises EtcdError."""
        try:
            return await asyncio.wait_for(self._members(), SHOW_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise EtcdError(f"etcd did not answer within {SHOW_TIMEOUT_S:g}s (endpoints "
                            f"{', '.join(self.config.endpoints)})") from None

    async def _members(self) -> dict:
        found = await self.client.get_prefix(self.prefix)
        left = await asyncio.gather(*(self.client.time_to_live(kv.lease) for kv in found.kvs))
        return {"cluster": self.config.name, "member_id": self.id, "revision": found.revision,
                "members": member_rows(found.kvs, list(left), self.prefix, self.id)}


def describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, EtcdError) else "no answer in time"


def cluster_off() -> CommandError:
    return CommandError("cluster mode is off: this lb's config has no cluster: section")
