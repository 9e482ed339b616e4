"""Retries, as the part of an Exchange that runs only on routes with a retry policy.

A mixin of `Exchange` (kept apart so that the exchange stays readable, and so that a route without a
retry policy runs none of this: each hook in the exchange is one `if self.retry is not None`). An
attempt that fails before anything was sent to the client (a retriable status, a reset, a failed
connect, a per-try timeout) is dropped with its upstream connection and, when `RetryState` allows
and the cluster's retry budget has room, the request goes again after a back-off: to another host
when there is one, with `x-envoy-attempt-count` telling the upstream which attempt it sees, and with
the request body replayed from the copy kept so far. Every attempt fits in the route timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.codec.raw_head import parse_fields
from meshpy.errors import UpstreamReset, UpstreamTimeout
from meshpy.model.routes import RetryPolicy
from meshpy.stack.parts import ExchangeParts
from meshpy.stack.retry import (
    RESET,
    STATUS,
    TIMEOUT,
    Standby,
    retry_after_seconds,
    retry_state,
)

if TYPE_CHECKING:
    pass



class RetryingMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def _start_retries(self, policy: RetryPolicy) -> None:
        """At the first attempt of a request on a route with a retry policy."""
        rs = self.retry = retry_state(policy, self.method, self.is_grpc())
        if rs is not None and policy.attempt_count_header:
            self._count_attempts = True  # (the head is made as each attempt goes: upstream_head)

    def _try_again(self, kind: str, status: int = 0, grpc_status: int | None = None,
                   retry_after: float | None = None, delay: float | None = None) -> bool:
        """After a failed attempt: True when another one is scheduled (the caller then says nothing
        to the client), False when the failure is the answer."""
        rs = self.retry
        cluster = self.cluster
        if rs is None or cluster is None or self.started or self.done:
            return False
        if rs.standbys and self.conn is not None and kind != TIMEOUT:
            self._drop_attempt()  # a hedged attempt failed: the standby may still answer
            if self.host is not None:
                self.host.active_requests -= 1
                self.host = None
            return True
        if not rs.replayable or not rs.covers(kind, status, grpc_status):
            return False
        stats = cluster.stats
        if rs.attempt > rs.policy.num_retries:
            stats.rq_retry_limit_exceeded += 1
            return False
        # As in Envoy, a retry holds its place in the budget (or max_retries) while it waits out its
        # back-off; the attempt itself then counts as an active request like any other.
        if cluster.retries_active >= cluster.retry_cap():
            stats.rq_retry_overflow += 1
            return False
        cluster.retries_active += 1
        rs.budgeted = True
        loop = self.down.loop
        if delay is None:
            delay = rs.delay(retry_after)
        if self._deadline and loop.time() + delay >= self._deadline:
            return False  # the route timeout would fire first: answer now
        self._drop_attempt()
        rs.attempt += 1
        stats.rq_retry += 1
        rs.timer = loop.call_later(delay, self._retry_now)
        return True

    def _drop_attempt(self) -> None:
        """The failed attempt's connection is closed (it may hold half an answer) and its timer ends."""
        rs = self.retry
        if rs is not None:
            rs.try_deadline = 0.0
            if rs.timer is not None:
                rs.timer.cancel()
                rs.timer = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
            conn.pool.discard(conn)

    def _retry_on_status(self, status: int, fields: bytes) -> bool:
        """At a final response head: True when it is not forwarded but tried again."""
        rs = self.retry
        assert rs is not None
        rs.try_deadline = 0.0  # an answer came within the per-try timeout
        if status < 400 and b"grpc-status" not in fields:
            return False  # the common case: nothing retry_on could be about
        grpc_status = retry_after = None
        if status >= 400 or b"grpc-status" in fields:
            for name, value in parse_fields(fields):
                if name == b"retry-after":
                    retry_after = retry_after_seconds(value)
                elif name == b"grpc-status" and value.strip().isdigit():
                    grpc_status = int(value)
        if not rs.covers(STATUS, status, grpc_status):
            return False
        return self._try_again(STATUS, status, grpc_status, retry_after)

    def _retry_now(self) -> None:
        rs, cluster, old = self.retry, self.cluster, self.host
        if rs is None or cluster is None or self.done:
            return
        rs.timer = None
        self._release_budget()
        if old is not None:
            rs.tried.append(old)  # the host that just failed (or is still busy, when hedging)
        # An original_dst cluster has one place to go: where the connection was going.
        host = cluster.host_for(self.down.original_dst) if cluster.by_destination else rs.next_host(cluster)
        if host is None:
            from meshpy.errors import NoHealthyUpstream

            return self._error(NoHealthyUpstream())
        if old is not None:
            old.active_requests -= 1
        host.active_requests += 1
        self.host = host
        conn = host.pool.checkout(self._on_pool)
        if conn is not None:
            self._attach(conn)

    def _per_try_timeout(self) -> None:
        rs = self.retry
        if rs is None or self.done or self.started:
            return
        rs.try_deadline = 0.0
        if self.cluster is not None:
            self.cluster.stats.rq_timeout += 1
        self._host_failed()
        if rs.policy.hedge_on_per_try_timeout and self._hedge():
            return
        if not self._try_again(TIMEOUT):
            self._timeout(UpstreamTimeout(), "UT")

    def _hedge(self) -> bool:
        """Keep the late attempt running as a standby and send another one now (no back-off)."""
        rs, conn, host = self.retry, self.conn, self.host
        if rs is None or conn is None or host is None:
            return False
        self.conn = None
        standby = Standby(self, conn, host)  # type: ignore[arg-type]
        conn.attach(standby, self.head_request)
        rs.standbys.append(standby)
        if self._try_again(TIMEOUT, delay=0.0):
            host.active_requests += 1  # the standby still holds its host; _retry_now moves one
            return True
        # No retry allowed: the late attempt is all there is, and may still answer.
        rs.standbys.remove(standby)
        conn.attach(self, self.head_request)  # type: ignore[arg-type]  # (a mixin of Exchange)
        self.conn = conn
        return True

    def standby_head(self, standby: Standby, status: int, fields: bytes, keep_alive: bool) -> None:
        """A standby answered. A good answer wins: the attempt under way is dropped and the standby's
        response is forwarded; a bad one is dropped (the other attempt may still do better)."""
        rs = self.retry
        if rs is None or self.done or self.started:
            return self._drop_standby(standby)
        grpc = None
        if b"grpc-status" in fields:
            for name, value in parse_fields(fields):
                if name == b"grpc-status" and value.strip().isdigit():
                    grpc = int(value)
        if status >= 200 and rs.covers(STATUS, status, grpc) and (self.conn is not None or rs.standbys[1:]):
            return self._drop_standby(standby)
        rs.standbys.remove(standby)
        self._drop_attempt()  # the hedged attempt, if still running
        if self.host is not None:
            self.host.active_requests -= 1
        self.host, self.conn, standby.promoted = standby.host, standby.conn, True
        self.up_head(status, fields, keep_alive)

    def standby_failed(self, standby: Standby) -> None:
        """A standby's connection failed: dropped. If nothing else is running, that is the answer."""
        rs = self.retry
        self._drop_standby(standby)
        alone = rs is not None and not rs.standbys and rs.timer is None and self.conn is None
        if alone and not self.done and not self.started and not self._try_again(RESET):
            self._error(UpstreamReset())

    def _drop_standby(self, standby: Standby) -> None:
        rs = self.retry
        if rs is not None and standby in rs.standbys:
            rs.standbys.remove(standby)
        standby.host.active_requests -= 1
        standby.conn.detach()
        standby.host.pool.discard(standby.conn)

    def _end_retries(self) -> None:
        """When the exchange completes: timers stop, the budget slot is given back, success counted."""
        rs = self.retry
        if rs is None:
            return
        if rs.timer is not None:
            rs.timer.cancel()
            rs.timer = None
        for standby in list(rs.standbys):
            self._drop_standby(standby)
        self._release_budget()
        if rs.attempt > 1 and self.cluster is not None and 200 <= self.resp_status < 400:
            self.cluster.stats.rq_retry_success += 1

    def _release_budget(self) -> None:
        rs, cluster = self.retry, self.cluster
        if rs is not None and rs.budgeted and cluster is not None:
            cluster.retries_active -= 1
            rs.budgeted = False
