"""Header rewriting between the two sides of an HTTP/1.1 exchange, each in one pass over the list.

Request: hop-by-hop headers out (and the ones Connection names), x-forwarded-for/-proto and
x-request-id in, Host rewritten, framing re-stated. Response: hop-by-hop out, framing chosen for the
client. Fused into single loops because this runs for every request and a pass per concern costs more.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from meshpy.stack.headers import HOP_BY_HOP, strip_hop_by_hop


def request_id(_bits: Callable[[int], int] = random.getrandbits) -> bytes:
    """A random version 4 UUID. Request ids need uniqueness, not secrecy, so the Mersenne Twister
    serves (a getrandom syscall per request costs more than the rest of this function)."""
    h = b"%032x" % ((_bits(128) & 0xFFFFFFFFFFFF0FFF3FFFFFFFFFFFFFFF) | 0x40008000000000000000)
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


class RequestFacts:
    """What the single scan of the request headers found."""

    __slots__ = ("authority", "chunked", "connection", "content_length", "expect_continue", "request_id",
                 "xff_index")

    def __init__(self) -> None:
        self.authority: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.connection: bytes | None = None
        self.expect_continue = False
        self.request_id: bytes | None = None
        self.xff_index = -1


def scan_request(headers: list[tuple[bytes, bytes]]) -> RequestFacts:
    f = RequestFacts()
    for i, (name, value) in enumerate(headers):
        c = name[0] if name else 0
        if c == 0x68 and name == b"host":  # 'h'
            f.authority = value
        elif c == 0x63:  # 'c'
            if name == b"content-length":
                f.content_length = int(value)
            elif name == b"connection":
                f.connection = value if f.connection is None else f.connection + b"," + value
        elif c == 0x74 and name == b"transfer-encoding":  # 't'
            f.chunked = True
        elif c == 0x65 and name == b"expect" and value.lower() == b"100-continue":  # 'e'
            f.expect_continue = True
        elif c == 0x78:  # 'x'
            if name == b"x-request-id":
                f.request_id = value
            elif name == b"x-forwarded-for":
                f.xff_index = i
    return f


def upstream_request_headers(headers: list[tuple[bytes, bytes]], facts: RequestFacts, *, peer: str,
                             host: bytes | None, use_remote_address: bool, forwarded_proto: bool,
                             request_id: bytes | None) -> list[tuple[bytes, bytes]]:
    """Headers as sent upstream. `host` replaces the Host header (rewrite or absolute-form target)."""
    drop = HOP_BY_HOP
    if facts.connection is not None:
        drop = drop | connection_tokens(facts.connection)
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    proto_seen = False
    for name, value in headers:
        if name in drop:
            # As in Envoy, `te` is cut down to `trailers`, the one value meant end to end (gRPC).
            if name != b"te" or b"trailers" not in connection_tokens(value):
                continue
            value = b"trailers"
        if name == b"host":
            if host is not None:
                value = host
        elif name == b"x-forwarded-for":
            if use_remote_address and peer:
                value = value + b"," + peer.encode()
        elif name == b"x-forwarded-proto":
            proto_seen = True
            if use_remote_address:
                value = b"http"
        elif name == b"expect" and facts.expect_continue:
            continue  # the proxy answers 100 Continue itself
        elif name == b"x-request-id" and request_id is not None:
            value = request_id
        append((name, value))
    if host is not None and facts.authority is None:
        append((b"host", host))
    if use_remote_address and peer and facts.xff_index < 0:
        append((b"x-forwarded-for", peer.encode()))
    if forwarded_proto and not proto_seen:
        append((b"x-forwarded-proto", b"http"))
    if request_id is not None and facts.request_id is None:
        append((b"x-request-id", request_id))
    if facts.chunked:
        append((b"transfer-encoding", b"chunked"))
    return out


def downstream_response_headers(headers: list[tuple[bytes, bytes]]) -> tuple[
        list[tuple[bytes, bytes]], int | None, bool, bool]:
    """Response headers minus hop-by-hop ones; also (content-length, was-chunked, has-date).
    One pass in the common case; the list is reused when nothing needs stripping (the upstream
    parser makes a fresh one per response)."""
    length: int | None = None
    has_date = False
    hop = False
    for name, value in headers:
        if name in HOP_BY_HOP:
            hop = True
        elif name == b"content-length":
            length = int(value)
        elif name == b"date":
            has_date = True
    if not hop:
        return headers, length, False, has_date
    chunked = any(n == b"transfer-encoding" for n, _ in headers)
    return strip_hop_by_hop(headers), length, chunked, has_date
