"""The exchange's side of the HTTP filter chain (meshpy.stack.filter_chain): running a route's filters
in order, holding and resuming, the hooks on the response head and at the end, a response head a
filter holds until its body is over (Response.hold), and what a user filter's exception becomes (500,
flag FE, counted). A mixin of `Exchange`.

Nothing here runs for a route whose chain is empty; the public Request a user filter sees is made on
first use and kept on the exchange (`_filter_req`: None from routing on, on routes with filters; a slot
left unset on routes without, so they pay no store for it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshpy.codec.http1 import no_body_status
from meshpy.filters import Request, Response
from meshpy.stack.filter_chain import HeaderEditsFilter, PythonFilter
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
                     flag: str = "", local_reply: bool = True) -> None:
        if self.done or self._local is not None:
            return
        self._local_reply(status, body, flag, route=self.route, extra=extra,
                          close=not self.req_done and self.has_body(), local=local_reply)
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
    def _response_headers(self, status: int, headers: list[tuple[bytes, bytes]],
                          route_headers: bool = True) -> list[tuple[bytes, bytes]] | None:
        """What every final response head passes before it is written, whoever made it (an upstream
        or the proxy) and whatever the client speaks: the route's response filters (its header edits
        first, unless `route_headers` is False), then the server name. None when a filter failed:
        filter_failed has answered."""
        route = self.route
        if route is not None and route.response_changes:
            filters = route.response_filters
            if not route_headers and filters and isinstance(filters[0], HeaderEditsFilter):
                filters = filters[1:]
            for f in filters:
                if not f.on_response(self, status, headers):
                    return None
            if route.response_body_filters and not self.head_request and \
                    self._body_may_change(route.response_body_filters, True):
                # The body may change length on its way: re-framed (chunked, or DATA frames).
                headers = [h for h in headers if h[0] != b"content-length"]
        server = self.cfg.server_name
        if server is not None:
            headers = [(n, v) for n, v in headers if n != b"server"]
            headers.append((b"server", server))
        return headers

    def _body_may_change(self, filters: tuple[PythonFilter, ...], response: bool) -> bool:
        """Whether one of a route's body filters may change this body: one that did not pass it
        (Request.pass_body, Response.pass_body)."""
        req = self._filter_req
        passed = None if req is None else req._passed_out if response else req._passed_in
        return any((passed is None or f.user not in passed) and
                   not (f.user.keeps_response_length if response else f.user.keeps_body_length)
                   for f in filters)

    def _filter_request_body(self, route: CompiledRoute, chunk: bytes, end: bool) -> bytes | None:
        req = self._filter_req
        passed = None if req is None else req._passed_in
        for f in route.request_body_filters:
            if passed is not None and f.user in passed:
                continue
            out = f.on_request_body(self, chunk, end)  # type: ignore[arg-type]  # (a mixin of Exchange)
            if out is None:
                return None
            chunk = out
        return chunk

    def _filter_response_body(self, route: CompiledRoute, chunk: bytes, end: bool) -> bytes | None:
        req = self._filter_req
        passed = None if req is None else req._passed_out
        for f in route.response_body_filters:
            if passed is not None and f.user in passed:
                continue
            out = f.on_response_body(self, chunk, end)  # type: ignore[arg-type]
            if out is None:
                return None
            chunk = out
        kept = None if req is None else req._held_body
        if kept is not None:  # a filter holds the head: what the hooks pass on waits for the body's end
            kept.append(chunk)
            return b""
        return chunk

    def _whole_body(self, route: CompiledRoute, body: bytes) -> bytes | None:
        """An answer of the proxy's own, through the response body filters in one piece."""
        first = self._filter_response_body(route, body, False)
        tail = None if first is None else self._filter_response_body(route, b"", True)
        return None if first is None or tail is None else first + tail

    # -- a response head held until the body is over (Response.hold) -------------------------------
    def response_has_body(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a body follows an upstream's response head (Response.has_body)."""
        if self.head_request or no_body_status(status):
            return False
        for name, value in headers:
            if name == b"content-length":
                return value.strip() != b"0"
        conn = self.conn
        return conn is None or not conn.head_ended

    def _local_head(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The Response the filters see of an answer of the proxy's own, which knows its body."""
        req: Request | None = getattr(self, "_filter_req", None)  # (unset when routing did not filter)
        if req is None:
            self._filter_req = req = Request(self)  # type: ignore[arg-type]  # (a mixin of Exchange)
        has_body = bool(body) and not self.head_request and not no_body_status(status)
        req._response = Response(status, headers, has_body)

    def _hold_head(self, final: list[tuple[bytes, bytes]]) -> bool:
        """Whether a filter holds this response head (on a route with body hooks): then the head waits,
        and what the body hooks pass on is kept, until _held_head. The filters' Response now shows
        `final`, the list that goes out (and that the access log reads)."""
        req = self._filter_req
        response = None if req is None else req._response
        if req is None or response is None or not response._held:
            return False
        response.headers._fields = final
        req._held_body = []
        return True

    def _held_head(self) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Once the body is over, the held head as the filters left it (its framing taken out: the
        caller states the kept body's length) and the kept body; None when no head is held."""
        req = self._filter_req
        if req is None or req._held_body is None or req._response is None:
            return None
        body = b"".join(req._held_body)
        req._held_body = None
        response = req._response
        fields = response.headers._fields
        fields[:] = [h for h in fields if h[0] != b"content-length" and h[0] != b"transfer-encoding"]
        server = self.cfg.server_name
        if server is not None:  # (as _response_headers: a body hook's `server` does not win either)
            fields[:] = [h for h in fields if h[0] != b"server"]
            fields.append((b"server", server))
        self.resp_status = response.status
        return response.status, fields, body

    def _filter_complete(self, route: CompiledRoute) -> None:
        for f in route.complete_filters:
            f.on_complete(self)  # type: ignore[arg-type]
