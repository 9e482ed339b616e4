"""What a request's headers say that the proxy needs to know, noted header by header as they are
parsed (HTTP/1.1: the parser's header callback; HTTP/2: one pass over the checked list).

A codec module: no I/O, and nothing of the proxy. Used by the transports as they parse and by the
stack as it forwards (meshpy.stack.forwarding).
"""

from __future__ import annotations

from meshpy.errors import BadRequest


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


# The request headers the proxy itself reads. The downstream parser's header callback notes them as
# they arrive, so a common header (user-agent, accept...) costs one set lookup and no later pass.
SCANNED = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding", b"expect",
                     b"x-request-id", b"x-forwarded-for", b"upgrade", b"x-forwarded-client-cert"})


class RequestFacts:
    """What the request headers say that the proxy needs to know; `note` takes one header of SCANNED."""

    __slots__ = ("authority", "chunked", "connection", "content_length", "expect_continue", "request_id",
                 "upgrade", "xfcc", "xff_index")

    def __init__(self) -> None:
        self.authority: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.connection: bytes | None = None
        self.expect_continue = False
        self.request_id: bytes | None = None
        self.xff_index = -1
        self.upgrade: bytes | None = None
        self.xfcc = 0  # how many x-forwarded-client-cert headers (meshpy.stack.client_cert)

    def note(self, name: bytes, value: bytes, index: int) -> None:
        """`index`: the header's position in the request's header list."""
        if name == b"host":
            if self.authority is not None:
                # RFC 9112 3.2: 400. Envoy joins the two; readers that take the first or the last
                # would route one request two ways.
                raise BadRequest("duplicate host header")
            self.authority = value
        elif name == b"content-length":
            self.content_length = int(value)
        elif name == b"connection":
            self.connection = value if self.connection is None else self.connection + b"," + value
        elif name == b"transfer-encoding":
            self.chunked = True
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self.expect_continue = True
        elif name == b"x-request-id":
            self.request_id = value
        elif name == b"x-forwarded-for":
            self.xff_index = index
        elif name == b"upgrade":
            self.upgrade = value
        elif name == b"x-forwarded-client-cert":
            self.xfcc += 1


def scan_request(headers: list[tuple[bytes, bytes]]) -> RequestFacts:
    f = RequestFacts()
    for i, (name, value) in enumerate(headers):
        if name in SCANNED:
            f.note(name, value, i)
    return f
