"""Answers the exchange makes itself: direct responses and redirects, errors, and the answers of
filters (meshpy.stack.filter_chain), and the end of an exchange that cannot be answered any more.

A mixin of `Exchange`, kept apart so that the exchange module holds the request and upstream flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.codec import grpc
from meshpy.codec.http1 import no_body_status
from meshpy.model.routes import DirectResponseAction, RedirectAction
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
                     extra: list[tuple[bytes, bytes]] | None = None, close: bool = False,
                     grpc_status: int | None = None, local: bool = True, edits: bool = True) -> None:
        """An answer of the proxy's own. `route`: the route whose filters it passes (None: none);
        `edits` False: not the route's response header edits (the connection manager's answers, as in
        Envoy, where the router's alone get them); `local` False: a filter's own response (see
        Request.reply)."""
        headers: list[tuple[bytes, bytes]] = [] if extra is None else extra
        headers.append((b"date", self.down.slot.date.now()))
        if body and (extra is None or all(h[0] != b"content-type" for h in extra)):
            headers.append((b"content-type", b"text/plain"))
        # The head passes the filters before the body, as in Envoy (a compressor decides at the head),
        # and shows the body's length there as Envoy's local replies do; the writer states the
        # length of what is sent.
        sized = route is not None and bool(route.response_body_filters) and not no_body_status(status)
        held = False  # a filter holds the head until its body hooks are done (Response.hold)
        if route is None:
            server = self.cfg.server_name
            if server is not None:
                headers = [(n, v) for n, v in headers if n != b"server"]
                headers.append((b"server", server))
        else:
            if sized:
                headers.append((b"content-length", b"%d" % len(body)))
            if route.filtered and route.response_changes:
                self._local_head(status, headers, body)
            final = self._response_headers(status, headers, local and edits)
            if final is None:
                return  # a filter raised: filter_failed answered 500 (with no route: no loop)
            held = sized and self._hold_head(final)
            headers = [h for h in final if h[0] != b"content-length"] if sized else final
        if sized and not self.head_request:
            assert route is not None
            whole = self._whole_body(route, body)
            if whole is None:
                return  # a filter raised: filter_failed answered 500
            body = whole
        if held:
            released = self._held_head()
            assert released is not None
            status, headers, body = released
        if close:
            self.keep_alive = False
        self.resp_status = status
        self.flag = flag
        if self._grpc and local:  # (not local: a filter's own response, sent as it is, as in Envoy)
            status, headers, body = self._grpc_answer(status, headers, body, grpc_status)
        self.bytes_out = 0 if self.head_request or no_body_status(status) else len(body)
        self._local = (status, headers, body)
        # Otherwise the answer waits for request_end: a bodiless request completes in the same parser
        # pass, and a small body is read and dropped so the connection stays usable. A CONNECT stream
        # has no end to wait for (its bytes would be the tunnel's): answered now.
        if close or self.req_done or self.method == b"CONNECT":
            self._send_local()

    def _grpc_answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                     code: int | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """As Envoy: HTTP 200 with the error as a gRPC status, in one HEADERS frame (trailers-only).
        `code`: the status where the answer names its own, else the one for its HTTP status."""
        if code is None:
            code = grpc.status_for(status, self.flag)
        self._grpc_status = code
        headers = [(b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code),
                   (b"grpc-message", grpc.percent_encode(body)),
                   *(h for h in headers if h[0] not in (b"content-type", b"content-length"))]
        self.resp_status = 200  # logged as sent, as Envoy logs it
        return 200, headers, b""

    def _send_local(self) -> None:
        local = self._local
        if local is None or self.done:
            return
        self.started = True
        self.down.respond_whole(self, *local)
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
