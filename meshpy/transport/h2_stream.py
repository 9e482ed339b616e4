"""One request stream of a downstream HTTP/2 connection, seen by its exchange as the client side.

Flow control is end to end in both directions:
- request body: the bytes a stream receives are acknowledged to the client (which opens its window
  again) only while the exchange is not holding reading back, that is while the upstream connection
  takes what it is given; otherwise they are counted and acknowledged on resume;
- response body: data goes out only as far as the client's window allows; the rest waits here, and
  while anything waits the exchange pauses its upstream connection (as for a slow HTTP/1.1 client).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from meshpy.codec.h2session import ErrorCode, StreamGone
from meshpy.codec.http1 import no_body_status
from meshpy.codec.http2 import CONNECTION_SPECIFIC, response_fields
from meshpy.ports import NO_BODY
from meshpy.transport.h2_tunnel import H2TunnelUp

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from meshpy.ports import (
        ConnectionInfo,
        DownstreamExchange,
        Header,
        Responding,
        StreamExchange,
        StreamTunnel,
        TunnelFeed,
    )
    from meshpy.routing.compile import ListenerSlot
    from meshpy.transport.downstream_http2 import Http2Downstream


class H2Stream:
    __slots__ = (
        "_held",
        "_unacked",
        "blocked",
        "blocked_since",
        "conn",
        "end_wanted",
        "ex",
        "held",
        "loop",
        "opened",
        "original_dst",
        "out",
        "peer",
        "pending",
        "req_ended",
        "resp_ended",
        "sid",
        "slot",
        "trailers",
        "tunnel",
        "write_paused",
    )

    def __init__(self, conn: Http2Downstream, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.loop: asyncio.AbstractEventLoop = conn.loop
        self.slot: ListenerSlot = conn.slot
        self.peer = conn.peer
        self.original_dst = conn.original_dst
        self.out: list[bytes] = []  # never written: H2Exchange writes through the methods below
        self.ex: StreamExchange | None = None
        # The response head waits for the end of the upstream read that brought it (see flush), so a
        # response that ends in its head goes out as one HEADERS frame: gRPC's trailers-only form.
        self.held: list[tuple[bytes, bytes]] | None = None
        self.write_paused = conn.write_paused
        self.blocked = False  # response data waits for the client's window
        self.blocked_since = 0.0
        self.pending: deque[bytes] = deque()
        self.end_wanted = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.req_ended = False
        self.resp_ended = False
        self.opened = conn.loop.time()
        self.tunnel: StreamTunnel | None = None  # after an extended CONNECT became a WebSocket tunnel
        self._held = 0
        self._unacked = 0

    # -- the request body, from the connection ---------------------------------------------------
    def received(self, data: bytes, flow_controlled: int) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.to_upstream(data)
        elif self.ex is not None:
            self.ex.request_body(data)
        if self._held:
            self._unacked += flow_controlled
        elif flow_controlled:
            self.conn.h2.acknowledge(self.sid, flow_controlled)  # type: ignore[union-attr]

    # -- the Downstream interface (meshpy.stack.parts) -------------------------------------------
    def pause_reading(self, reason: int) -> None:
        self._held |= reason

    def resume_reading(self, reason: int) -> None:
        if not self._held & reason:
            return
        self._held &= ~reason
        if not self._held and self._unacked:
            n, self._unacked = self._unacked, 0
            if not self.conn.closing:
                self.conn.h2.acknowledge(self.sid, n)  # type: ignore[union-attr]
                self.conn.flush_soon()

    def flush(self) -> None:
        if self.held is not None:
            self.conn.pump_soon(self)  # the head goes out with the connection's flush (Http2Downstream.pump)
        else:
            self.conn.flush_soon()

    def close(self) -> None:
        """The exchange gave up on a response under way: reset this stream only."""
        self.conn.reset(self, ErrorCode.INTERNAL_ERROR)

    def connection_info(self) -> ConnectionInfo:
        return self.conn.connection_info()

    def exchange_done(self, ex: DownstreamExchange, keep_alive: bool) -> None:
        trailers = self.ex.trailers if self.ex is not None else None
        if self.held is not None and not self.pending:
            self._send_held(not trailers)  # a response that ends in its head: one HEADERS frame
        self.end_response(trailers)
        # The exchange and this stream point at each other: let go, so that both are freed by
        # reference counting rather than left to the cycle collector (what is left to send needs
        # only this stream).
        self.ex = None

    # -- the answer, from its exchange (meshpy.ports.ResponseWriter) ------------------------------
    def respond_raw(self, ex: Responding, status: int, fields: bytes) -> bool:
        return False  # HTTP/1.1 bytes: nothing to pass on as they are

    def respond_interim(self, ex: Responding, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.send_head(response_fields(status, headers), False)

    def respond_head(self, ex: Responding, status: int, headers: list[Header], body: int) -> None:
        out = response_fields(status, headers)
        if body == NO_BODY:
            self.send_head(out, True)
        else:
            self.held = out

    def respond_body(self, ex: Responding, data: bytes) -> None:
        self.send_data(data)  # (a head still held goes first, at the pump)

    def respond_end(self, ex: Responding) -> None:
        """(The end goes out with the trailers, if any, when the exchange is done: exchange_done.)"""

    def respond_whole(self, ex: Responding, status: int, headers: list[Header], body: bytes) -> None:
        fields = [(b":status", b"%d" % status)]
        fields.extend(h for h in headers if h[0] not in CONNECTION_SPECIFIC)
        if no_body_status(status) or ex.head_request:
            body = b""
        else:
            fields.append((b"content-length", b"%d" % len(body)))
        self.send_head(fields, not body)
        if body:
            self.send_data(body)

    def join_tunnel(self, ex: Responding, headers: list[Header], upstream: asyncio.Transport, early: bytes,
                    on_close: Callable[[int, int], None]) -> tuple[int, TunnelFeed]:
        """RFC 8441 5: the upstream's 101 is a 200 on the stream, then the stream's DATA and the
        upstream's bytes are one tunnel. (`early`: nothing comes before the 200 on a stream.)"""
        fields = [h for h in headers if h[0] != b"sec-websocket-accept"]  # an HTTP/1.1 handshake detail
        self.send_head(response_fields(200, fields), False)
        self.tunnel = tunnel = H2TunnelUp(self, upstream, on_close)
        return 200, tunnel

    def _send_held(self, end: bool) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.send_head(held, end)

    # -- the response, from H2Exchange ------------------------------------------------------------
    def send_head(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        conn = self.conn
        if conn.closing or self.resp_ended or conn.h2 is None:
            return
        try:
            conn.h2.send_headers(self.sid, headers, end)
        except StreamGone:
            # The codec closed the stream (or the connection) while reading the same bytes as the
            # request this answers, e.g. a second HEADERS on it: the answer has nowhere to go.
            conn.reset(self, ErrorCode.STREAM_CLOSED)
            return
        if end:
            self.resp_ended = True
            conn.stream_finished(self)

    def send_data(self, data: bytes) -> None:
        if self.resp_ended or not data:
            return
        self.pending.append(data)
        self.conn.pump_soon(self)

    def end_response(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.resp_ended or self.end_wanted:
            return
        self.end_wanted = True
        self.trailers = trailers
        self.conn.pump_soon(self)

    def set_write_paused(self, paused: bool) -> None:
        if paused == self.write_paused:
            return
        self.write_paused = paused
        if self.tunnel is not None:
            self.tunnel.pause_upstream(paused)
            return
        ex = self.ex
        if ex is not None and not ex.done:
            if paused:
                ex.down_pause_writing()
            else:
                ex.down_resume_writing()
