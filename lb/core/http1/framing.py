"""HTTP/1.1 framing rules: how long a body is and where a connection ends. No I/O.

A message's body is sized by one Content-Length, or chunked by a Transfer-Encoding that is a
single `chunked`, or (a response) delimited by the connection's close; anything else is
refused, since two parsers that disagree on where a body ends let a request be smuggled.
`body_framing` decides from the collected framing headers; the Connection tokens
(`connection_tokens`) say whether the connection is kept after the message and which
further headers are hop-by-hop. `ChunkFraming` checks a chunked body byte by byte, as
strictly as llhttp does, for the h11 adapter, whose own reading is lenient.
"""

from __future__ import annotations

from ..errors import HttpError
from ..memo import Memo

MAX_CONTENT_LENGTH_DIGITS = 18

_NO_TOKENS: frozenset = frozenset()
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


# The memos of lb/core/http1 remember what peers send over and over (Connection values here;
# header names and Host values in heads.py, status lines in writer.py), each bounded in entries
# and bytes (lb/core/memo.py) and never keeping a key longer than this: what peers can make
# them hold stays under a MiB in all.
CACHED_MAX_BYTES = 64
_TOKENS_SEEN = Memo(256, 64 * 1024, CACHED_MAX_BYTES)   # a Connection value -> its tokens (a site sends few)


def connection_tokens(specials: dict) -> frozenset:
    """The lowercase tokens of all Connection headers."""
    values = specials.get(b"connection")
    if not values:
        return _NO_TOKENS
    if len(values) == 1:
        # One value, the usual case ("keep-alive", "close"): its tokens are remembered, so
        # the split and the set are not made per message (0.37 -> 0.1 µs, bench/hotpath.py).
        tokens = _TOKENS_SEEN.get(values[0])
        if tokens is None:
            tokens = _tokens(values)
            _TOKENS_SEEN.put(values[0], tokens, len(values[0]))
        return tokens
    return _tokens(values)


def _tokens(values: list) -> frozenset:
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


def drop_named(kept: list, tokens: frozenset) -> list:
    """Drop the headers that Connection names as hop-by-hop (RFC 9110 7.6.1)."""
    named = tokens - CONNECTION_OPTIONS
    if not named:
        return kept
    return [(n, v) for n, v in kept if n.lower() not in named]


def _content_length(value: bytes, current: int | None) -> int:
    # Even identical duplicates are refused, as llhttp does: one rule for both parsers.
    if current is not None:
        raise HttpError("more than one Content-Length header", 400)
    value = value.strip()
    if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise HttpError(f"malformed Content-Length: {value[:40]!r}", 400)
    return int(value)


def body_framing(specials: dict) -> tuple[int | None, bool]:
    """(content_length, chunked) from the collected framing headers; raises HttpError."""
    length = None
    for value in specials.get(b"content-length", ()):
        length = _content_length(value, length)
    codings = specials.get(b"transfer-encoding")
    if not codings:
        return length, False
    if length is not None:
        raise HttpError("both Transfer-Encoding and Content-Length", 400)
    parts = [p.strip().lower() for v in codings for p in v.split(b",")]
    if parts != [b"chunked"]:
        raise HttpError("unsupported Transfer-Encoding (only a single 'chunked' is accepted)", 400)
    return None, True


_HEX = frozenset(b"0123456789abcdefABCDEF")
SIZE, EXT, SIZE_LF, DATA, DATA_CR, DATA_LF, LINE_START, LINE, LINE_LF, END_LF, DONE = range(11)
# States where one byte must follow: (that byte, the next state, what it is when it does not)
_CHUNK_EXPECT = {
    DATA_CR: (0x0D, DATA_LF, "chunk data not followed by CRLF"),
    DATA_LF: (0x0A, SIZE, "chunk data not followed by CRLF"),
    LINE_LF: (0x0A, LINE_START, "malformed trailer section: CR without LF"),
    END_LF: (0x0A, DONE, "malformed chunked body end: CR without LF"),
}


class ChunkFraming:
    """The framing of a chunked body, checked on the raw bytes as strictly as llhttp does:
    a chunk size of hex digits, an extension without CR or LF in it, CRLF after the size
    line, after the data and after each trailer line. h11 reads these leniently (a CR inside
    an extension, a space after the size, bare LFs), which lets a proxy in front of lb and lb
    disagree on where a chunk ends; in h11 mode every chunked body goes through this."""

    __slots__ = ("state", "size", "digits", "left")

    def __init__(self):
        self.state, self.size, self.digits, self.left = SIZE, 0, 0, 0

    def feed(self, data: bytes) -> int:
        """Check `data`; returns how many of its bytes belong to the body (all of them until
        the last CRLF). Raises HttpError(400) at the first byte llhttp would refuse."""
        i, n = 0, len(data)
        while i < n and self.state != DONE:
            state = self.state
            if state == DATA:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = DATA_CR
                continue
            byte = data[i]
            i += 1
            if state == SIZE:
                if byte in _HEX and self.digits < MAX_CONTENT_LENGTH_DIGITS:
                    self.size = self.size * 16 + int(chr(byte), 16)
                    self.digits += 1
                elif byte == 0x3B and self.digits:          # ';' an extension
                    self.state = EXT
                elif byte == 0x0D and self.digits:
                    self.state = SIZE_LF
                else:
                    raise HttpError("malformed chunk size line", 400)
            elif state == EXT:
                if byte == 0x0D:
                    self.state = SIZE_LF
                elif byte == 0x0A or byte < 0x20 and byte != 0x09 or byte == 0x7F:
                    raise HttpError("malformed chunk extension", 400)
            elif state == SIZE_LF:
                if byte != 0x0A:
                    raise HttpError("malformed chunk size line: CR without LF", 400)
                if self.size:
                    self.state, self.left = DATA, self.size
                else:
                    self.state = LINE_START
                self.size = self.digits = 0
            elif state in _CHUNK_EXPECT:
                wanted, following, problem = _CHUNK_EXPECT[state]
                if byte != wanted:
                    raise HttpError(problem, 400)
                self.state = following
            elif state == LINE_START:
                self.state = END_LF if byte == 0x0D else LINE
                if byte == 0x0A:
                    raise HttpError("malformed trailer section: bare LF", 400)
            elif state == LINE:
                if byte == 0x0D:
                    self.state = LINE_LF
                elif byte == 0x0A:
                    raise HttpError("malformed trailer section: bare LF", 400)
        return i
