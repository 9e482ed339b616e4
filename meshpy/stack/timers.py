"""The exchange's one timer: the route timeout, the stream idle timeout and a retry's per-try timeout.

A mixin of `Exchange`. One check per exchange covers them all: deadlines under PRECISE_BELOW get a
loop timer of their own, longer ones ride the listener's coarse sweep (meshpy.stack.deadlines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.codec.grpc import DEADLINE_EXCEEDED, timeout_seconds
from meshpy.errors import BadRequest, ProxyError, UpstreamTimeout
from meshpy.stack.deadlines import PRECISE_BELOW
from meshpy.stack.parts import ExchangeParts

if TYPE_CHECKING:
    from meshpy.routing.table import CompiledRoute

_NEVER = float("inf")


class TimersMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def _idle_limit(self) -> float | None:
        idle = self.route.idle_timeout if self.route is not None else None
        if idle is None:
            return self.cfg.stream_idle_timeout
        return None if idle == 0 else idle  # 0: switched off for this route

    def _arm_idle(self) -> None:
        """One check per exchange covers both the route timeout (from the end of the request to the
        end of the response, as Envoy) and the stream idle timeout (reset by body activity)."""
        now = self.down.loop.time()
        self._last_activity = now
        when = self._deadline or _NEVER
        idle = self._idle_limit()
        if idle is not None:
            when = min(when, now + idle)
        if when != _NEVER:
            self._schedule(when, now)

    def _schedule(self, when: float, now: float) -> None:
        if self._timer is not None:
            # The time is kept beside the handle, not read back with `.when()`: for a moment already
            # past (under ~0.5 ms away), uvloop's call_at returns a plain Handle, which has no
            # `when`, and an AttributeError here would end the whole client connection.
            if self._timer_at <= when:
                return
            self._timer.cancel()
            self._timer = None
        if when - now < PRECISE_BELOW:
            self.down.slot.deadlines.discard(self)
            self._timer_at = when
            self._timer = self.down.loop.call_at(when, self.on_deadline)
        elif not self.next_check or when < self.next_check:
            self.next_check = when
            self.down.slot.deadlines.add(self)

    def on_deadline(self) -> None:
        self._timer = None
        self.next_check = 0.0
        if self.done:
            return
        now = self.down.loop.time()
        try_deadline = self.retry.try_deadline if self.retry is not None else 0.0
        if try_deadline and now >= try_deadline and (not self._deadline or try_deadline < self._deadline):
            self._per_try_timeout()
            if not self.done:
                self._rearm(now)
            return
        if self._duration_deadline and now >= self._duration_deadline:
            return self._duration_timeout()
        if self._deadline and now >= self._deadline:
            if self.cluster is not None:
                self.cluster.stats.rq_timeout += 1
            if self.conn is not None and not self.started:
                self._host_failed()  # no answer in time: a local-origin failure of that host
            return self._timeout(UpstreamTimeout(), "UT")
        idle = self._idle_limit()
        if idle is not None and now - self._last_activity >= idle:
            err = UpstreamTimeout() if self.req_done else BadRequest("stream idle timeout", 408)
            return self._timeout(err, "SI")
        self._rearm(now)

    def _rearm(self, now: float) -> None:
        """The next check: the earliest of the route deadline, the idle limit and a per-try deadline."""
        idle = self._idle_limit()
        nxt = self._last_activity + idle if idle is not None else _NEVER
        if self._deadline:
            nxt = min(nxt, self._deadline)
        if self._duration_deadline:
            nxt = min(nxt, self._duration_deadline)
        if self.retry is not None and self.retry.try_deadline:
            nxt = min(nxt, self.retry.try_deadline)
        if nxt != _NEVER:
            self._schedule(nxt, now)

    def _limit_stream(self, route: CompiledRoute) -> None:
        """The stream's duration limit (Envoy's route max_stream_duration), from the route, or from a
        gRPC call's own grpc-timeout where the route reads it (capped at its max, less its offset)."""
        duration = route.max_stream_duration
        policy = route.grpc_timeout
        grpc, grpc_timeout = self._grpc, self._grpc_timeout
        if policy is not None and not grpc:
            grpc, grpc_timeout = _router_grpc(self.headers, grpc_timeout)
        if policy is not None and grpc and grpc_timeout >= 0:
            seconds = grpc_timeout
            if policy.max is not None and seconds > policy.max:
                seconds = policy.max
            duration = max(seconds - policy.offset, 0.0)
        if duration is None:
            return
        if policy is not None and grpc and duration != grpc_timeout:
            # As Envoy: where the route reads grpc-timeout, the upstream is told the deadline the
            # proxy keeps (capped, less the offset, or the route's own), in milliseconds.
            ms = round(duration * 1000)
            value = b"%dm" % ms if ms <= 99_999_999 else b"%dS" % (ms // 1000)
            headers = [h for h in self.headers if h[0] != b"grpc-timeout"]
            headers.append((b"grpc-timeout", value))
            self.headers = headers
        now = self.down.loop.time()
        self._duration_deadline = now + duration
        self._schedule(self._duration_deadline, now)

    def _duration_timeout(self) -> None:
        """As Envoy: "downstream duration timeout", 504 once the whole request is in, else 408, and
        DEADLINE_EXCEEDED to a gRPC caller; no response flag. A response already under way is cut."""
        conn = self.conn
        self.conn = None
        if conn is not None and self.host is not None:
            self.host.pool.discard(conn)
        if self.started:
            self._abort("")
        else:
            # The connection manager's answer: it passes the route's filters (gRPC-Web makes it a gRPC
            # status its client reads), not the route's header edits.
            self._local_reply(504 if self.req_done else 408, b"downstream duration timeout", "",
                              route=self.route, close=not self.req_done, grpc_status=DEADLINE_EXCEEDED,
                              edits=False)

    def _timeout(self, err: ProxyError, flag: str) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None and self.host is not None:
            self.host.pool.discard(conn)
        if self.started:
            self._abort(flag)
        else:
            # The route timeout is the router's answer (route header edits apply, as in Envoy); the
            # stream idle timeout is the connection manager's (they do not). Both pass the filters.
            self._local_reply(err.status, err.body, flag, route=self.route, close=not self.req_done,
                              edits=flag == "UT")


def _router_grpc(headers: list[tuple[bytes, bytes]], grpc_timeout: float) -> tuple[bool, float]:
    """Whether a request the connection manager did not take for gRPC is one to Envoy's router, which
    reads the content-type as the filters left it (gRPC-Web's becomes application/grpc; an HTTP/1.1
    gRPC call's is one too), and then its grpc-timeout in seconds (-1: none, or one that does not
    parse, which the router ignores)."""
    content_type = next((v for n, v in headers if n == b"content-type"), b"")
    if not (content_type.startswith(b"application/grpc") and content_type[16:17] in (b"", b"+")):
        return False, -1.0
    if grpc_timeout < 0:
        value = next((v for n, v in headers if n == b"grpc-timeout"), None)
        seconds = None if value is None else timeout_seconds(value)
        grpc_timeout = -1.0 if seconds is None else seconds
    return True, grpc_timeout
