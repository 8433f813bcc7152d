"""The data plane in-process: fake transports and a fake clock, no sockets, no subprocesses.

A client connection and a pooled upstream connection are driven by hand: bytes in
with data_received, bytes out read from the fake transports' buffers.
"""

import asyncio
import gc

import h2.config
import h2.connection
import h2.events
import pytest

from lb.core.config import parse_config
from lb.core.modes import IDLE, KEEPALIVE_MOVES, TRANSITIONS, Mode, entry_deadline
from lb.core.planes import NodeView, RoutingView
from lb.proxy.accesslog import AccessLog
from lb.proxy.client import (LINGER_MAX_BYTES, LINGER_S, MAX_PIPELINED, PARSE_SLICE, READING_REQUESTS, RECEIVE,
                             TIMEOUT, ClientConnection)
from lb.proxy.dataplane import REST_AFTER_S, DataPlane
from lb.proxy.h2client import H2ClientConnection
from lb.proxy.h2stream import H2Exchange, H2Stream, StreamFlow
from lb.proxy.upstream import READ_BYTES, UpstreamConnection

CONFIG = """
backends:
  - {name: web1, address: '127.0.0.1:9001'}
pinning: {mode: none}
timeouts: {client_header: 10s, upstream_first_byte: 30s}
"""
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class FakeTransport:
    def __init__(self):
        self.out = bytearray()
        self.paused = False
        self.closed = False
        self.events = []

    def write(self, data):
        self.out += data

    def pause_reading(self):
        self.paused = True
        self.events.append("pause")

    def resume_reading(self):
        self.paused = False
        self.events.append("resume")

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    abort = close

    def can_write_eof(self):
        return True

    def set_write_buffer_limits(self, high=None, low=None):
        self.high = high

    def write_eof(self):
        self.events.append("eof")

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 50000) if name == "peername" else default

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Rig:
    """A data plane with one route, a fake clock, and a pooled fake upstream connection."""

    def __init__(self, http="httptools", config_text: str = CONFIG):
        self.reports = []
        config = parse_config(config_text + f"http: {http}\n")
        self.plane = DataPlane(config, asyncio.get_running_loop(), AccessLog("off"), self.reports.append)
        self.clock = Clock()
        self.plane.now = self.clock
        self.plane.upstreams.now = self.clock
        self.plane.apply_view(RoutingView(1, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, True, False),),
                                          ("v1",)))
        self.route = self.plane.table.routes["web1"]
        self.upstream = UpstreamConnection(self.plane.upstreams, self.route)
        self.upstream_transport = FakeTransport()
        self.upstream.connection_made(self.upstream_transport)
        self.plane.upstreams.idle["web1"] = [self.upstream]
        self.client = ClientConnection(self.plane)
        self.client_transport = FakeTransport()
        self.client.connection_made(self.client_transport)

    def respond(self, data: bytes) -> None:
        self.upstream.data_received(data)
        self.plane.upstreams.idle["web1"] = [self.upstream]      # keep it the only connection


@pytest.fixture(params=["httptools", "h11"])
async def rig(request):
    return Rig(request.param)


async def test_pipelined_requests_go_upstream_one_at_a_time_and_are_answered_in_order(rig):
    rig.client.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    first = rig.upstream_transport.take()
    assert first.startswith(b"GET /1 ") and b"GET /2" not in first
    assert rig.route.inflight == 1
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    assert rig.client_transport.take().endswith(b"one")
    await asyncio.sleep(0)                  # the next pipelined request starts on the next turn
    assert rig.upstream_transport.take().startswith(b"GET /2 ")
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    assert rig.client_transport.take().endswith(b"two") and rig.route.inflight == 0
    assert not rig.client_transport.closed


