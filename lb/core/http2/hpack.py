"""HPACK (RFC 7541): the decoder of the header blocks a client sends, and the encoding of
integers and strings. No I/O.

Theory of operation
-------------------
A `Decoder` belongs to one connection and sees its header blocks in order (each HEADERS
frame's with its CONTINUATIONs, joined). `decode(block)` returns the field list as
(name, value) pairs of bytes, as h2 gives them with header_encoding=None; a field the
sender marked never indexed (6.2.3) comes as a `NeverIndexed` pair, which equals the plain
one. Fields are looked up in one list, index -> field: 0 (an error), the 61 static entries
(Appendix A), then the dynamic table, newest first, so index 62 is the last entry added.
Adding an entry inserts at 62 and evicts from the end until the table fits its size (4.4),
each entry counting len(name) + len(value) + 32; a parallel list holds those sizes, which
also add up the header list's size (RFC 9113 6.5.2).

Anything the block gets wrong raises `HpackError`, a COMPRESSION_ERROR: the decoder's table
is then out of step with the peer's, so the connection ends and the decoder is not used
again. A list past `max_header_list_size` is not that: the block is decoded to its end, the
table stays in step, and `HeaderListTooLarge` (an HttpError, 431) is raised after.

Dynamic table size updates come only at a block's start (4.2), never above
`settings_max_table_size`: the SETTINGS_HEADER_TABLE_SIZE this side announced, which the
connection sets here once the peer has acknowledged it. When it goes below the table's
current maximum, the next block must start with an update that brings the table within it.

Huffman strings (`huffman.py`) that come again, in a connection's first blocks (before the
dynamic table has them) and in fields sent without indexing, are decoded once: a shared
memo keeps them, raw -> decoded, except the per-user values of SENSITIVE fields.
"""

from __future__ import annotations

from ..errors import HttpError
from ..memo import Memo
from . import huffman

