"""Envoy's compressor filter (`envoy.extensions.filters.http.compressor.v3.Compressor`, per route
`CompressorPerRoute`), as Envoy 1.40 runs it; docs/filter-compression.md has the guide.

Responses: compressed when the request's Accept-Encoding chooses this filter's coding, the response
has a body, its content length (when known) reaches min_content_length (30), its content type is one
of the list (Envoy's when empty; a response without one passes), its status is not uncompressible,
and it is not already content-encoded nor marked `cache-control: no-transform` (nor has an ETag, with
disable_on_etag_header). Then content-length goes (the body is sent chunked, or in HTTP/2 DATA frames),
`content-encoding` is set, a strong ETag is dropped (a weak one kept), and the body is compressed piece
by piece. `vary: Accept-Encoding` is added to every response that could have been compressed, also
when this client's Accept-Encoding did not allow it. Requests (request_direction_config, off unless
given): a request body is compressed under the same rules, but for Accept-Encoding.

Several compressor filters on one chain choose one coding together, as Envoy's do: the first to see
a response that it may compress weighs the client's q-values against the codings of every compressor
filter of the request's chain whose content types take the response (`*` means the first of them,
`identity` and q=0 mean none; choose_first breaks ties), and the others follow that choice.
"""

from __future__ import annotations

import copy
from typing import Any

from envoy.extensions.filters.http.compressor.v3 import compressor_pb2

from meshpy.extensions import Extension, parsed
from meshpy.extensions.codings import Compressing, check_compressor_library, compressor_library
from meshpy.extensions.runtime_flags import Flag, field
from meshpy.filters import CONTINUE, HttpFilter, Request, Response, Verdict
from meshpy.xds.translate_base import Issues, child

DEFAULT_TYPES = frozenset({
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
    "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript", "text/x-js",
    "application/ecmascript", "application/x-json", "application/xml", "application/json",
    "image/svg+xml", "text/xml", "application/xhtml+xml", "application/grpc-web",
    "application/grpc-web+proto"})
DEFAULT_MIN_LENGTH = 30
# Codings Envoy knows a transfer-encoding by (then the body is compressed already).
_KNOWN_CODINGS = frozenset({"gzip", "br", "deflate", "compress", "zstd"})
_CHAIN = "envoy.compressor.chain"  # request.state: the compressor filters of the request's chain
_DECISION = "envoy.compressor.decision"  # request.state: the coding chosen for the response


def _flag(issues: Issues, msg: Any, field: str, path: str) -> None:
    """An envoy.config.core.v3.RuntimeFeatureFlag: its default_value is required; its runtime_key is
    read per request from the layered runtime (meshpy.extensions.runtime_flags)."""
    if msg.HasField(field):
        flag = getattr(msg, field)
        issues.fields(flag, child(path, field), {"default_value", "runtime_key"})
        if not flag.HasField("default_value"):
            issues.add(child(path, f"{field}.default_value"), "is required")


def _common(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"enabled", "min_content_length", "content_type"})
    _flag(issues, msg, "enabled", path)


def check(issues: Issues, msg: Any, path: str) -> None:
    # status_header_enabled (x-envoy-compression-status) is not supported.
    issues.fields(msg, path, {"content_length", "content_type", "disable_on_etag_header",
                              "remove_accept_encoding_header", "runtime_enabled", "compressor_library",
                              "request_direction_config", "response_direction_config", "choose_first"})
    _flag(issues, msg, "runtime_enabled", path)
    if not msg.HasField("compressor_library"):
        issues.add(child(path, "compressor_library"), "is required")
    else:
        check_compressor_library(issues, msg.compressor_library, child(path, "compressor_library"))
    if msg.HasField("request_direction_config"):
        at = child(path, "request_direction_config")
        issues.fields(msg.request_direction_config, at, {"common_config"})
        _common(issues, msg.request_direction_config.common_config, child(at, "common_config"))
    if msg.HasField("response_direction_config"):
        at = child(path, "response_direction_config")
        rdc = msg.response_direction_config
        issues.fields(rdc, at, {"common_config", "disable_on_etag_header", "remove_accept_encoding_header",
                                "uncompressible_response_codes"})
        _common(issues, rdc.common_config, child(at, "common_config"))
        for i, code in enumerate(rdc.uncompressible_response_codes):
            if not 200 <= code < 600:
                issues.add(f"{child(at, 'uncompressible_response_codes')}[{i}]",
                           f"must be from 200 to 599, got {code}")


def route_check(issues: Issues, msg: Any, path: str) -> bool:
    """A CompressorPerRoute. It never takes the filter off the route: `disabled` turns response
    compression off there, and the filter still compresses requests and takes part in the choice of
    a coding, as Envoy's does."""
    which = msg.WhichOneof("override")
    if which is None:
        issues.add(path, "one of disabled or overrides is required")
    elif which == "disabled" and not msg.disabled:
        issues.add(child(path, "disabled"), "must be true")
    elif which == "overrides":
        at = child(path, "overrides")
        issues.fields(msg.overrides, at, {"response_direction_config", "compressor_library"})
        if msg.overrides.HasField("response_direction_config"):
            issues.fields(msg.overrides.response_direction_config, child(at, "response_direction_config"),
                          {"remove_accept_encoding_header"})
        if msg.overrides.HasField("compressor_library"):
            check_compressor_library(issues, msg.overrides.compressor_library,
                                     child(at, "compressor_library"))
    return False


