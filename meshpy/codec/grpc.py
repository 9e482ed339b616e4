"""gRPC over HTTP/2, the parts a proxy needs: the grpc-timeout header, and the gRPC status for an
answer the proxy makes itself (gRPC clients read grpc-status, not the HTTP status)."""

from __future__ import annotations

from urllib.parse import quote_from_bytes

# grpc-timeout units (gRPC's PROTOCOL-HTTP2.md): hours, minutes, seconds, milli, micro, nano.
_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}

OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = (
    0, 1, 2, 4, 7, 12, 13, 14)
UNAUTHENTICATED = 16

# Envoy's Grpc::Utility::httpToGrpcStatus, for answers made by the proxy.
_BY_HTTP = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
            429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}
# Timeouts by response flag: the deadline the caller set (or the route's) ran out.
_TIMEOUT_FLAGS = frozenset({"UT", "SI"})


def timeout_seconds(value: bytes) -> float | None:
    """`grpc-timeout: 250m` as seconds; None when malformed (at most 8 digits and one unit)."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or not unit:
        return None
    scale = _UNITS.get(unit[0])
    return None if scale is None else int(digits) * scale


def status_for(http_status: int, flag: str) -> int:
    """The gRPC status of a local answer: no route -> UNIMPLEMENTED; no healthy upstream, connect
    failure, overflow, rate limit -> UNAVAILABLE; timeout -> DEADLINE_EXCEEDED."""
    if http_status == 408 or (flag in _TIMEOUT_FLAGS and http_status == 504):
        return DEADLINE_EXCEEDED  # (408: the stream's duration, as Envoy answers it, or its idle timeout)
    return _BY_HTTP.get(http_status, UNKNOWN)


def percent_encode(message: bytes) -> bytes:
    """grpc-message is percent-encoded UTF-8 (printable ASCII but '%' passes as is)."""
    return quote_from_bytes(message.strip(), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()
