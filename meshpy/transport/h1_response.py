"""How an HTTP/1.1 connection writes an answer: the writer side of meshpy.ports.ResponseWriter for
HTTP/1.1 (a mixin of Http1Downstream). The exchange decides what the answer is (status, final headers,
body pieces, whether it has a length); this decides how it goes on the wire: the response head passed
on as the upstream's bytes when nothing changes it, chunked or connection-delimited bodies, and the
Connection header for keep-alive, HTTP/1.0 clients and draining.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshpy.codec.http1 import LAST_CHUNK, chunk, format_response, no_body_status, response_head, status_text
from meshpy.codec.raw_head import passthrough
from meshpy.ports import EMPTY, UNSIZED
from meshpy.transport.tunnel import Tunnel

if TYPE_CHECKING:
    import asyncio

    from meshpy.ports import Header, Http1Exchange, Responding, TunnelFeed
    from meshpy.routing.compile import ListenerSlot



class Http1Responses:
    if not TYPE_CHECKING:  # no slots of its own: Http1Downstream has them
        __slots__ = ()

    if TYPE_CHECKING:
        out: list[bytes]
        slot: ListenerSlot
        transport: asyncio.Transport | None
        active: Http1Exchange | None

        def flush(self) -> None: ...
        def connection_lost(self, exc: Exception | None) -> None: ...

    def respond_raw(self, ex: Responding, status: int, fields: bytes) -> bool:
        """The upstream's head passed on as bytes when nothing about it changes (the common case: no
        header to drop, a Date to keep); False when the head must be rebuilt from its fields."""
        if ex.http10 or (ex.keep_alive and self.slot.draining):
            return False
        fast = passthrough(fields)
        if fast is None:
            return False
        block, has_date = fast
        # The block ends with the blank line: extra headers go in before its last CRLF.
        if not has_date:
            block = block[:-2] + b"date: " + self.slot.date.now() + b"\r\n\r\n"
        if not ex.keep_alive:
            block = block[:-2] + b"connection: close\r\n\r\n"
        self.out.append(status_text(status) + block)
        return True

    def respond_interim(self, ex: Responding, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not ex.http10:  # (HTTP/1.0 clients know no 1xx)
            self.out.append(response_head(status, headers))

    def respond_head(self, ex: Responding, status: int, headers: list[Header], body: int) -> None:
        if body == UNSIZED:
            if ex.http10:
                ex.keep_alive = False  # delimited by the connection's end for an HTTP/1.0 client
            else:
                ex.down_chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
        elif body == EMPTY:
            headers.append((b"content-length", b"0"))  # as Envoy's codec says of a head that ends
        self._connection_header(ex, headers)
        self.out.append(response_head(status, headers))

    def respond_body(self, ex: Responding, data: bytes) -> None:
        self.out.append(chunk(data) if ex.down_chunked else data)

    def respond_end(self, ex: Responding) -> None:
        if ex.down_chunked:
            self.out.append(LAST_CHUNK)

    def respond_whole(self, ex: Responding, status: int, headers: list[Header], body: bytes) -> None:
        self._connection_header(ex, headers)
        if no_body_status(status):
            # No body, and as in Envoy no content-length either (RFC 9110 8.6 forbids it on a 204).
            self.out.append(response_head(status, headers))
        else:
            self.out.append(format_response(status, body, headers, head_only=ex.head_request))

    def join_tunnel(self, ex: Responding, headers: list[Header], upstream: asyncio.Transport, early: bytes,
                    on_close: Callable[[int, int], None]) -> tuple[int, TunnelFeed]:
        if ex.upgrade == b"connect":
            status = 200
        else:
            status = 101
            assert ex.upgrade is not None
            headers += [(b"connection", b"upgrade"), (b"upgrade", ex.upgrade)]
        self.out.append(response_head(status, headers))
        self.flush()
        transport = self.transport
        assert transport is not None

        def closed(from_client: int, from_upstream: int) -> None:
            self.active = None
            on_close(from_client, from_upstream)
            self.connection_lost(None)  # the listener's bookkeeping

        tunnel = Tunnel(transport, upstream, closed)
        transport.resume_reading()  # paused since the handshake's end
        tunnel.from_client(early)
        return status, tunnel

    def respond_error(self, status: int, body: bytes) -> None:
        """The answer to bytes that broke HTTP before an exchange could take them (400, 408, 431); the
        connection closes after it."""
        headers = [(b"date", self.slot.date.now()), (b"content-type", b"text/plain")]
        server = self.slot.current.server_name
        if server is not None:  # (as on every other answer of the listener's, and Envoy's)
            headers.append((b"server", server))
        self.out.append(format_response(status, body, headers, close=True))

    def _connection_header(self, ex: Responding, headers: list[tuple[bytes, bytes]]) -> None:
        if ex.keep_alive and self.slot.draining:
            ex.keep_alive = False
        if not ex.keep_alive:
            headers.append((b"connection", b"close"))
        elif ex.http10:
            headers.append((b"connection", b"keep-alive"))
