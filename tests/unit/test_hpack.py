"""lb's HPACK decoder (lb/core/http2/hpack.py, huffman.py): RFC 7541's examples and the edge
cases as tables, then hypothesis against hpack (the decoder h2 uses): the blocks hpack's
encoder makes, blocks built field by field (valid or not), and bytes at random, on one
connection; both decoders refuse the same blocks and agree on everything else."""

import hpack
import pytest
from hpack.huffman_table import decode_huffman
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lb.core.http2 import hpack as lb_hpack
from lb.core.http2 import huffman
from lb.core.http2.hpack import (STATIC_TABLE, Decoder, HeaderListTooLarge, HpackError, NeverIndexed, encode_integer,
                                 encode_string)


def dehex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def pairs(text: str) -> list:
    """'name: value' lines -> (name, value) pairs of bytes."""
    return [tuple(line.encode().split(b": ", 1)) for line in text.strip().splitlines()]


# RFC 7541 Appendix C.2: one block each on a fresh decoder -> (fields, dynamic table, its size)
SINGLE_BLOCKS = {
    "C.2.1 literal with indexing": ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
                                    "custom-key: custom-header", "custom-key: custom-header", 55),
    "C.2.2 literal without indexing": ("040c 2f73 616d 706c 652f 7061 7468", ":path: /sample/path", "", 0),
    "C.2.3 literal never indexed": ("1008 7061 7373 776f 7264 0673 6563 7265 74", "password: secret", "", 0),
    "C.2.4 indexed": ("82", ":method: GET", "", 0),
}


@pytest.mark.parametrize("name", SINGLE_BLOCKS)
def test_rfc7541_c2_single_fields(name):
    block, fields, table, size = SINGLE_BLOCKS[name]
    decoder = Decoder()
    decoded = decoder.decode(dehex(block))
    assert decoded == pairs(fields)
    assert decoder.dynamic_table == pairs(table) and decoder.table_size == size
    assert isinstance(decoded[0], NeverIndexed) == name.endswith("never indexed")


REQUESTS = [
    ":method: GET\n:scheme: http\n:path: /\n:authority: www.example.com",
    ":method: GET\n:scheme: http\n:path: /\n:authority: www.example.com\ncache-control: no-cache",
    ":method: GET\n:scheme: https\n:path: /index.html\n:authority: www.example.com\ncustom-key: custom-value",
]
REQUEST_TABLES = [(":authority: www.example.com", 57),
                  ("cache-control: no-cache\n:authority: www.example.com", 110),
                  ("custom-key: custom-value\ncache-control: no-cache\n:authority: www.example.com", 164)]
RESPONSES = [
    ":status: 302\ncache-control: private\ndate: Mon, 21 Oct 2013 20:13:21 GMT\nlocation: https://www.example.com",
    ":status: 307\ncache-control: private\ndate: Mon, 21 Oct 2013 20:13:21 GMT\nlocation: https://www.example.com",
    ":status: 200\ncache-control: private\ndate: Mon, 21 Oct 2013 20:13:22 GMT\nlocation: https://www.example.com\n"
    "content-encoding: gzip\nset-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
]
RESPONSE_TABLES = [
    ("location: https://www.example.com\ndate: Mon, 21 Oct 2013 20:13:21 GMT\ncache-control: private\n:status: 302", 222),
    (":status: 307\nlocation: https://www.example.com\ndate: Mon, 21 Oct 2013 20:13:21 GMT\ncache-control: private", 222),
    ("set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1\ncontent-encoding: gzip\n"
     "date: Mon, 21 Oct 2013 20:13:22 GMT", 215),
]
# RFC 7541 C.3 to C.6: blocks on one connection -> (table size, blocks, header lists, tables after each)
SERIES = {
    "C.3 requests": (4096, ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 84be 5808 6e6f 2d63 6163 6865",
                            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"],
                     REQUESTS, REQUEST_TABLES),
    "C.4 requests, Huffman": (4096, ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf",
                                     "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"],
                              REQUESTS, REQUEST_TABLES),
    "C.5 responses": (256, [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d"
        " 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f"
        " 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b"
        " 2076 6572 7369 6f6e 3d31"], RESPONSES, RESPONSE_TABLES),
    "C.6 responses, Huffman": (256, [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7"
        " 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335"
        " dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"],
        RESPONSES, RESPONSE_TABLES),
}


