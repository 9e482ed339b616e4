"""A listener with `protocol: auto` speaks HTTP/1.1 or HTTP/2 on one port: the first bytes decide.

A connection that starts with the HTTP/2 client preface (prior knowledge, RFC 9113 3.3) is HTTP/2;
anything else is HTTP/1.1 (an `Upgrade: h2c` request among it is answered as HTTP/1.1, as Envoy does).
A listener with a `tcp_fallback` sniffs harder, as Istio's protocol detection does: bytes that do not
start with an HTTP/1 method and a space (nor the preface) are not HTTP, and the connection is proxied
as TCP to the fallback's cluster.
The detector is the connection's protocol only until those first bytes arrive; then it hands the
transport and the bytes to the real one, so nothing of it stays on the request path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from meshpy.codec.http2 import PREFACE
from meshpy.transport.downstream_http1 import Http1Downstream
from meshpy.transport.downstream_http2 import Http2Downstream
from meshpy.transport.tcp import TcpDownstream

if TYPE_CHECKING:
    from meshpy.routing.compile import ListenerSlot, TcpListenerConfig


Downstream = Http1Downstream | Http2Downstream | TcpDownstream


def switch_to(proto: Downstream | DetectingDownstream, transport: asyncio.Transport,
              original_dst: tuple[str, int] | None, buf: bytes = b"") -> None:
    """Hand a connection whose first bytes (`buf`) have been read to the protocol that serves it: the
    one way every first-bytes reader (this detector, ChainDispatch) gives a connection on."""
    proto.original_dst = original_dst
    transport.set_protocol(proto)
    proto.connection_made(transport)
    if buf and not transport.is_closing():
        proto.data_received(buf)


class DetectingDownstream(asyncio.Protocol):
    __slots__ = ("_buf", "_timer", "loop", "original_dst", "slot", "stats", "transport")

    def __init__(self, slot: ListenerSlot, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._timer: asyncio.Handle | None = None
        self.original_dst: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.slot.connections.add(self)
        # Counted from the accept, as Envoy counts; the protocol that takes over counts it again, so
        # the count is handed back then (bound now: a reload may rename the listener meanwhile).
        self.stats = stats = self.slot.current.stats
        stats.cx_total += 1
        stats.cx_active += 1
        # A client that connects and says nothing is closed like an idle HTTP/1.1 connection, or, where
        # the listener says so, taken for the client of a server that speaks first and proxied as TCP.
        fallback = self.slot.current.tcp_fallback
        if fallback is not None and fallback.detect_timeout is not None:
            self._timer = self.loop.call_later(fallback.detect_timeout, self._silent)
            return
        wait = self.slot.current.idle_timeout
        if wait is not None:
            self._timer = self.loop.call_later(wait, self.close)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if len(buf) < len(PREFACE) and PREFACE.startswith(buf):
            self._buf = buf  # could still be the preface: wait for the rest of it
            return
        tcp = self.slot.current.tcp_fallback
        if tcp is None or buf.startswith(PREFACE):
            return self._hand_over(buf, None)
        verdict = sniff_http1(buf)
        if verdict is None:
            self._buf = buf  # could still be a request line: wait for more
            return None
        return self._hand_over(buf, None if verdict else tcp)

    def _silent(self) -> None:
        """Nothing decided within the fallback's detect_timeout: TCP, with what has come so far. The
        fallback is read again: a reload may have taken it away meanwhile."""
        self._timer = None
        fallback = self.slot.current.tcp_fallback
        if fallback is None:
            self.close()
            return
        self._hand_over(self._buf, fallback)

    def _hand_over(self, buf: bytes, tcp: TcpListenerConfig | None) -> None:
        """To the protocol the first bytes asked for: TCP to `tcp`'s cluster, else HTTP/2 or HTTP/1.1."""
        self._buf = b""
        self._stop()
        self.stats.cx_total -= 1
        transport = self.transport
        assert transport is not None
        proto: Downstream
        if tcp is not None:
            proto = TcpDownstream(self.slot, self.loop, tcp)
        elif buf.startswith(PREFACE):
            proto = Http2Downstream(self.slot, self.loop)
        else:
            proto = Http1Downstream(self.slot, self.loop)
        switch_to(proto, transport, self.original_dst, buf)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()

    def _stop(self) -> None:
        if self in self.slot.connections:
            self.slot.connections.discard(self)
            self.stats.cx_active -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def idle(self) -> bool:
        return True  # no byte yet, so no request: a client that sends one now finds the proxy going

    def begin_drain(self) -> None:
        """Not yet speaking any protocol: what takes over reads slot.draining."""

    def start_drain(self) -> None:
        self.close()

    def close(self) -> None:
        self._stop()
        if self.transport is not None:
            self.transport.close()


# Request methods a sniffed connection may start with (RFC 9110 9.3, RFC 5789), longest 7 letters.
_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
                      b"PATCH"})
_LONGEST = max(len(m) for m in _METHODS)


def sniff_http1(buf: bytes) -> bool | None:
    """Whether `buf` starts an HTTP/1 request: True, False, or None while too short to say."""
    space = buf.find(b" ", 0, _LONGEST + 1)
    if space > 0:
        return buf[:space] in _METHODS
    if len(buf) <= _LONGEST and any(m.startswith(buf) for m in _METHODS):
        return None
    return False
