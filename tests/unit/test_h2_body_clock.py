"""An HTTP/2 stream's request body clock (lb/proxy/h2stream.H2Stream): client_idle between
pieces, min_body_rate on average, and stopped while lb itself holds the stream's window
shut. Stubs for the connection and the exchange; `now` is set by the test."""

from types import SimpleNamespace

import pytest

from lb.proxy.h2stream import INFINITY, H2Stream


class Plane:
    def __init__(self):
        self.t = 100.0
        self.config = SimpleNamespace(timeouts=SimpleNamespace(client_idle=1.0),
                                      limits=SimpleNamespace(min_body_rate=1024))

    def now(self) -> float:
        return self.t


class Exchange:
    finished = False
    request_done = False
    upstream = None

    def __init__(self):
        self.body = b""

    def add_body(self, data: bytes) -> None:
        self.body += data

    def end_body(self) -> None:
        self.request_done = True


@pytest.fixture
def stream():
    plane = Plane()
    acked = []
    h2 = SimpleNamespace(acknowledge_received_data=lambda n, sid: acked.append(n))
    conn = SimpleNamespace(plane=plane, ip=b"127.0.0.1", trusted=False, proto=b"https", tls=None, tls_text="", hsts_fields=(),
                           deadline=INFINITY, h2=h2, flush_soon=lambda: None)
    s = H2Stream(conn, 1, None)
    s.exchange = Exchange()
    s.acked = acked
    return s


def test_the_clock_runs_from_the_start_and_moves_with_each_piece(stream):
    stream.expect_body()
    assert stream.body_deadline == 101.0 and stream.conn.deadline == 101.0     # a grace of client_idle (1 s)
    stream.plane.t = 100.5
    stream.data(b"x" * 256, 256)
    assert stream.body_deadline == pytest.approx(101.25)      # 256 B earn 0.25 s at 1 KiB/s; idle: 101.5
    assert stream.acked == [256] and stream.exchange.body == b"x" * 256
    stream.request_ended()
    assert stream.body_deadline == INFINITY and stream.exchange.request_done


def test_the_clock_stops_while_lb_holds_the_window_and_starts_again_after(stream):
    stream.expect_body()
    stream.flow.pause("upstream")                 # the backend is slow to take the body
    assert stream.body_deadline == INFINITY
    stream.plane.t = 100.5
    stream.data(b"y" * 100, 100)                  # what was in flight: held, not acknowledged
    assert stream.acked == [] and stream.held_ack == 100 and stream.body_deadline == INFINITY
    stream.plane.t = 160.0
    stream.flow.resume("upstream")
    assert stream.acked == [100]                  # the window opens again...
    assert stream.body_deadline == 161.0          # ...and the client gets a fresh clock


def test_a_stream_whose_request_ended_gets_no_clock_back(stream):
    stream.expect_body()
    stream.flow.pause("upstream")
    stream.request_ended()
    stream.flow.resume("upstream")
    assert stream.body_deadline == INFINITY
