"""HTTP/1.1 Upgrade (WebSocket and the other types a listener allows): the handshake is an ordinary
request through routing and policies; when the upstream answers 101 the two connections become one
byte stream (meshpy.transport.tunnel) until either side closes. A mixin of `Exchange`.

An upgrade type the listener does not allow is not an error: the request is proxied as a plain one,
its Upgrade header dropped as hop-by-hop (so `Upgrade: h2c` gets an HTTP/1.1 answer, as from Envoy).
A handshake the upstream refuses (any answer but 101) is passed on and the connection is closed after
it, since the client may already have sent bytes of the other protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from meshpy.codec.http1 import response_head
from meshpy.codec.raw_head import parse_fields
from meshpy.stack.forwarding import downstream_response_headers
from meshpy.stack.parts import ExchangeParts
from meshpy.transport.tunnel import Tunnel

if TYPE_CHECKING:
    from meshpy.transport.downstream_http1 import Http1Downstream
    from meshpy.transport.upstream_http1 import UpstreamHttp1


class UpgradesMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def _accept_upgrade(self, value: bytes) -> None:
        """The request asks for `value` (Upgrade header) and the listener allows it."""
        self.upgrade = value
        self.keep_alive = False  # unless it becomes a tunnel, the connection ends with this answer

    def _switch(self, fields: bytes) -> None:
        """The upstream said 101: answer the client, then join the two connections."""
        down = cast("Http1Downstream", self.down)
        conn = cast("UpstreamHttp1", self.conn)
        assert self.upgrade is not None and conn is not None and self.host is not None
        headers = downstream_response_headers(parse_fields(fields))[0]
        headers += [(b"connection", b"upgrade"), (b"upgrade", self.upgrade)]
        down.out.append(response_head(101, headers))
        down.flush()
        self.started = True
        self.resp_status = 101
        self._stop_timers()
        self.conn = None
        self.host.pool.hand_over(conn)
        conn.exchange = None
        assert down.transport is not None and conn.transport is not None
        tunnel = Tunnel(down.transport, conn.transport, self._tunnel_closed)
        conn.tunnel = tunnel  # the bytes after the 101 head, in this same read, go through it
        down.transport.resume_reading()  # paused since the handshake's end
        tunnel.from_client(self.early)
        self.early = b""
        self._upgraded = (down, conn)

    def _stop_timers(self) -> None:
        """A tunnel lives as long as its peers want: the request's timeouts end with the handshake."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.next_check:
            self.down.slot.deadlines.discard(self)
            self.next_check = 0.0
        self._deadline = 0.0

    def _tunnel_closed(self, from_client: int, from_upstream: int) -> None:
        self.bytes_in += from_client
        self.bytes_out += from_upstream
        down, conn = self._upgraded
        conn.connection_lost(None)  # the pool's bookkeeping of a closed connection
        down.active = None
        down.connection_lost(None)  # the listener's
        self._complete()
