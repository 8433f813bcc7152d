"""lb/core/http2/connection.py (and streams.py): every rule from tables, on lb's connection
alone; then h2 as the reference: hypothesis drives an h2 client (and hand-made frames it
would refuse to send) against lb's connection and against the h2 connection lb's front door
used until issue 29 (tests/unit/h2_reference.py, set up as h2client.py set it up), and
requires the same events, the same bytes sent back, and the same errors. Where lb differs
from h2 on purpose, the case is named below (DIFFERENCES) with the RFC 9113 section that
decides it, and its generator marks it: the run stops there, once lb was seen to follow its
own rule."""

from __future__ import annotations

import re

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from h2_reference import reference_connection
from lb.core.h2head import ResponseEncoder
from lb.core.http2 import frames as f
from lb.core.http2.connection import (DATA, EVENT_FIELDS, GOAWAY, HANDLERS, PING, REQUEST, RESET, SETTINGS,
                                      TRAILERS, WINDOW, ProtocolError, ServerConnection)
from lb.core.http2.frames import ErrorCode as E
from lb.core.http2.streams import (CLOSED, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, OPEN, RECV_END, RECV_RESET,
                                   SEND_END, SEND_RESET, TRANSITIONS, ClosedStreams, ReceiveWindow, Stream,
                                   StreamClosedError, StreamStateError)

MAX_HEADER_BYTES = 1024          # small, so that hypothesis reaches the bounds with small frames
CONNECTION_WINDOW = 16 << 20
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a.example"), (b":path", b"/up"),
        (b"content-length", b"10")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain")]


def lb_connection(max_header_bytes: int = MAX_HEADER_BYTES) -> ServerConnection:
    """lb's connection as h2client.py makes it."""
    conn = ServerConnection(ResponseEncoder(), max_header_bytes, 4 * max_header_bytes, 100, CONNECTION_WINDOW)
    conn.initiate_connection()
    return conn


def h2_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False))
    client.initiate_connection()
    return client


def sent_frames(data: bytes) -> list[tuple]:
    """(type, flags, stream id, payload) of each frame in what a server sent."""
    found = []
    while data:
        length = int.from_bytes(data[:3], "big")
        found.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:9 + length]))
        data = data[9 + length:]
    return found


