"""A client connection after its backend switched protocols (101): the tunnel's side of
`ClientConnection` (lb/proxy/client.py), bytes both ways untouched, until either end
closes, timeouts.tunnel passes with no byte, or a drain's deadline cuts it (a WebSocket
then gets close 1001 and the closing handshake)."""

from __future__ import annotations

from ..core import modes
from ..core.modes import LINGER_MAX_BYTES, TUNNEL

WEBSOCKET_GOING_AWAY = b"\x88\x02\x03\xe9"   # a server close frame, status 1001


class TunnelSide:
    """ClientConnection's tunnel methods; the state (tunnel, tunnel_route, tunnel_websocket)
    is the connection's."""

    __slots__ = ()

    def start_tunnel(self, upstream, route) -> None:
        self._to(modes.SWITCHED)
        self.tunnel = upstream
        self.tunnel_route = route
        self.tunnel_websocket = (self.current.head.upgrade or b"").lower() == b"websocket"
        self.plane.tunnels.setdefault(route.name, set()).add(self)
        upstream.tunnel_peer = self
        data, self.held = self.parser.leftover + self.held, b""
        self.parser = upstream.parser = None     # a tunnel parses nothing more: free both heads
        if data:
            self.tunnel.write(data)
        self.flow.resume("upgrade")

    def tunnel_received(self, data: bytes) -> None:
        """The backend's end of the tunnel sent `data`: to the client, and the clock restarts."""
        self.write(data)
        self._restart_clock()

    def _receive_tunnel(self, data: bytes) -> None:
        self.tunnel.write(data)
        self._restart_clock()

    def end_tunnel(self) -> None:
        """Close a tunnel at a drain deadline or its idle timeout. Other tunnels close at once. A WebSocket
        client gets a close frame (1001) and lb's half-close, then up to
        WEBSOCKET_CLOSE_WAIT_S to answer with its own close and end the connection (the
        closing handshake of RFC 6455 section 7): a client busy sending meets no reset,
        and reads the close frame after what it sent."""
        if self.mode is not TUNNEL:
            self.close()
            return
        upstream, self.tunnel = self.tunnel, None
        if upstream is not None:
            upstream.tunnel_peer = None
            upstream.close()
        if not self.tunnel_websocket:
            self.close()
            return
        self._to(modes.CLOSE_WEBSOCKET)
        self.discard_budget = LINGER_MAX_BYTES
        self.write(WEBSOCKET_GOING_AWAY)
        if not self.write_eof():
            self.close()

    def _tunnel_idle(self) -> None:
        """timeouts.tunnel with no byte either way (HAProxy's `timeout tunnel`): closed as at a
        drain deadline, a WebSocket with close 1001."""
        if self.tunnel is None:
            self.close()
            return
        self.plane.failed["tunnel_timeout"] += 1
        self.plane.tunnel_closed(self, self.tunnel_route)
        self.end_tunnel()