@pytest.mark.parametrize("name", SERIES)
def test_rfc7541_c3_to_c6_series_with_the_table_after_each_block(name):
    table_size, blocks, lists, tables = SERIES[name]
    decoder = Decoder(max_table_size=table_size)
    for block, fields, (table, size) in zip(blocks, lists, tables):
        assert decoder.decode(dehex(block)) == pairs(fields)
        assert decoder.dynamic_table == pairs(table)
        assert decoder.table_size == size


# RFC 7541 C.4 and C.6's Huffman strings
HUFFMAN_STRINGS = {
    b"www.example.com": "f1e3 c2e5 f23a 6ba0 ab90 f4ff", b"no-cache": "a8eb 1064 9cbf",
    b"custom-key": "25a8 49e9 5ba9 7d7f", b"custom-value": "25a8 49e9 5bb8 e8b4 bf", b"302": "6402",
    b"private": "aec3 771a 4b", b"Mon, 21 Oct 2013 20:13:21 GMT": "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
    b"https://www.example.com": "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", b"gzip": "9bd9 ab",
    b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1":
        "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    b"": "",
}


@pytest.mark.parametrize("text", HUFFMAN_STRINGS)
def test_huffman_strings_of_the_rfc_both_ways(text):
    coded = dehex(HUFFMAN_STRINGS[text])
    assert huffman.encode(text) == coded and huffman.encoded_length(text) == len(coded)
    assert huffman.decode(coded) == text


def test_every_octet_round_trips_alone_and_together():
    every = bytes(range(256))
    assert huffman.decode(huffman.encode(every)) == every
    assert all(huffman.decode(huffman.encode(bytes((octet,)))) == bytes((octet,)) for octet in every)


# Strings that are not valid Huffman codes (RFC 7541 5.2). "a" is 00011 and "aaaaa" 25 bits.
BAD_HUFFMAN = {
    "EOS alone (30 1s, then 2 bits of padding)": "ffff ffff",
    "EOS after a symbol, padded": "1fff ffff ff",               # 00011 + EOS (30 1s) + 5 1s
    "padding not all 1s": "1e",                                 # 00011 110
    "padding of 0s": "18",                                      # 00011 000
    "padding of 8 bits (a whole octet of 1s)": "1f ff",         # 00011 111 11111111
    "padding of 15 bits": "18c6 31ff ff",                       # "aaaaa" (25 bits) + 15 1s
    "a lone octet of 1s": "ff",
    "a prefix of a long code, not all 1s": "fe",                # 11111110: a prefix of 13-bit codes
}


@pytest.mark.parametrize("name", BAD_HUFFMAN)
def test_invalid_huffman_strings_are_refused(name):
    assert huffman.decode(dehex(BAD_HUFFMAN[name])) is None
    block = b"\x00\x01a" + encode_integer(len(dehex(BAD_HUFFMAN[name])), 7, 0x80) + dehex(BAD_HUFFMAN[name])
    with pytest.raises(HpackError, match="Huffman"):
        Decoder().decode(block)


def test_huffman_padding_up_to_7_bits_of_1s_is_accepted():
    assert huffman.encode(b"aaaaa") == dehex("18c6 31ff") and huffman.decode(dehex("18c6 31ff")) == b"aaaaa"
    assert huffman.decode(dehex("18c6 31fe")) is None         # the same 7 bits, not all 1s
    assert huffman.decode(dehex("1f")) == b"a"                 # 3 bits of padding


def test_eos_in_the_middle_of_a_string_is_refused():
    eos = (1 << 30) - 1
    bits = (((0b00011 << 30) | eos) << 5) | 0b00011            # a, EOS, a: 40 bits
    assert huffman.decode(bits.to_bytes(5, "big")) is None