# RFC 7541 Appendix A: index 1 is the first
STATIC_TABLE = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""), (b"content-encoding", b""),
    (b"content-language", b""), (b"content-length", b""), (b"content-location", b""), (b"content-range", b""),
    (b"content-type", b""), (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""),
    (b"expires", b""), (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""), (b"last-modified", b""),
    (b"link", b""), (b"location", b""), (b"max-forwards", b""), (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""), (b"range", b""), (b"referer", b""), (b"refresh", b""), (b"retry-after", b""),
    (b"server", b""), (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
FIRST_DYNAMIC = len(STATIC_TABLE) + 1          # the index of the newest dynamic entry
ENTRY_OVERHEAD = 32                            # an entry's size beyond its name and value (4.1)
_STATIC_FIELDS = [None, *STATIC_TABLE]         # by index; 0 is no field
_STATIC_SIZES = [0, *(len(name) + len(value) + ENTRY_OVERHEAD for name, value in STATIC_TABLE)]
DEFAULT_MAX_HEADER_LIST_SIZE = 65536           # h2's and hpack's default
MAX_INTEGER = 2 ** 32 - 1                      # SETTINGS values and frame lengths are 32-bit at most
MAX_INTEGER_CONTINUATIONS = 5                  # enough for MAX_INTEGER; hpack's bound too
SENSITIVE = frozenset({b"cookie", b"authorization", b"proxy-authorization"})
HUFFMAN_MEMO_ENTRY_MAX = 1024                  # raw + decoded; a longer string is decoded each time
_huffman_strings = Memo(4096, 1024 * 1024, HUFFMAN_MEMO_ENTRY_MAX)   # raw Huffman string -> decoded, shared


class HpackError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR (RFC 9113 4.3), the
    connection ends."""

    error_code = 0x9                               # COMPRESSION_ERROR, for the GOAWAY (RFC 9113 7)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class HeaderListTooLarge(HttpError):
    """A header list past the decoder's max_header_list_size: 431 on its stream. The block
    was decoded to its end, so the dynamic table is in step and the connection goes on."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"header list of {size} bytes, past the limit of {limit} (sum of name, value and 32)", 431)
        self.size = size
        self.limit = limit


class NeverIndexed(tuple):
    """A (name, value) field sent as never indexed (RFC 7541 6.2.3): whoever encodes it again
    keeps it a literal, never indexed. Equal to the plain tuple."""

    __slots__ = ()


class Decoder:
    """One connection's HPACK decoder (see the module's docstring)."""

    __slots__ = ("_fields", "_sizes", "_table_bytes", "_max_table_bytes", "settings_max_table_size",
                 "max_header_list_size")

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE):
        self._fields = _STATIC_FIELDS.copy()
        self._sizes = _STATIC_SIZES.copy()
        self._table_bytes = 0                          # the dynamic entries' sizes, summed
        self._max_table_bytes = max_table_size         # as the peer's last size update set it
        self.settings_max_table_size = max_table_size  # the bound of size updates: our acknowledged SETTINGS
        self.max_header_list_size = max_header_list_size

    @property
    def table_size(self) -> int:
        """The dynamic table's size: its entries' sizes, summed (RFC 7541 4.1)."""
        return self._table_bytes

    @property
    def max_table_size(self) -> int:
        """The dynamic table's maximum size, as the peer's last size update set it."""
        return self._max_table_bytes

    @property
    def dynamic_table(self) -> list:
        """The dynamic table's (name, value) entries, newest first."""
        return self._fields[FIRST_DYNAMIC:]

    def decode(self, block: bytes) -> list:
        """The field list of a whole header block. Raises HpackError (the connection ends) or,
        the block decoded, HeaderListTooLarge (431)."""
        if type(block) is not bytes:
            block = bytes(block)                   # slices of it are memo keys
        fields: list = []
        append = fields.append
        table = self._fields
        sizes = self._sizes
        list_size = 0
        position = 0
        end = len(block)
        # One loop for every representation, the indexed field first and inline: a function
        # call per field would cost more than the ~0.1 µs an indexed field takes here, and
        # testing `octet > 0x80` against a held table length saves ~20% of that.
        try:
            if end and block[0] & 0xE0 == 0x20 or self._max_table_bytes > self.settings_max_table_size:
                position = self._size_updates(block)
            count = len(table)
            while position < end:
                octet = block[position]
                position += 1
                if octet > 0x80:                   # indexed (6.1)
                    index = octet & 0x7F
                    if index == 0x7F:
                        index, position = _integer(block, position, 0x7F)
                    if index >= count:
                        raise HpackError(f"field index {index} is not in the table (1 to {count - 1})")
                    append(table[index])
                    list_size += sizes[index]
                elif octet & 0x40:                 # literal with incremental indexing (6.2.1)
                    name, value, position = self._literal(block, position, octet & 0x3F, 0x3F, True)
                    field = (name, value)
                    size = len(name) + len(value) + ENTRY_OVERHEAD
                    self._add(field, size)
                    count = len(table)
                    append(field)
                    list_size += size
                elif octet == 0x80:
                    raise HpackError("field index 0 (RFC 7541 6.1: not a field)")
                elif octet & 0x20:
                    raise HpackError("dynamic table size update after a field (RFC 7541 4.2: only at a block's start)")
                else:                              # literal without indexing (6.2.2), never indexed (6.2.3)
                    never = octet & 0x10
                    name, value, position = self._literal(block, position, octet & 0x0F, 0x0F, not never)
                    append(NeverIndexed((name, value)) if never else (name, value))
                    list_size += len(name) + len(value) + ENTRY_OVERHEAD
        except IndexError:
            raise HpackError("truncated header block (it ends inside a field)") from None
        if list_size > self.max_header_list_size:
            raise HeaderListTooLarge(list_size, self.max_header_list_size)
        return fields

    def _size_updates(self, block: bytes) -> int:
        """Applies the dynamic table size updates that start `block` (6.3); returns where the
        fields start. Raises HpackError for one above settings_max_table_size, or none down to
        it when our SETTINGS went below the table's maximum (4.2)."""
        position = 0
        while position < len(block) and block[position] & 0xE0 == 0x20:
            size = block[position] & 0x1F
            position += 1
            if size == 0x1F:
                size, position = _integer(block, position, 0x1F)
            if size > self.settings_max_table_size:
                raise HpackError(f"dynamic table size update to {size}, above the {self.settings_max_table_size} "
                                 "of SETTINGS_HEADER_TABLE_SIZE")
            self._max_table_bytes = size
            self._evict(size)
        if self._max_table_bytes > self.settings_max_table_size:
            raise HpackError(f"no dynamic table size update at the block's start down to {self.settings_max_table_size} "
                             f"(SETTINGS_HEADER_TABLE_SIZE) from {self._max_table_bytes}")
        return position

    def _literal(self, block: bytes, position: int, index: int, prefix_max: int, remember: bool) -> tuple:
        """(name, value, the position after them) of a literal field whose first octet's
        prefix held `index` (0: the name is a literal too). `remember`: the value may go
        into the shared memo (not for a never-indexed one)."""
        if index == prefix_max:
            index, position = _integer(block, position, prefix_max)
        if index:
            if index >= len(self._fields):
                raise HpackError(f"field name index {index} is not in the table (1 to {len(self._fields) - 1})")
            name = self._fields[index][0]
        else:
            name, position = _string(block, position, True)
        value, position = _string(block, position, remember and name not in SENSITIVE)
        return name, value, position

    def _add(self, field: tuple, size: int) -> None:
        """`field` as the newest dynamic entry, after evicting what it does not leave room for
        (4.4); an entry larger than the table empties it."""
        if size > self._max_table_bytes:
            self._evict(0)
            return
        self._evict(self._max_table_bytes - size)
        self._fields.insert(FIRST_DYNAMIC, field)
        self._sizes.insert(FIRST_DYNAMIC, size)
        self._table_bytes += size

    def _evict(self, limit: int) -> None:
        """Drops the oldest dynamic entries until the table's size is at most `limit`."""
        fields, sizes = self._fields, self._sizes
        while self._table_bytes > limit:
            fields.pop()
            self._table_bytes -= sizes.pop()