class Client:
    """An h2 client and lb's connection, past the preface; raw frames for what h2 would
    refuse to send, their header blocks from the client's own encoder (HPACK stays in step)."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES):
        self.h2 = h2_client()
        self.lb = lb_connection(max_header_bytes)
        self.h2.receive_data(self.lb.data_to_send())
        self.events, self.more = self.feed(self.h2.data_to_send())
        self.preface_answer = self.out()

    def feed(self, data: bytes, max_frames: int = 1000) -> tuple[list, bool]:
        self.lb.feed(data)
        return self.lb.receive_frames(max_frames)

    def block(self, fields) -> bytes:
        return self.h2.encoder.encode(fields)

    def headers(self, stream_id: int, fields=GET, end_stream: bool = True, flags: int = f.END_HEADERS) -> bytes:
        return f.frame_bytes(f.HEADERS, flags | (f.END_STREAM if end_stream else 0), stream_id, self.block(fields))

    def out(self) -> list[tuple]:
        return sent_frames(self.lb.data_to_send())


# ---- the stream table ---------------------------------------------------------------------

def test_the_stream_table_walks_every_state_and_move():
    assert TRANSITIONS == {
        (OPEN, RECV_END): HALF_CLOSED_REMOTE, (OPEN, SEND_END): HALF_CLOSED_LOCAL,
        (HALF_CLOSED_REMOTE, SEND_END): CLOSED, (HALF_CLOSED_LOCAL, RECV_END): CLOSED,
        **{(s, m): CLOSED for s in (OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL) for m in (RECV_RESET, SEND_RESET)}}
    for state in (OPEN, HALF_CLOSED_REMOTE, HALF_CLOSED_LOCAL, CLOSED):
        for move in (RECV_END, SEND_END, RECV_RESET, SEND_RESET):
            stream = Stream(1, state, 0, 0)
            if (state, move) in TRANSITIONS:
                assert stream.move(move) == TRANSITIONS[state, move]
            else:
                with pytest.raises(StreamStateError, match=re.escape(f"stream 1 is {state}: no move on {move}")):
                    stream.move(move)


def test_every_event_kind_and_frame_handler_resolves():
    assert sorted(EVENT_FIELDS) == list(range(8))
    assert all(callable(handler) for handler in HANDLERS.values())
    assert set(HANDLERS) == set(f.FRAME_NAMES) - {f.CONTINUATION}


@pytest.mark.parametrize("steps, increments", [
    # (consumed, acknowledged) pairs on a 65,535 window -> the WINDOW_UPDATE increments (h2's rule)
    ([(1000, 1000)], [0]),
    ([(40000, 40000)], [40000]),                          # half the window: handed back
    ([(20000, 20000), (20000, 20000)], [0, 40000]),       # together
    ([(65535, 1000), (0, 100)], [0, 1100]),               # shut: 1 KiB is enough
    ([(65535, 0), (0, 0)], [0, 0]),
])
def test_the_receive_window_hands_back_room_in_h2s_increments(steps, increments):
    window = ReceiveWindow(65535)
    for (consumed, acknowledged), increment in zip(steps, increments):
        assert window.consume(consumed)
        assert window.acknowledge(acknowledged) == increment
    assert not ReceiveWindow(10).consume(11)


def test_the_closed_stream_record_keeps_the_last_1000():
    record = ClosedStreams()
    for stream_id in range(1, 3001, 2):
        record.add(stream_id, stream_id % 4 == 1)
    assert len(record) == 1000 and 999 not in record and 1001 in record
    assert record.by_reset(2997) is True and record.by_reset(2999) is False and record.by_reset(1) is None


# ---- lb's connection, rule by rule ---------------------------------------------------------

def test_a_get_and_its_response():
    client = Client()
    assert client.events == [(SETTINGS, {1: 4096, 2: 1, 4: 65535, 5: 16384, 8: 0, 3: 100, 6: 65536})]
    assert client.preface_answer == [(f.SETTINGS, f.ACK, 0, b"")]
    client.h2.send_headers(1, GET, end_stream=True)
    events, more = client.feed(client.h2.data_to_send())
    assert events == [(REQUEST, 1, GET, True)] and not more
    assert client.lb.streams[1].state == HALF_CLOSED_REMOTE and client.lb.highest_inbound_stream_id == 1
    client.lb.send_headers(1, RESPONSE)
    client.lb.send_data(1, b"hello", end_stream=True)
    assert client.lb.streams == {} and client.lb.closed_streams.by_reset(1) is False
    got = client.h2.receive_data(client.lb.data_to_send())
    assert [type(e).__name__ for e in got] == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert got[0].headers == RESPONSE and got[1].data == b"hello"


def test_lbs_preface_is_its_settings_and_the_connection_window():
    conn = ServerConnection(ResponseEncoder(), 16384, 65536, 100, CONNECTION_WINDOW)
    conn.initiate_connection()
    assert conn.data_to_send() == f.settings_frame({3: 100, 6: 16384}) + f.window_update_frame(0, (16 << 20) - 65535)


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n\r\nXX"])
def test_anything_but_the_preface_is_a_protocol_error(first):
    conn = lb_connection()
    conn.data_to_send()
    with pytest.raises(ProtocolError, match="preface") as caught:
        conn.feed(first)
    assert caught.value.code == E.PROTOCOL_ERROR
    assert sent_frames(conn.data_to_send()) == [(f.GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\x01")]


def test_the_preface_may_come_a_byte_at_a_time_and_must_end_with_settings():
    conn = lb_connection()
    for byte in h2_client().data_to_send():
        conn.feed(bytes([byte]))
    assert conn.receive_frames(10)[0][0][0] == SETTINGS
    conn = lb_connection()
    conn.feed(f.PREFACE if hasattr(f, "PREFACE") else b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    conn.feed(f.ping_frame(b"12345678"))
    with pytest.raises(ProtocolError, match="SETTINGS frame did not come first"):  # RFC 9113 3.4 (h2: no check)
        conn.receive_frames(10)


def test_frames_are_handed_out_a_slice_at_a_time():
    client = Client()
    client.lb.feed(b"".join(f.ping_frame(b"%08d" % i) for i in range(70)))
    slices = []
    while True:
        events, more = client.lb.receive_frames(32)
        slices.append(len(events))
        if not more:
            break
    assert slices == [32, 32, 6] and client.lb.buffered == 0


def connection_error(client: Client, data: bytes, code: int, match: str | None = None) -> None:
    with pytest.raises(ProtocolError, match=match) as caught:
        client.feed(data)
    assert caught.value.code == code
    goaway = client.out()[-1]
    assert goaway[0] == f.GOAWAY and int.from_bytes(goaway[3][4:8], "big") == code
    assert client.lb.terminated and client.lb.receive_frames(10) == ([], False)


@pytest.mark.parametrize("name, make, code", [
    ("an even stream id", lambda c: c.headers(2), E.PROTOCOL_ERROR),
    ("a stream id below the highest, never opened", lambda c: c.headers(5) + c.headers(3), E.PROTOCOL_ERROR),
    ("DATA on an idle stream", lambda c: f.data_frame(1, b"x"), E.PROTOCOL_ERROR),
    ("WINDOW_UPDATE on an idle stream", lambda c: f.window_update_frame(7, 1), E.PROTOCOL_ERROR),
    ("RST_STREAM on an idle stream (6.4; h2 ignored it)", lambda c: f.rst_stream_frame(9, 8), E.PROTOCOL_ERROR),
    ("PUSH_PROMISE from a client", lambda c: f.frame_bytes(f.PUSH_PROMISE, 4, 1, b"\0\0\0\x02"), E.PROTOCOL_ERROR),
    ("an HPACK error (4.3; h2 said PROTOCOL_ERROR)", lambda c: f.frame_bytes(f.HEADERS, 5, 1, b"\xff\xff"),
     E.COMPRESSION_ERROR),
    ("a header block past max_header_bytes", lambda c: f.frame_bytes(f.HEADERS, 0, 1, b"\0" * 1000)
     + f.frame_bytes(f.CONTINUATION, 0, 1, b"\0" * 100), E.ENHANCE_YOUR_CALM),
    ("a CONTINUATION flood of empty frames", lambda c: f.frame_bytes(f.HEADERS, 0, 1, b"")
     + f.frame_bytes(f.CONTINUATION, 0, 1) * 64, E.ENHANCE_YOUR_CALM),
    ("a frame inside a header block", lambda c: f.frame_bytes(f.HEADERS, 0, 1, b"") + f.ping_frame(b"12345678"),
     E.PROTOCOL_ERROR),
    ("a CONTINUATION with no block open (6.10; h2: a stream error on a reset stream)",
     lambda c: f.frame_bytes(f.CONTINUATION, 4, 1), E.PROTOCOL_ERROR),
    ("a frame past SETTINGS_MAX_FRAME_SIZE", lambda c: f.data_frame(1, bytes(16385)), E.FRAME_SIZE_ERROR),
    ("a window past 2^31-1 on the connection", lambda c: f.window_update_frame(0, 2**31 - 1), E.FLOW_CONTROL_ERROR),
    ("a SETTINGS value out of bounds", lambda c: f.settings_frame({f.Setting.ENABLE_PUSH: 2}), E.PROTOCOL_ERROR),
])
def test_connection_errors(name, make, code):
    client = Client()
    client.out()
    connection_error(client, make(client), code)


def test_an_hpack_bomb_is_enhance_your_calm():
    client = Client()
    big = [(b"x-big", b"v" * 900)]
    client.feed(client.headers(1, GET + big))
    client.out()
    connection_error(client, client.headers(3, GET + big * 5), E.ENHANCE_YOUR_CALM, "header list")


def test_streams_past_twice_the_limit_are_a_connection_error():
    """h2client refuses streams past MAX_CONCURRENT_STREAMS itself (REFUSED_STREAM); a client
    that opens more at once than one slice lets lb refuse gets the connection error at 200."""
    client = Client()
    events, _ = client.feed(b"".join(client.headers(sid, POST, end_stream=False) for sid in range(1, 400, 2)))
    assert len(events) == 200 and client.lb.open_inbound_streams == 200
    connection_error(client, client.headers(401), E.PROTOCOL_ERROR, "twice 100")


def test_data_flow_control_both_windows_and_acknowledgements():
    client = Client()
    client.feed(client.headers(1, POST, end_stream=False))
    frame = f.data_frame(1, bytes(16384))
    events, _ = client.feed(frame * 3 + f.frame_bytes(f.DATA, f.PADDED, 1, b"\x10" + bytes(16382)))
    assert [e[3] for e in events] == [16384, 16384, 16384, 16383]     # padding counts
    assert client.lb.streams[1].received.size == 0
    client.lb.acknowledge_received_data(30000, 1)        # the stream's window is shut: 1 KiB is enough
    assert client.out() == [(f.WINDOW_UPDATE, 0, 1, (30000).to_bytes(4, "big"))]
    client.lb.acknowledge_received_data(20000, 1)        # under half of either window: kept
    assert client.out() == []
    connection_error(client, f.data_frame(1, bytes(16384)) + f.data_frame(1, bytes(13617)), E.FLOW_CONTROL_ERROR,
                     "stream 1's window")


def test_data_past_the_connection_window_is_a_flow_control_error():
    client = Client()
    client.lb._window.size = 100                    # as if 16 MiB had come unacknowledged
    client.feed(client.headers(1, POST, end_stream=False))
    connection_error(client, f.data_frame(1, bytes(101)), E.FLOW_CONTROL_ERROR, "connection's window")


@pytest.mark.parametrize("name, make, reset, events", [
    ("DATA after the client's END_STREAM", lambda c: c.headers(1) + f.data_frame(1, b"x"),
     (1, E.STREAM_CLOSED), [(REQUEST, 1, GET, True), (RESET, 1, E.STREAM_CLOSED, False)]),
    ("HEADERS after the client's END_STREAM", lambda c: c.headers(1) + c.headers(1, [(b"x", b"1")]),
     (1, E.STREAM_CLOSED), [(REQUEST, 1, GET, True), (RESET, 1, E.STREAM_CLOSED, False)]),
    ("trailers without END_STREAM (8.1; h2: a connection error)",
     lambda c: c.headers(1, POST, False) + c.headers(1, [(b"x", b"1")], False),
     (1, E.PROTOCOL_ERROR), [(REQUEST, 1, POST, False), (RESET, 1, E.PROTOCOL_ERROR, False)]),
    ("a stream window past 2^31-1", lambda c: c.headers(1) + f.window_update_frame(1, 2**31 - 65535),
     (1, E.FLOW_CONTROL_ERROR), [(REQUEST, 1, GET, True), (RESET, 1, E.FLOW_CONTROL_ERROR, False)]),
    ("a WINDOW_UPDATE of 0 on a stream (6.9; h2: a connection error)",
     lambda c: c.headers(1) + f.frame_bytes(f.WINDOW_UPDATE, 0, 1, bytes(4)),
     (1, E.PROTOCOL_ERROR), [(REQUEST, 1, GET, True), (RESET, 1, E.PROTOCOL_ERROR, False)]),
    ("PRIORITY depending on its stream (5.3.1; h2: a connection error)",
     lambda c: c.headers(1) + f.frame_bytes(f.PRIORITY, 0, 1, b"\0\0\0\x01\x10"),
     (1, E.PROTOCOL_ERROR), [(REQUEST, 1, GET, True), (RESET, 1, E.PROTOCOL_ERROR, False)]),
    ("HEADERS depending on its stream", lambda c: f.frame_bytes(f.HEADERS, 0x25, 1, b"\0\0\0\x01\x10" + c.block(GET)),
     (1, E.PROTOCOL_ERROR), [(RESET, 1, E.PROTOCOL_ERROR, False)]),
])
def test_stream_errors_reset_the_stream_and_the_connection_goes_on(name, make, reset, events):
    client = Client()
    client.out()
    got, _ = client.feed(make(client))
    assert got == events
    assert client.out() == [(f.RST_STREAM, 0, reset[0], reset[1].to_bytes(4, "big"))]
    assert client.lb.streams == {} and client.lb.closed_streams.by_reset(1) is True
    assert client.feed(client.headers(3))[0] == [(REQUEST, 3, GET, True)]


def test_headers_on_a_stream_that_ended_both_ways_is_a_connection_error():
    client = Client()
    client.feed(client.headers(1))
    client.lb.send_headers(1, RESPONSE, end_stream=True)
    client.out()
    connection_error(client, client.headers(1, [(b"x", b"1")]), E.STREAM_CLOSED, "closed by END_STREAM")


def test_frames_on_a_stream_lb_reset_are_stream_errors_while_remembered():
    client = Client()
    client.feed(client.headers(1, POST, end_stream=False))
    client.lb.reset_stream(1, E.CANCEL)
    client.lb.reset_stream(1, E.CANCEL)                       # already closed: nothing (h2 raised)
    assert client.out() == [(f.RST_STREAM, 0, 1, (8).to_bytes(4, "big"))]
    events, _ = client.feed(f.data_frame(1, bytes(100)) + client.headers(1, [(b"x", b"1")])
                            + f.window_update_frame(1, 5) + f.rst_stream_frame(1, 8) + f.frame_bytes(f.PRIORITY, 0, 1,
                                                                                                   bytes(5)))
    assert events == []
    assert [(fr[0], fr[2]) for fr in client.out()] == [(f.RST_STREAM, 1), (f.RST_STREAM, 1)]
    client.lb.closed_streams = ClosedStreams(0)               # forgotten: HEADERS is a connection error
    connection_error(client, client.headers(1, [(b"x", b"1")]), E.PROTOCOL_ERROR, "not recently closed")


def test_trailers_end_the_stream_and_a_reset_from_the_client_closes_it():
    client = Client()
    events, _ = client.feed(client.headers(1, POST, False) + f.data_frame(1, b"12345")
                            + client.headers(1, [(b"x-sum", b"1")], True)
                            + client.headers(3, POST, False) + f.rst_stream_frame(3, E.CANCEL))
    assert events == [(REQUEST, 1, POST, False), (DATA, 1, b"12345", 5, False), (TRAILERS, 1, [(b"x-sum", b"1")]),
                      (REQUEST, 3, POST, False), (RESET, 3, E.CANCEL, True)]
    assert client.lb.streams[1].state == HALF_CLOSED_REMOTE and 3 not in client.lb.streams


def test_settings_apply_to_the_send_side():
    client = Client()
    client.feed(client.headers(1) + client.headers(3, POST, False))
    client.lb.send_data(1, bytes(1000))
    events, _ = client.feed(f.settings_frame({f.Setting.INITIAL_WINDOW_SIZE: 100000, f.Setting.MAX_FRAME_SIZE: 20000,
                                              f.Setting.HEADER_TABLE_SIZE: 0}))
    assert events == [(SETTINGS, {4: 100000, 5: 20000, 1: 0})]
    assert client.lb.local_flow_control_window(1) == 65535 - 1000           # the connection's window
    assert client.lb.streams[1].send_window == 100000 - 1000 and client.lb.streams[3].send_window == 100000
    assert client.lb.max_outbound_frame_size == 20000
    client.out()
    client.lb.send_headers(1, RESPONSE)
    assert client.out()[0][3][:1] == b"\x20"                     # the encoder's table size update first
    client.feed(f.window_update_frame(3, 10))
    connection_error(client, f.settings_frame({f.Setting.INITIAL_WINDOW_SIZE: 2**31 - 1}), E.FLOW_CONTROL_ERROR)


def test_window_updates_ping_priority_goaway_and_unknown_frames():
    client = Client()
    client.feed(client.headers(1))
    client.out()
    events, _ = client.feed(f.window_update_frame(0, 10) + f.window_update_frame(1, 20) + f.ping_frame(b"abcdefgh")
                            + f.ping_frame(b"ackackac", ack=True) + f.frame_bytes(f.PRIORITY, 0, 9, b"\0\0\0\x01\x10")
                            + f.frame_bytes(0xB, 0, 0, b"?") + f.goaway_frame(0, E.NO_ERROR, b"bye")
                            + f.settings_ack_frame())
    assert events == [(WINDOW, 0, 10), (WINDOW, 1, 20), (PING, b"abcdefgh"), (GOAWAY, E.NO_ERROR, 0, b"bye")]
    assert client.out() == [(f.PING, f.ACK, 0, b"abcdefgh")]
    assert client.lb.send_window == 65545 and client.lb.streams[1].send_window == 65555
    # after the client's GOAWAY its streams go on (h2 refused every frame and every send)
    client.lb.send_headers(1, RESPONSE, end_stream=True)
    assert client.lb.streams == {}


def test_sending_follows_the_states_and_windows():
    client = Client()
    client.feed(client.headers(1, POST, False) + client.headers(3))
    conn = client.lb
    conn.send_headers(1, RESPONSE)
    conn.end_stream(1)
    assert conn.streams[1].state == HALF_CLOSED_LOCAL
    for send in (lambda: conn.send_data(1, b"x"), lambda: conn.end_stream(1), lambda: conn.send_headers(5, RESPONSE)):
        with pytest.raises(StreamClosedError):
            send()
    with pytest.raises(ValueError, match="windows"):
        conn.send_data(3, bytes(16385))
    events, _ = client.feed(f.data_frame(1, b"end", end_stream=True))        # the client ends it: closed
    assert events == [(DATA, 1, b"end", 3, True)] and 1 not in conn.streams
    with pytest.raises(StreamClosedError):
        conn.local_flow_control_window(1)
    conn.send_goaway(3)
    conn.close_connection(E.ENHANCE_YOUR_CALM, b"why")
    conn.close_connection(E.PROTOCOL_ERROR)                               # once
    assert [fr[3] for fr in client.out() if fr[0] == f.GOAWAY] == [b"\0\0\0\x03\0\0\0\0", b"\0\0\0\x03\0\0\0\x0bwhy"]


# ---- h2 as the reference --------------------------------------------------------------------
#
# Where lb differs from h2 on purpose. An action that may meet one carries its name; if the two
# then disagree, lb's outcome must be the one named here (its events, or its connection
# error's code), and the run stops: what follows would compare two different connections.
DIFFERENCES = {
    "trailers without END_STREAM": (
        "RFC 9113 8.1: a malformed request, a stream error; h2 ends the connection",
        lambda events, code: code is None and events[-1][0] == RESET and events[-1][2] == E.PROTOCOL_ERROR),
    ":status in a request": (
        "RFC 9113 8.3: h2 reads a :status 1xx as an informational response and ends the connection; lb hands "
        "the request to h2head, which finds it malformed (a stream error)",
        lambda events, code: code is None and events[-1][0] == REQUEST),
    "RST_STREAM on an idle stream": (
        "RFC 9113 6.4: a connection error PROTOCOL_ERROR; h2 ignores it",
        lambda events, code: code == E.PROTOCOL_ERROR),
    "WINDOW_UPDATE of 0 on a stream": (
        "RFC 9113 6.9: a stream error; h2 (hyperframe) ends the connection",
        lambda events, code: code == E.PROTOCOL_ERROR      # on an idle stream; on a closed one, nothing
        or code is None and (not events or events[-1][0] == RESET and events[-1][2] == E.PROTOCOL_ERROR)),
    "PRIORITY in error": (
        "RFC 9113 5.3.1, 6.3: a stream depending on itself, or a PRIORITY of the wrong length, is a stream "
        "error; h2 ends the connection",
        lambda events, code: code is None or code in (E.PROTOCOL_ERROR, E.FRAME_SIZE_ERROR)),
    "CONTINUATION without a block": (
        "RFC 9113 6.10: a connection error PROTOCOL_ERROR; h2 resets the stream when it was reset",
        lambda events, code: code == E.PROTOCOL_ERROR),
    "HEADERS inside a header block": (
        "RFC 9113 6.10: a connection error PROTOCOL_ERROR; h2 first checks the HEADERS frame's size against "
        "max_header_bytes, and a large one is ENHANCE_YOUR_CALM",
        lambda events, code: code == E.PROTOCOL_ERROR),
    "SETTINGS_INITIAL_WINDOW_SIZE with closed streams": (
        "RFC 9113 6.9.2: the change applies to the flow-control windows of streams, and a closed stream has none; "
        "h2 also changes those of the closed streams it has not yet let go, and one taken past 2^31-1 ends the "
        "connection",
        lambda events, code: code in (None, E.FLOW_CONTROL_ERROR)),
    "GOAWAY from the client": (
        "RFC 9113 6.8: lb reads on and may finish the streams up to the last one; h2 refuses every frame after "
        "it, and every send (the run stops after the GOAWAY's own event)",
        lambda events, code: code is None),
    "SETTINGS_NO_RFC7540_PRIORITIES out of bounds": (
        "RFC 9218 2.1: a connection error PROTOCOL_ERROR; h2 does not know the setting",
        lambda events, code: code == E.PROTOCOL_ERROR),
}


def lb_code_for(error: h2.exceptions.ProtocolError) -> int:
    """The code lb's GOAWAY carries where h2's carries `error.error_code`: an HPACK error is a
    COMPRESSION_ERROR (RFC 9113 4.3; h2 says PROTOCOL_ERROR), and a header block of more than
    64 frames ENHANCE_YOUR_CALM, as one over max_header_bytes (h2: PROTOCOL_ERROR)."""
    message = str(error)
    if message.startswith("Error decoding header block"):
        return E.COMPRESSION_ERROR
    if message.startswith("Too many continuation frames"):
        return E.ENHANCE_YOUR_CALM
    return int(error.error_code)


def h2_events(events: list) -> list:
    """h2's events in lb's form: StreamEnded folded into what it came with; the events lb
    does not make (SettingsAcknowledged, PingAckReceived, PriorityUpdated, unknown frames)
    left out; SETTINGS as lb reads them (the identifiers it knows)."""
    found = []
    for event in events:
        if isinstance(event, h2.events.RequestReceived):
            found.append((REQUEST, event.stream_id, list(event.headers), event.stream_ended is not None))
        elif isinstance(event, h2.events.DataReceived):
            found.append((DATA, event.stream_id, event.data, event.flow_controlled_length,
                          event.stream_ended is not None))
        elif isinstance(event, h2.events.TrailersReceived):
            found.append((TRAILERS, event.stream_id, list(event.headers)))
        elif isinstance(event, h2.events.StreamReset):
            found.append((RESET, event.stream_id, int(event.error_code), event.remote_reset))
        elif isinstance(event, h2.events.WindowUpdated):
            found.append((WINDOW, event.stream_id, event.delta))
        elif isinstance(event, h2.events.PingReceived):
            found.append((PING, event.ping_data))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            found.append((SETTINGS, {int(k): v.new_value for k, v in event.changed_settings.items()
                                     if k in f.SETTING_BOUNDS}))
        elif isinstance(event, h2.events.ConnectionTerminated):
            found.append((GOAWAY, int(event.error_code), event.last_stream_id, event.additional_data or b""))
    return found


def with_code(frames: list, code: int) -> list:
    """`frames` with a GOAWAY's error code replaced (to compare lb's with h2's)."""
    return [(t, fl, sid, p[:4] + code.to_bytes(4, "big") + p[8:]) if t == f.GOAWAY else (t, fl, sid, p)
            for t, fl, sid, p in frames]


