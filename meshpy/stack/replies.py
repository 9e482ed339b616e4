"""Answers the exchange makes itself: direct responses and redirects, errors, and the answers of
filters (meshpy.stack.filter_chain), and the end of an exchange that cannot be answered any more.

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
                          close=not self.req_done and self.has_body())

    def _local_reply(self, status: int, body: bytes, flag: str, *, route: CompiledRoute | None = None,
                     extra: list[tuple[bytes, bytes]] | None = None, close: bool = False) -> None:
        headers: list[tuple[bytes, bytes]] = [] if extra is None else extra
        headers.append((b"date", self.down.slot.date.now()))
        if body and (extra is None or all(h[0] != b"content-type" for h in extra)):
            headers.append((b"content-type", b"text/plain"))
        if route is not None and route.response_body_filters and not self.head_request and \
                not no_body_status(status):
            whole = self._whole_body(route, body)
            if whole is None:
                return  # a filter raised: filter_failed answered 500
            body = whole
        if route is None:
            server = self.cfg.server_name
            if server is not None:
                headers = [(n, v) for n, v in headers if n != b"server"]
                headers.append((b"server", server))
        else:
            final = self._response_headers(status, headers)
            if final is None:
                return  # a filter raised: filter_failed answered 500 (with no route: no loop)
            headers = final
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