# RFC 7541 C.1, and the bounds lb sets (MAX_INTEGER, MAX_INTEGER_CONTINUATIONS)
def test_rfc7541_c1_integers_encode():
    assert encode_integer(10, 5) == dehex("0a")
    assert encode_integer(1337, 5) == dehex("1f9a0a")
    assert encode_integer(42, 8) == dehex("2a")
    assert encode_integer(30, 5, 0x20) == dehex("3e") and encode_integer(31, 5, 0x20) == dehex("3f00")


# size update blocks on a decoder that allows any 32-bit size -> the size they set, or None (refused)
INTEGERS = {
    "C.1.2 1337 in a 5-bit prefix": ("3f9a0a", 1337),
    "the prefix full, no more": ("3f00", 31),
    "a redundant zero continuation": ("3f8000", 31),
    "5 continuation octets": ("3f8080808000", 31),
    "6 continuation octets": ("3f808080808000", None),
    "2**32 - 1": ("3fe0ffffff0f", 2 ** 32 - 1),
    "2**32": ("3fe1ffffff0f", None),
    "2**35 - 1 (5 octets, hpack's own bound)": ("3fe0ffffff7f", None),
    "truncated in a continuation": ("3f80", None),
    "truncated after the prefix": ("3f", None),
}


@pytest.mark.parametrize("name", INTEGERS)
def test_integer_bounds_in_size_updates(name):
    block, size = INTEGERS[name]
    decoder = Decoder(max_table_size=2 ** 32 - 1)
    if size is None:
        with pytest.raises(HpackError):
            decoder.decode(dehex(block))
    else:
        assert decoder.decode(dehex(block)) == [] and decoder.max_table_size == size


def test_integers_round_trip_in_every_prefix():
    for prefix_bits in range(1, 9):
        for value in (0, 1, 2 ** prefix_bits - 2, 2 ** prefix_bits - 1, 2 ** prefix_bits, 127, 128, 300, 2 ** 32 - 1):
            size_update = encode_integer(value, 5, 0x20)
            assert Decoder(max_table_size=2 ** 32 - 1).decode(size_update + dehex("82")) == [(b":method", b"GET")]
            assert hpack.hpack.decode_integer(encode_integer(value, prefix_bits), prefix_bits)[0] == value


def test_strings_encode_plain_or_huffman_when_shorter():
    assert encode_string(b"www.example.com") == dehex("0f") + b"www.example.com"
    assert encode_string(b"www.example.com", True) == dehex("8cf1e3c2e5f23a6ba0ab90f4ff")
    assert encode_string(b"\x00\x01", True) == dehex("02 0001")         # Huffman would be longer
    assert encode_string(b"x" * 200)[:2] == dehex("7f49")


# blocks refused on a fresh decoder (4096), with what the message says
BAD_BLOCKS = {
    "indexed 0": ("80", "index 0"),
    "indexed 62, the dynamic table empty": ("be", "field index 62"),
    "indexed 200 (a continuation)": ("ff49", "field index 200"),
    "a literal's name index 62 (6-bit prefix)": ("7e 0161", "name index 62"),
    "a literal's name index 62 (4-bit prefix)": ("0f2f 0161", "name index 62"),
    "a never-indexed literal's name index 70": ("1f37 0161", "name index 70"),
    "a size update after a field": ("82 20", "after a field"),
    "a size update between fields": ("20 82 3f e11f", "after a field"),
    "a size update above the settings": ("3fe21f", "above the 4096"),
    "a literal without its value": ("41", "truncated"),
    "a name shorter than its length": ("40 0561", "truncated"),
    "a value shorter than its length": ("41 0a61 6263", "truncated"),
    "a value's length cut": ("41 7f", "truncated"),
    "an indexed field cut": ("82 ff", "truncated"),
}


@pytest.mark.parametrize("name", BAD_BLOCKS)
def test_malformed_blocks_are_compression_errors(name):
    block, message = BAD_BLOCKS[name]
    with pytest.raises(HpackError, match=message):
        Decoder().decode(dehex(block))


def test_bytes_like_blocks_decode_as_bytes():
    block = dehex(SERIES["C.4 requests, Huffman"][1][0])
    assert Decoder().decode(bytearray(block)) == Decoder().decode(memoryview(block)) == pairs(REQUESTS[0])


def literal(name: bytes, value: bytes, first: int = 0x40) -> bytes:
    return bytes((first,)) + encode_string(name) + encode_string(value)