H2_SEND_ERRORS = (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError)


class Stop(Exception):
    """The run is over: a connection error both agreed on, or a difference named in DIFFERENCES."""


class Pair:
    """An h2 client, and what it sends fed to both servers one frame at a time; what they send
    back goes to the client from h2's. The application (lb's part) acts the same on both."""

    def __init__(self):
        self.client = h2_client()
        self.ref = reference_connection(MAX_HEADER_BYTES)
        self.lb = lb_connection()
        self.client.receive_data(self.ref.data_to_send())
        self.lb.data_to_send()                     # lb's own SETTINGS (only what differs from the defaults)
        self.client_ok = True
        self.next_id = 1
        self.opened: list[int] = []                # what the client opened, in order
        self.sending: set[int] = set()             # ... and has not ended nor reset
        self.app: dict[int, dict] = {}             # streams the application knows open
        self.unacknowledged: dict[int, int] = {}
        self.deliver(self.client.data_to_send())

    # -- frames in, one at a time, and the comparison ------------------------------------
    def deliver(self, data: bytes, difference: str | None = None) -> None:
        if self.lb._reader.in_header_block and data[3] != f.CONTINUATION:
            difference = "HEADERS inside a header block"
        self.ref.incoming_buffer.add_data(data)
        self.lb.feed(data)
        more = True
        while more:
            try:
                events, their_more = self.ref.receive_frames(1)
                theirs, their_error = h2_events(events), None
            except h2.exceptions.ProtocolError as exc:
                theirs, their_more, their_error = None, False, exc
            more = self._compare(theirs, their_more, their_error, difference)

    def _compare(self, theirs, their_more, their_error, difference) -> bool:
        their_out = sent_frames(self.ref.data_to_send())
        try:
            mine, more = self.lb.receive_frames(1)
            my_code = None
        except ProtocolError as exc:
            mine, more, my_code = None, False, exc.code
        my_out = sent_frames(self.lb.data_to_send())
        if their_error is not None and my_code == lb_code_for(their_error) and my_out == with_code(their_out, my_code):
            raise Stop("a connection error")
        if their_error is None and my_code is None and (mine, more, my_out) == (theirs, their_more, their_out):
            self._tell_client(their_out)
            self._tell_app(mine)
            if difference == "GOAWAY from the client" and any(e[0] == GOAWAY for e in mine):
                raise Stop(difference)
            return more
        assert difference is not None, (theirs, their_error, their_out, mine, my_code, my_out)
        assert DIFFERENCES[difference][1](mine or [], my_code), (difference, mine, my_code, theirs, their_error)
        raise Stop(difference)

    def _tell_client(self, frames: list) -> None:
        if self.client_ok:
            data = b"".join(f.frame_bytes(t, fl, sid, p) for t, fl, sid, p in frames)
            try:
                self.client.receive_data(data)
            except h2.exceptions.H2Error:
                self.client_ok = False             # its state is off now: raw frames from here on
            self.client.data_to_send()            # its ACKs are not sent: they change nothing in a server

    def _tell_app(self, events: list) -> None:
        for event in events:
            kind, stream_id = event[0], event[1]
            if kind == REQUEST:
                self.app[stream_id] = {"sent": False, "ended": False, "client_ended": event[3]}
            elif kind == DATA:
                self.unacknowledged[stream_id] = self.unacknowledged.get(stream_id, 0) + event[3]
                if event[4] and stream_id in self.app:
                    self.app[stream_id]["client_ended"] = True
            elif kind == TRAILERS and stream_id in self.app:
                self.app[stream_id]["client_ended"] = True
            elif kind == RESET:
                self.app.pop(stream_id, None)
        for stream_id in [s for s, state in self.app.items() if state["ended"] and state["client_ended"]]:
            del self.app[stream_id]

    # -- what the application does: the same calls on both ---------------------------------
    def both(self, call) -> None:
        """call(connection) on h2's and on lb's: both raise (a closed stream), or neither, and
        they queue the same bytes."""
        try:
            call(self.ref)
            theirs = None
        except H2_SEND_ERRORS as exc:
            theirs = exc
        try:
            call(self.lb)
            mine = None
        except StreamClosedError as exc:
            mine = exc
        assert (theirs is None) == (mine is None), (theirs, mine)
        their_out = sent_frames(self.ref.data_to_send())
        assert sent_frames(self.lb.data_to_send()) == their_out
        self._tell_client(their_out)

    def app_stream(self, pick: int, unanswered: bool = False) -> int | None:
        streams = [s for s, state in self.app.items() if not unanswered or not state["sent"]]
        return streams[pick % len(streams)] if streams else None

    def respond(self, pick: int, size: int, end: bool) -> None:
        stream_id = self.app_stream(pick, unanswered=True)
        if stream_id is None:
            return
        state = self.app[stream_id]
        state["sent"] = True
        self.both(lambda c: c.send_headers(stream_id, RESPONSE, end_stream=end and not size))
        while size:
            window = min(self.ref.local_flow_control_window(stream_id), self.ref.max_outbound_frame_size)
            assert window == min(self.lb.local_flow_control_window(stream_id), self.lb.max_outbound_frame_size)
            if window <= 0:
                return                              # the rest waits (the response never ends here)
            chunk, size = min(size, window), size - min(size, window)
            self.both(lambda c: c.send_data(stream_id, b"r" * chunk, end_stream=end and not size))
        state["ended"] = end
        self._tell_app([])

    def acknowledge(self, pick: int) -> None:
        if self.unacknowledged:
            stream_id = sorted(self.unacknowledged)[pick % len(self.unacknowledged)]
            size = self.unacknowledged.pop(stream_id)
            self.both(lambda c: c.acknowledge_received_data(size, stream_id))

    def reset(self, pick: int, code: int) -> None:
        stream_id = self.app_stream(pick)
        if stream_id is not None:
            del self.app[stream_id]
            self.both(lambda c: c.reset_stream(stream_id, code))

    # -- what the client sends ---------------------------------------------------------------
    def stream(self, pick: int, live: bool = False) -> int | None:
        """One of the streams the client opened (`live`: and has not ended), or None."""
        streams = sorted(self.sending) if live else self.opened
        return streams[pick % len(streams)] if streams else None

    def via_client(self, send, raw) -> bytes:
        """What the h2 client sends for send(client), or the raw frames when it refuses."""
        if self.client_ok:
            try:
                send(self.client)
                return self.client.data_to_send()
            except (*H2_SEND_ERRORS, KeyError):     # KeyError: a stream it never opened
                self.client.clear_outbound_data_buffer()
        return raw()

    def raw_headers(self, stream_id: int, fields, end_stream: bool) -> bytes:
        block = self.client.encoder.encode(fields)
        flags = f.END_STREAM if end_stream else 0
        return f.headers_frames(stream_id, block, end_stream) if block else f.frame_bytes(f.HEADERS, flags | 4,
                                                                                         stream_id)

    def open(self, variant: str, end_stream: bool, skip: int) -> None:
        stream_id = self.next_id + 2 * skip
        self.next_id = stream_id + 2
        fields, difference = REQUESTS[variant]
        data = self.via_client(lambda c: c.send_headers(stream_id, fields, end_stream=end_stream),
                               lambda: self.raw_headers(stream_id, fields, end_stream))
        self.opened.append(stream_id)
        if not end_stream:
            self.sending.add(stream_id)
        self.deliver(data, difference)

    def many(self, count: int) -> None:
        """`count` streams at once, none ended (past the client's own limit: raw frames)."""
        data = b""
        for _ in range(count):
            self.opened.append(self.next_id)
            data += self.raw_headers(self.next_id, POST, False)
            self.next_id += 2
        self.deliver(data)

    def data(self, pick: int, size: int, end: bool, pad: int | None, late: bool = False) -> None:
        stream_id = self.stream(pick, live=not late)
        if stream_id is None:
            return
        if end:
            self.sending.discard(stream_id)
        payload = b"d" * (size if pad is None else min(size, 16383 - pad))
        flags = (f.END_STREAM if end else 0) | (f.PADDED if pad is not None else 0)
        padded = payload if pad is None else bytes([pad]) + payload + bytes(pad)
        self.deliver(self.via_client(lambda c: c.send_data(stream_id, payload, end_stream=end, pad_length=pad),
                                     lambda: f.frame_bytes(f.DATA, flags, stream_id, padded)))

    def upload(self, pick: int, frames: int) -> None:
        """`frames` DATA frames of 16 KiB on one stream, as far as the client's windows let it."""
        for _ in range(frames):
            self.data(pick, 16384, False, None)

    def overrun(self, pick: int) -> None:
        stream_id = self.stream(pick, live=True)
        if stream_id is not None:
            self.deliver(f.data_frame(stream_id, bytes(16384)) * 5)

    def trailers(self, pick: int, end: bool, late: bool = False) -> None:
        stream_id, fields = self.stream(pick, live=not late), [(b"x-sum", b"1")]
        if stream_id is None:
            return
        self.sending.discard(stream_id)
        if not end:          # h2's client encodes them before it refuses: HPACK would be out of step
            self.deliver(self.raw_headers(stream_id, fields, False), "trailers without END_STREAM")
            return
        self.deliver(self.via_client(lambda c: c.send_headers(stream_id, fields, end_stream=True),
                                     lambda: self.raw_headers(stream_id, fields, True)))

    def headers_on(self, kind: str, pick: int) -> None:
        """HEADERS on an even stream id, on one opened before, on one skipped, or with :status."""
        if kind == "skipped":
            skipped = [i for i in range(1, max(self.opened, default=0), 2) if i not in self.opened]
            stream_id = skipped[pick % len(skipped)] if skipped else None
        else:
            stream_id = self.next_id + 1 if kind == "even" else self.stream(pick)
        if stream_id is None:
            return
        self.sending.discard(stream_id)
        self.deliver(self.raw_headers(stream_id, GET, True), ":status in a request" if kind == "status" else None)

    def rst(self, pick: int, code: int, idle: bool) -> None:
        stream_id = self.next_id if idle else self.stream(pick, live=True)
        if stream_id is None:
            return
        self.sending.discard(stream_id)
        idle = stream_id > max(self.opened, default=0)
        self.deliver(f.rst_stream_frame(stream_id, code), "RST_STREAM on an idle stream" if idle else None)

    def window_update(self, target: str, pick: int, increment: int) -> None:
        stream_id = {"connection": 0, "stream": self.stream(pick), "idle": self.next_id}[target]
        if stream_id is None:
            return
        self.deliver(f.frame_bytes(f.WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big")),
                     "WINDOW_UPDATE of 0 on a stream" if stream_id and not increment else None)

    def settings(self, values: dict) -> None:
        if values.get(f.Setting.NO_RFC7540_PRIORITIES, 0) > 1:
            difference = "SETTINGS_NO_RFC7540_PRIORITIES out of bounds"
        elif f.Setting.INITIAL_WINDOW_SIZE in values and any(s.closed for s in self.ref.streams.values()):
            difference = "SETTINGS_INITIAL_WINDOW_SIZE with closed streams"
        else:
            difference = None
        self.deliver(f.settings_frame(values), difference)

    def grown_window(self, pick: int) -> None:
        """A stream's send window grown, then SETTINGS_INITIAL_WINDOW_SIZE taking it past 2^31-1."""
        stream_id = self.stream(pick)
        if stream_id is not None:
            self.deliver(f.window_update_frame(stream_id, 1000))
            self.settings({f.Setting.INITIAL_WINDOW_SIZE: 2**31 - 1000})

    def ping(self, ack: bool) -> None:
        self.deliver(f.ping_frame(b"pingping", ack))

    def priority(self, pick: int, kind: str) -> None:
        stream_id = self.stream(pick) or self.next_id        # PRIORITY may name an idle stream
        payload = {"ok": b"\0\0\0\0\x10", "self": stream_id.to_bytes(4, "big") + b"\x10", "short": b"\0\0\0\0"}[kind]
        self.deliver(f.frame_bytes(f.PRIORITY, 0, stream_id, payload), None if kind == "ok" else "PRIORITY in error")

    def goaway(self) -> None:
        self.deliver(f.goaway_frame(0, E.NO_ERROR), "GOAWAY from the client")

    def continuation(self, count: int, filler: int, end_headers: bool) -> None:
        """A request's block in a HEADERS and `count` CONTINUATION frames, `filler` bytes of
        empty literal fields (3 bytes each) added to it."""
        stream_id = self.next_id
        self.next_id += 2
        self.opened.append(stream_id)
        block = self.client.encoder.encode(GET) + b"\0\0\0" * (filler // 3)
        data = f.frame_bytes(f.HEADERS, f.END_STREAM, stream_id, block[:10])
        data += f.frame_bytes(f.CONTINUATION, 0, stream_id) * (count - 1)
        data += f.frame_bytes(f.CONTINUATION, f.END_HEADERS if end_headers else 0, stream_id, block[10:])
        self.deliver(data)

    def naked_continuation(self, pick: int) -> None:
        stream_id = self.stream(pick) or self.next_id
        self.deliver(f.frame_bytes(f.CONTINUATION, f.END_HEADERS, stream_id), "CONTINUATION without a block")

    def other(self, kind: str, pick: int, number: int) -> None:
        stream_id = self.stream(pick) or self.next_id
        if kind in ("bad_block", "depends_on_itself", "data_on_idle"):
            stream_id = self.next_id
            self.next_id += 2
        self.deliver({
            "bad_block": lambda: f.frame_bytes(f.HEADERS, f.END_HEADERS, stream_id, [b"\xff\xff\xff", b"\x82\x7f",
                                                                                     b"\x00\x85ab"][number % 3]),
            "depends_on_itself": lambda: f.frame_bytes(f.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, stream_id,
                                                       stream_id.to_bytes(4, "big") + b"\x10"
                                                       + self.client.encoder.encode(GET)),
            "data_on_idle": lambda: f.data_frame(stream_id, b"x"),
            "unknown": lambda: f.frame_bytes(0xB + number % 0xF4, number % 256, stream_id, b"?" * (number % 5)),
            "push_promise": lambda: f.frame_bytes(f.PUSH_PROMISE, f.END_HEADERS, stream_id, b"\0\0\0\x02"),
            "oversized": lambda: f.data_frame(stream_id, bytes(16385)),
            "padded_headers": lambda: self._padded_headers(number % 256),
        }[kind](), "PRIORITY in error" if kind == "depends_on_itself" else None)

    def _padded_headers(self, pad: int) -> bytes:
        self.opened.append(self.next_id)
        self.next_id += 2
        block = self.client.encoder.encode(GET)
        return f.frame_bytes(f.HEADERS, f.PADDED | f.END_HEADERS | f.END_STREAM, self.next_id - 2,
                             bytes([pad]) + block + bytes(pad))


REQUESTS = {
    "get": (GET, None),
    "post": (POST, None),
    "big": (GET + [(b"x-big", bytes(range(256)) * 5)], None),      # a block past max_header_bytes
    "huge": (GET + [(b"x-huge", bytes(range(256)) * 80)], None),   # HEADERS + CONTINUATION from the client
    "bomb": (GET + [(b"x-bomb", b"o" * 900)] * 5, None),           # a list past 4 x max_header_bytes
    "split cookies": (GET + [(b"cookie", b"a=1"), (b"cookie", b"b=2")], None),
    "status": ([(b":status", b"101"), *GET], ":status in a request"),
}
picks = st.integers(0, 50)
codes = st.sampled_from([0, 1, 2, 5, 7, 8, 11, 0xFF])
# What a client that keeps to the rules may send, and what lb's part does...
USUAL = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(["get", "post", "post", "split cookies"]), st.booleans(),
              st.sampled_from([0, 0, 0, 1])),
    st.tuples(st.just("data"), picks, st.sampled_from([0, 1, 100, 16384]), st.booleans(),
              st.none() | st.sampled_from([0, 7, 255])),
    st.tuples(st.just("trailers"), picks, st.just(True)),
    st.tuples(st.just("rst"), picks, codes, st.just(False)),
    st.tuples(st.just("window_update"), st.sampled_from(["connection", "stream"]), picks,
              st.sampled_from([1, 1000, 65535])),
    st.tuples(st.just("settings"), st.fixed_dictionaries({}, optional={
        1: st.sampled_from([0, 100, 4096, 65536]), 3: st.sampled_from([0, 1, 100, 2**32 - 1]),
        4: st.sampled_from([0, 1, 1000, 65535, 100000]), 5: st.sampled_from([16384, 20000, 2**24 - 1]),
        6: st.sampled_from([0, 1000, 2**32 - 1]), 0x10: st.integers(0, 2**32 - 1)})),
    st.tuples(st.just("ping"), st.booleans()),
    st.tuples(st.just("priority"), picks, st.just("ok")),
    st.tuples(st.just("continuation"), st.sampled_from([1, 2, 5]), st.sampled_from([0, 300]), st.just(True)),
    st.tuples(st.just("other"), st.sampled_from(["unknown", "padded_headers"]), picks, st.integers(0, 1000)),
    st.tuples(st.just("respond"), picks, st.sampled_from([0, 10, 20000, 70000]), st.booleans()),
    st.tuples(st.just("acknowledge"), picks),
    st.tuples(st.just("reset"), picks, codes),
    st.tuples(st.just("upload"), picks, st.integers(1, 4)),
    st.tuples(st.just("acknowledge"), picks),
)
# ... and what breaks a rule, or meets a bound.
RISKY = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(sorted(REQUESTS)), st.booleans(), st.sampled_from([0, 1])),
    st.tuples(st.just("data"), picks, st.sampled_from([16385, 100]), st.booleans(), st.none(), st.just(True)),
    st.tuples(st.just("trailers"), picks, st.booleans(), st.just(True)),
    st.tuples(st.just("headers_on"), st.sampled_from(["even", "status", "old", "skipped"]), picks),
    st.tuples(st.just("rst"), picks, codes, st.just(True)),
    st.tuples(st.just("window_update"), st.sampled_from(["connection", "stream", "idle"]), picks,
              st.sampled_from([0, 2**31 - 65536, 2**31 - 1])),
    st.tuples(st.just("settings"), st.dictionaries(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 0x10]),
                                                   st.sampled_from([0, 1, 2, 2**24, 2**31 - 1, 2**31]), max_size=3)),
    st.tuples(st.just("priority"), picks, st.sampled_from(["self", "short"])),
    st.tuples(st.just("continuation"), st.sampled_from([2, 63, 64]), st.sampled_from([0, 300, 1200]),
              st.booleans()),
    st.tuples(st.just("naked_continuation"), picks),
    st.tuples(st.just("other"), st.sampled_from(["push_promise", "oversized", "bad_block", "depends_on_itself",
                                                 "data_on_idle"]), picks, st.integers(0, 1000)),
    st.tuples(st.just("overrun"), picks),
    st.tuples(st.just("grown_window"), picks),
    st.tuples(st.just("many"), st.sampled_from([5, 30, 210])),
    st.tuples(st.just("goaway")),
)
ACTIONS = st.integers(0, 7).flatmap(lambda n: RISKY if n == 0 else USUAL)      # one in 8 risky