async def test_a_head_not_received_in_time_gets_408(rig):
    rig.client.data_received(b"GET / HTTP/1.1\r\nHo")
    rig.clock.t += 9.9
    rig.plane.expire(rig.clock.t)
    assert rig.client_transport.out == b"" and not rig.client_transport.closed
    rig.clock.t += 0.2
    rig.plane.expire(rig.clock.t)
    assert rig.client_transport.take().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert rig.upstream_transport.out == b""
    # A lingering close: half-closed, reading on, what still comes is dropped ...
    assert rig.client_transport.events[-2:] == ["eof", "resume"] and not rig.client_transport.closed
    rig.client.data_received(b"st: a\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert rig.client_transport.out == b"" and rig.upstream_transport.out == b""
    # ... until the client ends its side (the transport then closes) or LINGER_S passes.
    rig.clock.t += LINGER_S - 0.1
    rig.plane.expire(rig.clock.t)
    assert not rig.client_transport.closed
    rig.clock.t += 0.2
    rig.plane.expire(rig.clock.t)
    assert rig.client_transport.closed


async def test_a_lingering_connection_drops_at_most_linger_max_bytes(rig):
    rig.client.data_received(b"BAD\x00 / HTTP/1.1\r\n\r\n")
    assert rig.client_transport.take().startswith(b"HTTP/1.1 400 ")
    rig.client.data_received(b"x" * LINGER_MAX_BYTES)
    assert not rig.client_transport.closed
    rig.client.data_received(b"x")                   # a flood: closed (the kernel resets it)
    assert rig.client_transport.closed


async def test_a_lingering_connection_closes_when_the_client_ends_its_side(rig):
    rig.client.data_received(b"BAD\x00 / HTTP/1.1\r\n\r\n")
    assert rig.client_transport.take().startswith(b"HTTP/1.1 400 ")
    assert not rig.client_transport.closed
    assert rig.client.eof_received() is False        # asyncio closes the transport on False


async def test_a_backend_that_does_not_answer_in_time_gets_504(rig):
    rig.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.clock.t += 29.0
    rig.plane.expire(rig.clock.t)
    assert rig.client_transport.out == b""
    rig.clock.t += 2.0
    rig.plane.expire(rig.clock.t)
    assert rig.client_transport.take().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert rig.upstream_transport.closed and rig.route.inflight == 0
    assert sum(r.failed["504"] for r in rig.reports) == 1          # expire() reports too
    assert sum(r.nodes["web1"].stats.lb_failures for r in rig.reports) == 1


async def test_flow_control_pauses_each_side_while_the_other_is_full(rig):
    rig.client.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
    rig.upstream.pause_writing()            # the backend takes no more of the body
    assert rig.client_transport.paused
    rig.upstream.resume_writing()
    assert not rig.client_transport.paused
    rig.client.data_received(b"67890")
    rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    rig.client.pause_writing()              # the client reads slowly: stop reading the backend
    assert rig.upstream_transport.paused
    rig.client.resume_writing()
    assert not rig.upstream_transport.paused
    rig.respond(b"done")
    assert rig.client_transport.take().endswith(b"done")


@pytest.mark.parametrize("count", [18, 2000])
async def test_a_pipelining_flood_is_parsed_no_further_than_the_queue_and_all_answered(rig, count):
    # One write of `count` tiny requests: at most MAX_PIPELINED wait as parsed requests (plus
    # what one PARSE_SLICE holds); the rest waits as bytes, and reading pauses until answered.
    rig.client.data_received(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(count)))
    assert rig.client_transport.paused
    assert MAX_PIPELINED <= len(rig.client.pending) <= MAX_PIPELINED + PARSE_SLICE // 28
    answered = []
    for i in range(count):
        assert rig.upstream_transport.take().startswith(b"GET /%d " % i)
        rig.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(i)), i))
        answered.append(rig.client_transport.take())
        assert len(rig.client.pending) <= MAX_PIPELINED + PARSE_SLICE // 28
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert [a.endswith(b"\r\n\r\n%d" % i) for i, a in enumerate(answered)] == [True] * count
    assert not rig.client_transport.paused and not rig.client.pending and not rig.client.unparsed


