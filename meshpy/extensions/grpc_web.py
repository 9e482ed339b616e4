"""Envoy's gRPC-Web filter (`envoy.extensions.filters.http.grpc_web.v3.GrpcWeb`, no config fields), as
Envoy 1.40 runs it (grpc_web_filter.cc); docs/filter-grpc-web.md has the guide.

A request whose content-type is exactly application/grpc-web, -web+proto, -web-text or -web-text+proto
(and that has a path) becomes a gRPC call: content-type application/grpc, `te: trailers`,
`grpc-accept-encoding: identity` unless the client sent one, and no content-length (the body is
re-framed). A -text request's body is base64, decoded in groups of 4 characters as it comes; one that
is not valid base64 (Envoy's strict decoder: padding only at the end, unused bits zero), or whose
length at its end is not a multiple of 4, is answered 400 "Bad gRPC-web request, invalid base64 data.".

The answer gets content-type application/grpc-web+proto, or -web-text+proto when the request's
`accept` is exactly a -text type, and no content-length. Its body frames pass as they are, or (text)
each frame base64-encoded on its own; its trailers become one last frame in the body (flag 0x80, the
length, then "name:value\\r\\n" per field) and are dropped. An answer that is neither gRPC (200 and
application/grpc[+...], or a trailers-only head with grpc-status) nor already proto gRPC-Web (200 and
application/grpc-web[+proto]) is turned into a gRPC status: its head waits for its body (at most the
first 16 KiB are kept), which becomes `grpc-message` (percent-encoded), `grpc-status` is the HTTP
status mapped as Envoy's httpToGrpcStatus, and the body is dropped (content-length: 0). The HTTP status
stays. A head that ends the response passes as it is but for content-type. The proxy's own answers to
a gRPC-Web request (no route to a cluster, no healthy upstream, this filter's 400) are turned the same
way, as Envoy's local replies are.

Not done: Envoy's per-method gRPC-Web statistics (cluster.<name>.grpc-web.<service>.<method>.*): a
built-in filter has no way yet to export counters.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2

from meshpy.codec import grpc
from meshpy.extensions import Extension, parsed
from meshpy.filters import CONTINUE, HttpFilter, Request, Response, Verdict
from meshpy.xds.translate_base import Issues

GRPC_WEB = "application/grpc-web"
GRPC_WEB_PROTO = "application/grpc-web+proto"
GRPC_WEB_TEXT = "application/grpc-web-text"
GRPC_WEB_TEXT_PROTO = "application/grpc-web-text+proto"
_WEB_TYPES = frozenset({GRPC_WEB, GRPC_WEB_PROTO, GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO})
_TEXT_TYPES = frozenset({GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO})
BAD_BASE64 = b"Bad gRPC-web request, invalid base64 data."
TRAILER_FLAG = 0x80
# Envoy keeps at most this much of a non-gRPC answer's body for its grpc-message.
MAX_MESSAGE = 16384
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*")
# Envoy's Grpc::Utility::httpToGrpcStatus.
_BY_HTTP = {400: grpc.INTERNAL, 401: grpc.UNAUTHENTICATED, 403: grpc.PERMISSION_DENIED,
            404: grpc.UNIMPLEMENTED, 429: grpc.UNAVAILABLE, 502: grpc.UNAVAILABLE, 503: grpc.UNAVAILABLE,
            504: grpc.UNAVAILABLE}


def check(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, ())


EXTENSION = Extension(message=grpc_web_pb2.GrpcWeb, cls="meshpy.extensions.grpc_web:GrpcWeb", check=check)


def decode_base64(text: bytes) -> bytes | None:
    """`text` (a multiple of 4 characters) decoded as Envoy's Base64::decode does, None where it
    refuses it: '=' only as the last one or two characters, every other character of the standard
    alphabet, and the bits the padding leaves unused zero."""
    real = len(text) - (2 if text.endswith(b"==") else 1 if text.endswith(b"=") else 0)
    if not text or real % 4 == 1 or not _BASE64.fullmatch(text, 0, real):
        return None
    last = _ALPHABET.index(text[real - 1]) if real % 4 else 0
    if (real % 4 == 2 and last & 0x0F) or (real % 4 == 3 and last & 0x03):
        return None
    return base64.b64decode(text[:real] + b"=" * (-real % 4))


def percent_encoded(message: bytes) -> str:
    """Envoy's PercentEncoding::encode for grpc-message: '%', controls and bytes from '~' up as %XX."""
    return "".join(chr(b) if 0x20 <= b < 0x7E and b != 0x25 else f"%{b:02X}" for b in message)


