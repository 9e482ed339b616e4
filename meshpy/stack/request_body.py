"""The request body on its way upstream: held while the upstream connection opens (reading paused
past a bound), through any body hooks of the route's filters, kept for retries, written to the
upstream stream; its end, and a body the client broke. A mixin of `Exchange`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.stack.parts import ExchangeParts

if TYPE_CHECKING:
    from meshpy.errors import BadRequest
    from meshpy.routing.table import CompiledRoute

BODY_BUFFER_HIGH = 256 * 1024  # request body held while the upstream connection opens
PAUSE_UPSTREAM = 2  # the downstream's read-pause reasons the exchange uses
PAUSE_BODY_BUFFER = 4


class RequestBodyMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def request_body(self, data: bytes) -> None:
        if self.done:
            return  # the answer went out already (local reply, error): the rest is discarded
        self.bytes_in += len(data)
        limit = self.cfg.body_limit
        if limit is not None and self.bytes_in > limit:
            if not self.started:
                self._local_reply(413, b"payload too large", "", close=True)
            else:
                self._abort("")
            return
        if self._local is not None:
            return
        route = self.route
        if route is not None and route.request_body_filters:
            out = self._filter_request_body(route, data, False)
            if not out:
                return  # answered, failed, or nothing to send
            data = out
        self._last_activity = self.down.loop.time()
        self._forward_body(data)

    def _forward_body(self, data: bytes) -> None:
        if self.retry is not None:
            self.retry.keep(data)
        conn = self.conn
        if conn is not None:
            conn.write_body(data, self.up_chunked)
            return
        buf = self._buffered
        if buf is None:
            buf = self._buffered = []
        buf.append(data)
        self._buffered_bytes += len(data)
        if self._buffered_bytes > BODY_BUFFER_HIGH:
            self.down.pause_reading(PAUSE_BODY_BUFFER)

    def request_end(self) -> None:
        self.req_done = True
        if self.done:
            return
        if self._local is not None:
            self._send_local()
            return
        route = self.route
        if route is not None and route.request_body_filters and not self._body_end(route):
            return
        conn = self.conn
        if conn is not None and (self.up_chunked or conn.multiplexed):  # else nothing marks the end
            conn.end_body(self.up_chunked)
        if self.host is not None:
            self._request_timers()

    def _body_end(self, route: CompiledRoute) -> bool:
        """The request body filters' end hook, and what they add; False when one answered or failed."""
        tail = self._filter_request_body(route, b"", True)
        if tail is None:
            return False
        if tail:
            self._forward_body(tail)
        return True

    def _early_body(self, route: CompiledRoute) -> bool:
        """A pipelined request's body came before it was routed: it passes the body filters now.
        True when one answered or failed."""
        buffered, self._buffered, self._buffered_bytes = self._buffered, None, 0
        for data in buffered or ():
            out = self._filter_request_body(route, data, False)
            if out is None:
                return True
            if out:
                self._forward_body(out)
        return self.req_done and not self._body_end(route)

    def _request_timers(self) -> None:
        timeout = self.route.timeout if self.route is not None else None
        if timeout is not None:
            self._deadline = self.down.loop.time() + timeout
        self._arm_idle()

    def request_broken(self, err: BadRequest) -> None:
        """The client's bytes went bad in the middle of this request's body."""
        if self.done:
            return
        if not self.started:
            self._local_reply(err.status, err.body, "DPE", close=True)
        else:
            self._abort("DPE")
