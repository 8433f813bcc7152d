"""etcd v3's JSON gateway messages: keys and values in base64, the request shapes lb sends
(range, put, delete, txn with compares) and the answers it reads (ranges, watch events),
pure and table-tested (tests/unit/test_etcd_client.py); lb/control/etcd.py sends them.
A field at its zero value is left out of etcd's answers (a `put` event has no `type`, a
failed txn no `succeeded`); 64-bit numbers are strings.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .errors import LbError


class EtcdError(LbError):
    """etcd refused a call or no endpoint answered. `code` is etcd's gRPC code when it
    answered; `compact_revision` is set when the revision asked for was compacted."""

    def __init__(self, message: str, code: int | None = None, compact_revision: int = 0):
        super().__init__(message)
        self.code = code
        self.compact_revision = compact_revision


def as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def b64(data: bytes | str) -> str:
    return base64.b64encode(as_bytes(data)).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def prefix_end(prefix: bytes | str) -> bytes:
    """The range_end that makes [prefix, range_end) every key starting with `prefix`: the
    prefix with its last byte below 0xff incremented (b"\\0", every key, when there is none)."""
    key = bytearray(as_bytes(prefix))
    while key and key[-1] == 0xFF:
        key.pop()
    if not key:
        return b"\0"
    key[-1] += 1
    return bytes(key)


def key_range(key: bytes | str, prefix: bool = False) -> dict:
    """A RangeRequest's (or DeleteRangeRequest's) key and range_end."""
    key = as_bytes(key)
    if not prefix:
        return {"key": b64(key)}
    return {"key": b64(key or b"\0"), "range_end": b64(prefix_end(key))}


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Range:
    """The keys a get found and the store's revision when it read them."""
    kvs: tuple[KeyValue, ...]
    revision: int

    def value(self, key: str) -> KeyValue | None:
        return next((kv for kv in self.kvs if kv.key == key), None)


@dataclass(frozen=True)
class Event:
    kind: str                   # "put" or "delete"
    key: str
    value: bytes                # b"" for a delete
    mod_revision: int


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True)
class Lease:
    id: int
    ttl_s: int


@dataclass(frozen=True)
class Put:
    """A put, alone or as a txn's operation."""
    key: str
    value: bytes | str
    lease: int = 0

    def request(self) -> dict:
        body = {"key": b64(self.key), "value": b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return body

    def txn_op(self) -> dict:
        return {"request_put": self.request()}


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def request(self) -> dict:
        return key_range(self.key, self.prefix)

    def txn_op(self) -> dict:
        return {"request_delete_range": self.request()}


# Compare targets: etcd's name -> (the JSON field the value goes in, how it is written).
COMPARE_TARGETS = {
    "MOD": ("mod_revision", str),
    "VERSION": ("version", str),
    "CREATE": ("create_revision", str),
    "VALUE": ("value", b64),
}
COMPARE_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}


@dataclass(frozen=True)
class Compare:
    """One txn condition: `target` of `key` `op` `value`. A missing key compares as
    revision 0 and version 0, so `Compare(key, "MOD", 0)` means "nobody created it"."""
    key: str
    target: str
    value: int | bytes | str
    op: str = "=="

    def request(self) -> dict:
        if self.target not in COMPARE_TARGETS or self.op not in COMPARE_RESULTS:
            raise EtcdError(f"compare {self.target} {self.op}: expected a target in {sorted(COMPARE_TARGETS)} "
                            f"and an op in {sorted(COMPARE_RESULTS)}")
        field, write = COMPARE_TARGETS[self.target]
        return {"key": b64(self.key), "target": self.target, "result": COMPARE_RESULTS[self.op],
                field: write(self.value)}


def unchanged_since(key: str, mod_revision: int) -> Compare:
    """The condition for "write only if nobody wrote `key` since I read it at mod_revision"."""
    return Compare(key, "MOD", mod_revision)


def txn_request(compares: list[Compare], success: list, failure: list = ()) -> dict:
    return {"compare": [c.request() for c in compares], "success": [op.txn_op() for op in success],
            "failure": [op.txn_op() for op in failure]}


def key_value(kv: dict) -> KeyValue:
    return KeyValue(key=unb64(kv.get("key", "")).decode("utf-8", "replace"), value=unb64(kv.get("value", "")),
                    mod_revision=int(kv.get("mod_revision", 0)), create_revision=int(kv.get("create_revision", 0)),
                    version=int(kv.get("version", 0)), lease=int(kv.get("lease", 0)))


def revision_of(answer: dict) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def parse_range(answer: dict) -> Range:
    return Range(tuple(key_value(kv) for kv in answer.get("kvs", [])), revision_of(answer))


def parse_events(result: dict) -> list[Event]:
    """A watch message's events, in order."""
    events = []
    for raw in result.get("events", []):
        kv = key_value(raw.get("kv", {}))
        kind = "delete" if raw.get("type") == "DELETE" else "put"
        events.append(Event(kind, kv.key, kv.value, kv.mod_revision))
    return events
