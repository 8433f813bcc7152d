"""Cluster mode's desired state on this lb: caught up before it serves, watched, and written by
the admin commands that change state.

Theory of operation
-------------------
The document, the way from this lb's state to it and the way a command's change goes into it
are lb/core/desired.py. `Desired` keeps this lb in step with the key `/lb/<name>/desired`:

- **At start** (`catch_up_at_start`, before the workers accept a connection and before
  sd_notify READY) it reads the key and applies it over the state file's state; with etcd
  unreachable it says so and serves on the state file's state (bounded at
  `START_READ_TIMEOUT_S`), and the watch catches up once etcd answers. The servers the fleet
  listed (`known`) are kept in the state file: a server the fleet deleted while this lb was
  away is removed here too, even when this lb's config still names it.
- **Watched**: a loop reads the key and watches it from the revision read; each newer put is
  applied in revision order, written to the state file (the local copy), and the member
  record's `applied_revision` says so at once (lb/control/cluster.py). A broken watch starts
  over with a read, after a pause that grows while etcd stays away.
- **Written** (`change`): an admin command that changes state first reads the key (etcd
  unreachable, or a stored document this lb refuses: the command is refused before it runs,
  and nothing changes), applies anything newer, runs, and writes into the stored document
  only what it changed here (`patch`), in a transaction that holds only if the key is still
  at the revision read. When another lb wrote first, or etcd does not confirm the write, the
  command is undone here (this lb's state before it is laid back); after a conflict it runs
  again on the newer document, up to `WRITE_TRIES` times. An unconfirmed write that etcd did
  commit reaches this lb through the watch like any other.
- **Agreed** (`agreed`): the reply waits until every member listed in etcd reports the
  revision applied, or names those that have not after the lease TTL and a margin, at most
  `AGREE_MAX_S` (a killed lb's key goes when its lease expires).

One lock orders the watch's applies and the commands' writes; every etcd call under it is
bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging

from ..core import desired
from ..core.commands import backend_config
from ..core.errors import CommandError, InvalidValue
from ..core.nodes import DRAINED, MAINT, NEW, READY, transition
from ..core.values import parse_hostport
from .cluster import backoff_s, describe
from .etcd import EtcdError, Put, unchanged_since
from .statefile import save_state, saved_known

log = logging.getLogger("lb.cluster")

WRITE_TRIES = 5                 # writes lost to another lb's, before a command gives up
READ_TIMEOUT_S = 5.0            # a command's read of the key, when etcd is slow or hung
START_READ_TIMEOUT_S = 5.0      # the read at start: then lb serves the state file's state
AGREE_MARGIN_S = 5.0            # beyond the lease TTL, for every member to report a revision
AGREE_MAX_S = 20.0              # and at most this (a long lease_ttl must not hold a reply for it)
AGREE_POLL_S = 0.1


def desired_key(name: str) -> str:
    return f"/lb/{name}/desired"


def local_entries(pool) -> dict[str, dict]:
    return {n.name: desired.server_entry(n.admin_state, n.version, n.weight, n.max_conns, n.address)
            for n in pool.backends.values()}


def local_document(pool) -> dict:
    return desired.document(local_entries(pool), pool.versions, pool.target)


class Desired:
    """This lb's copy of the fleet's desired state (cluster mode)."""

    def __init__(self, control, membership):
        self.control = control
        self.membership = membership
        self.client = membership.client
        self.name = membership.config.name
        self.key = desired_key(self.name)
        self.revision = 0             # of the document applied here (0: none yet)
        self.document: dict | None = None
        self.known: set[str] = set()  # servers the applied document lists (see core/desired.py)
        self.refused = 0              # the revision of a document refused (said once)
        self.refusal: str | None = None   # why the stored document is refused, while it is
        self.lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def info(self) -> dict:
        return {"applied_revision": self.revision, "refused": self.refusal}

    # -- reading and applying -----------------------------------------------------------------
    async def catch_up_at_start(self) -> None:
        self.known = saved_known(self.control)
        try:
            async with self.lock:
                await asyncio.wait_for(self._catch_up(), START_READ_TIMEOUT_S)
        except (EtcdError, asyncio.TimeoutError) as exc:
            log.warning("cluster %s: cannot read the desired state at start (%s); serving the state file's "
                        "state until etcd answers", self.name, describe(exc))
            return
        log.info("cluster %s: %s before serving", self.name, f"caught up with the desired state at revision "
                 f"{self.revision}" if self.revision else "no desired state in etcd yet")

    async def _catch_up(self) -> tuple[int, int]:
        """Apply the stored document if it is newer than this lb's; (the store's revision read,
        the key's: 0 when there is none)."""
        found = await asyncio.wait_for(self.client.get(self.key), READ_TIMEOUT_S)
        kv = found.value(self.key)
        if kv is not None and kv.mod_revision > self.revision:
            self._apply_raw(kv.value, kv.mod_revision)
        elif kv is None and self.document is not None:
            self._deleted(found.revision)
        return found.revision, kv.mod_revision if kv is not None else 0

    def _apply_raw(self, raw: bytes, revision: int) -> None:
        try:
            doc = desired.parse(raw)
        except InvalidValue as exc:
            self.refusal = f"the desired state at revision {revision} is refused: {exc.message}"
            if self.refused != revision:
                self.refused = revision
                log.error("cluster %s: %s; this lb keeps its state and reports revision %d applied, and changes "
                          "are refused until a valid one is written", self.name, self.refusal, self.revision)
            return
        self.refusal = None
        self.apply(doc, revision)

    def _deleted(self, revision: int) -> None:
        log.warning("cluster %s: the desired state was deleted from etcd (revision %d); this lb keeps its state, "
                    "and the next change writes this lb's state as the fleet's", self.name, revision)
        self.document, self.refusal = None, None

    def apply(self, doc: dict, revision: int) -> list[desired.Action]:
        """Bring this lb to `doc`; the state file and the member record say so."""
        pool = self.control.pool
        actions = desired.plan(local_entries(pool), pool.versions, pool.target, doc, self.known, self.document)
        for action in actions:
            self._do(action)
        listed = set(self.document["servers"]) if self.document is not None else set()
        for name in doc["servers"].keys() - listed:
            self.control.removing.discard(name)            # deleted, then listed again: it stays
        self.known = self.known | set(doc["servers"])
        self.known -= {a.name for a in actions if a.kind == "remove"}
        self.document, self.revision = doc, revision
        if actions:
            log.info("cluster %s: desired state at revision %d applied: %s", self.name, revision,
                     ", ".join(f"{a.name} {a.kind} {a.value}" if a.name else f"{a.kind} {a.value}"
                               for a in actions if a.kind != "add") or "servers added")
        try:
            save_state(self.control)
        except CommandError as exc:
            log.error("cluster %s: %s", self.name, exc.message)
        self.membership.poke()
        return actions

    def _do(self, action: desired.Action) -> None:
        control, kind, value = self.control, action.kind, action.value
        node = control.pool.backends.get(action.name)
        if kind == "add":
            event = "restore_drained" if value["state"] == "drained" else "join"      # joins in maint
            node = control.add_node(backend_config({"name": action.name, "address": value["address"],
                                                    "version": value["version"], "weight": value["weight"]}), event)
            control.set_version(node, value["version"])     # a claim this lb's checks confirm
            control.set_max_conns(node, value["max_conns"])
            if value["state"] == "ready":
                control.set_admin_state(node, "ready")       # checked before it gets traffic
        elif kind == "address":
            control.set_address(node, parse_hostport(value))
        elif kind == "version":
            control.set_version(node, value)                 # a claim this lb's checks confirm
        elif kind == "weight":
            control.set_weight(node, value)
        elif kind == "max_conns":
            control.set_max_conns(node, value)
        elif kind == "state" and node.admin_state == NEW:    # at start, as the state file is applied
            transition(node, value, control.now())
        elif kind == "state":
            control.set_admin_state(node, value)
        elif kind == "remove" and node.admin_state in (READY, NEW):
            # `del server` takes a node out of service on every lb first: one still in service
            # here is kept (a document must not take a fleet's servers down at one stroke)
            log.error("cluster %s: the desired state removes %s, which is in service on this lb; kept: drain it "
                      "first, then del server", self.name, node.name)
        elif kind == "remove":
            if node.idle and node.admin_state in (DRAINED, MAINT):
                control.remove_node(node)
            else:                                            # gone once drained (as a reload's removal)
                control.removing.add(node.name)
        elif kind == "order":
            control.pool.restore_order(v for v in value if v in control.pool.versions)
            control.changed()
        elif kind == "target":
            control.set_target(value)

    # -- the watch ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster desired state")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with self.lock:
                    read_at, _ = await self._catch_up()
                failures = 0
                async for event in self.client.watch(self.key, read_at + 1, prefix=False):
                    async with self.lock:
                        self._on_event(event)
            except EtcdError as exc:
                failures += 1            # the membership's loop says when etcd is away
                log.debug("cluster %s: desired state watch: %s", self.name, exc.message)
            except Exception:            # a bug: said, and the loop goes on
                log.exception("cluster %s: desired state watch failed", self.name)
                failures += 1
            await asyncio.sleep(backoff_s(failures))

    def _on_event(self, event) -> None:
        if event.mod_revision <= self.revision:
            return                       # this lb's own write, or one it read already
        if event.kind == "delete":
            self._deleted(event.mod_revision)
            return
        self._apply_raw(event.value, event.mod_revision)

    # -- a command's change ---------------------------------------------------------------------
    async def change(self, run) -> tuple[dict, int]:
        """Run the command (`run()`, which changes this lb and returns the reply's payload) on
        the fleet's latest state and write what it changed; (payload, the revision written).
        Raises CommandError when etcd cannot be read or the stored document is refused (the
        command does not run), or the write fails (the command is undone here)."""
        async with self.lock:
            for _ in range(WRITE_TRIES):
                try:
                    _, read = await self._catch_up()
                except (EtcdError, asyncio.TimeoutError) as exc:
                    raise CommandError(f"cluster {self.name}: etcd unreachable ({describe(exc)}); nothing changed "
                                       f"(in cluster mode a change goes to every lb through etcd)") from None
                if self.refusal is not None:
                    raise CommandError(f"cluster {self.name}: {self.refusal}; nothing changed (write a valid one, "
                                       f"or delete the key for the next change to write this lb's state)")
                pool = self.control.pool
                before, pending = local_document(pool), {n.name: n.version_pending for n in pool.backends.values()}
                payload = run()
                after = local_document(pool)
                base = self.document if self.document is not None and read else before
                doc = desired.patch(base, before, after, self.control.removing)
                if doc == self.document:
                    return payload, self.revision
                try:
                    result = await asyncio.wait_for(self.client.txn(
                        [unchanged_since(self.key, read)], [Put(self.key, json.dumps(doc))]), READ_TIMEOUT_S)
                except (EtcdError, asyncio.TimeoutError) as exc:
                    self._undo(before, pending)
                    raise CommandError(f"cluster {self.name}: etcd did not confirm the change ({describe(exc)}); "
                                       f"it is undone on this lb, and if etcd did commit it every lb gets it "
                                       f"from there: see 'show cluster'") from None
                if result.succeeded:
                    self.known |= set(doc["servers"])
                    self.document, self.revision = doc, result.revision
                    self.membership.poke()
                    return payload, result.revision
                self._undo(before, pending)       # another lb wrote first: again, on its document
            raise CommandError(f"cluster {self.name}: other lbs changed the desired state {WRITE_TRIES} times "
                               f"under this command; it is not applied: run it again")

    def _undo(self, before: dict, pending: dict[str, bool]) -> None:
        """Lay this lb's state from before a command back (a write that did not go through)."""
        control, pool = self.control, self.control.pool
        for action in desired.plan(local_entries(pool), pool.versions, pool.target, before, set(pool.backends)):
            if action.kind == "version":
                control.set_version(pool.backends[action.name], action.value, pending.get(action.name, True))
            elif action.kind == "remove":
                control.remove_node(pool.backends[action.name])     # added by the command: in maint, idle
            else:
                self._do(action)
        pool.target = before["target"]
        control.changed()

    async def agreed(self, revision: int) -> dict:
        """The reply's `cluster` entry once every listed member applied `revision`, or at the
        deadline with those that did not (`not_applied`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.membership.config.lease_ttl + AGREE_MARGIN_S, AGREE_MAX_S)
        applied, pending, error = [], [], None
        while True:
            try:
                found = await asyncio.wait_for(self.client.get_prefix(self.membership.prefix), READ_TIMEOUT_S)
                applied, pending = applied_split(found.kvs, self.membership.prefix, revision)
                error = None
            except (EtcdError, asyncio.TimeoutError) as exc:
                error = describe(exc)
            if (not pending and error is None) or loop.time() >= deadline:
                break
            await asyncio.sleep(AGREE_POLL_S)
        agreed = {"revision": revision, "applied": applied, "not_applied": pending}
        if error is not None:
            agreed["error"] = f"etcd: {error}"
        return agreed


def applied_split(kvs, prefix: str, revision: int) -> tuple[list[str], list[str]]:
    """The member ids that report `revision` applied, and those that do not (yet)."""
    applied, pending = [], []
    for kv in kvs:
        try:
            reported = json.loads(kv.value).get("applied_revision", 0)
        except (ValueError, AttributeError, RecursionError):
            reported = 0
        (applied if isinstance(reported, int) and reported >= revision else pending).append(kv.key[len(prefix):])
    return applied, pending