def test_size_updates_at_the_start_apply_in_order_and_evict():
    decoder = Decoder()
    decoder.decode(literal(b"a", b"1") + literal(b"b", b"2") + literal(b"c", b"3"))        # 34 each
    assert decoder.table_size == 102
    assert decoder.decode(encode_integer(68, 5, 0x20) + dehex("be")) == [(b"c", b"3")]
    assert decoder.dynamic_table == [(b"c", b"3"), (b"b", b"2")] and decoder.max_table_size == 68
    assert decoder.decode(dehex("20") + encode_integer(4096, 5, 0x20) + dehex("82")) == [(b":method", b"GET")]
    assert decoder.dynamic_table == [] and decoder.max_table_size == 4096


def test_settings_below_the_table_want_an_update_at_the_next_blocks_start():
    decoder = Decoder()
    decoder.settings_max_table_size = 100
    with pytest.raises(HpackError, match="no dynamic table size update"):
        decoder.decode(dehex("82"))
    decoder = Decoder()
    decoder.settings_max_table_size = 100
    with pytest.raises(HpackError, match="above the 100"):
        decoder.decode(encode_integer(101, 5, 0x20))
    decoder = Decoder()
    decoder.settings_max_table_size = 100
    assert decoder.decode(encode_integer(100, 5, 0x20) + dehex("82")) == [(b":method", b"GET")]
    assert decoder.decode(dehex("82")) == [(b":method", b"GET")]        # once is enough


def test_settings_above_the_table_allow_a_larger_update_and_ask_for_none():
    decoder = Decoder()
    decoder.settings_max_table_size = 65536
    assert decoder.decode(dehex("82")) == [(b":method", b"GET")]
    decoder.decode(encode_integer(65536, 5, 0x20))
    assert decoder.max_table_size == 65536


def test_eviction_keeps_the_table_within_its_size():
    decoder = Decoder(max_table_size=100)
    decoder.decode(literal(b"a", b"x" * 30))                 # 63
    decoder.decode(literal(b"b", b"y" * 4))                  # 37: 100, exactly full
    assert decoder.dynamic_table == [(b"b", b"yyyy"), (b"a", b"x" * 30)] and decoder.table_size == 100
    decoder.decode(literal(b"c", b""))                       # 33: evicts a
    assert decoder.dynamic_table == [(b"c", b""), (b"b", b"yyyy")] and decoder.table_size == 70
    decoder.decode(literal(b"d", b"z" * 68))                 # 101 > 100: empties the table, not added
    assert decoder.dynamic_table == [] and decoder.table_size == 0
    decoder.decode(literal(b"e", b"z" * 67))                 # 100: fits alone
    assert decoder.dynamic_table == [(b"e", b"z" * 67)]


def test_a_new_entry_may_name_the_entry_it_evicts():
    decoder = Decoder(max_table_size=80)
    decoder.decode(literal(b"name", b"v" * 10))              # 46
    assert decoder.decode(dehex("7e") + encode_string(b"w" * 10)) == [(b"name", b"w" * 10)]
    assert decoder.dynamic_table == [(b"name", b"w" * 10)]


def test_indices_past_their_prefix_reach_the_whole_table():
    decoder = Decoder()
    decoder.decode(b"".join(literal(b"n%d" % i, b"") for i in range(70)))     # 35 bytes each: n69 is 62, n0 131
    assert decoder.decode(encode_integer(127, 7, 0x80) + encode_integer(131, 7, 0x80)) == [(b"n4", b""), (b"n0", b"")]
    assert decoder.decode(encode_integer(131, 4, 0x00) + encode_string(b"v")) == [(b"n0", b"v")]
    assert decoder.decode(encode_integer(58, 4, 0x10) + encode_string(b"ua")) == [(b"user-agent", b"ua")]
    with pytest.raises(HpackError, match="field index 132"):
        decoder.decode(encode_integer(132, 7, 0x80))


