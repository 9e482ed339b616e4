"""The exchange's side of the HTTP filter chain (meshpy.stack.filter_chain): running a route's filters
in order, holding and resuming, the hooks on the response head and at the end, and what a user
filter's exception becomes (500, flag FE, counted). A mixin of `Exchange`.

Nothing here runs for a route whose chain is empty; the public Request a user filter sees is made on
first use and kept on the exchange (`_filter_req`: None from routing on, on routes with filters; a slot
left unset on routes without, so they pay no store for it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshpy.filters import Request
from meshpy.stack.parts import ExchangeParts

if TYPE_CHECKING:
    from meshpy.routing.table import CompiledRoute

log = logging.getLogger(__name__)

FILTER_ERROR = b"filter error"


class FilteringMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def _filtered(self, route: CompiledRoute) -> bool:
        """A routed request whose route has filters: a body that came before routing (pipelined)
        through the body hooks, then the request filters; True when one answered or holds it."""
        self._filter_req = None  # (set here, not for every request: routes without filters never pay)
        if route.request_body_filters and (self._buffered or self.req_done) and self._early_body(route):
            return True
        return self._run_filters(route, 0)

    def _run_filters(self, route: CompiledRoute, index: int) -> bool:
        """The route's filters from `index` on; True when one answered the request or holds it."""
        filters = route.filters
        n = len(filters)
        while index < n:
            if filters[index].on_request(self, index):
                return True
            index += 1
        return False

    def resume_filters(self, index: int) -> None:
        """A held request goes on: the filters after the one that held it, then upstream."""
        route = self.route
        if self.done or self._local is not None or route is None:
            return
        if not self._run_filters(route, index):
            self._dispatch(route)
        self.down.flush()

    # -- for meshpy.filters.Request ----------------------------------------------------------------
    def filter_request(self) -> Request:
        req = self._filter_req
        if req is None:
            self._filter_req = req = Request(self)  # type: ignore[arg-type]  # (a mixin of Exchange)
        return req

    def filter_hold(self, resume_at: int) -> bool:
        """The filter at `resume_at - 1` returned HOLD; False when it had already resumed (go on now).
        A held request is bounded by the stream idle timeout, as one waiting for its upstream is."""
        req = self.filter_request()
        if req._resume_at == -1:
            req._resume_at = 0
            return False
        req._resume_at = resume_at
        self._arm_idle()
        return True

    def filter_resume(self) -> None:
        req = self.filter_request()
        at = req._resume_at
        if at > 0:
            req._resume_at = 0
            self.resume_filters(at)
        elif at == 0 and not self.done and self._local is None:
            req._resume_at = -1  # called in on_request before it returned HOLD

    def filter_reply(self, status: int, body: bytes, extra: list[tuple[bytes, bytes]],
                     flag: str = "") -> None:
        if self.done or self._local is not None:
            return
        self._local_reply(status, body, flag, route=self.route, extra=extra,
                          close=not self.req_done and self.has_body())
        self.down.flush()

    def filter_failed(self) -> None:
        """A user filter raised: 500 with the flag FE, unless the answer is already on its way."""
        self.cfg.stats.rq_filter_errors += 1
        if self.done or self._local is not None:
            return
        if self.started:
            self._abort("FE")
            return
        conn = self.conn
        self.conn = None
        if conn is not None:  # a response head refused: its body must never reach the client
            conn.detach()
            if self.host is not None:
                self.host.pool.discard(conn)
        self._local_reply(500, FILTER_ERROR, "FE", route=None, close=not self.req_done and self.has_body())
        self.down.flush()

    # -- response head, bodies and completion -------------------------------------------------------
    def _response_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[
            tuple[bytes, bytes]] | None:
        """What every final response head passes before it is written, whoever made it (an upstream
        or the proxy) and whatever the client speaks: the route's response filters (its header edits
        first), then the server name. None when a filter failed: filter_failed has answered."""
        route = self.route
        if route is not None and route.response_changes:
            for f in route.response_filters:
                if not f.on_response(self, status, headers):
                    return None
            if route.response_body_filters and not self.head_request:
                # The body may change length on its way: re-framed (chunked, or DATA frames).
                headers = [h for h in headers if h[0] != b"content-length"]
        server = self.cfg.server_name
        if server is not None:
            headers = [(n, v) for n, v in headers if n != b"server"]
            headers.append((b"server", server))
        return headers

    def _filter_request_body(self, route: CompiledRoute, chunk: bytes, end: bool) -> bytes | None:
        for f in route.request_body_filters:
            out = f.on_request_body(self, chunk, end)  # type: ignore[arg-type]  # (a mixin of Exchange)
            if out is None:
                return None
            chunk = out
        return chunk

    def _filter_response_body(self, route: CompiledRoute, chunk: bytes, end: bool) -> bytes | None:
        for f in route.response_body_filters:
            out = f.on_response_body(self, chunk, end)  # type: ignore[arg-type]
            if out is None:
                return None
            chunk = out
        return chunk

    def _whole_body(self, route: CompiledRoute, body: bytes) -> bytes | None:
        """An answer of the proxy's own, through the response body filters in one piece."""
        first = self._filter_response_body(route, body, False)
        tail = None if first is None else self._filter_response_body(route, b"", True)
        return None if first is None or tail is None else first + tail

    def _filter_complete(self, route: CompiledRoute) -> None:
        for f in route.complete_filters:
            f.on_complete(self)  # type: ignore[arg-type]
