"""The exchange of a request that came in over HTTP/2.

Routing, policies, retries and the upstream side are the HTTP/1.1 exchange's own (meshpy.stack.
exchange): a request is the same request whichever wire it came on. What differs is only how the
request is read (a checked header list instead of a parser's callbacks) and how the answer is
written: HEADERS and DATA frames on one stream, through H2Stream, instead of bytes on a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.codec import grpc
from meshpy.codec.http2 import RequestHead
from meshpy.codec.request_facts import SCANNED, RequestFacts
from meshpy.errors import BadRequest
from meshpy.stack.exchange import Exchange
from meshpy.transport.h2_tunnel import websocket_key

if TYPE_CHECKING:
    from meshpy.routing.compile import HttpListenerConfig
    from meshpy.transport.h2_stream import H2Stream

_CONTINUE = [(b":status", b"100")]


class H2Exchange(Exchange):
    PROTOCOL = "HTTP/2"
    __slots__ = ("_grpc_timeout", "stream")

    def __init__(self, stream: H2Stream, cfg: HttpListenerConfig) -> None:
        super().__init__(stream, cfg)
        self.stream = stream
        self._grpc_timeout = -1.0
        self._grpc_status = -1  # from the answer's grpc-status (trailers, or a trailers-only head)

    # -- request side ----------------------------------------------------------------------------
    def begin(self, head: RequestHead, ended: bool) -> None:
        """The request's head, checked by meshpy.codec.http2.read_request; `ended`: it has no body."""
        cfg = self.cfg
        self.target = head.path
        headers = self.headers = head.fields
        facts = self.facts
        grpc_timeout = self._scan(headers)
        if facts.expect_continue:
            # Answered here at once, as Envoy does: the upstream never sees the expectation.
            self.stream.send_head(_CONTINUE, False)
            headers = self.headers = [h for h in headers if h[0] != b"expect"]
            facts = self.facts = RequestFacts()
            grpc_timeout = self._scan(headers)
        try:
            if facts.content_length is not None and facts.content_length < 0:
                raise BadRequest("invalid content-length")
            if len(headers) > cfg.max_headers or head.size > cfg.max_header_bytes:
                raise BadRequest("request header fields too large", 431)
            method = head.method
            if method == b"CONNECT" and head.protocol is None:
                # A plain CONNECT (RFC 9113 8.5): its target is :authority, tunnelled as HTTP/1.1's.
                self.target = head.authority or b""
            elif method == b"CONNECT":
                method = self._extended_connect(head)
            elif not ended and facts.content_length is None:
                # A body of unknown length: chunked on an HTTP/1.1 upstream connection.
                facts.chunked = True
            self.head_complete(method, "2", True)
            if head.protocol is not None:
                self._accept_upgrade(head.protocol.lower())
                self.keep_alive = True  # (a stream: nothing to close)
            self._read_grpc_timeout(grpc_timeout)
        except BadRequest as err:
            if not self.method:  # not counted by head_complete (not reached, or refused there)
                cfg.stats.request_started()
            self.req_done = ended
            self._local_reply(err.status, err.body, "DPE", close=True)
            return
        self.start()

    def _extended_connect(self, head: RequestHead) -> bytes:
        """RFC 8441: `CONNECT` with `:protocol` goes upstream as an HTTP/1.1 Upgrade request (GET).
        A protocol the listener does not allow gets 403."""
        protocol = head.protocol
        if protocol is None or protocol.lower() not in self.cfg.upgrades or protocol.lower() == b"connect":
            raise BadRequest("CONNECT is not allowed here", 403)
        if protocol.lower() == b"websocket" and not any(n == b"sec-websocket-key" for n, _ in self.headers):
            self.headers.append((b"sec-websocket-key", websocket_key()))
        return b"GET"

    def request_end(self) -> None:
        tunnel = self.stream.tunnel
        if tunnel is not None:
            self.req_done = True
            tunnel.client_ended()
            return
        super().request_end()

    def downstream_lost(self) -> None:
        if self.stream.tunnel is not None:
            self.stream.tunnel.close()
        super().downstream_lost()

    def _read_grpc_timeout(self, value: bytes | None) -> None:
        """grpc-timeout, checked now (a BadRequest is answered here); the route says later whether it
        limits the stream (TimersMixin._limit_stream)."""
        if value is None:
            return
        seconds = grpc.timeout_seconds(value)
        if seconds is None:
            raise BadRequest("invalid grpc-timeout")
        self._grpc_timeout = seconds

    def _scan(self, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The headers the proxy reads, in one pass: RequestFacts, and whether this is a gRPC call;
        returns the grpc-timeout value, checked later where a BadRequest can be answered."""
        facts = self.facts
        grpc_timeout = None
        for i, (name, value) in enumerate(headers):
            if name in SCANNED:
                try:
                    facts.note(name, value, i)
                except ValueError:
                    facts.content_length = -1
            elif name == b"content-type":
                # As Envoy's Grpc::Common::hasGrpcContentType: application/grpc or application/grpc+...;
                # application/grpc-web is not gRPC (its filter makes it so, after this).
                self._grpc = value.startswith(b"application/grpc") and value[16:17] in (b"", b"+")
            elif name == b"grpc-timeout":
                grpc_timeout = value
        return grpc_timeout

    def request_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Request trailers: an HTTP/1.1 upstream gets the body's end without them."""

    # -- response side ---------------------------------------------------------------------------
    def _complete(self) -> None:
        if self._grpc and not self.done:
            super()._complete()
            status = self._grpc_status
            if status < 0:  # no grpc-status came: the call was cut (client gone, reset, ...)
                status = grpc.CANCELLED if self.flag == "DC" else grpc.UNKNOWN
            self.cfg.stats.grpc.record(self.path, status, self.stream.loop.time() - self.t0)
            return
        super()._complete()