def test_literals_without_indexing_and_never_indexed_leave_the_table_alone():
    decoder = Decoder()
    fields = decoder.decode(literal(b"a", b"1", 0x00) + literal(b"b", b"2", 0x10) + dehex("0f2d 0161"))  # 15+45: via
    assert fields == [(b"a", b"1"), (b"b", b"2"), (b"via", b"a")]
    assert [type(field) for field in fields] == [tuple, NeverIndexed, tuple]
    assert decoder.dynamic_table == []


def test_a_header_list_past_its_limit_is_a_431_after_the_whole_block():
    decoder = Decoder(max_header_list_size=100)
    assert decoder.decode(literal(b"a", b"x" * 30) + literal(b"b", b"y" * 3)) == [(b"a", b"x" * 30), (b"b", b"yyy")]
    with pytest.raises(HeaderListTooLarge) as refused:      # 63 + 36 + 33: the last entry is still added
        decoder.decode(dehex("bf be") + literal(b"c", b""))
    assert refused.value.status == 431 and refused.value.size == 132 and refused.value.limit == 100
    assert not isinstance(refused.value, HpackError)
    assert decoder.dynamic_table[0] == (b"c", b"")           # in step: the connection goes on
    assert decoder.decode(dehex("be")) == [(b"c", b"")]


def test_a_compression_error_after_the_list_passed_its_limit_is_a_compression_error():
    decoder = Decoder(max_header_list_size=40)
    with pytest.raises(HpackError):
        decoder.decode(dehex("82 82 80"))


def test_sensitive_and_never_indexed_values_stay_out_of_the_shared_memo():
    secret, name = b"session=0123456789abcdef-lb-test-only", b"x-lb-test-only"
    coded = encode_string(secret, True)
    Decoder().decode(dehex("1f08") + coded)                   # authorization (23), never indexed
    Decoder().decode(dehex("0f11") + coded)                   # cookie (32), without indexing
    assert coded[1:] not in lb_hpack._huffman_strings
    Decoder().decode(bytes((0x00,)) + encode_string(name, True) + coded)
    assert coded[1:] in lb_hpack._huffman_strings


def test_the_static_table_is_rfc7541_appendix_a():
    assert len(STATIC_TABLE) == 61 and STATIC_TABLE == hpack.table.HeaderTable.STATIC_TABLE
    assert STATIC_TABLE[0] == (b":authority", b"") and STATIC_TABLE[60] == (b"www-authenticate", b"")


# ---- differential tests against hpack ----

NAMES = [name for name, _ in STATIC_TABLE[:20]] + [b"cookie", b"user-agent", b"x-a", b"x-b", b"custom-key", b"a", b""]
VALUES = [b"", b"GET", b"/", b"/index.html", b"https", b"200", b"gzip, deflate", b"h2load nghttp2/1.52.0",
          b"*/*", b"a=1; b=2", b"x" * 130, b"\x00\xff\r\n"]
names = st.sampled_from(NAMES) | st.binary(max_size=12)
values = st.sampled_from(VALUES) | st.binary(max_size=40) | st.binary(min_size=120, max_size=300)
fields = st.tuples(names, values, st.booleans())          # (name, value, never indexed)
# one block: (a table size the encoder switches to first, or None; fields; Huffman)
blocks = st.tuples(st.none() | st.sampled_from([0, 40, 100, 256, 4096]), st.lists(fields, max_size=8), st.booleans())


def decode_both(ours: Decoder, theirs: hpack.Decoder, block: bytes) -> bool:
    """Decodes `block` with both; asserts they agree. True if both decoded it."""
    try:
        expected = theirs.decode(block, raw=True)
    except hpack.HPACKError as error:
        expected = error
    try:
        got = ours.decode(block)
    except (HpackError, HeaderListTooLarge) as error:
        got = error
    if isinstance(expected, Exception) or isinstance(got, Exception):
        assert isinstance(expected, Exception) and isinstance(got, Exception), (block, expected, got)
        # hpack stops at the field that passes the limit; lb decodes on, and a later error wins
        if isinstance(got, HeaderListTooLarge):
            assert isinstance(expected, hpack.OversizedHeaderListError), (block, expected)
        if not isinstance(expected, hpack.OversizedHeaderListError):
            assert isinstance(got, HpackError), (block, expected, got)
        return False
    assert got == expected, block
    assert [isinstance(field, NeverIndexed) for field in got] == [not field.indexable for field in expected]
    assert ours.dynamic_table == list(theirs.header_table.dynamic_entries)
    assert ours.table_size == theirs.header_table._current_size and ours.max_table_size == theirs.header_table_size
    return True