async def test_a_bug_while_handling_a_request_is_a_500_and_a_closed_connection(rig, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(rig.plane.table, "choose", broken)
    rig.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert rig.client_transport.take().startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert rig.client_transport.closed
    assert "a bug" in caplog.text


async def test_a_draining_route_reports_when_its_last_request_ends(rig):
    rig.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.plane.apply_view(RoutingView(2, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, False, True),),
                                     ("v1",)))
    await asyncio.sleep(0)
    assert rig.reports[-1].generation == 2 and rig.reports[-1].nodes["web1"].inflight == 1
    rig.respond(OK)
    await asyncio.sleep(0)
    assert rig.reports[-1].nodes["web1"].inflight == 0
    assert rig.reports[-1].nodes["web1"].stats.requests == 1


async def test_requests_beyond_max_conns_wait_their_turn_then_time_out(rig):
    rig.plane.apply_view(RoutingView(2, (NodeView("web1", "127.0.0.1", 9001, "v1", 100.0, True, False, 1),),
                                     ("v1",)))
    second = ClientConnection(rig.plane)
    second_transport = FakeTransport()
    second.connection_made(second_transport)
    third = ClientConnection(rig.plane)
    third_transport = FakeTransport()
    third.connection_made(third_transport)
    rig.client.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    second.data_received(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert rig.route.inflight == 1 and len(rig.plane.queue) == 1
    assert rig.upstream_transport.take().startswith(b"GET /1 ")
    rig.respond(OK)                                   # a slot frees: /2 goes, in turn
    await asyncio.sleep(0)
    assert rig.upstream_transport.take().startswith(b"GET /2 ") and not rig.plane.queue
    rig.plane.report()
    third.data_received(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.plane.report()
    assert rig.reports[-1].queued == 1
    rig.clock.t += 4.9
    rig.plane.expire(rig.clock.t)
    assert third_transport.out == b""
    rig.clock.t += 0.2                                # timeouts.queue: 5 s
    rig.plane.expire(rig.clock.t)
    assert third_transport.take().startswith(b"HTTP/1.1 503 ") and not rig.plane.queue
    rig.respond(OK)
    assert second_transport.take().endswith(b"ok")


async def test_a_body_held_while_connecting_pauses_the_client_until_the_connection_is_made(rig):
    """Past REPLAY_LIMIT_BYTES with no upstream yet, reading pauses; the connection resumes it."""
    from lb.core.http1 import REPLAY_LIMIT_BYTES
    loop = asyncio.get_running_loop()
    made = loop.create_future()

    async def connect(route):
        return await made
    rig.plane.upstreams.idle["web1"] = []
    rig.plane.upstreams.connect = connect
    size = REPLAY_LIMIT_BYTES + 1000
    rig.client.data_received(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    await asyncio.sleep(0)                       # the connect task starts and waits
    rig.client.data_received(b"u" * size)
    assert rig.client_transport.paused           # nowhere to send it yet, more than a replay holds
    made.set_result(rig.upstream)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not rig.client_transport.paused       # the connection is there: reading goes on
    sent = rig.upstream_transport.take()
    assert sent.startswith(b"POST /up ") and sent.endswith(b"u" * size)


async def test_a_reload_whose_backend_ca_file_went_keeps_the_tls_settings_in_use(tmp_path):
    import trustme
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    backend = f"  - {{name: web1, address: '127.0.0.1:9001', tls: {{ca: '{ca_file}'}}}}\n"
    config = parse_config("backends:\n" + backend)
    plane = DataPlane(config, asyncio.get_running_loop(), AccessLog("off"), lambda report: None)
    in_use = plane.upstreams.tls["web1"]
    ca_file.unlink()                                  # gone between the master's check and here
    plane.apply_config(parse_config("retries: 1\nbackends:\n" + backend))
    assert plane.upstreams.tls["web1"] is in_use and plane.config.retries == 1


async def test_a_shutdown_finishes_a_connection_accepted_and_not_yet_made(rig):
    """asyncio makes the protocol at accept and calls connection_made later (on a TLS
    listener, once the handshake is done): a worker that stopped in between closed the
    connection under its client. Failed before: the shutdown ended at once."""
    rig.client.connection_lost(None)
    accepted = ClientConnection(rig.plane)          # by the listener's protocol factory
    stopping = asyncio.create_task(rig.plane.shutdown(30.0))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    transport = FakeTransport()
    accepted.connection_made(transport)             # the handshake is done
    accepted.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.respond(OK)
    assert b"Connection: close\r\n" in transport.take()
    accepted.connection_lost(None)
    await asyncio.wait_for(stopping, 1.0)


async def test_a_failed_handshake_holds_no_shutdown(rig):
    """asyncio never tells the protocol of a failed TLS handshake: it lets go of it, and
    the sweeper sees it gone; one still held counts until asyncio's handshake deadline."""
    rig.client.connection_lost(None)
    failed, held = ClientConnection(rig.plane), ClientConnection(rig.plane)
    stopping = asyncio.create_task(rig.plane.shutdown(30.0))
    await asyncio.sleep(0.05)
    del failed
    assert list(rig.plane.opening) == [held]
    rig.plane.expire(rig.clock.t)
    await asyncio.sleep(0.05)
    assert not stopping.done()
    rig.clock.t += 10.0                             # timeouts.client_header, the handshake's
    rig.plane.expire(rig.clock.t)
    await asyncio.wait_for(stopping, 1.0)
    assert held.transport is None


def h2_connection(rig) -> tuple:
    """An HTTP/2 client (h2's), lb's connection for it on a fake transport, past the preface."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    conn = H2ClientConnection(rig.plane, b"127.0.0.1", False, None, "", rig.client.own_headers, b"http")
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(client.data_to_send())
    return client, conn, transport


async def test_a_finished_http2_stream_and_its_exchange_are_freed_at_once(rig):
    """Without the cyclic GC: a stream, its flow and its exchange pointing at each other waited
    for it, request head and all, and with streams in flight past a young collection they
    waited for a full one (bench/abuse.py h2_header_names: 200 streams in flight with 15 KB
    header names grew a worker by ~60 MiB). Failed before: all three outlived the response."""
    def alive() -> list:
        return [type(o).__name__ for o in gc.get_objects() if isinstance(o, (H2Stream, StreamFlow, H2Exchange))]

    client, conn, transport = h2_connection(rig)
    gc.collect()
    gc.disable()
    try:
        client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                (b":authority", b"a"), (b"x-" + b"n" * 15000, b"1")], end_stream=True)
        conn.data_received(client.data_to_send())
        assert sorted(alive()) == ["H2Exchange", "H2Stream", "StreamFlow"]
        assert rig.upstream_transport.take().startswith(b"GET / HTTP/1.1\r\n")
        rig.respond(OK)
        await asyncio.sleep(0)                  # the connection's flush: END_STREAM goes out
        ended = [e for e in client.receive_data(bytes(transport.out)) if isinstance(e, h2.events.StreamEnded)]
        assert [e.stream_id for e in ended] == [1] and conn.streams == {}
        assert alive() == []
    finally:
        gc.enable()


async def test_an_http2_stream_that_does_not_read_holds_at_most_64_kib(rig):
    """Its window (64 KiB) goes out, then its outbox fills to STREAM_WRITE_HIGH (32 KiB) plus
    the backend read that crossed it, and its backend is no longer read (bench/abuse.py
    h2_slow_reader: 1,000 such streams). Failed before, at 64 KiB: 65,537 bytes held here."""
    client, conn, transport = h2_connection(rig)
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"a")], end_stream=True)
    conn.data_received(client.data_to_send())
    rig.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
    stream = conn.streams[1]
    for _ in range(100):
        if rig.upstream_transport.paused:
            break
        rig.upstream.data_received(b"x" * READ_BYTES)      # one read of a backend at most
        await asyncio.sleep(0)                              # the connection's flush
    events = client.receive_data(bytes(transport.out))              # read, never acknowledged
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 65535
    assert rig.upstream_transport.paused and 32 << 10 < stream.outbox_bytes <= 64 << 10


async def test_a_long_lived_http2_connection_remembers_at_most_1000_closed_streams(rig):
    """h2 keeps how each of the last 65,536 closed streams ended, ~176 B each: 11 MiB a busy
    connection. lb keeps 1,000 (lb/core/http2/streams.py MAX_CLOSED_STREAMS; this reads the
    connection's record, `closed_streams`). Failed with h2's own count: 1,499 kept after 1,500 streams."""
    client, conn, transport = h2_connection(rig)
    get = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    for stream_id in range(1, 3001, 2):
        client.send_headers(stream_id, get, end_stream=True)
        conn.data_received(client.data_to_send())
        rig.respond(OK)
        await asyncio.sleep(0)                  # the connection's flush
        client.receive_data(transport.take())
    assert conn.streams == {} and len(conn.h2.closed_streams) == 1000


def test_every_client_mode_has_one_read_handler_and_the_timeouts_name_modes_with_a_clock():
    assert set(RECEIVE) | set(READING_REQUESTS) == set(Mode) and not set(RECEIVE) & set(READING_REQUESTS)
    assert all(mode.clock is not None for mode in TIMEOUT)


async def test_the_keep_alive_moves_client_py_inlines_land_where_the_table_says(rig):
    """client.py makes modes.KEEPALIVE_MOVES without `_to`: each must give the table's mode and the
    deadline its row names (entry_deadline), as `_to` would."""
    moves = []

    def spied(name):
        def spy(self, *args):
            before = self.mode
            rig.clock.t += 1.0                          # each move at its own time: its deadline is new
            getattr(ClientConnection, name)(self, *args)
            moves.append((before, self.mode, self.deadline, rig.clock.t))
        return spy

    spying = type("Spying", (ClientConnection,), {name: spied(name) for name in
                                                  ("on_request_begin", "on_request", "exchange_done")})
    client, transport = spying(rig.plane), FakeTransport()
    client.connection_made(transport)
    for path in (b"/1", b"/2"):
        client.data_received(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
        rig.respond(OK)
    inlined = {(before, new): (deadline, now) for before, new, deadline, now in moves}
    for mode, event, new in KEEPALIVE_MOVES:
        assert TRANSITIONS[mode, event] is new
        deadline, now = inlined[mode, new]
        assert deadline == entry_deadline(new, rig.plane.config, now)
    assert client.mode is IDLE and transport.take().count(b"200 OK") == 2


async def test_a_closed_http1_connection_and_its_parser_are_freed_without_the_cyclic_gc(rig):
    """llhttp's callbacks are the adapter's bound methods and the adapter holds the connection:
    before connection_lost broke that, every closed connection (and its last request head)
    waited for a cyclic collection."""
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            client, transport = ClientConnection(rig.plane), FakeTransport()
            client.connection_made(transport)
            client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            rig.respond(OK)
            client.connection_lost(None)
            rig.upstream.connection_lost(None)            # its upstream too: the response parser
            rig.upstream = UpstreamConnection(rig.plane.upstreams, rig.route)
            rig.upstream.connection_made(FakeTransport())
            rig.upstream_transport = rig.upstream.transport
            rig.plane.upstreams.idle["web1"] = [rig.upstream]
            del client, transport
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_a_keep_alive_connection_idle_past_rest_after_gives_its_parser_back_and_parses_on(rig):
    client = rig.client
    client.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n")
    client.rest(rig.clock.t + 10)                       # mid-head: kept
    assert client.parser is not None
    client.data_received(b"\r\n")
    rig.respond(OK)
    assert client.rest(rig.clock.t - 1) is None and client.parser is not None     # idle, but not for long
    rig.clock.t += REST_AFTER_S + 0.1
    rig.plane.expire(rig.clock.t)                       # the sweep: idle past REST_AFTER_S
    assert client.parser is None and client.mode is Mode.IDLE
    rig.client_transport.take()
    client.data_received(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert rig.upstream_transport.take().count(b"GET /") == 2      # /1 and /2, on a new parser
    rig.respond(OK)
    assert rig.client_transport.take().endswith(b"ok")