def grpc_content_type(value: str | None) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: application/grpc, or application/grpc+<subtype>."""
    return value is not None and value.startswith("application/grpc") and value[16:17] in ("", "+")


def _proto_grpc_web(response: Response) -> bool:
    """A 200 whose media type (parameters aside, any case) is application/grpc-web(+proto)."""
    value = response.headers.get("content-type")
    if value is None or response.status != 200:
        return False
    return value.split(";", 1)[0].rstrip().lower() in (GRPC_WEB, GRPC_WEB_PROTO)


def _is_grpc_answer(response: Response) -> bool:
    """Envoy's Grpc::Common::isGrpcResponseHeaders: a head that ends the response is gRPC when it
    carries grpc-status (trailers-only); another when it is a 200 of a gRPC content-type."""
    if not response.has_body:
        return "grpc-status" in response.headers
    return response.status == 200 and grpc_content_type(response.headers.get("content-type"))


def _inline(request: Request, name: str) -> str | None:
    """A header as Envoy reads an inline one: its fields joined with ",", None when there is none."""
    values = request.headers.get_all(name)
    return ",".join(values) if values else None


def trailer_frame(trailers: list[tuple[str, str]]) -> bytes:
    block = b"".join(f"{name}:{value}\r\n".encode("latin-1") for name, value in trailers)
    return struct.pack(">BI", TRAILER_FLAG, len(block)) + block


class _Call:
    """One gRPC-Web request's state."""

    __slots__ = ("frames", "message", "pending", "responded", "response", "text_request", "text_response")

    def __init__(self, text_request: bool, text_response: bool) -> None:
        self.text_request = text_request
        self.text_response = text_response
        self.pending = b""  # request base64 characters short of a group of 4
        self.responded = False
        self.response: Response | None = None  # a non-gRPC answer's head, held until its body is over
        self.message = bytearray()  # that body's first MAX_MESSAGE bytes
        self.frames = bytearray()  # (text answers) the response bytes short of a whole frame


class GrpcWeb(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        parsed(EXTENSION, config)
        self._key = f"envoy.grpc_web.{id(self)}"

    # -- the request ------------------------------------------------------------------------------
    def on_request(self, request: Request) -> Verdict:
        h = request.headers
        content_type = _inline(request, "content-type")
        if content_type not in _WEB_TYPES or not request.path:
            request.pass_body(self)
            return CONTINUE
        text_response = _inline(request, "accept") in _TEXT_TYPES
        request.state[self._key] = _Call(content_type in _TEXT_TYPES, text_response)
        # (content-length goes: this filter's body hook re-frames the body.)
        h.set("content-type", "application/grpc")
        h.set("te", "trailers")
        if "grpc-accept-encoding" not in h:
            h.set("grpc-accept-encoding", "identity")
        return CONTINUE

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        call: _Call | None = request.state.get(self._key)
        if call is None or not call.text_request:
            return None
        available = call.pending + chunk
        if end:
            if not available:
                return None
            if len(available) % 4:
                return self._bad_base64(request, call)
        elif len(available) < 4:
            call.pending = available
            return b""
        whole = len(available) // 4 * 4
        decoded = decode_base64(available[:whole])
        if decoded is None:
            return self._bad_base64(request, call)
        call.pending = available[whole:]
        return decoded

    @staticmethod
    def _bad_base64(request: Request, call: _Call) -> bytes:
        if call.responded:  # (Envoy resets a stream whose answer has begun)
            raise ValueError("invalid base64 in a gRPC-Web request whose answer has begun")
        request.reply(400, BAD_BASE64)
        return b""

    # -- the answer -------------------------------------------------------------------------------
    def on_response(self, request: Request, response: Response) -> None:
        call: _Call | None = request.state.get(self._key)
        if call is None:
            response.pass_body()
            return
        call.responded = True
        transform = not _is_grpc_answer(response) and not _proto_grpc_web(response)
        response.headers.set("content-type", GRPC_WEB_TEXT_PROTO if call.text_response else GRPC_WEB_PROTO)
        if not response.has_body:
            response.pass_body()  # nothing follows: neither a body to turn nor trailers to frame
        elif transform:
            call.response = response
            response.hold()

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        call: _Call | None = request.state.get(self._key)
        if call is None:
            return None
        if call.response is not None:
            return self._to_status(call, call.response, chunk, end)
        out = self._text_frames(call, chunk) if call.text_response else None
        if not end:
            return out
        trailers = request.response_trailers
        if trailers is None:
            return out
        frame = trailer_frame(trailers.items())
        trailers.clear()  # they are in the body now
        if call.text_response:
            frame = base64.b64encode(frame)
        return (out or b"") + frame

    @staticmethod
    def _to_status(call: _Call, response: Response, chunk: bytes, end: bool) -> bytes:
        """A non-gRPC answer as a gRPC status: its body (the first MAX_MESSAGE bytes) in grpc-message."""
        room = MAX_MESSAGE - len(call.message)
        if room > 0:
            call.message += chunk[:room]
        if end:
            h = response.headers
            h.set("grpc-message", percent_encoded(bytes(call.message)))
            h.set("grpc-status", str(_BY_HTTP.get(response.status, grpc.UNKNOWN)))
        return b""

    @staticmethod
    def _text_frames(call: _Call, chunk: bytes) -> bytes:
        """The whole gRPC frames received so far, each base64-encoded on its own; a partial frame waits
        for the rest (and is dropped if the body ends first, as Envoy's decoder drops it)."""
        buf = call.frames
        buf += chunk
        out = []
        at = 0
        while len(buf) - at >= 5:
            flags, length = struct.unpack_from(">BI", buf, at)
            if flags & ~1:  # not a message frame: Envoy's decoder refuses it, and the rest of the piece
                buf.clear()
                at = 0
                break
            end = at + 5 + length
            if end > len(buf):
                break
            out.append(base64.b64encode(bytes(buf[at:end])))
            at = end
        del buf[:at]
        return b"".join(out)
