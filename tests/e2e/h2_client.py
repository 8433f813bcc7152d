"""A small blocking HTTP/2 client over TLS for the tests (the h2 library; lb's code is not
used). Its own header validation is off so that tests can send what a broken or hostile
client would."""

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events


class GoAway:
    def __init__(self, last_stream_id: int, error_code: int):
        self.last_stream_id, self.error_code = last_stream_id, error_code


class H2Client:
    def __init__(self, port: int, context: ssl.SSLContext | None, server_hostname: str = "lb.example",
                 timeout_s: float = 10.0, preface_split: int = 0):
        """`context` None: HTTP/2 with prior knowledge over plain TCP (h2c); `preface_split`
        sends that many bytes of the preface on their own first."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if context is None:
            self.sock = raw
        else:
            context.set_alpn_protocols(["h2", "http/1.1"])
            self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
            assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        preface = self.conn.data_to_send()
        if preface_split:
            self.sock.sendall(preface[:preface_split])
            # Most likely two reads on lb's side; if the two pieces still arrive together the test
            # passes without the split (it checks nothing that depends on timing).
            time.sleep(0.05)
        self.sock.sendall(preface[preface_split:])
        self.responses: dict[int, dict] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway = None
        self.closed = False
        self.received_bytes = 0
        self._buffer = b""

    def request(self, path: str, method: str = "GET", headers=(), body: bytes | None = None,
                authority: str = "lb.example", fields=None) -> int:
        """Open a stream; `fields` replaces the whole header list (for malformed requests)."""
        sid = self.conn.get_next_available_stream_id()
        if fields is None:
            fields = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()),
                      (b":path", path.encode()), *headers]
        self.responses[sid] = {"headers": None, "body": bytearray(), "keep": True}
        self.conn.send_headers(sid, fields, end_stream=body is None)
        self.sock.sendall(self.conn.data_to_send())
        if body is not None:
            self.send_body(sid, body)
        return sid

    def send_body(self, sid: int, body, end: bool = True) -> None:
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump()
                if sid in self.resets:
                    return
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.sock.sendall(self.conn.data_to_send())
        if end:
            self.conn.end_stream(sid)
            self.sock.sendall(self.conn.data_to_send())

    def _frames(self, data: bytes) -> bytes:
        """What h2 may see of `data`: a GOAWAY is taken out and recorded here, because after
        h2 receives one it refuses every later frame, and a graceful GOAWAY is followed by the
        responses of the streams in flight."""
        self._buffer += data
        passed = b""
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            frame, self._buffer = self._buffer[:9 + length], self._buffer[9 + length:]
            if frame[3] == 0x7:
                self.goaway = GoAway(int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF,
                                     int.from_bytes(frame[13:17], "big"))
            else:
                passed += frame
        return passed

    def pump(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            self.closed = True
            raise EOFError("lb closed the connection")
        for event in self.conn.receive_data(self._frames(data)):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id]["headers"] = event.headers
            elif isinstance(event, h2.events.DataReceived):
                response = self.responses[event.stream_id]
                if response["keep"]:
                    response["body"] += event.data
                self.received_bytes += len(event.data)
                if response.get("stalled"):
                    # a client that reads this stream no further: only the connection's window
                    # is handed back, the stream's stays shut
                    self.conn.increment_flow_control_window(event.flow_controlled_length)
                else:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def wait(self, sids) -> None:
        while not all(s in self.ended or s in self.resets for s in sids):
            self.pump()

    def wait_goaway(self) -> None:
        while self.goaway is None:
            self.pump()

    def status(self, sid: int) -> int:
        return int(dict(self.responses[sid]["headers"])[b":status"])

    def header(self, sid: int, name: bytes) -> list[bytes]:
        return [v for n, v in self.responses[sid]["headers"] if n == name]

    def close(self) -> None:
        self.sock.close()