def _integer(block: bytes, position: int, value: int) -> tuple[int, int]:
    """(the integer, the position after it) of one whose prefix was full (`value`, RFC 7541
    5.1), its continuation octets at `position`. Raises HpackError past MAX_INTEGER or
    MAX_INTEGER_CONTINUATIONS octets (5.1 lets a decoder bound both), IndexError at the
    block's end."""
    for shift in range(0, 7 * MAX_INTEGER_CONTINUATIONS, 7):
        octet = block[position]
        position += 1
        value += (octet & 0x7F) << shift
        if octet < 0x80:
            if value > MAX_INTEGER:
                raise HpackError(f"integer {value} is past {MAX_INTEGER}")
            return value, position
    raise HpackError(f"integer longer than {MAX_INTEGER_CONTINUATIONS} continuation octets")


def _string(block: bytes, position: int, remember: bool) -> tuple[bytes, int]:
    """(the string, the position after it) of a string literal (5.2), Huffman-decoded if it
    says so; `remember`: a Huffman one may go into the shared memo."""
    octet = block[position]
    length = octet & 0x7F
    position += 1
    if length == 0x7F:
        length, position = _integer(block, position, 0x7F)
    end = position + length
    if end > len(block):
        raise HpackError(f"truncated header block (a string of {length} octets, {len(block) - position} left)")
    data = block[position:end]
    if octet & 0x80:
        decoded = _huffman_strings.get(data)
        if decoded is None:
            decoded = huffman.decode(data)
            if decoded is None:
                raise HpackError("invalid Huffman string (EOS in it, or padding not all 1s or over 7 bits)")
            if remember:
                _huffman_strings.put(data, decoded, len(data) + len(decoded))
        data = decoded
    return data, end


def encode_integer(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) in a `prefix_bits` prefix, OR'ed with `flags`."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((flags | value,))
    out = bytearray((flags | top,))
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(data: bytes, huffman_if_shorter: bool = False) -> bytes:
    """A string literal (RFC 7541 5.2): Huffman-coded if asked and if that is shorter."""
    if huffman_if_shorter and huffman.encoded_length(data) < len(data):
        coded = huffman.encode(data)
        return encode_integer(len(coded), 7, 0x80) + coded
    return encode_integer(len(data), 7) + data
