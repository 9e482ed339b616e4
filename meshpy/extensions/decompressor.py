"""Envoy's decompressor filter (`envoy.extensions.filters.http.decompressor.v3.Decompressor`), as
Envoy 1.40 runs it; docs/filter-compression.md has the guide.

A request or response body whose first content coding (the first of `content-encoding`, any case) is
the library's is decompressed piece by piece, unless that direction is off or the message says
`cache-control: no-transform` (and ignore_no_transform_header is not set): the coding is taken off
`content-encoding` (the header goes when it was the only one), and so is content-length (the body is
sent chunked, or in HTTP/2 DATA frames). A body that inflates past the library's bound (a compression
bomb) or is corrupt is cut there, as Envoy cuts it.

While response decompression is on, the filter also tells the upstream what it can take: the
request's accept-encoding gets the library's coding appended (the entries naming that coding exactly
are dropped first; the tokens are joined with ","), unless advertise_accept_encoding is false.

Not done: Envoy's `x-envoy-decompressor-<library>-{compressed,uncompressed}-bytes` trailers (filters
cannot add trailers; an HTTP/1.1 client or upstream does not get them from Envoy either).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.decompressor.v3 import decompressor_pb2

from meshpy.extensions import Extension, parsed
from meshpy.extensions.codings import Decompressing, check_decompressor_library, decompressor_library
from meshpy.extensions.compressor import no_transform
from meshpy.extensions.runtime_flags import Flag, field
from meshpy.filters import CONTINUE, Headers, HttpFilter, Request, Response, Verdict
from meshpy.xds.translate_base import Issues, child


def _common(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"enabled", "ignore_no_transform_header"})
    if msg.HasField("enabled"):
        at = child(path, "enabled")
        # The runtime_key is read per request from the layered runtime (meshpy.extensions.runtime_flags).
        issues.fields(msg.enabled, at, {"default_value", "runtime_key"})
        if not msg.enabled.HasField("default_value"):
            issues.add(child(at, "default_value"), "is required")


def check(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"decompressor_library", "request_direction_config",
                              "response_direction_config"})
    if not msg.HasField("decompressor_library"):
        issues.add(child(path, "decompressor_library"), "is required")
    else:
        check_decompressor_library(issues, msg.decompressor_library, child(path, "decompressor_library"))
    at = child(path, "request_direction_config")
    issues.fields(msg.request_direction_config, at, {"common_config", "advertise_accept_encoding"})
    _common(issues, msg.request_direction_config.common_config, child(at, "common_config"))
    at = child(path, "response_direction_config")
    issues.fields(msg.response_direction_config, at, {"common_config"})
    _common(issues, msg.response_direction_config.common_config, child(at, "common_config"))


EXTENSION = Extension(message=decompressor_pb2.Decompressor,
                      cls="meshpy.extensions.decompressor:Decompressor", check=check)


class _Direction:
    __slots__ = ("ignore_no_transform", "on")

    def __init__(self, common: Any) -> None:
        self.on = Flag(field(common, "enabled"), True)  # (its runtime key read per request)
        self.ignore_no_transform = common.ignore_no_transform_header


class Decompressor(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        msg = parsed(EXTENSION, config)
        self.library = decompressor_library(msg.decompressor_library)
        self.encoding = self.library.encoding
        rqc = msg.request_direction_config
        self.request = _Direction(rqc.common_config)
        self.response = _Direction(msg.response_direction_config.common_config)
        self.advertise = rqc.advertise_accept_encoding.value if rqc.HasField("advertise_accept_encoding") \
            else True
        self._key = f"envoy.decompressor.{id(self)}"

    def _decoder(self, direction: _Direction, headers: Headers, request: Request) -> Decompressing | None:
        """A decoder for a body with these headers, the headers changed for it; None to leave it."""
        coding = ",".join(headers.get_all("content-encoding"))
        if not coding or coding.split(",", 1)[0].strip().lower() != self.encoding or \
                not direction.on.on(request):
            return None
        if not direction.ignore_no_transform and no_transform(headers.get_all("cache-control")):
            return None
        whole = coding.strip()
        rest = whole.partition(",")[2].strip()
        if "," in whole:
            headers.set("content-encoding", rest)
        else:
            headers.remove("content-encoding")
        decoder: Decompressing = self.library.new()
        return decoder

    # -- the request --------------------------------------------------------------------------------
    def _request_decoder(self, request: Request) -> Decompressing | None:
        state = request.state
        if self._key not in state:  # first sight of the request (its head, or a body piece while held)
            if self.advertise and self.response.on.on(request):
                self._advertise(request.headers)
            decoder = self._decoder(self.request, request.headers, request) if request.has_body else None
            if decoder is None:
                request.pass_body(self)
            state[self._key] = decoder
        decoder_now: Decompressing | None = state[self._key]
        return decoder_now

    def _advertise(self, headers: Headers) -> None:
        tokens = [t.strip() for v in headers.get_all("accept-encoding") for t in v.split(",")]
        kept = [t for t in tokens if t and t.split(";", 1)[0].strip() != self.encoding]
        headers.set("accept-encoding", ",".join([*kept, self.encoding]))

    def on_request(self, request: Request) -> Verdict:
        self._request_decoder(request)
        return CONTINUE

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        decoder = self._request_decoder(request)
        return None if decoder is None else decoder.decompress(chunk)

    # -- the response -------------------------------------------------------------------------------
    def on_response(self, request: Request, response: Response) -> None:
        decoder = None
        if request.method != "HEAD" and response.status not in (204, 304):
            decoder = self._decoder(self.response, response.headers, request)
        if decoder is None:
            response.pass_body()
        request.state[self._key + ".response"] = decoder

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        decoder: Decompressing | None = request.state.get(self._key + ".response")
        return None if decoder is None else decoder.decompress(chunk)
