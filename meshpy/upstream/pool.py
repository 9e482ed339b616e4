"""A keep-alive HTTP/1.1 connection pool for one upstream host.

The pool's state changes only in synchronous methods (`checkout`, `release`, `discard`); the one
awaiting piece, opening a connection, runs in a task whose result is handed over through a callback.
That keeps the common case, an idle connection ready, free of coroutines: checkout is a `list.pop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from meshpy.model.unix_address import SockAddr
    from meshpy.ports import UpstreamStream
    from meshpy.tasks import TaskOwner
    from meshpy.telemetry.metrics import ClusterStats
    from meshpy.transport.connector import Connector
    from meshpy.transport.upstream_http1 import UpstreamHttp1

# A waiter gets either a live connection (or HTTP/2 stream) or the exception that stopped the connect.
Waiter = Callable[["UpstreamStream | BaseException"], None]


class ConnPool(Protocol):
    """What a cluster and its exchanges use of a host's pool: HostPool here (HTTP/1.1),
    Http2HostPool (meshpy.upstream.pool_h2) or AlpnHostPool (meshpy.upstream.pool_alpn, both by
    ALPN). Each only ever gets back what it gave out."""

    address: SockAddr
    stats: ClusterStats
    closed: bool

    @property
    def busy(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def idle_count(self) -> int: ...
    def checkout(self, waiter: Waiter) -> UpstreamStream | None: ...
    def release(self, conn: UpstreamStream) -> None: ...
    def discard(self, conn: UpstreamStream) -> None: ...
    def cancel_waiter(self, waiter: Waiter) -> None: ...
    def hand_over(self, conn: UpstreamStream) -> None: ...
    def evict_idle(self, now: float, idle_timeout: float) -> None: ...
    def close(self) -> None: ...


class PoolOverflow(Exception):
    """The cluster's max_pending_requests circuit breaker is full: the request must not wait."""


class Limits(Protocol):
    """The cluster-wide circuit breakers a pool asks before it gives out a connection, opens one or
    queues a request. `busy` (requests on a connection, over the cluster) is kept by the pools, since
    max_requests is checked on every request; connections and pending requests are summed over the
    cluster's pools only off the fast path (no idle connection)."""

    busy: int
    rq_limit: int
    cx_limit: int
    pending_limit: int

    def connections(self) -> int: ...

    def pending(self) -> int: ...


class _NoLimits:
    def __init__(self) -> None:
        self.busy = 0
        self.rq_limit = self.cx_limit = self.pending_limit = 1 << 62

    def connections(self) -> int:
        return 0

    def pending(self) -> int:
        return 0


def no_limits() -> Limits:
    return _NoLimits()


_PENDING_FULL = PoolOverflow("max_pending_requests")
_REQUESTS_FULL = PoolOverflow("max_requests")