def connection(settings_size: int = 4096, list_size: int = 65536):
    ours, theirs = Decoder(max_header_list_size=list_size), hpack.Decoder(max_header_list_size=list_size)
    ours.settings_max_table_size = theirs.max_allowed_table_size = settings_size
    return ours, theirs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(blocks, min_size=1, max_size=6), st.sampled_from([300, 65536]))
def test_blocks_hpacks_encoder_makes_decode_the_same(sequence, list_size):
    encoder = hpack.Encoder()
    ours, theirs = connection(4096, list_size)
    for table_size, header_list, use_huffman in sequence:
        if table_size is not None:
            encoder.header_table_size = table_size
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if never else hpack.HeaderTuple(n, v) for n, v, never in header_list]
        if not decode_both(ours, theirs, encoder.encode(headers, huffman=use_huffman)):
            assert sum(len(n) + len(v) + 32 for n, v, _ in header_list) > list_size
            return


# one field's representation, built by hand: indices near the table's ends, names and values
# plain or Huffman; valid or not, as it falls
indices = st.integers(0, 70) | st.integers(0, 2 ** 33)
strings = st.tuples(values, st.booleans()).map(lambda pair: encode_string(pair[0], pair[1]))
representations = st.one_of(
    indices.map(lambda index: encode_integer(index, 7, 0x80)),
    st.tuples(st.sampled_from([(6, 0x40), (4, 0x00), (4, 0x10)]), indices, strings, strings).map(
        lambda r: encode_integer(r[1], r[0][0], r[0][1]) + (r[2] if r[1] == 0 else b"") + r[3]),
    st.sampled_from([0, 50, 4096, 4097, 70000]).map(lambda size: encode_integer(size, 5, 0x20)),
)
hand_blocks = st.lists(representations, max_size=6).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(hand_blocks, st.none() | st.sampled_from([0, 50, 4096, 65536])), min_size=1, max_size=6))
def test_blocks_built_field_by_field_decode_or_fail_the_same(sequence):
    ours, theirs = connection()
    for block, settings_size in sequence:
        if settings_size is not None:
            ours.settings_max_table_size = theirs.max_allowed_table_size = settings_size
        if not decode_both(ours, theirs, block):
            return


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.sampled_from([40, 65536]))
def test_random_bytes_decode_or_fail_the_same(sequence, list_size):
    ours, theirs = connection()
    decode_both(ours, theirs, dehex(SERIES["C.4 requests, Huffman"][1][0]))     # a dynamic table to point into
    ours.max_header_list_size = theirs.max_header_list_size = list_size
    for block in sequence:
        if not decode_both(ours, theirs, block):
            return


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(blocks, min_size=1, max_size=3), st.data())
def test_damaged_blocks_decode_or_fail_the_same(sequence, data):
    encoder = hpack.Encoder()
    ours, theirs = connection()
    for table_size, header_list, use_huffman in sequence:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = bytearray(encoder.encode([(n, v, never) for n, v, never in header_list], huffman=use_huffman))
        if block:
            at = data.draw(st.integers(0, len(block) - 1))
            damage = data.draw(st.sampled_from(["flip", "cut", "insert"]))
            if damage == "flip":
                block[at] ^= 1 << data.draw(st.integers(0, 7))
            elif damage == "cut":
                del block[at:]
            else:
                block[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        if not decode_both(ours, theirs, bytes(block)):
            return


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=24))
def test_huffman_decoding_of_random_bytes_agrees_with_hpack(data):
    try:
        expected = decode_huffman(data)
    except hpack.HPACKDecodingError:
        expected = None
    assert huffman.decode(data) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_huffman_round_trips_and_matches_hpacks_encoder(data):
    coded = huffman.encode(data)
    assert huffman.decode(coded) == data
    assert coded == hpack.hpack.HuffmanEncoder(hpack.huffman_constants.REQUEST_CODES,
                                               hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(data)
