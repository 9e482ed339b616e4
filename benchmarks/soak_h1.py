"""The soak's HTTP/1.1 client: keep-alive connections to one port, responses parsed with httptools, and
the abortive close (RST) that the soak's client resets use."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

import httptools


class H1Failure(Exception):
    pass


@dataclass
class H1Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _H1Parse:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.started = self.complete = False

    def on_message_begin(self) -> None:
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class H1Pool:
    """Keep-alive HTTP/1.1 connections to one port; a connection goes back to the pool after a full
    answer that keeps it alive, and is closed after anything else (a failure, a timeout, a cancel)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> H1Response:
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
        keep = False
        try:
            length = f"content-length: {len(body)}\r\n" if method == "POST" else ""
            writer.write(f"{method} {path} HTTP/1.1\r\nhost: soak\r\n{length}\r\n".encode() + body)
            p = _H1Parse()
            parser = httptools.HttpResponseParser(p)
            while not p.complete:
                data = await reader.read(65536)
                if not data:
                    where = "mid-answer" if p.started else "before an answer"
                    raise H1Failure(f"closed {where}{' (reused connection)' if reused else ''}")
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    raise H1Failure(f"unparsable answer ({type(exc).__name__})") from None
            keep = parser.should_keep_alive()
            return H1Response(parser.get_status_code(), p.headers, bytes(p.body))
        finally:
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
