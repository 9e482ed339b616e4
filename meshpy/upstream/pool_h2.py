"""The HTTP/2 connection pool of one upstream host: streams handed out over few connections.

Same interface and circuit breakers as the HTTP/1.1 HostPool (meshpy.upstream.pool), so a cluster
and its exchanges use either without knowing which. A request gets a stream on a connection with
room (below the upstream's SETTINGS_MAX_CONCURRENT_STREAMS); when every connection is full another
is opened, up to max_connections_per_endpoint. A connection that got GOAWAY takes no new streams and
closes once its last one ends; the next request opens a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from meshpy.upstream.pool import Limits, PoolOverflow, no_limits

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options
    from meshpy.model.unix_address import SockAddr
    from meshpy.ports import UpstreamStream
    from meshpy.tasks import TaskOwner
    from meshpy.telemetry.metrics import ClusterStats
    from meshpy.transport.connector import Connector
    from meshpy.transport.upstream_h2_stream import Http2UpstreamStream
    from meshpy.transport.upstream_http2 import UpstreamHttp2
    from meshpy.upstream.pool import Waiter

_PENDING_FULL = PoolOverflow("max_pending_requests")
_REQUESTS_FULL = PoolOverflow("max_requests")


class Http2HostPool:
    __slots__ = ("_connecting", "_conns", "_loop", "_spawn", "_waiters", "address", "busy", "closed",
                 "connector", "limits", "max_connections", "opts", "stats")

    def __init__(self, loop: asyncio.AbstractEventLoop, address: SockAddr, stats: ClusterStats,
                 connector: Connector, max_connections: int, opts: Http2Options,
                 limits: Limits | None = None, tasks: TaskOwner | None = None) -> None:
        self._loop = loop
        self._spawn = tasks.spawn_connect if tasks is not None else loop.create_task  # connects
        self.address = address
        self.stats = stats
        self.connector = connector
        self.max_connections = max_connections
        self.opts = opts
        self.limits = limits if limits is not None else no_limits()
        self._conns: list[UpstreamHttp2] = []
        self._connecting = 0
        self._waiters: deque[Waiter] = deque()
        self.busy = 0
        self.closed = False

    @property
    def pending(self) -> int:
        return len(self._waiters)

    @property
    def idle_count(self) -> int:
        return sum(1 for c in self._conns if not c.streams)

    @property
    def total(self) -> int:
        return len(self._conns) + self._connecting

    def checkout(self, waiter: Waiter) -> UpstreamStream | None:
        limits = self.limits
        if limits.busy >= limits.rq_limit:
            self.stats.rq_pending_overflow += 1
            waiter(_REQUESTS_FULL)
            return None
        for conn in self._conns:
            if conn.has_room():
                return self._take(conn)
        if limits.pending() >= limits.pending_limit:
            self.stats.rq_pending_overflow += 1
            waiter(_PENDING_FULL)
            return None
        self._waiters.append(waiter)
        self._maybe_connect()
        return None

    def _maybe_connect(self) -> None:
        """Another connection, for requests that wait, only when every connection is full: one connect
        at a time, and none while a connection has not yet said how many streams it takes."""
        if self._waiters and not self._connecting and not self.closed \
                and len(self._conns) < self.max_connections and all(c.settled for c in self._conns):
            self._start_connect()

    def _take(self, conn: UpstreamHttp2) -> Http2UpstreamStream:
        self.busy += 1
        self.limits.busy += 1
        return conn.new_stream()

    def release(self, s: UpstreamStream) -> None:
        self.busy -= 1
        self.limits.busy -= 1

    def discard(self, s: UpstreamStream) -> None:
        self.busy -= 1
        self.limits.busy -= 1
        s.close()

    def hand_over(self, conn: UpstreamStream) -> None:
        """(HTTP/1.1 pools only: there is no 101 in HTTP/2.)"""
        self.discard(conn)

    def cancel_waiter(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def evict_idle(self, now: float, idle_timeout: float) -> None:
        for conn in list(self._conns):
            if not conn.streams and conn.idle_since and now - conn.idle_since >= idle_timeout:
                conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self._conns):
            if not conn.streams:
                conn.close()
        if not self._conns and not self._connecting:
            err = ConnectionAbortedError("host removed")
            while self._waiters:
                self._waiters.popleft()(err)

    # -- from connections ------------------------------------------------------------------------
    def connection_gone(self, conn: UpstreamHttp2, lost: bool) -> None:
        """`conn` takes no new streams (GOAWAY), or is closed (`lost`)."""
        if lost:
            self.stats.cx_active -= 1
        if conn in self._conns:
            self._conns.remove(conn)
        if lost and not conn.settled:
            # It died before saying a word: the requests waiting for it fail now (retries decide),
            # rather than reconnecting in a loop to a peer that does not speak HTTP/2.
            waiters, self._waiters = self._waiters, deque()
            err = ConnectionResetError("the upstream closed the connection before its HTTP/2 SETTINGS")
            for w in waiters:
                w(err)
            return
        self._maybe_connect()

    def capacity_freed(self, conn: UpstreamHttp2) -> None:
        while self._waiters and conn.has_room():
            self._waiters.popleft()(self._take(conn))
        self._maybe_connect()
        if self.closed and not conn.streams:
            conn.close()

    # -- connecting --------------------------------------------------------------------------------
    def _start_connect(self) -> None:
        self._connecting += 1

        def done(t: asyncio.Future[Any]) -> None:
            self._connecting -= 1
            exc = ConnectionAbortedError("connect cancelled") if t.cancelled() else t.exception()
            if exc is not None:
                self._connect_failed(exc)
                return
            self._opened(t.result())

        self._open().add_done_callback(done)

    # What a connect opens and what becomes of it: an auto cluster's pool (meshpy.upstream.pool_alpn)
    # replaces these two, since its connects may come back HTTP/1.1.
    def _open(self) -> asyncio.Future[Any]:
        return self._spawn(self.connector.http2(self, self.opts))

    def _opened(self, conn: Any) -> None:
        self.adopt(conn)

    def _connect_failed(self, exc: BaseException) -> None:
        self.stats.cx_connect_fail += 1
        # Every waiter was waiting on this connect; each gets the error (retries decide).
        for w in self.take_waiters():
            w(exc)

    def adopt(self, conn: UpstreamHttp2) -> None:
        """A new connection joins the pool: its own connect's, or an auto cluster's that ALPN made
        HTTP/2 (meshpy.upstream.pool_alpn)."""
        self._conns.append(conn)
        self.capacity_freed(conn)  # (its SETTINGS may have arrived with the connect)

    def take_waiters(self) -> list[Waiter]:
        """Every request waiting here, which the caller now owns."""
        waiters = list(self._waiters)
        self._waiters.clear()
        return waiters
