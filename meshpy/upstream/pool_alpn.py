"""The pool of one host of a cluster of protocol auto: HTTP/2 or HTTP/1.1, whichever TLS's ALPN agrees on
(Envoy's auto_config), with each kind of connection pooled as its own protocol needs.

An `AlpnHostPool` owns an HTTP/1.1 pool and an HTTP/2 pool for the same host, both sharing the
cluster's circuit breakers and stats, and does their connecting: every connection it opens offers the
cluster's ALPN list, and its codec is built from the answer when the handshake ends
(meshpy.transport.upstream_alpn), so HTTP/1.1 never goes over a connection that agreed on h2, nor the
reverse. The connection then joins the pool of its protocol, and that pool becomes the one requests
use (`learned`).

- Before any connection has answered, requests wait here and one connect is made (as the HTTP/2 pool
  does while a connection has not said how many streams it takes): its answer decides for them all,
  rather than a burst opening a connection per request to a host that turns out to multiplex.
- Once learned, a checkout is one attribute read and the sub-pool's own checkout: its fast path is
  the plain pool's.
- A later connection may get the other answer (the upstream was replaced by one speaking the other
  protocol): it joins the pool of the protocol it speaks, which becomes the learned one, and the
  requests waiting in the other pool move with it. Connections still open in the other pool finish
  their exchanges and are then idle until the sweeper closes them (pool_idle_timeout).

The sub-pools are the plain ones with their connect replaced (`_Http1Side`, `_Http2Side`); a connection
goes back to the pool that gave it out (`release` picks it by `multiplexed`). Each sub-pool keeps its
own max_connections_per_endpoint: a host whose protocol changed may briefly hold both kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from meshpy.model.unix_address import label
from meshpy.transport.upstream_http2 import UpstreamHttp2
from meshpy.upstream.pool import ConnPool, HostPool, Limits, PoolOverflow, Waiter, no_limits
from meshpy.upstream.pool_h2 import Http2HostPool

if TYPE_CHECKING:
    from meshpy.model.types import Cluster, Http2Options
    from meshpy.model.unix_address import SockAddr
    from meshpy.ports import UpstreamStream
    from meshpy.tasks import TaskOwner
    from meshpy.telemetry.metrics import ClusterStats
    from meshpy.transport.connector import Connector
    from meshpy.transport.upstream_http1 import UpstreamHttp1

log = logging.getLogger("meshpy.upstream")
_PENDING_FULL = PoolOverflow("max_pending_requests")


def host_pool(model: Cluster, loop: asyncio.AbstractEventLoop, address: SockAddr, stats: ClusterStats,
              connector: Connector, limits: Limits, tasks: TaskOwner) -> ConnPool:
    """The pool a host of `model` gets, by the cluster's protocol."""
    size = model.max_connections_per_endpoint
    if model.protocol == "http2":
        return Http2HostPool(loop, address, stats, connector, size, model.http2, limits, tasks)
    if model.protocol == "auto":
        return AlpnHostPool(loop, address, stats, connector, size, model.http2, limits, tasks)
    return HostPool(loop, address, stats, connector, size, limits, tasks)


