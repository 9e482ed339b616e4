"""An HTTPS upstream that offers a chosen ALPN list and answers in whatever protocol the handshake agreed
on: HTTP/2 (the h2 library, server side) on `h2`, HTTP/1.1 otherwise. Every answer says what the
server saw (`x-protocol: h2` or `http/1.1`, `x-connection: <n>`, the n-th connection it accepted), and
the server keeps each connection's protocol and each request's (path, protocol, user-agent), so a test
can tell what an upstream cluster spoke to it, over how many connections.

A path with `/slow/<ms>` in it is answered after that many milliseconds (requests in flight at once);
one with `/status/<code>`, with that code. Runs in the caller's event loop (`serve`) or in a thread of
its own (`start`).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events

if TYPE_CHECKING:
    from pki import Issued


@dataclass
class Seen:
    path: str
    protocol: str  # "h2" or "http/1.1"
    connection: int
    user_agent: str


@dataclass
class AlpnUpstream:
    cert: Issued
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    port: int = 0
    connections: list[str] = field(default_factory=list)  # the protocol of each connection accepted
    requests: list[Seen] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _open: set[asyncio.Transport] = field(default_factory=set)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert.cert), str(self.cert.key))
        if self.alpn:  # none: the server ignores the client's offer, and no protocol is agreed on
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    async def serve(self) -> AlpnUpstream:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", self.port,
                                                ssl=self.context(), reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection (an upstream going away)."""
        if self._server is not None:
            self._server.close()
        for t in list(self._open):
            t.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- in a thread of its own, for tests driving a proxy process --------------------------------------
    def start(self) -> AlpnUpstream:
        ready: Future[None] = Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.serve())
            except BaseException as err:  # (the caller gets it)
                ready.set_exception(err)
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self.aclose())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def seen(self, prefix: str) -> list[Seen]:
        return [r for r in list(self.requests) if r.path.startswith(prefix)]


Send = Callable[[int, list[tuple[str, str]], bytes], None]  # status, headers, body


class _Conn(asyncio.Protocol):
    def __init__(self, server: AlpnUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.h2: h2.connection.H2Connection | None = None
        self.buf = b""
        self.number = 0
        self.heads: dict[int, dict[bytes, bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]
        self.server._open.add(t)  # type: ignore[arg-type]
        obj = transport.get_extra_info("ssl_object")
        protocol = "h2" if obj is not None and obj.selected_alpn_protocol() == "h2" else "http/1.1"
        self.server.connections.append(protocol)
        self.number = len(self.server.connections)
        if protocol == "h2":
            self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            self.h2.initiate_connection()
            t.write(self.h2.data_to_send())  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._open.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.h2 is not None:
            self._h2_data(data)
        else:
            self._h1_data(data)

    def _answer(self, path: str, protocol: str, agent: str, send: Send) -> None:
        self.server.requests.append(Seen(path, protocol, self.number, agent))
        status, delay = 200, 0.0
        parts = path.split("?")[0].split("/")
        for word, value in itertools.pairwise(parts):
            if word == "status" and value.isdigit():
                status = int(value)
            elif word == "slow" and value.isdigit():
                delay = int(value) / 1000
        body = f"{protocol} {self.number}\n".encode()
        headers = [("x-protocol", protocol), ("x-connection", str(self.number)),
                   ("content-length", str(len(body)))]
        loop = asyncio.get_running_loop()
        loop.call_later(delay, send, status, headers, body)

    # -- HTTP/1.1 -------------------------------------------------------------------------------------
    def _h1_data(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _version = lines[0].split(" ", 2)
            fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            self._answer(target, "http/1.1", fields.get("user-agent", ""), self._h1_send)

    def _h1_send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    # -- HTTP/2 ---------------------------------------------------------------------------------------
    def _h2_data(self, data: bytes) -> None:
        conn = self.h2
        assert conn is not None and self.transport is not None
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.heads[ev.stream_id or 0] = dict(ev.headers or [])
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id or 0)
            elif isinstance(ev, h2.events.StreamEnded):
                sid = ev.stream_id or 0
                head = self.heads.pop(sid, {})

                def send(status: int, headers: list[tuple[str, str]], body: bytes, sid: int = sid) -> None:
                    if self.transport is None or self.transport.is_closing():
                        return
                    conn.send_headers(sid, [(":status", str(status)), *headers])
                    conn.send_data(sid, body, end_stream=True)
                    self.transport.write(conn.data_to_send())

                agent = head.get(b"user-agent", b"").decode()
                self._answer(head.get(b":path", b"").decode(), "h2", agent, send)
        self.transport.write(conn.data_to_send())
