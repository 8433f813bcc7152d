"""A minimal fast backend for benches when nginx is not installed.

    python bench/fast_backend.py PORT NAME

Answers every request with a fixed small JSON body; it only finds the end of
each request head, so it serves GET/HEAD without bodies, keep-alive or close.
"""

import asyncio
import sys

import uvloop


class Fast(asyncio.Protocol):
    def __init__(self, response: bytes):
        self.response = response
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            close = b"connection: close" in self.buffer.lower()
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4:]
            self.transport.write(self.response * count)
            if close:
                self.transport.close()


async def main(port: int, name: str) -> None:
    body = b'{"node": "%s", "version": "v1"}' % name.encode()
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))
    server = await asyncio.get_running_loop().create_server(
        lambda: Fast(response), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
