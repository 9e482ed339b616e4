"""Answers the exchange makes itself: direct responses and redirects, errors, injected faults and the
local rate limit, and the end of an exchange that cannot be answered any more (abort).

A mixin of `Exchange`, kept apart so that the exchange module holds the request and upstream flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.codec.http1 import format_response, no_body_status, response_head
from meshpy.model.types import DirectResponseAction, RedirectAction
from meshpy.stack.parts import ExchangeParts

if TYPE_CHECKING:

    from meshpy.errors import ProxyError
    from meshpy.routing.table import CompiledRoute


class RepliesMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def _guard(self, route: CompiledRoute) -> bool:
        """The local rate limit, then injected faults. True when the request was answered or delayed."""
        limiter = route.limiter
        stats = self.cfg.stats
        if limiter is not None and not limiter.take(self.down.loop.time()):
            stats.rq_rate_limited += 1
            self._local_reply(limiter.status, b"local_rate_limited", "RL", route=route,
                              close=not self.req_done and self._has_body())
            return True
        fault = route.fault
        plan = fault.plan(self.headers) if fault is not None else None
        if plan is None or fault is None:
            return False
        if plan.delay is not None:
            stats.fault_delays += 1
            fault.active += 1
            self.flag = "DI"
            self._fault_timer = self.down.loop.call_later(plan.delay, self._after_delay, plan.abort)
            return True
        return self._fault_abort(plan.abort)

    def _after_delay(self, abort: int | None) -> None:
        self._fault_timer = None
        route = self.route
        if route is not None and route.fault is not None:
            route.fault.active -= 1
        if self.done or route is None:
            return
        if not self._fault_abort(abort):
            self._dispatch(route)

    def _fault_abort(self, status: int | None) -> bool:
        if status is None:
            return False
        self.cfg.stats.fault_aborts += 1
        self._local_reply(status, b"fault filter abort", "FI", route=self.route,
                          close=not self.req_done and self._has_body())
        return True

    def _answer_here(self, route: CompiledRoute) -> None:
        """Direct responses and redirects."""
        action = route.action
        if isinstance(action, DirectResponseAction):
            status = action.status
            # As Envoy: a direct 201 or 3xx points `location` at the request's own URL (RFC 9110 10.2.2).
            extra = ([(b"location", f"http://{self.authority}{self.path}".encode("latin-1"))]
                     if status == 201 or 300 <= status < 400 else None)
            return self._local_reply(status, action.body.encode(), "", route=route, extra=extra)
        assert isinstance(action, RedirectAction)
        loc = route.redirect_location("http", self.authority, self.path)
        return self._local_reply(action.response_code, b"", "", route=route,
                                 extra=[(b"location", loc.encode("latin-1"))])

    def _error(self, err: ProxyError) -> None:
        # Every caller answers for the router once a route is chosen (no healthy upstream, connect
        # failure, reset, bad upstream response): Envoy applies the route's response header edits
        # to those answers too. Before routing (no route) self.route is None and nothing applies.
        # As Envoy, an answer of a full circuit breaker says so, for clients that back off on it.
        extra = [(b"x-envoy-overloaded", b"true")] if err.flag == "UO" else None
        self._local_reply(err.status, err.body, err.flag, route=self.route, extra=extra,
                          close=not self.req_done and self._has_body())

    def _local_reply(self, status: int, body: bytes, flag: str, *, route: CompiledRoute | None = None,
                     extra: list[tuple[bytes, bytes]] | None = None, close: bool = False) -> None:
        headers: list[tuple[bytes, bytes]] = [] if extra is None else extra
        headers.append((b"date", self.down.slot.date.now()))
        if body:
            headers.append((b"content-type", b"text/plain"))
        if route is not None and route.response_edits:
            route.response_edits.apply(headers)
        server = self.cfg.server_name
        if server is not None:  # as on proxied responses (up_head)
            headers = [(n, v) for n, v in headers if n != b"server"]
            headers.append((b"server", server))
        if close or self.down.slot.draining:
            self.keep_alive = False
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        elif self.http10:
            headers.append((b"connection", b"keep-alive"))
        self.resp_status = status
        self.flag = flag
        self._local = self._encode_local(status, body, headers)
        # Otherwise the answer waits for request_end: a bodiless request completes in the same parser
        # pass, and a small body is read and dropped so the connection stays usable.
        if close or self.req_done:
            self._send_local()

    def _encode_local(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        if no_body_status(status):
            # No body, and as in Envoy no content-length either (RFC 9110 8.6 forbids it on a 204).
            self.bytes_out = 0
            return response_head(status, headers)
        self.bytes_out = len(body)
        return format_response(status, body, headers, head_only=self.head_request)

    def _send_local(self) -> None:
        local = self._local
        if local is None or self.done:
            return
        self.started = True
        self.down.out.append(local)
        self._finish()

    def _abort(self, flag: str) -> None:
        """Response already under way: the only honest signal left is closing the connection."""
        self.flag = flag or self.flag
        self.keep_alive = False
        conn = self.conn
        self.conn = None
        if conn is not None and self.host is not None:
            self.host.pool.discard(conn)
        self._complete()
        self.down.close()
