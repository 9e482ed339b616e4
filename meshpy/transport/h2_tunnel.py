"""WebSocket over HTTP/2 (RFC 8441, extended CONNECT) to an HTTP/1.1 upstream, as Envoy does it: the
stream's `CONNECT` with `:protocol websocket` goes upstream as `GET` with `Upgrade: websocket` (and the
Sec-WebSocket-Key that HTTP/1.1 needs and RFC 8441 clients do not send); the upstream's 101 becomes a
200 on the stream; then the stream's DATA and the upstream connection's bytes are one tunnel.

Flow control stays end to end: the client's DATA is acknowledged only while the upstream transport
takes it, and the upstream is read only while the stream's window has room.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshpy.codec.h2session import ErrorCode

if TYPE_CHECKING:
    from meshpy.transport.h2_stream import H2Stream

PAUSE_TUNNEL = 8  # an H2Stream read-pause reason: the upstream transport is full


def websocket_key() -> bytes:
    """A Sec-WebSocket-Key (RFC 6455 4.1): 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16))


class H2TunnelUp(asyncio.Protocol):
    """The upstream connection of a tunnel whose client side is an HTTP/2 stream."""

    __slots__ = ("client_done", "closed", "from_client", "from_up", "on_close", "stream", "transport",
                 "up_done")

    def __init__(self, stream: H2Stream, transport: asyncio.Transport,
                 on_close: Callable[[int, int], None]) -> None:
        self.stream = stream
        self.transport = transport
        self.on_close = on_close
        self.from_client = 0
        self.from_up = 0
        self.client_done = False  # the client ended its side of the stream
        self.up_done = False  # the upstream sent EOF
        self.closed = False
        transport.set_protocol(self)

    # -- from the upstream -----------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        if data:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.from_up += len(data)
        self.stream.send_data(data)

    def eof_received(self) -> bool | None:
        # The upstream is done: END_STREAM after what is still queued; a client still sending is
        # then told to stop (RST_STREAM NO_ERROR, see Http2Downstream.stream_finished).
        self.up_done = True
        self.stream.end_response(None)
        self.close()
        return None

    def upstream_eof(self) -> None:
        self.eof_received()

    def pause_writing(self) -> None:
        self.stream.pause_reading(PAUSE_TUNNEL)

    def resume_writing(self) -> None:
        self.stream.resume_reading(PAUSE_TUNNEL)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.up_done and not self.stream.resp_ended:
            self.stream.conn.reset(self.stream, ErrorCode.CONNECT_ERROR)  # RFC 8441 / RFC 9113 8.5
        self.close()

    # -- from the client ---------------------------------------------------------------------------
    def to_upstream(self, data: bytes) -> None:
        self.from_client += len(data)
        if not self.transport.is_closing():
            self.transport.write(data)

    def client_ended(self) -> None:
        self.client_done = True
        if self.up_done:
            self.close()
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_upstream(self, paused: bool) -> None:
        if self.transport.is_closing():
            return
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport.close()
        self.on_close(self.from_client, self.from_up)