def run(actions: list, record=lambda text: None) -> str:
    pair = Pair()
    done = 0
    try:
        for name, *args in actions:
            getattr(pair, name)(*args)
            done += 1
    except Stop as stop:
        record(f"stopped: {stop}")
        return str(stop)
    finally:
        record(f"actions done: {min(done, 20) // 5 * 5}+")
    return "the end"


@settings(max_examples=int(__import__("os").environ.get("H2_EXAMPLES", 2000)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=5, max_size=40))
def test_lb_and_h2_make_the_same_events_bytes_and_errors(actions):
    note(f"actions: {min(len(actions), 20) // 5 * 5}+")
    run(actions, note)


@pytest.mark.parametrize("actions, ending", [
    ([("open", "get", True, 0), ("respond", 0, 10, True), ("headers_on", "old", 0)], "a connection error"),
    ([("open", "post", False, 0), ("trailers", 0, False)], "trailers without END_STREAM"),
    ([("open", "status", True, 0)], ":status in a request"),
    ([("open", "get", False, 0), ("rst", 0, 8, True)], "RST_STREAM on an idle stream"),
    ([("open", "get", True, 0), ("window_update", "stream", 0, 0)], "WINDOW_UPDATE of 0 on a stream"),
    ([("open", "get", False, 0), ("priority", 0, "self")], "PRIORITY in error"),
    ([("open", "get", False, 0), ("reset", 0, 8), ("open", "get", True, 0), ("naked_continuation", 0)],
     "CONTINUATION without a block"),
    ([("open", "get", False, 0), ("goaway",)], "GOAWAY from the client"),
    ([("settings", {9: 2})], "SETTINGS_NO_RFC7540_PRIORITIES out of bounds"),
    ([("many", 210)], "a connection error"),
    ([("continuation", 64, 0, True)], "a connection error"),
    ([("open", "bomb", True, 0)], "a connection error"),
])
def test_each_named_difference_is_met(actions, ending):
    assert run(actions) == ending
