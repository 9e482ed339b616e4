"""HTTP/1.1 Upgrade (WebSocket and the other types a listener allows) and CONNECT: the handshake is an
ordinary request through routing and policies; when the upstream answers 101 the two connections
become one byte stream (meshpy.transport.tunnel) until either side closes. CONNECT (where the listener
allows `connect` and a route matches with `connect: true`) is terminated here: meshpy connects to the
route's cluster itself, answers 200, and tunnels. A mixin of `Exchange`.

An upgrade type the listener does not allow gets 403 and the connection closes, as from Envoy: the
HTTP/1.1 parser hands on every byte after an upgrade head, so nothing after it can be read as HTTP.
`Upgrade: h2c` alone is served as a plain request, its upgrade headers dropped as hop-by-hop (as Envoy
does), its Content-Length body counted by the connection (Http1Downstream._feed_raw_body). An allowed
upgrade, or CONNECT, whose request declares a body gets 400. A handshake the upstream refuses (any
answer but 101) is passed on and the connection is closed after it, since the client may already have
sent bytes of the other protocol.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from meshpy.errors import BadRequest, UpstreamConnectFailure
from meshpy.stack.forwarding import downstream_response_headers
from meshpy.stack.parts import ExchangeParts
from meshpy.transport.tunnel import Pending

if TYPE_CHECKING:
    from meshpy.ports import TunnelFeed
    from meshpy.upstream.cluster import Host


class UpgradesMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def _accept_upgrade(self, value: bytes) -> None:
        """The request asks for `value` (Upgrade header) and the listener allows it."""
        self.upgrade = value
        self.keep_alive = False  # unless it becomes a tunnel, the connection ends with this answer

    def _connect_request(self, target: bytes) -> None:
        """`CONNECT host:port`: the target is the authority (RFC 9110 9.3.6); there is no path. It is
        routed, as in Envoy: only a CONNECT route matches it (404 where none does), and tunnels where
        the listener's `upgrades` or the route's own allow `connect` (403 where neither does)."""
        host, sep, port = target.rpartition(b":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest("CONNECT needs host:port")
        self.authority = target.decode("latin-1")
        self.path = ""
        self._accept_upgrade(b"connect")

    def _open_tunnel(self, host: Host) -> None:
        """Connect to the endpoint the route's cluster picked; on success answer 200 and join the
        client to it. The bytes of the tunnel are the client's business: no HTTP goes upstream."""
        cluster = self.cluster
        assert cluster is not None
        task = cluster.tasks.spawn(cluster.connector.open(host.pool.address, Pending))

        def done(t: asyncio.Task[Pending]) -> None:
            if self.done:
                if not t.cancelled() and t.exception() is None:
                    t.result().close()
                return
            if t.cancelled() or t.exception() is not None:
                cluster.stats.connect_failed()
                self._host_failed()
                self._error(UpstreamConnectFailure())
                self.down.flush()
                return
            pending = t.result()
            assert pending.transport is not None
            self._connected(pending.transport, pending)

        task.add_done_callback(done)

    def _connected(self, transport: asyncio.Transport, pending: Pending) -> None:
        stats = self.cluster.stats if self.cluster is not None else None
        if stats is not None:
            stats.cx_total += 1
            stats.cx_active += 1
        headers = [(b"date", self.down.slot.date.now())]
        if self.cfg.server_name is not None:
            headers.append((b"server", self.cfg.server_name))
        self._upgraded = None
        pending.hand_over(self._join(headers, transport))
        self.down.flush()  # (called back by the connect, not by a read: nothing else flushes the 200)

    def _switch(self, fields: bytes) -> None:
        """The upstream said 101: answer the client (101, or 200 on an HTTP/2 stream), then join the
        two connections."""
        conn = self.conn
        assert self.upgrade is not None and conn is not None
        headers = downstream_response_headers(conn.response_fields(fields))[0]
        self.conn = None
        transport = conn.hand_over()
        self._upgraded = conn
        conn.feed(self._join(headers, transport))

    def _join(self, headers: list[tuple[bytes, bytes]], transport: asyncio.Transport) -> TunnelFeed:
        """The handshake's answer and the tunnel, through the client's writer."""
        self.started = True
        self._stop_timers()
        self.resp_status, tunnel = self.down.join_tunnel(self, headers, transport, self.early,
                                                         self._tunnel_closed)
        self.early = b""
        return tunnel

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
        conn = self._upgraded
        if conn is not None:
            conn.tunnel_closed()
        elif self.cluster is not None:
            self.cluster.stats.cx_active -= 1  # a CONNECT tunnel's own connection
        self._complete()

