"""One request on an HTTP/2 upstream connection: what an exchange holds where it would hold an
HTTP/1.1 connection (see meshpy.transport.upstream_http2)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from meshpy.codec.http2 import CONNECTION_SPECIFIC
from meshpy.codec.raw_head import parse_fields

if TYPE_CHECKING:
    import asyncio

    from meshpy.ports import OutgoingRequest, TunnelFeed, UpstreamSink
    from meshpy.transport.upstream_http2 import UpstreamHttp2


def h2_request_headers(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]]) \
        -> list[tuple[bytes, bytes]]:
    """The request head the exchange built for HTTP/1.1 (method, target, header list with Host), as
    an HTTP/2 header list: Host becomes :authority, connection-specific fields go."""
    authority = b""
    rest: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        if name == b"host":
            authority = value
        elif name not in CONNECTION_SPECIFIC:
            rest.append((name, value))
    return [(b":method", method), (b":scheme", b"http"), (b":path", target), (b":authority", authority),
            *rest]


class Http2UpstreamStream:
    """One request on an HTTP/2 upstream connection; flow control as meshpy.transport.upstream_http2 says."""

    multiplexed = True
    __slots__ = ("_held", "_unacked", "conn", "ended", "exchange", "head", "head_ended", "head_fields",
                 "pending", "pool", "sid", "used")

    def __init__(self, conn: UpstreamHttp2) -> None:
        self.conn = conn
        self.pool = conn.pool
        self.sid = 0  # below 0 until the stream is opened (a place in the connection's `streams`)
        self.head: list[tuple[bytes, bytes]] = []  # the request's header list, until it is sent
        self.exchange: UpstreamSink | None = None
        self.used = conn.streams_total > 0
        self.pending: deque[bytes] = deque()
        # The response head's fields as a list (set before up_head), so that an HTTP/2 client's
        # exchange need not parse the fields block back.
        self.head_fields: list[tuple[bytes, bytes]] | None = None
        self.head_ended = False  # END_STREAM came on the response head (gRPC's trailers-only answer)
        self.ended = False  # END_STREAM wanted after `pending`
        self._held = False
        self._unacked = 0

    def attach(self, exchange: UpstreamSink, head_request: bool) -> None:
        # A HEAD answer ends with END_STREAM like any other: unlike HTTP/1.1, nothing to remember.
        self.exchange = exchange

    def detach(self) -> None:
        self.exchange = None

    def is_usable(self) -> bool:
        return self.conn.usable()

    def send_request(self, req: OutgoingRequest, body: list[bytes] | None, end: bool) -> None:
        """The stream opens at the connection's next flush (UpstreamHttp2.open), with what has come of
        the body by then: a request that came whole in one read goes out in one call."""
        self.head = h2_request_headers(req.method, req.up_target, req.upstream_fields())
        if body:
            self.pending.extend(body)
        self.ended = end
        self.conn.open_soon(self)

    def write_body(self, data: bytes, chunked: bool) -> None:
        self.pending.append(data)
        if self.sid > 0:
            self.conn.pump(self)
            self.conn.flush_soon()

    def end_body(self, chunked: bool) -> None:
        self.ended = True
        if self.sid > 0:
            self.conn.pump(self)
            self.conn.flush_soon()

    def response_fields(self, fields: bytes) -> list[tuple[bytes, bytes]]:
        """The head as the frames brought it: nothing to parse back from `fields`."""
        if self.head_fields is not None:
            return self.head_fields
        return parse_fields(fields)

    def hand_over(self) -> asyncio.Transport:
        raise RuntimeError("an HTTP/2 stream does not become a tunnel")  # (no 101 comes on one)

    def feed(self, tunnel: TunnelFeed) -> None:
        raise RuntimeError("an HTTP/2 stream does not become a tunnel")

    def tunnel_closed(self) -> None:
        """(Never a tunnel: see hand_over.)"""

    def pause_reading(self) -> None:
        self._held = True

    def resume_reading(self) -> None:
        self._held = False
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.conn.ack(self, n)

    def received(self, n: int) -> None:
        if self._held:
            self._unacked += n
        else:
            self.conn.ack(self, n)

    def close(self) -> None:
        """Not reusable: the stream is cancelled if it still runs; the connection stays."""
        self.conn.cancel(self)
