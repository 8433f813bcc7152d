"""`lb deploy --cluster etcd://HOST:PORT[,HOST:PORT...]/NAME`: the fleet as etcd lists it (issue 31).

Theory of operation
-------------------
In cluster mode each lb's master holds `/lb/NAME/members/<id>` under a lease (lb/control/
cluster.py): a JSON record with its `host`, `admin_socket` and the etcd revision of the desired
state it has `applied_revision`. The deploy reads those keys at start (etcd must answer then:
it is the only list of the lbs) and reaches each lb as `-s` would: its admin socket when its
host is this machine's name, else `ssh://host/admin_socket` through `lb ctl --stdio`. A member's
label is its id.

A command that changes state (`changes_desired_state`: the table's `mutates` rows but `reload`)
goes to ONE member, the first that answers: the lb writes the desired state to etcd and replies
once every live member applied it, with `cluster: {revision, applied, not_applied}`. A member
it names as not applied is waited for here, reading the records every `APPLIED_POLL_S`, until
it has applied the revision or its key goes, within the lb timeout; after that it is lost (as
in fleet.py: the step fails going forward). Every other command (the reads, `wait`) goes to
every member, and the replies merge as fleet.py merges them: a node is in service only where
it is on every live member.

Membership is read again every `REFRESH_S`, and at once when a member does not answer. A member
whose key went (stopped, or killed and its lease expired) has left: it is dropped, said in the
log and named in the report, and is no failure. A new key is a member that joins (its lb
catches up from etcd itself). A listed member that does not answer is tried again until it
answers, its key goes, or the lb timeout passes (then it is lost). When etcd stops answering
mid-deploy the deploy goes on with the members it last read, and says so once.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import time
from dataclasses import dataclass

from ..control.etcd import EtcdClient
from ..core.commands import parse
from ..core.config import ClusterConfig, build
from ..core.errors import CommandError, ConfigError, DeployError
from ..core.etcdwire import EtcdError, KeyValue, Range
from .client import StepFailed, Unreachable
from .fleet import Fleet, Member, Target, make_client, parse_target

URL = re.compile(r"^etcd://(?P<endpoints>[^/]+)/(?P<name>[^/]*)$")
URL_FORM = "etcd://HOST:PORT[,HOST:PORT...]/NAME"
REFRESH_S = 1.0             # membership read again at least this often
ATTEMPT_S = 1.0             # a silent member is tried this long before membership is looked at again
LOOK_AGAIN_S = 5.0          # the longest a silent member's caller waits for a fresh read of membership
APPLIED_POLL_S = 0.2        # between reads of the records, waiting for members to apply a change
PER_LB = {("reload",)}      # state-changing commands that are each lb's own (its config file)


@dataclass(frozen=True)
class ClusterUrl:
    text: str
    endpoints: tuple[str, ...]
    name: str

    @property
    def prefix(self) -> str:
        """Where the members' keys are (lb/control/cluster.py's members_prefix)."""
        return f"/lb/{self.name}/members/"


def parse_cluster_url(text: str) -> ClusterUrl:
    """A --cluster value, checked by the config's own rules for cluster.endpoints and .name.
    Raises DeployError naming it."""
    match = URL.match(text)
    if not match:
        raise DeployError(f"--cluster {text}: expected {URL_FORM}")
    endpoints = match["endpoints"].split(",")
    try:
        config = build(ClusterConfig, {"endpoints": endpoints, "name": match["name"]}, "cluster", "--cluster")
    except ConfigError as exc:
        raise DeployError(f"--cluster {text}: expected {URL_FORM} ({exc.message.removeprefix('--cluster: ')})") \
            from None
    return ClusterUrl(text, config.endpoints, config.name)


def changes_desired_state(line: str) -> bool:
    """Whether the command changes the fleet's desired state (sent to one member, which writes it
    to etcd), rather than reads or acts on each lb (sent to every member)."""
    try:
        command, _ = parse(line)
    except CommandError:
        return False            # every lb refuses it alike
    return command.mutates and command.words not in PER_LB


def member_target(record: dict, hostname: str) -> Target:
    """How to reach a member: its admin socket when it runs on this host, else over ssh.
    Raises DeployError saying what is wrong with the record."""
    host, path = record.get("host"), record.get("admin_socket")
    if not isinstance(host, str) or not host:
        raise DeployError(f"no host in the record: {host!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise DeployError(f"admin_socket is not an absolute path: {path!r}")
    if host == hostname:
        return Target(path, path)
    return parse_target(f"ssh://{host}{path}")


def read_members(kvs: tuple[KeyValue, ...], prefix: str, hostname: str) -> tuple[dict, dict]:
    """The member keys read from etcd -> ({id: (target, record)}, {key: why it is ignored})."""
    members, ignored = {}, {}
    for kv in kvs:
        member_id = kv.key[len(prefix):]
        try:
            record = json.loads(kv.value)
        except ValueError:
            ignored[kv.key] = f"not JSON: {kv.value[:80]!r}"
            continue
        if not isinstance(record, dict):
            ignored[kv.key] = f"not a member record: {kv.value[:80]!r}"
            continue
        try:
            members[member_id] = (member_target(record, hostname), record)
        except DeployError as exc:
            ignored[kv.key] = exc.message
    return members, ignored


def membership_diff(known: list[str], listed: list[str]) -> tuple[list[str], list[str]]:
    """(the ids that left, the ids that joined), each in the order given."""
    return [i for i in known if i not in listed], [i for i in listed if i not in known]


def behind(records: dict[str, dict], waiting: list[str], revision: int) -> list[str]:
    """The members of `waiting` still listed whose applied_revision is below `revision`."""
    late = []
    for member_id in waiting:
        if member_id not in records:
            continue                    # its key went: it left the fleet
        applied = records[member_id].get("applied_revision")
        if not isinstance(applied, int) or applied < revision:
            late.append(member_id)
    return late


class ClusterFleet(Fleet):
    """The members of one cluster in etcd, driven as a Fleet: `open()` it, then as Fleet."""

    def __init__(self, url: ClusterUrl, ssh_command: str = "ssh", hostname: str | None = None, tls=None):
        super().__init__([], ssh_command)
        self.url = url
        self.ssh_command = ssh_command
        self.hostname = hostname or socket.gethostname()
        self.etcd = EtcdClient(list(url.endpoints), tls=tls)      # tls: lb/tls.py etcd_client_context
        self.lb_timeout_s = ATTEMPT_S
        self.etcd_down = False
        self.ignored: set[str] = set()          # keys whose record was said to be ignored
        self.notify = None
        self.pending: list[tuple[str, dict]] = []    # said before report_to()
        self.asked = asyncio.Event()
        self.next_read: asyncio.Future | None = None
        self.follower: asyncio.Task | None = None

    @classmethod
    async def open(cls, text: str, ssh_command: str = "ssh", tls=None) -> ClusterFleet:
        """The fleet as etcd lists it now. Raises DeployError when the URL is bad, etcd does not
        answer, or no lb is a member."""
        fleet = cls(parse_cluster_url(text), ssh_command, tls=tls)
        try:
            await fleet.start()
        except BaseException:
            await fleet.close()
            raise
        return fleet

    async def start(self) -> None:
        url = self.url
        try:
            found = await self.etcd.get_prefix(url.prefix)
        except EtcdError as exc:
            raise DeployError(f"--cluster {url.text}: etcd does not answer at {', '.join(url.endpoints)}; "
                              f"nothing was done, and the lbs serve on with their own state ({exc.message})") \
                from None
        self.take(found)
        if not self.members:
            raise DeployError(f"--cluster {url.text}: no lb is a member of cluster {url.name!r} (no key under "
                              f"{url.prefix} in etcd): are the lbs serving with cluster: {{name: {url.name}}}?")
        self.next_read = asyncio.get_running_loop().create_future()
        self.follower = asyncio.create_task(self.follow(), name="cluster membership")

    # -- membership ------------------------------------------------------------------------
    def take(self, found: Range) -> dict[str, dict]:
        """Members from a read of the keys: those whose key went leave, new ones join. The
        records by id."""
        listed, ignored = read_members(found.kvs, self.url.prefix, self.hostname)
        for key in ignored.keys() - self.ignored:
            self.say("member_ignored", key=key, reason=ignored[key])
        self.ignored = set(ignored)
        gone, joined = membership_diff([m.label for m in self.members if not m.lost], list(listed))
        for member_id in gone:
            member = next(m for m in self.members if m.label == member_id)
            self.members.remove(member)
            self.left[member_id] = "its key left etcd (the lb stopped, or its lease expired)"
            self.say("member_left", member=member_id, reason=self.left[member_id])
        for member_id in joined:
            if any(m.label == member_id for m in self.members):
                continue                # a lost member listed again stays lost
            target = listed[member_id][0]
            self.members.append(Member(target, make_client(target, self.ssh_command, ATTEMPT_S), member_id))
            if self.follower is not None:
                self.left.pop(member_id, None)
                self.say("member_joined", member=member_id)
        return {member_id: record for member_id, (_, record) in listed.items()}

    async def read(self) -> dict[str, dict] | None:
        """Membership read again; the records by id, or None when etcd does not answer."""
        try:
            found = await self.etcd.get_prefix(self.url.prefix)
        except EtcdError as exc:
            if not self.etcd_down:
                self.etcd_down = True
                self.say("etcd_unreachable", error=exc.message, members=self.labels,
                         message="etcd does not answer; the deploy goes on with the members it last read")
            return None
        if self.etcd_down:
            self.etcd_down = False
            self.say("etcd_back", message="etcd answers again")
        return self.take(found)

    async def follow(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self.asked.wait(), REFRESH_S)
            except asyncio.TimeoutError:
                pass
            self.asked.clear()
            this, self.next_read = self.next_read, loop.create_future()
            try:
                await self.read()
            finally:
                this.set_result(None)

    async def look_again(self) -> None:
        """Membership read again now (one read for every caller asking at once)."""
        if self.next_read is None:
            return
        read = self.next_read
        self.asked.set()
        try:
            await asyncio.wait_for(asyncio.shield(read), LOOK_AGAIN_S)
        except asyncio.TimeoutError:
            pass

    def say(self, kind: str, **fields) -> None:
        if self.notify is None:
            self.pending.append((kind, fields))
        else:
            self.notify(kind, fields)

    def report_to(self, notify) -> None:
        self.notify = notify
        for kind, fields in self.pending:
            notify(kind, fields)
        self.pending.clear()

    # -- commands --------------------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        return [self.url.text]

    @property
    def flags(self) -> str:
        return f"--cluster {shlex.quote(self.url.text)}"

    def set_reconnect(self, seconds: float) -> None:
        self.lb_timeout_s = seconds         # each try stays ATTEMPT_S: membership is looked at between

    async def call(self, line: str, timeout_s: float = 30.0) -> dict[str, dict]:
        """As Fleet.call; a state change goes to one member and is waited for on the others.
        Raises Unreachable, and StepFailed when the lb changed only itself (no cluster mode)."""
        self.refuse_if_lost()
        if changes_desired_state(line):
            return await self.change(line, timeout_s)
        live = [m for m in self.members if not m.lost]
        results = await asyncio.gather(*(self.reach(m, line, timeout_s) for m in live), return_exceptions=True)
        if live and all(r is None for r in results):
            raise Unreachable(self.nobody())
        return self.collect(live, results)

    def nobody(self) -> str:
        """Why no member can take a command."""
        return (f"no lb of cluster {self.url.name} is left to answer: "
                + "; ".join([*(f"{i} left" for i in self.left), *(f"{i} lost ({why})" for i, why in self.lost.items())]))

    async def reach(self, member: Member, line: str, timeout_s: float) -> dict | None:
        """The member's reply; None once it left the fleet. Raises Unreachable when it stays
        silent and listed for the lb timeout."""
        deadline = time.monotonic() + self.lb_timeout_s
        while True:
            try:
                return await member.client.call(line, timeout_s)
            except Unreachable:
                await self.look_again()
                if member not in self.members:
                    return None
                if time.monotonic() >= deadline:
                    raise

    async def change(self, line: str, timeout_s: float) -> dict[str, dict]:
        """The state change sent to the first live member that answers; its reply."""
        deadline = time.monotonic() + self.lb_timeout_s
        while True:
            live, silent = [m for m in self.members if not m.lost], {}
            if not live:
                raise Unreachable(self.nobody())
            for member in live:
                try:
                    reply = await member.client.call(line, timeout_s)
                except Unreachable as exc:
                    silent[member] = exc.message
                    continue
                if reply.get("ok"):
                    await self.wait_applied(member.label, line, reply)
                return {member.label: reply}
            if time.monotonic() >= deadline:
                for member, why in silent.items():
                    member.lost = why
                raise Unreachable(f"no lb of cluster {self.url.name} answers '{line}': "
                                  + "; ".join(silent.values()))
            await self.look_again()

    async def wait_applied(self, label: str, line: str, reply: dict) -> None:
        """Until the members the reply names as not applied have applied its revision or left.
        Raises StepFailed when the lb is not sharing state through etcd, Unreachable when a
        member is still behind after the lb timeout (it is lost)."""
        cluster = reply.get("cluster")
        if not isinstance(cluster, dict) or not isinstance(cluster.get("revision"), int):
            raise StepFailed(f"lb {label} changed only itself for '{line}' (its reply has no cluster revision): "
                             f"it does not share desired state through etcd cluster {self.url.name}")
        revision, waiting = cluster["revision"], list(cluster.get("not_applied") or [])
        deadline = time.monotonic() + self.lb_timeout_s
        while waiting:
            records = await self.read()
            if records is not None:
                waiting = behind(records, waiting, revision)
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(APPLIED_POLL_S)
        for member in self.members:
            if member.label in waiting and not member.lost:
                member.lost = f"did not apply revision {revision} ('{line}') within {self.lb_timeout_s:g}s"
        if waiting and not self.tolerate_lost:
            self.refuse_if_lost()

    async def close(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            try:
                await self.follower
            except asyncio.CancelledError:
                pass
        await super().close()
        await self.etcd.close()
