"""The admin listener: a small HTTP/1.1 server of its own (httptools on an asyncio.Protocol).

It is deliberately separate from the data-plane listeners: a different port (127.0.0.1 by default),
no routing, no policies, so a broken route table or an overloaded data path never takes the probes and
the metrics scrape with it. Every view is synchronous and cheap, so each request is answered inside the
`data_received` call that completed it; pipelined requests are therefore answered in order with no
queue. Keep-alive follows the request (`should_keep_alive`), bodies are framed by Content-Length.
An answered request goes to the admin's access logs (`AdminServer.access_log`, set by the app), as
Envoy's admin logs it (meshpy.admin.access_record); its headers are kept only while one is set.

`start_admin` returns an `AdminServer` rather than the bare `asyncio.Server`: shutdown must also close
idle keep-alive connections (a Prometheus scraper holds one open), which `asyncio.Server.close` does not
do before Python 3.13, and since 3.12 `wait_closed` would wait for them forever.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs

import httptools

from meshpy.admin.access_record import AdminLog
from meshpy.admin.views import ENDPOINTS, AdminHost, Response, text
from meshpy.model.types import Address
from meshpy.model.unix_address import from_os_name
from meshpy.ports import ConnectionInfo
from meshpy.transport import unix

__all__ = ["AdminHost", "AdminProtocol", "AdminServer", "start_admin"]

log = logging.getLogger(__name__)

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024  # a POST's form parameters at most; anything large is a mistake
_FORM = b"application/x-www-form-urlencoded"
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds a connection may sit without a byte before we close it
LINGER_TIMEOUT = 2.0  # after refusing a request: how long to drain the client's bytes before closing


class _Reject(Exception):
    """Raised from a parser callback to stop parsing and answer with `status`, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class AdminProtocol(asyncio.Protocol):
    """One admin connection. httptools calls the `on_*` methods from inside `feed_data`."""

    def __init__(
        self,
        host: AdminHost,
        loop: asyncio.AbstractEventLoop,
        connections: set[AdminProtocol],
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        access_log: AdminLog | None = None,
    ) -> None:
        self._host = host
        self._log = access_log if access_log is not None else AdminLog()
        self._headers: list[tuple[bytes, bytes]] | None = None  # kept only while something logs them
        self._wall0 = self._t0 = 0.0
        self._info: ConnectionInfo | None = None  # the connection, as its log lines describe it
        self._loop = loop
        self._connections = connections
        self._idle_timeout = idle_timeout
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = bytearray()
        self._header_bytes = 0
        self._body_bytes = 0
        self._form: bytearray | None = None  # a form-encoded body: its parameters (as Envoy's admin reads)
        self._closing = False
        self._last_activity = 0.0
        self._idle_timer: asyncio.Handle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self._last_activity = self._loop.time()
        self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # answered and closing (or lingering): discard
        self._last_activity = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was answered in on_message_complete; what follows is not
            # HTTP/1.1 any more, and the admin speaks nothing else.
            self._finish()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(text(f"{cause}\n", cause.status, close=True))
            else:  # a bug in a callback: answer and log rather than leave the client hanging
                log.error("admin: request handling failed", exc_info=cause)
                self._reject(text("internal error\n", 500, close=True))
        except httptools.HttpParserError as exc:
            self._reject(text(f"bad request: {exc}\n", 400, close=True))

    def pause_writing(self) -> None:
        # A client that pipelines requests without reading answers: stop reading until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def close(self) -> None:
        """Close after anything already written has been sent."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _reject(self, response: Response) -> None:
        """Answer a request we refuse to read to the end, then close."""
        if self._send(response, head_only=False, keep_alive=False):
            self._finish()

    def _finish(self) -> None:
        """Close after an answer without losing it.

        Closing a socket with unread bytes in its receive buffer sends RST, and an RST can reach the
        client before it has read our answer, which it then never sees (a 413 for a large body, or
        pipelined requests after `Connection: close`). So, like nginx's lingering close: shut down our
        sending side once the answer is out, discard whatever still arrives, and close when the client
        does or after LINGER_TIMEOUT.
        """
        transport = self._transport
        self._closing = True
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._loop.call_later(LINGER_TIMEOUT, self._close_transport, transport)

    @staticmethod
    def _close_transport(transport: asyncio.Transport) -> None:
        transport.close()

    def eof_received(self) -> bool | None:
        return None  # the client is done: let the transport close (after flushing our answers)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._transport is None:
            return
        idle_for = self._loop.time() - self._last_activity
        if idle_for >= self._idle_timeout:
            self.close()
        else:
            self._idle_timer = self._loop.call_later(self._idle_timeout - idle_for, self._check_idle)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url.clear()
        self._header_bytes = 0
        self._body_bytes = 0
        if self._log.loggers:
            self._headers = []
            self._wall0, self._t0 = time.time(), self._loop.time()
        else:
            self._headers = None
        self._form = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            raise _Reject(414, "URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, "request headers too large")
        if self._headers is not None:
            self._headers.append((name.lower(), value))
        if name.lower() == b"content-type" and value.split(b";")[0].strip().lower() == _FORM:
            self._form = bytearray()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise _Reject(413, "request body too large")
        if self._form is not None:
            self._form += body

    def on_message_complete(self) -> None:
        if self._closing:
            return
        method = self._parser.get_method().decode("ascii", "replace")
        keep_alive = self._parser.should_keep_alive()
        http10 = self._parser.get_http_version() == "1.0"
        response = self._dispatch(method, bytes(self._url))
        close = self._send(response, head_only=method == "HEAD", keep_alive=keep_alive, http10=http10)
        if self._headers is not None:
            self._access_log(method, http10, response)
        if close:
            self._finish()

    def _access_log(self, method: str, http10: bool, response: Response) -> None:
        assert self._headers is not None
        sent = [(b"content-type", response.content_type.encode("latin-1")),
                (b"content-length", str(len(response.body)).encode()),
                *((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in response.headers)]
        if self._info is None:
            self._info = self._log.connection(self._transport)
        self._log.request(self._info, wall0=self._wall0, seconds=self._loop.time() - self._t0,
                          method=method, target=self._url.decode("latin-1"), http10=http10,
                          headers=self._headers, status=response.status, resp_headers=sent,
                          bytes_in=self._body_bytes, bytes_out=0 if method == "HEAD" else len(response.body))

    # answering

    def _dispatch(self, method: str, raw_url: bytes) -> Response:
        try:
            url = httptools.parse_url(raw_url)
        except httptools.HttpParserInvalidURLError:
            return text("bad request: invalid URL\n", 400)
        path = (url.path or b"/").decode("utf-8", "replace")
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return text(f"not found: {path} (GET / lists the admin paths)\n", 404)
        if method not in endpoint.methods:
            allow = ", ".join(sorted(endpoint.methods))
            return text(f"method not allowed: {path} takes {allow}\n", 405, headers=(("Allow", allow),))
        query = parse_qs(url.query.decode("utf-8", "replace"), keep_blank_values=True) if url.query else {}
        if not query and method == "POST" and self._form:
            # As Envoy's admin: a POST without a query string may send its parameters as a form.
            query = parse_qs(self._form.decode("utf-8", "replace"), keep_blank_values=True)
        try:
            return endpoint.view(self._host, query)
        except Exception:
            log.exception("admin: %s %s failed", method, path)
            return text("internal error\n", 500)

    def _send(self, response: Response, *, head_only: bool, keep_alive: bool, http10: bool = False) -> bool:
        """Write one response; True if the connection must close after it."""
        transport = self._transport
        if transport is None or self._closing:
            return False
        close = response.close or not keep_alive
        head = [
            f"HTTP/1.1 {response.status} {_reason(response.status)}\r\n",
            f"Content-Type: {response.content_type}\r\n",
            f"Content-Length: {len(response.body)}\r\n",
            "Cache-Control: no-cache, max-age=0\r\n",
            "X-Content-Type-Options: nosniff\r\n",
        ]
        head.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        if close:
            head.append("Connection: close\r\n")
        elif http10:
            head.append("Connection: keep-alive\r\n")  # HTTP/1.0 keep-alive must be confirmed
        head.append("\r\n")
        chunks = ["".join(head).encode("latin-1")]
        if not head_only:
            chunks.append(response.body)
        transport.writelines(chunks)
        if response.after is not None:
            # After the write: the bytes are in the transport, which flushes them even if the
            # callback closes the admin listener and this connection with it.
            self._loop.call_soon(response.after)
        return close


class AdminServer:
    """The listening admin socket plus its open connections, so shutdown can close both."""

    def __init__(self, server: asyncio.Server, connections: set[AdminProtocol],
                 access_log: AdminLog | None = None) -> None:
        self.server = server
        self._connections = connections
        self.access_log = access_log if access_log is not None else AdminLog()  # its loggers: the app's

    @property
    def address(self) -> Address:
        """Where it actually listens (resolves port 0)."""
        sock = self.server.sockets[0]
        sockname = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            return Address(host="", port=0, path=from_os_name(sockname))
        return Address(host=sockname[0], port=sockname[1])

    def is_serving(self) -> bool:
        return self.server.is_serving()

    def close(self) -> None:
        """Stop accepting and close every admin connection (answers already written are still sent)."""
        self.server.close()
        for conn in list(self._connections):
            conn.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


async def start_admin(
    host: AdminHost,
    address: Address,
    loop: asyncio.AbstractEventLoop,
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> AdminServer:
    """Listen on `address` and serve the admin paths for `host`. Raises OSError if it cannot bind."""
    connections: set[AdminProtocol] = set()
    access_log = AdminLog()

    def factory() -> AdminProtocol:
        return AdminProtocol(host, loop, connections, idle_timeout, access_log)

    if address.path:  # a Unix socket (Envoy's admin.address.pipe), made as a listener's is
        server = await unix.serve(loop, factory, address)
    else:
        server = await loop.create_server(factory, address.host, address.port, reuse_address=True)
    admin = AdminServer(server, connections, access_log)
    log.info("admin listening on %s", admin.address)
    return admin
