"""Envoy's gRPC HTTP/1.1 bridge filter (`envoy.extensions.filters.http.grpc_http1_bridge.v3.Config`), as
Envoy 1.40 runs it (http1_bridge_filter.cc); docs/filter-grpc-web.md has the guide.

For a gRPC request (application/grpc or application/grpc+..., with a path) from an HTTP/1.0 or
HTTP/1.1 client, the answer's head waits for its end (an HTTP/1.1 client gets no trailers): the
trailers' grpc-status and grpc-message are copied into the head, the status becomes 503 when
grpc-status is not 0 (or not a number), and the body goes whole, with its content-length. A head that
ends the response (a trailers-only answer) passes as it is. HTTP/2 clients are left alone.

upgrade_protobuf_to_grpc: a request of content-type application/x-protobuf becomes gRPC first
(content-type application/grpc, its whole body framed as one gRPC message); from an HTTP/1 client,
the first 5 bytes (the frame's header) are then taken off the answer's body.

Differences from Envoy, where meshpy's filter API cannot follow it: the route is not chosen again
after upgrade_protobuf_to_grpc changed the content-type (Envoy clears its route cache, so a route
matching on content-type or `grpc: {}` may then apply); an answer that ends without trailers (an
HTTP/1.1 upstream's) goes with its content-length, where Envoy sends it as it came. Refused:
ignore_query_parameters (a filter cannot change the request's path in meshpy).
"""

from __future__ import annotations

import struct
from typing import Any

from envoy.extensions.filters.http.grpc_http1_bridge.v3 import config_pb2

from meshpy.extensions import Extension, parsed
from meshpy.extensions.grpc_web import grpc_content_type
from meshpy.filters import CONTINUE, HttpFilter, Request, Response, Verdict
from meshpy.xds.translate_base import Issues, child

PROTOBUF = "application/x-protobuf"
_HTTP1 = frozenset({"HTTP/1.0", "HTTP/1.1"})
FRAME_HEADER = 5


def check(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"upgrade_protobuf_to_grpc", "ignore_query_parameters"})
    if msg.ignore_query_parameters:
        issues.add(child(path, "ignore_query_parameters"),
                   "not supported: a filter cannot change the request's path in meshpy")


EXTENSION = Extension(message=config_pb2.Config, cls="meshpy.extensions.grpc_bridge:GrpcHttp1Bridge",
                      check=check)


def grpc_status_ok(value: str) -> bool:
    """Whether grpc-status reads as 0 the way Envoy reads it (absl::SimpleAtoi into an unsigned)."""
    text = value.strip(" \t\n\v\f\r")
    text = text[1:] if text[:1] == "+" else text
    return text.isascii() and text.isdigit() and int(text) == 0


class _Bridged:
    """One bridged call's state."""

    __slots__ = ("body", "framed", "response", "unframe")

    def __init__(self, framed: bool) -> None:
        self.framed = framed  # the request was upgraded from application/x-protobuf
        self.body: list[bytes] = []  # that request's body, framed at its end
        self.unframe = FRAME_HEADER if framed else 0  # answer bytes still to take off
        self.response: Response | None = None


class GrpcHttp1Bridge(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        msg = parsed(EXTENSION, config)
        self.upgrade = msg.upgrade_protobuf_to_grpc
        self._key = f"envoy.grpc_http1_bridge.{id(self)}"

    def on_request(self, request: Request) -> Verdict:
        h = request.headers
        framed = self.upgrade and bool(request.path) and h.get("content-type") == PROTOBUF
        if framed:
            # Its content-length goes (the body hook re-frames it), also from an HTTP/2 client, whose
            # body Envoy then leaves unframed.
            h.set("content-type", "application/grpc")
        else:
            request.pass_body(self)
        if request.protocol in _HTTP1 and request.path and grpc_content_type(h.get("content-type")):
            request.state[self._key] = _Bridged(framed)
        return CONTINUE

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        call: _Bridged | None = request.state.get(self._key)
        if call is None or not call.framed:
            return None
        call.body.append(chunk)
        if not end:
            return b""
        body = b"".join(call.body)
        call.body = []
        return struct.pack(">BI", 0, len(body)) + body

    def on_response(self, request: Request, response: Response) -> None:
        call: _Bridged | None = request.state.get(self._key)
        if call is None or not response.has_body:
            response.pass_body()
            return
        call.response = response
        response.hold()

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        call: _Bridged | None = request.state.get(self._key)
        if call is None:
            return None
        if call.unframe and chunk:  # (the upgraded call's answer: its one message, unframed)
            cut = min(call.unframe, len(chunk))
            call.unframe -= cut
            chunk = chunk[cut:]
        if end and call.response is not None:
            self._trailers_to_head(request, call.response)
        return chunk

    @staticmethod
    def _trailers_to_head(request: Request, response: Response) -> None:
        trailers = request.response_trailers
        if trailers is None:
            return
        status = trailers.get("grpc-status")
        if status is not None:
            if not grpc_status_ok(status):
                response.status = 503
            response.headers.set("grpc-status", status)
        message = trailers.get("grpc-message")
        if message is not None:
            response.headers.set("grpc-message", message)