EXTENSION = Extension(message=compressor_pb2.Compressor, cls="meshpy.extensions.compressor:Compressor",
                      check=check, route_message=compressor_pb2.CompressorPerRoute, route_check=route_check)

_LEGACY = ("content_length", "content_type", "runtime_enabled", "disable_on_etag_header",
           "remove_accept_encoding_header")


def _response_config(config: dict[str, Any]) -> dict[str, Any]:
    """The listener's config with its response settings in response_direction_config: the top-level
    fields (Envoy's older form) apply only when that is absent, and mean the same there."""
    out = copy.deepcopy(config)
    legacy = {k: out.pop(k) for k in _LEGACY if k in out}
    if "response_direction_config" not in out:
        common = {k: v for k, v in (("min_content_length", legacy.get("content_length")),
                                    ("content_type", legacy.get("content_type")),
                                    ("enabled", legacy.get("runtime_enabled"))) if v is not None}
        rdc: dict[str, Any] = {"common_config": common} if common else {}
        for k in ("disable_on_etag_header", "remove_accept_encoding_header"):
            if k in legacy:
                rdc[k] = legacy[k]
        out["response_direction_config"] = rdc
    return out


def _merged(listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
    out = _response_config(listener)
    rdc = out["response_direction_config"]
    if route.get("disabled"):
        rdc.setdefault("common_config", {})["enabled"] = {"default_value": False}
    overrides = route.get("overrides", {})
    if "response_direction_config" in overrides:
        # Given at all, it turns response compression on here, whatever the listener's flag says.
        rdc.setdefault("common_config", {})["enabled"] = {"default_value": True}
        remove = overrides["response_direction_config"].get("remove_accept_encoding_header")
        if remove is not None:
            rdc["remove_accept_encoding_header"] = remove
    if "compressor_library" in overrides:
        out["compressor_library"] = overrides["compressor_library"]
    return out


def _types(common: Any) -> frozenset[str]:
    return frozenset(t.lower() for t in common.content_type) or DEFAULT_TYPES


def _min_length(common: Any) -> int:
    return common.min_content_length.value if common.min_content_length.value > 0 else DEFAULT_MIN_LENGTH


def _q(text: str) -> float | None:
    """A q-value as Envoy's parser takes it (absl::SimpleAtof), None when it is not a number."""
    try:
        return float(text) if text and "_" not in text else None
    except ValueError:
        return None


class _Stream:
    """This filter's part of one request."""

    __slots__ = ("accept", "request_coder", "response_coder")

    def __init__(self, accept: str | None) -> None:
        self.accept = accept  # the Accept-Encoding this filter saw (before any filter removed it)
        self.request_coder: Compressing | None = None
        self.response_coder: Compressing | None = None


class Compressor(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        parsed(EXTENSION, config)  # (its errors at the paths the config gives)
        msg = parsed(EXTENSION, _response_config(config))
        self.library = compressor_library(msg.compressor_library)
        self.encoding = self.library.encoding
        self.choose_first = msg.choose_first
        rdc = msg.response_direction_config
        # (Runtime keys read per request: meshpy.extensions.runtime_flags.)
        self.response_on = Flag(field(rdc.common_config, "enabled"), True)
        self.min_length = _min_length(rdc.common_config)
        self.types = _types(rdc.common_config)
        self.no_etag = rdc.disable_on_etag_header
        self.remove_accept = rdc.remove_accept_encoding_header
        self.uncompressible = frozenset(rdc.uncompressible_response_codes)
        rqc = msg.request_direction_config.common_config
        self.request_on = Flag(field(rqc, "enabled"), True) if msg.HasField("request_direction_config") \
            else None
        self.request_min_length = _min_length(rqc)
        self.request_types = _types(rqc)
        self._key = f"envoy.compressor.{id(self)}"

    @classmethod
    def route_config(cls, listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
        parsed(EXTENSION, route, route=True)
        return _merged(listener, route)

    # -- the request --------------------------------------------------------------------------------
    def _stream(self, request: Request) -> _Stream:
        stream: _Stream | None = request.state.get(self._key)
        if stream is None:  # first sight of the request (its head, or a body piece while held)
            values = request.headers.get_all("accept-encoding")
            stream = request.state[self._key] = _Stream(",".join(values) if values else None)
            request.state.setdefault(_CHAIN, []).append(self)
            if self.remove_accept and self.response_on.on(request):
                request.headers.remove("accept-encoding")
            if self._compresses_request(request):
                request.headers.set("content-encoding", self.encoding)
                stream.request_coder = self.library.new()
            else:
                request.pass_body(self)
        return stream

    def _compresses_request(self, request: Request) -> bool:
        h = request.headers
        return (self.request_on is not None and request.has_body and self.request_on.on(request)
                and "upgrade" not in h
                and _long_enough(h.get("content-length"), self.request_min_length)
                and _type_allowed(h.get("content-type"), self.request_types)
                and "content-encoding" not in h
                and _transfer_allowed(h.get("transfer-encoding"), self.encoding))

    def on_request(self, request: Request) -> Verdict:
        self._stream(request)
        return CONTINUE

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        coder = self._stream(request).request_coder
        return None if coder is None else coder.compress(chunk, end)

    # -- the response -------------------------------------------------------------------------------
    def on_response(self, request: Request, response: Response) -> None:
        stream = self._stream(request)
        h = response.headers
        maybe = _long_enough(h.get("content-length"), self.min_length) and self.response_on.on(request)
        compressible = (maybe and response.status not in self.uncompressible
                        and _type_allowed(h.get("content-type"), self.types)
                        and not no_transform(h.get_all("cache-control"))
                        and not (self.no_etag and "etag" in h) and "content-encoding" not in h)
        has_body = request.method != "HEAD" and response.status not in (204, 304)
        # (Envoy's order: the coding is chosen, and kept for the other filters, before the rest is asked.)
        if has_body and self._chosen(request, stream, maybe, h.get("content-type")) and compressible and \
                _transfer_allowed(h.get("transfer-encoding"), self.encoding):
            etag = h.get("etag")
            if etag is not None and len(etag) > 2 and etag[:2] not in ("W/", "w/"):
                h.remove("etag")  # a strong ETag names the uncompressed bytes
            h.set("content-encoding", self.encoding)
            stream.response_coder = self.library.new()
        else:
            response.pass_body()
        if compressible:
            _add_vary(response)

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        coder = self._stream(request).response_coder
        return None if coder is None else coder.compress(chunk, end)

    def _chosen(self, request: Request, stream: _Stream, maybe: bool, content_type: str | None) -> bool:
        if not maybe or stream.accept is None:
            return False
        decision: str | None = request.state.get(_DECISION)
        if decision is None:
            decision = request.state[_DECISION] = choose(stream.accept, request.state.get(_CHAIN, [self]),
                                                         content_type)
        return decision.lower() == self.encoding.lower()


def choose(accept: str, chain: list[Compressor], content_type: str | None) -> str:
    """The coding the compressor filters of `chain` give a response with `content_type` for a request
    that accepts `accept` ("identity" for none), as Envoy's chooseEncoding."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    allowed: dict[str, tuple[int, bool]] = {}
    for f in chain:
        if ctype and ctype not in f.types:
            continue  # this filter would not compress it: it must not win the choice
        if f.encoding not in allowed:  # (a second filter of a coding already there is passed over)
            allowed[f.encoding] = (len(allowed), f.choose_first)
    pairs: list[tuple[str, float]] = []
    for token in (t for t in accept.split(",") if t):
        name, semicolon, params = token.partition(";")
        name = name.strip()
        q = 1.0
        key, equals, value = params.partition("=")
        if semicolon and equals and key.strip().lower() == "q":
            number = _q(value.strip())
            if number is None:
                continue  # a q-value that is not a number: the token is passed over
            q = number
        pairs.append((name, q))
        if q == 0:
            allowed.pop(name, None)  # refused by the client (kept in pairs: `*` must not bring it back)
    if not pairs or not allowed:
        return "identity"
    choice, best = "identity", 0.0
    for name, q in pairs:
        # On a tie Envoy reads allowed[name] with std::map's operator[], which adds a missing name.
        if (name in allowed or name in ("identity", "*")) and \
                (q > best or (q == best and allowed.setdefault(name, (0, False))[1])):
            choice, best = name, q
    if best == 0:
        return "identity"
    if choice == "*":
        return min(sorted(allowed.items()), key=lambda item: item[1][0])[0]
    return choice


def _long_enough(value: str | None, minimum: int) -> bool:
    """Envoy's min_content_length test: no content-length passes; one that is not a number fails."""
    return value is None or (value.isascii() and value.isdigit() and int(value) >= minimum)


def _type_allowed(value: str | None, types: frozenset[str]) -> bool:
    return value is None or value.split(";", 1)[0].strip().lower() in types


def no_transform(values: list[str]) -> bool:
    return any(t.strip().lower() == "no-transform" for v in values for t in v.split(","))


def _transfer_allowed(value: str | None, encoding: str) -> bool:
    if value is None:
        return True
    codings = {t.strip().lower() for t in value.split(",")}
    return not (codings & _KNOWN_CODINGS or encoding.lower() in codings)


def _add_vary(response: Response) -> None:
    h = response.headers
    values = h.get_all("vary")
    if not values:
        h.set("vary", "Accept-Encoding")
        return
    joined = ",".join(values)
    # Envoy's token match here is case-sensitive: "accept-encoding" does not count.
    if "Accept-Encoding" not in (t.strip() for t in joined.split(",")):
        h.set("vary", f"{joined}, Accept-Encoding")
