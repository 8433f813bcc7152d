"""The one bounded memo every cache in lb is made of. No I/O.

lb remembers what peers send over and over (header names, Host values, Connection values,
status lines, HTTP/2 fields found valid, encoded response fields) so that a repeated value
is not parsed, checked or encoded again. Peers choose those keys, so a cache must be bounded
in what it holds, not only in how many entries: 4,000 requests each with one 60 KB header
name once took a worker from 82 to 269 MiB through a cache bounded in entries alone.

A `Memo` holds at most `max_entries` entries and `max_bytes` of keys and values as the
caller measures them (`put(key, value, size)`); an entry larger than `max_entry_bytes` is
never kept. When the next entry would pass a bound, the memo starts over empty: what a site
sends over and over comes back at once, and a hostile stream of new keys only ever costs a
refill. Lookups are a plain dict's `get`, bound once (`memo.get`), for the hot path.
"""

from __future__ import annotations

from typing import Any


class Memo:
    """A dict bounded in entries and in bytes; full, it starts over."""

    __slots__ = ("_entries", "get", "max_entries", "max_bytes", "max_entry_bytes", "bytes")

    def __init__(self, max_entries: int, max_bytes: int, max_entry_bytes: int):
        self._entries: dict = {}
        self.get = self._entries.get
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.bytes = 0                      # the sizes of the entries held, as put() was told

    def put(self, key: Any, value: Any, size: int) -> None:
        """Remember `value` for `key`; `size` is what the key and value hold, in bytes."""
        if size > self.max_entry_bytes:
            return
        entries = self._entries
        if len(entries) >= self.max_entries or self.bytes + size > self.max_bytes:
            entries.clear()
            self.bytes = 0
        if key not in entries:
            self.bytes += size
        entries[key] = value

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