class AlpnHostPool:
    __slots__ = ("_address", "_probing", "_spawn", "_waiters", "closed", "connector", "h1", "h2", "learned",
                 "limits", "opts", "stats")

    def __init__(self, loop: asyncio.AbstractEventLoop, address: SockAddr, stats: ClusterStats,
                 connector: Connector, max_connections: int, opts: Http2Options,
                 limits: Limits | None = None, tasks: TaskOwner | None = None) -> None:
        self._spawn = tasks.spawn_connect if tasks is not None else loop.create_task
        self.limits = limits if limits is not None else no_limits()
        self._address = address
        self.stats = stats
        self.connector = connector
        self.opts = opts
        self.h1 = _Http1Side(self, loop, address, stats, connector, max_connections, self.limits, tasks)
        self.h2 = _Http2Side(self, loop, address, stats, connector, max_connections, opts, self.limits,
                             tasks)
        # The sub-pool of the protocol the host's latest connection agreed on; None until one has.
        self.learned: HostPool | Http2HostPool | None = None
        self._waiters: deque[Waiter] = deque()  # requests waiting for the first answer
        self._probing = False  # that first connect is under way
        self.closed = False

    @property
    def address(self) -> SockAddr:
        return self._address

    @address.setter
    def address(self, address: SockAddr) -> None:
        # LOGICAL_DNS re-resolution: new connections of either protocol go to the new address.
        self._address = self.h1.address = self.h2.address = address

    @property
    def protocol(self) -> str | None:
        """What the host's latest connection agreed on, http2 or http1 (None before any), for /clusters."""
        return None if self.learned is None else "http2" if self.learned is self.h2 else "http1"

    @property
    def busy(self) -> int:
        return self.h1.busy + self.h2.busy

    @property
    def total(self) -> int:
        return self.h1.total + self.h2.total + self._probing

    @property
    def pending(self) -> int:
        return len(self._waiters) + self.h1.pending + self.h2.pending

    @property
    def idle_count(self) -> int:
        return self.h1.idle_count + self.h2.idle_count

    def checkout(self, waiter: Waiter) -> UpstreamStream | None:
        side = self.learned
        if side is not None:
            return side.checkout(waiter)
        limits = self.limits
        if limits.pending() >= limits.pending_limit:
            self.stats.rq_pending_overflow += 1
            waiter(_PENDING_FULL)
            return None
        self._waiters.append(waiter)
        if not self._probing:
            self._probe()
        return None

    # A connection goes back to the sub-pool that gave it out: an HTTP/2 stream to the HTTP/2 one.
    def release(self, conn: UpstreamStream) -> None:
        (self.h2 if conn.multiplexed else self.h1).release(conn)

    def discard(self, conn: UpstreamStream) -> None:
        (self.h2 if conn.multiplexed else self.h1).discard(conn)

    def hand_over(self, conn: UpstreamStream) -> None:
        (self.h2 if conn.multiplexed else self.h1).hand_over(conn)

    def cancel_waiter(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self.h1.cancel_waiter(waiter)
        self.h2.cancel_waiter(waiter)

    def evict_idle(self, now: float, idle_timeout: float) -> None:
        self.h1.evict_idle(now, idle_timeout)
        self.h2.evict_idle(now, idle_timeout)

    def close(self) -> None:
        """As the plain pools: idle connections close now, busy ones after their exchange; requests
        waiting for the first connect still get it."""
        self.closed = True
        self.h1.close()
        self.h2.close()

    # -- connecting, for this pool and its sub-pools -------------------------------------------------
    def open(self) -> asyncio.Task[UpstreamHttp1 | UpstreamHttp2]:
        """A connect to the host's current address; its codec is the protocol ALPN agreed on."""
        return self._spawn(self.connector.negotiated(self._address, self.h1, self.h2, self.opts))

    def _probe(self) -> None:
        self._probing = True

        def done(t: asyncio.Task[UpstreamHttp1 | UpstreamHttp2]) -> None:
            self._probing = False
            waiters = list(self._waiters)
            self._waiters.clear()
            exc = ConnectionAbortedError("connect cancelled") if t.cancelled() else t.exception()
            if exc is None:
                self.adopt(t.result(), waiters)
                return
            if not t.cancelled():
                self.stats.cx_connect_fail += 1
            # All of them waited for this connect: each gets its error (retries decide).
            for w in waiters:
                w(exc)

        self.open().add_done_callback(done)

    def adopt(self, conn: UpstreamHttp1 | UpstreamHttp2, waiters: Iterable[Waiter]) -> None:
        """`conn` joins the sub-pool of the protocol it speaks, which becomes the learned one, and
        `waiters` are served from there (the first by `conn`, when it is HTTP/1.1)."""
        side: HostPool | Http2HostPool
        waiting = deque(waiters)
        if isinstance(conn, UpstreamHttp2):
            self.h2.adopt(conn)
            side = self.h2
        else:
            self.h1.adopt(conn, waiting.popleft() if waiting else None)
            side = self.h1
        self.learn(side)
        for w in waiting:
            got = side.checkout(w)
            if got is not None:
                w(got)

    def learn(self, side: HostPool | Http2HostPool) -> None:
        if self.learned is not side:
            if self.learned is not None:
                log.info("cluster %s: %s now agrees on %s by ALPN", self.stats.name, label(self._address),
                         "HTTP/2" if side is self.h2 else "HTTP/1.1")
            self.learned = side


class _Http1Side(HostPool):
    """The HTTP/1.1 pool of an AlpnHostPool: its connects offer ALPN like every other of the host."""

    __slots__ = ("auto",)

    def __init__(self, auto: AlpnHostPool, loop: asyncio.AbstractEventLoop, address: SockAddr,
                 stats: ClusterStats, connector: Connector, max_connections: int, limits: Limits,
                 tasks: TaskOwner | None) -> None:
        super().__init__(loop, address, stats, connector, max_connections, limits, tasks)
        self.auto = auto

    def _open(self) -> asyncio.Future[Any]:
        return self.auto.open()

    def _opened(self, conn: UpstreamHttp1 | UpstreamHttp2, waiter: Waiter) -> None:
        if isinstance(conn, UpstreamHttp2):
            # The host speaks HTTP/2 now: this request and those waiting here go there with it.
            self.auto.adopt(conn, [waiter, *self.take_waiters()])
            return
        self.auto.learn(self)
        self._connected(conn, waiter)


class _Http2Side(Http2HostPool):
    """The HTTP/2 pool of an AlpnHostPool (see _Http1Side)."""

    __slots__ = ("auto",)

    def __init__(self, auto: AlpnHostPool, loop: asyncio.AbstractEventLoop, address: SockAddr,
                 stats: ClusterStats, connector: Connector, max_connections: int, opts: Http2Options,
                 limits: Limits, tasks: TaskOwner | None) -> None:
        super().__init__(loop, address, stats, connector, max_connections, opts, limits, tasks)
        self.auto = auto

    def _open(self) -> asyncio.Future[Any]:
        return self.auto.open()

    def _opened(self, conn: UpstreamHttp1 | UpstreamHttp2) -> None:
        if not isinstance(conn, UpstreamHttp2):
            # The host speaks HTTP/1.1 now: the requests waiting here go there with it.
            self.auto.adopt(conn, self.take_waiters())
            return
        self.auto.learn(self)
        self.adopt(conn)
