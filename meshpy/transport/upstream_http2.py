"""The upstream side over HTTP/2: one connection carries many exchanges, one stream each.

An exchange holds an `Http2UpstreamStream` where it would hold an HTTP/1.1 connection, with the same
methods, so routing, retries and hedging do not know which protocol the cluster speaks. The request
head arrives as the HTTP/1.1 head the exchange built (its retries edit that one form); it is turned
into an HTTP/2 header list here. The response head goes back as a fields block (meshpy.codec.raw_head),
so the exchange's response path is the same too; trailers go to `up_trailers`.

Flow control: response data is acknowledged to the upstream only while the exchange's client keeps
up (`pause_reading` holds the acknowledgements back, so the upstream's window closes); request data
goes out as the upstream's window allows, and the rest waits here, holding the client back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol, cast

from meshpy.codec import h2session
from meshpy.codec.h2session import (
    DATA,
    END,
    GOAWAY,
    PING_ACK,
    RESET,
    RESPONSE,
    SETTINGS,
    STREAM_ERROR,
    TRAILERS,
    WINDOW,
    ErrorCode,
    SessionError,
    StreamGone,
)
from meshpy.codec.http2 import client_settings
from meshpy.errors import UpstreamProtocolError
from meshpy.model.unix_address import label
from meshpy.transport.upstream_h2_stream import Http2UpstreamStream

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options
    from meshpy.model.unix_address import SockAddr
    from meshpy.ports import UpstreamSink, UpstreamStream
    from meshpy.telemetry.metrics import ClusterStats

__all__ = ["Http2UpstreamStream", "RefusedStream", "UpstreamHttp2"]


log = logging.getLogger("meshpy.upstream")
# A request whose end has come with at most this much body goes out in one Session.send_message.
WHOLE_MAX = 16 * 1024


class StreamPool(Protocol):
    address: SockAddr
    stats: ClusterStats

    def release(self, conn: UpstreamStream) -> None: ...
    def discard(self, conn: UpstreamStream) -> None: ...
    def connection_gone(self, conn: UpstreamHttp2, lost: bool) -> None: ...
    def capacity_freed(self, conn: UpstreamHttp2) -> None: ...


class RefusedStream(ConnectionError):
    """The upstream will not process this stream (GOAWAY below it, or REFUSED_STREAM): safe to retry."""


class UpstreamHttp2(asyncio.Protocol):
    __slots__ = ("_flush_due", "_ka_timer", "_keepalive", "_opening", "_reading", "_stand_in", "closed",
                 "goaway", "h2", "idle_since", "max_streams", "pool", "settled", "streams", "streams_total",
                 "transport")

    def __init__(self, pool: StreamPool, opts: Http2Options) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.h2 = h2session.client(opts, client_settings(opts))
        self.streams: dict[int, Http2UpstreamStream] = {}
        self.streams_total = 0
        # Streams this side opens at most at once: ours, until the upstream's SETTINGS say less.
        self.max_streams = opts.max_concurrent_streams
        # No stream is opened before the server's SETTINGS arrive: until then its stream limit is
        # unknown, and a server that allows fewer may refuse the whole connection.
        self.settled = False
        self.closed = False
        self.goaway = False  # the upstream sent GOAWAY: no new streams here
        self.idle_since = 0.0
        self._flush_due = False
        self._reading = False
        self._opening: list[Http2UpstreamStream] = []  # streams to open at the next flush (open_soon)
        self._stand_in = 0
        # (interval, timeout) of PING keepalive, or None; one timer: the next PING, or its deadline.
        self._keepalive = (opts.keepalive_interval, opts.keepalive_timeout) \
            if opts.keepalive_interval is not None else None
        self._ka_timer: asyncio.Handle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Counted here, where connection_lost (the pool's connection_gone) uncounts it, even for a
        # connection closed before the pool ever got it.
        stats = self.pool.stats
        stats.cx_total += 1
        stats.cx_active += 1
        stats.cx_http2_total += 1
        self.flush()
        if self._keepalive is not None:
            self._ka_timer = asyncio.get_running_loop().call_later(self._keepalive[0], self._ping)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        for s in streams:
            ex = s.exchange
            if ex is not None:
                s.exchange = None
                ex.up_failed(exc, False)
        self.pool.connection_gone(self, True)

    def data_received(self, data: bytes) -> None:
        self._reading = True
        try:
            self._received(data)
        finally:
            self._reading = False

    def _received(self, data: bytes) -> None:
        try:
            events = self.h2.receive(data)
        except SessionError as err:
            self.flush()
            self._fail_all(UpstreamProtocolError(f"http2: {err}"))
            return
        touched: set[UpstreamSink] = set()
        streams = self.streams
        for kind, sid, a, b in events:
            if kind == DATA:
                s = streams.get(sid)
                if s is None:
                    if b:
                        self.h2.acknowledge(sid, b)
                    continue
                if s.exchange is not None:
                    s.exchange.up_body(a)
                    touched.add(s.exchange)
                s.received(b)
            elif kind == RESPONSE:
                self._head(sid, a, touched, b)
            elif kind == END:
                self._ended(sid, touched)
            elif kind == TRAILERS:
                s = streams.get(sid)
                if s is not None and s.exchange is not None:
                    s.exchange.up_trailers(a)
            elif kind == RESET:
                self._stream_failed(sid, RefusedStream("refused") if a == ErrorCode.REFUSED_STREAM else None)
            elif kind == STREAM_ERROR:
                self._stream_failed(sid, UpstreamProtocolError("http2: malformed response"))
            elif kind == WINDOW:
                self._window(sid)
            elif kind == SETTINGS:
                if a is not None:
                    self.max_streams = min(self.max_streams, a)
                self.settled = True
                self._window(0)
                self.pool.capacity_freed(self)
            elif kind == GOAWAY:
                self._goaway(a, b)
            elif kind == PING_ACK:
                self._pong()
        self.flush()
        self._reading = False  # acknowledgements the exchanges' flushes make need a flush of their own
        for ex in touched:
            ex.flush()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        for s in self.streams.values():
            if s.exchange is not None:
                s.exchange.up_pause_writing()

    def resume_writing(self) -> None:
        for s in list(self.streams.values()):
            if s.exchange is not None:
                s.exchange.up_resume_writing()

    # -- events ------------------------------------------------------------------------------------
    def _head(self, sid: int, headers: list[tuple[bytes, bytes]], touched: set[UpstreamSink],
              ended: bool = False) -> None:
        s = self.streams.get(sid)
        if s is None or s.exchange is None:
            return
        if self.h2.checks_messages:  # nghttp2 has checked: :status first, and the only pseudo-header
            status = int(headers[0][1])
            fields = headers[1:]
        else:
            status = 0
            fields = []
            for name, value in headers:
                if name == b":status":
                    status = int(value)
                elif name[:1] != b":":
                    fields.append((name, value))
        s.head_fields = fields
        s.head_ended = bool(ended) and status >= 200
        touched.add(s.exchange)
        # A HEAD response ends with END_STREAM like any other, so unlike HTTP/1.1 nothing special.
        # (The fields also as an HTTP/1.1 block, meshpy.codec.raw_head: what an HTTP/1.1 client gets.)
        s.exchange.up_head(status, b"".join([b"\r\n" + n + b": " + v for n, v in fields]) + b"\r\n\r\n", True)

    def _close_stream(self, sid: int) -> UpstreamSink | None:
        """Forget stream `sid`; its exchange, if it still has one, is returned to be told how it ended."""
        s = self.streams.pop(sid, None)
        if s is None:
            return None
        self._stream_closed()
        ex, s.exchange = s.exchange, None
        return ex

    def _ended(self, sid: int, touched: set[UpstreamSink]) -> None:
        ex = self._close_stream(sid)
        if ex is not None:
            touched.add(ex)
            ex.up_end(True)

    def _stream_failed(self, sid: int, exc: BaseException | None) -> None:
        ex = self._close_stream(sid)
        if ex is not None:
            ex.up_failed(exc, False)

    def _fail_stream(self, s: Http2UpstreamStream, exc: BaseException) -> None:
        """A stream that never opened (its connection went away first): refused, so retries may go on."""
        self._stream_closed()
        ex, s.exchange = s.exchange, None
        if ex is not None:
            ex.up_failed(exc, False)

    def _stream_closed(self) -> None:
        self.pool.capacity_freed(self)
        if not self.streams and self.transport is not None:
            self.idle_since = asyncio.get_running_loop().time() if not self.goaway else 0.0
            if self.goaway:
                self.close()

    def _goaway(self, code: int, last: int) -> None:
        """Streams up to last_stream_id finish here; later ones were never processed: refused."""
        self.goaway = True
        for sid in [sid for sid in self.streams if sid > last or sid < 0]:  # (< 0: not opened yet)
            self._stream_failed(sid, RefusedStream("GOAWAY"))
        if code != ErrorCode.NO_ERROR:
            name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
            self._fail_all(UpstreamProtocolError(f"GOAWAY {name}"))
        elif not self.streams:
            self.close()
        self.pool.connection_gone(self, False)

    def _fail_all(self, exc: BaseException) -> None:
        self.goaway = True
        for sid in list(self.streams):
            self._stream_failed(sid, exc)
        self.close()

    # -- keepalive ---------------------------------------------------------------------------------
    def _ping(self) -> None:
        """Keepalive: a PING, and the deadline for its answer."""
        if self.closed or self._keepalive is None:
            return
        self.h2.ping(b"meshpyka")
        self.flush()
        self._ka_timer = asyncio.get_running_loop().call_later(self._keepalive[1], self._ping_lost)

    def _pong(self) -> None:
        if self._keepalive is None or self.closed:
            return
        if self._ka_timer is not None:
            self._ka_timer.cancel()
        self._ka_timer = asyncio.get_running_loop().call_later(self._keepalive[0], self._ping)

    def _ping_lost(self) -> None:
        """No answer to a keepalive PING in time: the peer is gone; its streams fail (retries decide)."""
        self._ka_timer = None
        log.warning("http2 upstream %s: no PING answer in %.1fs: closing", label(self.pool.address),
                    self._keepalive[1] if self._keepalive else 0.0)
        self._fail_all(UpstreamProtocolError("keepalive PING unanswered"))

    # -- used by streams and the pool ------------------------------------------------------------
    def usable(self) -> bool:
        t = self.transport
        return not self.closed and not self.goaway and t is not None and not t.is_closing()

    def has_room(self) -> bool:
        return self.settled and self.usable() and len(self.streams) < self.max_streams

    def new_stream(self) -> Http2UpstreamStream:
        s = Http2UpstreamStream(self)
        self.streams_total += 1
        return s

    def open_soon(self, s: Http2UpstreamStream) -> None:
        """`s` takes its place now (under a stand-in id below 0, so that it counts against the stream
        limit and fails with the connection) and opens at the next flush."""
        self._stand_in -= 1
        s.sid = self._stand_in
        self.streams[s.sid] = s
        self._opening.append(s)
        self.flush_soon()

    def _open_waiting(self) -> None:
        opening, self._opening = self._opening, []
        h2c = self.h2
        for s in opening:
            if self.streams.pop(s.sid, None) is None:
                continue  # cancelled meanwhile
            if self.goaway or self.closed:
                s.sid = 0
                self._fail_stream(s, RefusedStream("GOAWAY"))
                continue
            pending = s.pending
            head, s.head = s.head, []
            if s.ended and pending and h2c.packs_frames:
                body = pending[0] if len(pending) == 1 else b"".join(pending)
                if len(body) <= WHOLE_MAX:
                    # The whole request at once (nghttp2 sends it as the window allows).
                    pending.clear()
                    s.ended = False
                    s.sid = h2c.send_message(0, head, body, None)
                    self.streams[s.sid] = s
                    continue
            s.sid = h2c.open_stream(head, s.ended and not pending)
            self.streams[s.sid] = s
            if pending:
                self.pump(s)
            else:
                s.ended = False

    def pump(self, s: Http2UpstreamStream) -> None:
        if self.closed or s.sid <= 0 or s.sid not in self.streams:
            return
        h2c = self.h2
        pending = s.pending
        try:
            window = 0
            while pending:
                if window <= 0 or not h2c.packs_frames:  # (see Http2Downstream.pump)
                    window = h2c.send_window(s.sid)
                    if window <= 0:
                        break
                data = pending[0]
                if len(data) <= window:
                    pending.popleft()
                    h2c.send_data(s.sid, data, False)
                else:
                    h2c.send_data(s.sid, data[:window], False)
                    pending[0] = data[window:]
                window -= len(data)
            if pending:
                if s.exchange is not None:
                    s.exchange.up_pause_writing()
                return
            if s.exchange is not None:
                s.exchange.up_resume_writing()
            if s.ended:
                s.ended = False
                h2c.end_stream(s.sid)
        except StreamGone:
            pass  # the upstream reset it: a RESET event reports that

    def _window(self, sid: int) -> None:
        if sid:
            one = self.streams.get(sid)
            targets = [one] if one is not None else []
        else:
            targets = list(self.streams.values())
        for s in targets:
            if s.pending:
                self.pump(s)

    def ack(self, s: Http2UpstreamStream, n: int) -> None:
        if not self.closed and s.sid > 0:
            self.h2.acknowledge(s.sid, n)
            if not self._reading:  # (data_received flushes at its end anyway)
                self.flush_soon()

    def cancel(self, s: Http2UpstreamStream) -> None:
        s.exchange = None
        if self.streams.pop(s.sid, None) is None:
            return
        if not self.closed and s.sid > 0:
            with contextlib.suppress(StreamGone):
                self.h2.reset_stream(s.sid, ErrorCode.CANCEL)
            self.flush()
        self._stream_closed()

    def flush_soon(self) -> None:
        """One write per loop iteration for the streams opened or fed in it (see the downstream's)."""
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        if self._opening:
            self._open_waiting()
        chunks = self.h2.chunks_to_send()
        if chunks and self.transport is not None and not self.transport.is_closing():
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)
        if self.h2.finished() and not self.closed:  # the codec ended the connection (its GOAWAY is out)
            self._fail_all(UpstreamProtocolError("http2: connection ended by the codec"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
