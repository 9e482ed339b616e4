"""The upstream side of an HTTP/1.1 exchange: one pooled connection, httptools response parsing.

The connection carries one exchange at a time (no upstream pipelining: a failure would take every
queued request down with it). Parser callbacks go straight to the attached exchange.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from meshpy.codec.http1 import LAST_CHUNK, chunk
from meshpy.codec.raw_head import MAX_HEAD, parse_fields, split_head
from meshpy.errors import UpstreamProtocolError
from meshpy.transport.writes import send

if TYPE_CHECKING:
    from meshpy.ports import OutgoingRequest, TunnelFeed, UpstreamSink
    from meshpy.upstream.pool import HostPool


class UpstreamHttp1(asyncio.Protocol):
    multiplexed = False  # one exchange at a time (see Http2UpstreamStream for HTTP/2)
    head_ended = False  # (a bodiless answer says so by its length or status)
    __slots__ = (
        "_head_buf",
        "_in_head",
        "closed",
        "exchange",
        "head_request",
        "idle_since",
        "parser",
        "pool",
        "reading_paused",
        "transport",
        "tunnel",
        "used",
    )

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: UpstreamSink | None = None
        self.head_request = False
        self.idle_since = 0.0
        self.closed = False
        self.reading_paused = False
        self.used = False  # has carried an exchange before: a failure on it may be a stale keep-alive
        self.tunnel: TunnelFeed | None = None  # set when a 101 made this connection part of a tunnel
        # The bytes of the response head being received (see meshpy.codec.raw_head); _in_head is
        # false from the end of a final head to the end of its response.
        self._head_buf = b""
        self._in_head = True

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        stats = self.pool.stats
        stats.cx_total += 1
        stats.cx_active += 1
        stats.cx_http1_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.stats.cx_active -= 1
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.up_failed(exc, False)
        else:
            self.pool.forget_idle(self)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # Bytes on an idle connection: the upstream is confused; never reuse it.
            self.close()
            return
        if self._in_head:
            buf = self._head_buf + data if self._head_buf else data
            if len(buf) > MAX_HEAD and split_head(buf) is None:
                return self._protocol_error("response head too large")
            self._head_buf = buf
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._protocol_error(str(err))
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data, upgrade.args[0] if upgrade.args else len(data))
        # Everything this read produced for the client goes out in one write.
        ex.flush()

    def _upgraded(self, data: bytes, offset: int) -> None:
        """llhttp stops after a 101 head. If the exchange made a tunnel of it, the rest of this read is
        the upstream's first bytes of the new protocol; otherwise the upstream switched unasked."""
        tunnel = self.tunnel
        if tunnel is None:
            self._protocol_error("unrequested protocol switch")
            return
        tunnel.from_upstream(data[offset:])

    def _protocol_error(self, reason: str) -> None:
        cur = self.exchange
        self.exchange = None
        self.close()
        if cur is not None:
            cur.up_failed(UpstreamProtocolError(reason), True)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost ends a close-delimited response

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.up_pause_writing()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.up_resume_writing()

    # -- used by the exchange --------------------------------------------------------------------
    def is_usable(self) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing() and self.exchange is None

    def attach(self, exchange: UpstreamSink, head_request: bool) -> None:
        self.exchange = exchange
        self.head_request = head_request
        self.used = True

    def detach(self) -> None:
        self.exchange = None

    def send_request(self, req: OutgoingRequest, body: list[bytes] | None, done: bool) -> None:
        """The head the exchange serialized, what of the body it holds, and the end if it came."""
        transport = self.transport
        assert transport is not None
        if not body and not done:
            transport.write(req.upstream_head())
            return
        out = [req.upstream_head()]
        chunked = req.up_chunked
        if body:
            if chunked:
                out.extend(chunk(b) for b in body)
            else:
                out.extend(body)
        if done and chunked:
            out.append(LAST_CHUNK)
        send(transport, out)

    def response_fields(self, fields: bytes) -> list[tuple[bytes, bytes]]:
        return parse_fields(fields)

    def hand_over(self) -> asyncio.Transport:
        self.pool.hand_over(self)
        self.exchange = None
        assert self.transport is not None
        return self.transport

    def feed(self, tunnel: TunnelFeed) -> None:
        self.tunnel = tunnel  # the bytes after the 101 head, in this same read, go through it

    def tunnel_closed(self) -> None:
        self.connection_lost(None)  # the pool's bookkeeping of a closed connection

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def write_body(self, data: bytes, chunked: bool) -> None:
        assert self.transport is not None
        self.transport.write(chunk(data) if chunked else data)

    def end_body(self, chunked: bool) -> None:
        if chunked:
            self.write(LAST_CHUNK)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks ---------------------------------------------------------------------
    # No on_message_begin, on_status or on_header: httptools skips callbacks a protocol does not
    # define, and each costs a Python call. The head is taken whole from the bytes instead.
    def on_headers_complete(self) -> None:
        split = split_head(self._head_buf)
        if split is None:
            raise UpstreamProtocolError("response head without an end")  # llhttp saw one: never
        fields, rest = split
        if len(fields) > MAX_HEAD:
            raise UpstreamProtocolError("response head too large")
        status = self.parser.get_status_code()
        if status < 100:  # llhttp takes any three digits
            raise UpstreamProtocolError(f"status {status} below 100")
        if status >= 200:
            self._in_head = False
            rest = b""
        self._head_buf = rest  # after an interim (1xx) head, the start of the next head
        ex = self.exchange
        if ex is None:
            return
        keep_alive = self.parser.should_keep_alive()
        ex.up_head(status, fields, keep_alive)
        if self.head_request and status >= 200:
            # llhttp cannot be told that the request was HEAD, so it would wait for a body the
            # upstream never sends. End the exchange here and start a fresh parser for the next one.
            self.parser = httptools.HttpResponseParser(self)
            self._in_head = True
            if self.exchange is ex:
                self.exchange = None
                ex.up_end(keep_alive)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            if self._in_head:  # after an interim (1xx) head, which has no body
                raise UpstreamProtocolError("a body after an interim response")
            ex.up_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return  # an interim (1xx) response: the final one follows on the same connection
        self._in_head = True
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        ex.up_end(self.parser.should_keep_alive())