class HostPool:
    __slots__ = (
        "_connecting",
        "_idle",
        "_loop",
        "_spawn",
        "_waiters",
        "address",
        "busy",
        "closed",
        "connector",
        "limits",
        "max_connections",
        "stats",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: SockAddr,
        stats: ClusterStats,
        connector: Connector,
        max_connections: int,
        limits: Limits | None = None,
        tasks: TaskOwner | None = None,
    ) -> None:
        self._loop = loop
        self._spawn = tasks.spawn_connect if tasks is not None else loop.create_task  # connects
        self.limits = limits if limits is not None else no_limits()
        self.address = address  # may be replaced by LOGICAL_DNS re-resolution; new connects use it
        self.stats = stats
        self.connector = connector
        self.max_connections = max_connections
        self._idle: list[UpstreamHttp1] = []
        self.busy = 0
        self._connecting = 0
        self._waiters: deque[Waiter] = deque()
        self.closed = False

    @property
    def pending(self) -> int:
        """Requests waiting for a connection of this pool, including those whose connect is under way."""
        return len(self._waiters) + self._connecting

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def total(self) -> int:
        return len(self._idle) + self.busy + self._connecting

    def checkout(self, waiter: Waiter) -> UpstreamStream | None:
        """An idle live connection at once, or None and `waiter` is called later with one, or with
        an error (PoolOverflow at once when a circuit breaker is full)."""
        idle = self._idle
        limits = self.limits
        if idle and limits.busy >= limits.rq_limit:
            # max_requests, checked as Envoy does where a request would get its connection: a request
            # that must wait anyway counts against max_pending_requests instead.
            self.stats.rq_pending_overflow += 1
            waiter(_REQUESTS_FULL)
            return None
        while idle:
            conn = idle.pop()
            # A connection the upstream closed is never reused: connection_lost removes it from the
            # idle list, and is_usable() catches the close that arrived in this very loop iteration.
            if conn.is_usable():
                self.busy += 1
                limits.busy += 1
                self.stats.pool_idle -= 1
                return conn
            self.stats.pool_idle -= 1
        if limits.pending() >= limits.pending_limit:
            self.stats.rq_pending_overflow += 1
            waiter(_PENDING_FULL)
            return None
        if self.total < self.max_connections:
            # Past max_connections the request waits for one of the pool's connections, unless the
            # pool has none: a host the balancer picked always gets one (as in Envoy).
            if self.total == 0 or limits.connections() < limits.cx_limit:
                self._start_connect(waiter)
                return None
            self.stats.cx_overflow += 1
        self._waiters.append(waiter)
        return None

    def release(self, given: UpstreamStream) -> None:
        """Return a connection after a complete exchange; it must be reusable."""
        conn = cast("UpstreamHttp1", given)  # this pool gives out nothing else
        self.busy -= 1
        self.limits.busy -= 1
        if not conn.is_usable():
            conn.close()
            self._serve_waiter()
            return
        # A pooled connection must read (to notice the upstream closing it), whatever its last client did.
        conn.resume_reading()
        if self._waiters:  # even when closed: requests already waiting for this host get their turn
            self.busy += 1
            self.limits.busy += 1
            self._waiters.popleft()(conn)
            return
        if self.closed:
            conn.close()
            return
        self._keep_idle(conn)

    def _keep_idle(self, conn: UpstreamHttp1) -> None:
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        self.stats.pool_idle += 1

    def discard(self, conn: UpstreamStream) -> None:
        """A busy connection that must not be reused (error, timeout, `Connection: close`)."""
        self.busy -= 1
        self.limits.busy -= 1
        conn.close()
        self._serve_waiter()

    def hand_over(self, conn: UpstreamStream) -> None:
        """A busy connection leaves the pool for good (an upgrade made it a tunnel): no longer counted
        as busy; the caller closes it, and its close is still counted (connection_lost)."""
        self.busy -= 1
        self.limits.busy -= 1
        self._serve_waiter()

    def forget_idle(self, conn: UpstreamHttp1) -> None:
        """Called by an idle connection that the upstream closed."""
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self.stats.pool_idle -= 1

    def cancel_waiter(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def evict_idle(self, now: float, idle_timeout: float) -> None:
        keep: list[UpstreamHttp1] = []
        for conn in self._idle:
            if now - conn.idle_since >= idle_timeout or not conn.is_usable():
                conn.close()
                self.stats.pool_idle -= 1
            else:
                keep.append(conn)
        self._idle = keep

    def close(self) -> None:
        """The host left its cluster: idle connections close now, busy ones when their exchange ends.
        Requests already waiting for a connection here are still served (by connections as they
        come free), so an endpoint update under load fails none of them."""
        self.closed = True
        for conn in self._idle:
            conn.close()
        self.stats.pool_idle -= len(self._idle)
        self._idle = []
        if self.total == 0:  # nothing in flight that could serve the waiters
            err = ConnectionAbortedError("host removed")
            while self._waiters:
                self._waiters.popleft()(err)

    def _serve_waiter(self) -> None:
        if self._waiters and self.total < self.max_connections:
            self._start_connect(self._waiters.popleft())

    def _start_connect(self, waiter: Waiter) -> None:
        self._connecting += 1

        def done(t: asyncio.Future[Any]) -> None:
            self._connecting -= 1
            if t.cancelled():
                waiter(ConnectionAbortedError("connect cancelled"))
                return
            exc = t.exception()
            if exc is not None:
                self._connect_failed(exc, waiter)
                return
            self._opened(t.result(), waiter)

        self._open().add_done_callback(done)

    # What a connect opens and what becomes of it, apart so that the pool of an auto cluster
    # (meshpy.upstream.pool_alpn), whose connects may come back HTTP/2, replaces just these two.
    def _open(self) -> asyncio.Future[Any]:
        return self._spawn(self.connector.http1(self))

    def _opened(self, conn: Any, waiter: Waiter) -> None:
        self._connected(conn, waiter)

    # The two ends of a connect, which the auto cluster's pool ends its connects with too.
    def _connect_failed(self, exc: BaseException, waiter: Waiter) -> None:
        self.stats.cx_connect_fail += 1
        waiter(exc)
        self._serve_waiter()

    def _connected(self, conn: UpstreamHttp1, waiter: Waiter) -> None:
        limits = self.limits
        if limits.busy >= limits.rq_limit:  # max_requests filled up while this one connected
            self.stats.rq_pending_overflow += 1
            self._keep_idle(conn)
            waiter(_REQUESTS_FULL)
            return
        self.busy += 1
        limits.busy += 1
        waiter(conn)

    def adopt(self, conn: UpstreamHttp1, waiter: Waiter | None = None) -> None:
        """A connection this pool did not open itself (an auto cluster's, which ALPN made HTTP/1.1):
        it goes to `waiter` as a connect of its own would; without one it serves a request waiting
        here, or waits idle, as if it had just been released."""
        if waiter is not None:
            self._connected(conn, waiter)
            return
        self.busy += 1
        self.limits.busy += 1
        self.release(conn)

    def take_waiters(self) -> list[Waiter]:
        """Every request waiting here, which the caller now owns (an auto cluster moves them to the
        protocol its upstream speaks now)."""
        waiters = list(self._waiters)
        self._waiters.clear()
        return waiters
