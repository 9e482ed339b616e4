"""The upstream's answer on its way to the client, in one path for every client protocol: the final
head through the route's response filters and the server name (_response_headers), the body through
any body hooks, trailers, and the end; the client's writer (meshpy.ports.ResponseWriter) puts each on
the wire. Also what an upstream failure means for the exchange. A mixin of `Exchange`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.codec.http1 import no_body_status
from meshpy.codec.http2 import CONNECTION_SPECIFIC
from meshpy.codec.raw_head import parse_fields
from meshpy.errors import UpstreamProtocolError, UpstreamReset
from meshpy.ports import EMPTY, NO_BODY, SIZED, UNSIZED
from meshpy.stack.forwarding import downstream_response_headers
from meshpy.stack.parts import ExchangeParts
from meshpy.stack.retry import RESET

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


_SERVICE_TIME = b"x-envoy-upstream-service-time"

class RespondingMixin(ExchangeParts):
    if not TYPE_CHECKING:  # no slots of its own: Exchange has them all
        __slots__ = ()

    def up_head(self, status: int, fields: bytes, keep_alive: bool) -> None:
        """`fields`: the upstream head after its status line (see meshpy.codec.raw_head)."""
        if status >= 200:
            cluster = self.cluster
            if cluster is not None and cluster.outlier is not None and self.host is not None:
                cluster.outlier.result(self.host, status)
            if self.retry is not None and self._retry_on_status(status, fields):
                return
        if status < 200:
            if status == 101:
                if self.upgrade is None:  # raised into the parser: the connection's protocol error, 502
                    raise UpstreamProtocolError("protocol switch not asked for")
                return self._switch(fields)
            if status != 100:  # 100 was answered by the proxy itself
                self._interim(status, fields)
            return
        self.resp_status = status
        self._respond(status, fields)

    def _interim(self, status: int, fields: bytes) -> None:
        """A 1xx answer other than 100 (e.g. 103 Early Hints), for clients that can take one."""
        conn = self.conn
        listed = conn.response_fields(fields) if conn is not None else parse_fields(fields)
        # A 1xx has no body (RFC 9110 15.2): framing fields in one would misframe the client's next read.
        kept = [h for h in downstream_response_headers(listed)[0] if h[0] not in _FRAMING]
        self.down.respond_interim(self, status, kept)

    def _respond(self, status: int, fields: bytes) -> None:
        """The final response head, to the client: the upstream's bytes when nothing changes them and
        the writer can pass them on (HTTP/1.1), else rebuilt from the fields."""
        if self.cfg.envoy_headers:
            return self._respond_timed(status, fields)
        route = self.route
        if self.cfg.server_name is None and (route is None or not route.response_changes) and \
                self.down.respond_raw(self, status, fields):
            self.started = True
            return
        conn = self.conn
        listed = conn.response_fields(fields) if conn is not None else parse_fields(fields)
        self._head_from_list(status, listed)

    def _respond_timed(self, status: int, fields: bytes) -> None:
        """_respond with Envoy's x-envoy-upstream-service-time: the milliseconds from sending the
        request upstream to this head (Envoy's router adds it unless suppress_envoy_headers)."""
        took = b"%d" % int((self.down.loop.time() - self._up_t0) * 1000)
        route = self.route
        if self.cfg.server_name is None and (route is None or not route.response_changes) and \
                _SERVICE_TIME not in fields.lower():
            raw = b"%s\r\n%s: %s\r\n\r\n" % (fields[:-4], _SERVICE_TIME, took)
            if self.down.respond_raw(self, status, raw):
                self.started = True
                return
        conn = self.conn
        listed = conn.response_fields(fields) if conn is not None else parse_fields(fields)
        listed = [h for h in listed if h[0] != _SERVICE_TIME]  # (the upstream's own is replaced)
        listed.append((_SERVICE_TIME, took))
        self._head_from_list(status, listed)

    def _head_from_list(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The general path: hop-by-hop fields out, a Date, the route's response filters and the
        server name (_response_headers), then the writer frames it for its client."""
        listed, length, chunked, has_date = downstream_response_headers(headers)
        if not has_date:
            listed.append((b"date", self.down.slot.date.now()))  # as Envoy: RFC 9110 6.6.1
        final = self._response_headers(status, listed)
        if final is None:
            return
        if final is not listed and length is not None and not any(h[0] == b"content-length" for h in final):
            length = None  # re-framed for the response body filters
        if self.head_request or no_body_status(status):
            body = NO_BODY
        elif length is not None:
            body = SIZED
        elif self._ended_at_head():
            body = EMPTY
        else:
            body = UNSIZED
            self._close_delimited = not chunked
        if self._grpc:
            self._note_grpc_status(final)  # a trailers-only answer carries it in its head
        self.started = True
        route = self.route
        if route is not None and route.response_body_filters and self._hold_head(final):
            return  # a filter holds the head until the body is over: up_end sends it (_send_held)
        self.down.respond_head(self, status, final, body)

    def _ended_at_head(self) -> bool:
        """An HTTP/2 upstream's head that ended its stream (gRPC's trailers-only answer), unless a body
        hook may still add a body: an HTTP/1.1 client is told content-length: 0, as Envoy's codec does."""
        conn = self.conn
        if conn is None or not conn.head_ended:
            return False
        route = self.route
        return route is None or not route.response_body_filters or \
            not self._body_may_change(route.response_body_filters, True)

    def _send_held(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A head a filter held until the body was over (Response.hold), then the body kept
        meanwhile, sized by its content-length."""
        if self._grpc:
            self._note_grpc_status(headers)
        if self.head_request or no_body_status(status):
            self.down.respond_head(self, status, headers, NO_BODY)
            return
        headers.append((b"content-length", b"%d" % len(body)))
        self.down.respond_head(self, status, headers, SIZED)
        if body:
            self._write_body(body)

    def up_body(self, data: bytes) -> None:
        route = self.route
        if route is not None and route.response_body_filters:
            out = None if self.done else self._filter_response_body(route, data, False)
            if not out:
                return  # failed (the exchange was reset), or nothing to send
            data = out
        self.bytes_out += len(data)
        self.down.respond_body(self, data)
        if self._deadline or self._timer is not None:
            self._last_activity = self.down.loop.time()

    def _write_body(self, data: bytes) -> None:
        """A piece of response body that no upstream read brought (a body filter's)."""
        self.bytes_out += len(data)
        self.down.respond_body(self, data)

    def up_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Response trailers (an HTTP/2 upstream's, gRPC's grpc-status among them): the end of an HTTP/2
        client's stream; an HTTP/1.1 client gets the body's end without them, as from Envoy by default."""
        self.trailers = [t for t in trailers if t[0] not in CONNECTION_SPECIFIC]
        if self._grpc:
            self._note_grpc_status(self.trailers)

    def _note_grpc_status(self, fields: list[tuple[bytes, bytes]]) -> None:
        for name, value in fields:
            if name == b"grpc-status" and value.isdigit():
                self._grpc_status = int(value)

    def up_end(self, keep_alive: bool) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None and self.host is not None:
            if keep_alive and self.req_done:
                self.host.pool.release(conn)
            else:
                self.host.pool.discard(conn)
        route = self.route
        if route is not None and route.response_body_filters:
            tail = self._filter_response_body(route, b"", True)
            if tail is None:
                return  # a filter failed: the exchange was reset
            if tail:
                self._write_body(tail)
            held = self._held_head()
            if held is not None:
                self._send_held(*held)
        self.down.respond_end(self)
        if not self.req_done:
            self.keep_alive = False  # the rest of the request body would be read as a new request
        self._finish()

    def _host_failed(self) -> None:
        """No answer from the current host (connect failure, reset, timeout), for outlier detection."""
        cluster = self.cluster
        if cluster is not None and cluster.outlier is not None and self.host is not None:
            cluster.outlier.local_failure(self.host)

    def up_failed(self, exc: BaseException | None, protocol_error: bool) -> None:
        conn = self.conn
        if not self.done:
            self._host_failed()
        self.conn = None
        if conn is not None and self.host is not None:
            self.host.pool.discard(conn)
        if self.done:
            return
        if self.started:
            if not protocol_error and self._close_delimited:
                self.up_end(False)  # a close-delimited body ends with the connection
            else:
                self._abort("UPE" if protocol_error else "UC")
            return
        if protocol_error:
            return self._error(UpstreamProtocolError())
        if self.retry is not None and self._try_again(RESET):
            return
        if conn is not None and self._reused and not self._retried and not self.has_body() and \
                self.host is not None:
            # A keep-alive connection the upstream closed just as we reused it: nothing was received,
            # and a bodiless request can be sent again safely on a fresh connection, once.
            self._retried = True
            fresh = self.host.pool.checkout(self._on_pool)
            if fresh is not None:
                self._attach(fresh)
            return
        self._error(UpstreamReset())

    def flush(self) -> None:
        self.down.flush()
