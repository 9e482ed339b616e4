"""Two connections joined into one byte stream, after an HTTP/1.1 Upgrade (WebSocket) was accepted.

Each transport gets a `TunnelEnd` as its protocol (asyncio's set_protocol), so the HTTP protocols
that carried the handshake drop out of the path: bytes go straight from one transport to the other.
Half-close is honoured (EOF becomes write_eof on the other side; the tunnel closes when both sides are
done), and a transport whose write buffer is full pauses reading on the other side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from meshpy.ports import TunnelFeed


class Pending(asyncio.Protocol):
    """The protocol of a connection made for a tunnel that is not joined yet (CONNECT: the answer to
    the client goes first): what arrives meanwhile is kept and handed over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.kept: list[bytes] = []
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.kept.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def hand_over(self, tunnel: TunnelFeed) -> None:
        tunnel.from_upstream(b"".join(self.kept))
        if self.lost:
            tunnel.close()
        elif self.eof:
            tunnel.upstream_eof()


class TunnelEnd(asyncio.Protocol):
    __slots__ = ("eof", "moved", "other", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.other: TunnelEnd = self
        self.eof = False
        self.moved = 0  # bytes read from this side

    def data_received(self, data: bytes) -> None:
        self.moved += len(data)
        self.other.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        other = self.other
        if other.eof:
            self.tunnel.close()
            return None
        if other.transport.can_write_eof():
            other.transport.write_eof()
            return True  # keep our side open for what the other side still sends
        self.tunnel.close()
        return None

    def pause_writing(self) -> None:
        self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.other.transport.is_closing():
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel:
    """`on_close(bytes from the client, bytes from the upstream)` runs once, when the tunnel ends."""

    __slots__ = ("closed", "down", "on_close", "up")

    def __init__(self, down: asyncio.Transport, up: asyncio.Transport,
                 on_close: Callable[[int, int], None]) -> None:
        self.down = TunnelEnd(self, down)
        self.up = TunnelEnd(self, up)
        self.down.other, self.up.other = self.up, self.down
        self.on_close = on_close
        self.closed = False
        down.set_protocol(self.down)
        up.set_protocol(self.up)

    def from_client(self, data: bytes) -> None:
        """Bytes the client sent after its handshake request, before the tunnel was made."""
        if data:
            self.down.data_received(data)

    def from_upstream(self, data: bytes) -> None:
        """Bytes the upstream sent right after its 101 head, in the same read."""
        if data:
            self.up.data_received(data)

    def upstream_eof(self) -> None:
        self.up.eof_received()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.down.transport.close()
        self.up.transport.close()
        self.on_close(self.down.moved, self.up.moved)
