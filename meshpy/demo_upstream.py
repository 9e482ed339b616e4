"""A small, fast HTTP/1.1 server to stand behind meshpy in `make run`, in tests and in benchmarks.

Paths: `/` and anything else answers a JSON echo of the request (method, path, headers, body size);
`/bytes/N` answers N bytes; `/status/N` answers that status; `/delay/MS` waits MS milliseconds first;
`/chunked/N` streams N bytes in chunks; `/hello` answers a fixed ~100-byte body (the benchmark case).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import cast

import httptools

from meshpy.codec.http1 import no_body_status, reason_phrase
from meshpy.model.unix_address import PREFIX, parse_unix
from meshpy.transport import unix

log = logging.getLogger("meshpy.demo")

HELLO = (
    b"Hello from the meshpy demo upstream. This body is about one hundred bytes long, as benchmarks want.\n"
)


class DemoProtocol(asyncio.Protocol):
    __slots__ = ("body_len", "headers", "loop", "name", "parser", "transport", "url")

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_len = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_len = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        parts = path.split(b"/")
        if path == b"/hello":
            return self._send(200, HELLO, keep, method)
        try:
            if len(parts) == 3 and parts[1] == b"bytes":
                return self._send(200, b"x" * int(parts[2]), keep, method)
            if len(parts) == 3 and parts[1] == b"status":
                return self._send(int(parts[2]), b"", keep, method)
            if len(parts) == 3 and parts[1] == b"chunked":
                return self._chunked(int(parts[2]), keep)
            if len(parts) == 3 and parts[1] == b"delay":
                self.loop.call_later(int(parts[2]) / 1000, self._send, 200, b"delayed\n", keep, method)
                return None
        except ValueError:
            return self._send(400, b"bad number\n", keep, method)
        body = (
            json.dumps(
                {
                    "upstream": self.name,
                    "method": method.decode(),
                    "path": self.url.decode("latin-1"),
                    "headers": {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self.headers},
                    "body_bytes": self.body_len,
                }
            ).encode()
            + b"\n"
        )
        return self._send(200, body, keep, method, b"application/json")

    def _send(
        self, status: int, body: bytes, keep: bool, method: bytes, ctype: bytes = b"text/plain"
    ) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if no_body_status(status):
            body = b""
        head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nx-upstream: %s\r\n%s\r\n" % (
            status,
            reason_phrase(status),
            ctype,
            len(body),
            self.name.encode(),
            b"" if keep else b"connection: close\r\n",
        )
        t.write(head if method == b"HEAD" else head + body)
        if not keep:
            t.close()

    def _chunked(self, n: int, keep: bool) -> None:
        t = self.transport
        assert t is not None
        out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"]
        while n > 0:
            size = min(n, 8192)
            out.append(b"%x\r\n%s\r\n" % (size, b"c" * size))
            n -= size
        out.append(b"0\r\n\r\n")
        t.writelines(out)
        if not keep:
            t.close()


async def start_demo(host: str, port: int, name: str = "demo") -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: DemoProtocol(name, loop), host, port, reuse_address=True)


async def serve_demo(listen: str, name: str) -> int:
    """Serve on `listen`: HOST:PORT, or a Unix socket as unix:PATH (or unix:@NAME)."""
    if listen.startswith(PREFIX):
        loop = asyncio.get_running_loop()
        server = await unix.serve(loop, lambda: DemoProtocol(name, loop), parse_unix(listen))
    else:
        host, _, port = listen.rpartition(":")
        server = await start_demo(host.strip("[]") or "127.0.0.1", int(port), name)
    log.info("demo upstream %s listening on %s", name, listen)
    # As a container's PID 1 no default handler ends the process on SIGTERM: stop serving and exit 0.
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    async with server:
        await stopped.wait()
    return 0
