"""The exchange's side of the HTTP filter chain (meshpy.stack.filter_chain): running a route's filters
in order, holding and resuming, the hooks on the response head and at the end, and what a user
filter's exception becomes (500, flag FE, counted). A mixin of `Exchange`.

Nothing here runs for a route whose chain is empty; the public Request a user filter sees is made on
first use and kept on the exchange (`_filter_req`, a slot left unset until then).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meshpy.filters import Request, Response
from meshpy.stack.parts import ExchangeParts

if TYPE_CHECKING:
    from meshpy.routing.table import CompiledRoute

log = logging.getLogger(__name__)

FILTER_ERROR = b"filter error"


class FilteringMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

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
        try:
            return self._filter_req
        except AttributeError:
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

    def filter_reply(self, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
        if self.done or self._local is not None:
            return
        self._local_reply(status, body, "", route=self.route, extra=extra,
                          close=not self.req_done and self._has_body())
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
        self._local_reply(500, FILTER_ERROR, "FE", route=None, close=not self.req_done and self._has_body())
        self.down.flush()

    # -- response head and completion ----------------------------------------------------------------
    def _filter_response(self, route: CompiledRoute, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """The filters with on_response see (and may change) the head; False when one raised: the
        caller answers nothing more, filter_failed has."""
        request = self.filter_request()
        response = Response(status, headers)
        request._responding = True
        try:
            for f in route.response_filters:
                try:
                    f.user.on_response(request, response)
                except Exception:
                    log.exception("http filter %s failed on a response", f.name)
                    self.filter_failed()
                    return False
        finally:
            request._responding = False
        return True

    def _filter_complete(self, route: CompiledRoute) -> None:
        request = self.filter_request()
        for f in route.complete_filters:
            try:
                f.user.on_complete(request)
            except Exception:
                self.cfg.stats.rq_filter_errors += 1
                log.exception("http filter %s failed at completion", f.name)
