"""HTTP/2 pieces with no I/O and no codec: our settings, and header lists checked and translated
between HTTP/2 and the proxy's HTTP/1-shaped view of a request or response.

Neither codec (meshpy.codec.h2session) is trusted with these checks alone: h2 runs with its own
validation off (it costs a quarter of its time), and nghttp2's rules are RFC 9113's, while meshpy also
refuses what would mean something else once written as HTTP/1.1. So both codecs' requests pass through
`read_request`, in the one pass over the header list that the translation makes anyway.
"""

from __future__ import annotations

from itertools import chain

from meshpy.codec import h2session
from meshpy.codec.http1 import valid_authority
from meshpy.model.types import Http2Options

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 8.2.2: fields that are only meaningful to one HTTP/1.1 connection make a message malformed.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
_WHITESPACE = (0x20, 0x09)  # a value must not start or end with one (RFC 9113 8.2.1)
# What a field value may hold (RFC 9110 5.5: VCHAR, obs-text, SP and HTAB). RFC 9113 8.2.1 requires
# refusing NUL, CR and LF only, but the other controls are refused by HTTP/1.1 parsers (llhttp among
# them) downstream of a downgrade: refusing them here keeps the two sides in step.
_VALUE_CHARS = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
# RFC 9110 5.6.2 token characters, lowercase letters only (RFC 9113 8.2.1): what a field name and a
# method may hold. Anything else could end a line or a name when written as HTTP/1.1 (a name holding
# CRLF smuggles headers; `transfer-encoding ` with a space becomes `transfer-encoding : chunked`).
_TCHAR_LOWER = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_TCHAR = _TCHAR_LOWER + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# What an HTTP/1.1 request line can carry as its target: visible ASCII. A `#` is let through to the
# exchange, which answers 400 as Envoy does, or cuts the fragment off where Envoy's runtime says so
# (envoy.reloadable_features.http_reject_path_with_fragment: false): it is never sent on.
_PATH_CHARS = bytes(range(0x21, 0x7F))
_JOINED = frozenset({b"host", b"cookie"})  # fields read_checked_request takes apart
_SCHEME_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."


class Malformed(Exception):
    """A malformed request or response (RFC 9113 8.1.1): a stream error of type PROTOCOL_ERROR."""


def local_settings(opts: Http2Options, max_header_bytes: int) -> dict[int, int]:
    """What a server side announces in its SETTINGS."""
    settings = {
        h2session.MAX_CONCURRENT_STREAMS: opts.max_concurrent_streams,
        h2session.INITIAL_WINDOW_SIZE: opts.initial_stream_window_size,
        # A promise to the peer; the limit itself is checked per request (431), as for HTTP/1.1.
        h2session.MAX_HEADER_LIST_SIZE: max_header_bytes,
    }
    if opts.allow_connect:
        settings[h2session.ENABLE_CONNECT_PROTOCOL] = 1  # RFC 8441: WebSocket over HTTP/2
    return settings


def client_settings(opts: Http2Options) -> dict[int, int]:
    """What a client side (an upstream connection) announces."""
    return {h2session.INITIAL_WINDOW_SIZE: opts.initial_stream_window_size, h2session.ENABLE_PUSH: 0,
            h2session.MAX_CONCURRENT_STREAMS: opts.max_concurrent_streams}


class RequestHead:
    """A request's pseudo-headers and its other fields, checked, as HTTP/1.1 would carry them:
    cookie crumbs joined into one field (RFC 9113 8.2.3)."""

    __slots__ = ("authority", "fields", "method", "path", "protocol", "scheme", "size")

    def __init__(self) -> None:
        self.method = b""
        self.scheme = b""
        self.path = b""
        self.authority: bytes | None = None
        self.protocol: bytes | None = None
        self.fields: list[tuple[bytes, bytes]] = []
        self.size = 0  # the bytes of names and values, for max_request_headers


def read_request(headers: list[tuple[bytes, bytes]], ended: bool = False) -> RequestHead:
    """The checked head of a request; Malformed (a stream error) for anything RFC 9113 8.2 and 8.3 do
    not allow, and for anything that would mean something else once written as HTTP/1.1. `ended`: the
    HEADERS frame ended the stream, so the request has no body."""
    head = RequestHead()
    fields = head.fields
    append = fields.append
    cookies: list[bytes] | None = None
    host: bytes | None = None
    size = 0
    regular = False
    length_seen = False
    for name, value in headers:
        size += len(name) + len(value)
        if value.translate(None, _VALUE_CHARS) or \
                (value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE)):
            raise Malformed(f"invalid value of {name.decode('latin-1')!r}")
        if name[:1] == b":":
            if regular:
                raise Malformed("pseudo-header after a regular header")
            if name not in _REQUEST_PSEUDO:
                raise Malformed(f"unknown pseudo-header {name.decode('latin-1')!r}")
            attr = name[1:].decode()
            if getattr(head, attr):
                raise Malformed(f"repeated pseudo-header {name.decode()!r}")
            setattr(head, attr, value)
            continue
        regular = True
        if not name or name.translate(None, _TCHAR_LOWER):
            raise Malformed(f"invalid header name {name.decode('latin-1')!r}")
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise Malformed(f"connection-specific header {name.decode('latin-1')!r}")
        if name == b"host":
            if host is not None:
                raise Malformed("repeated host header")
            host = value  # used when there is no :authority, else dropped (RFC 9113 8.3.1)
            continue
        if name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
            continue
        if name == b"content-length":
            if not value.isdigit() or (ended and int(value)) or length_seen:
                # (a second one, even equal, is refused by HTTP/1.1 parsers downstream of a downgrade)
                raise Malformed("content-length invalid, repeated, or with no body (RFC 9113 8.1.1)")
            length_seen = True
        append((name, value))
    head.size = size
    _check_pseudo(head)
    authority = head.authority if head.authority is not None else host
    if authority is not None:
        if not authority or not valid_authority(authority):  # (no userinfo: RFC 9113 8.3.1)
            raise Malformed("invalid :authority")
        head.authority = authority
        append((b"host", authority))  # the HTTP/1.1 side's Host
    if cookies is not None:
        append((b"cookie", b"; ".join(cookies)))
    return head


def read_checked_request(headers: list[tuple[bytes, bytes]], ended: bool = False) -> RequestHead:
    """`read_request` for a codec that has enforced RFC 9113 8.2 and 8.3 itself (nghttp2 with its HTTP
    messaging checks: names, values, pseudo-headers first and once, connection-specific fields,
    content-length against the body). Left here: the translation, and the two things HTTP/1.1 needs
    beyond RFC 9113 that nghttp2 lets through: a path without obs-text, an authority without
    userinfo. tests/unit/codec/test_h2_sessions.py holds both readers to the same verdicts."""
    head = RequestHead()
    # nghttp2 has put the pseudo-headers first: one short loop for them, then the fields as a slice.
    i = 0
    for name, value in headers:
        if name[:1] != b":":
            break
        if name == b":path":
            head.path = value
        elif name == b":method":
            head.method = value
        elif name == b":scheme":
            head.scheme = value
        elif name == b":authority":
            head.authority = value
        else:
            head.protocol = value
        i += 1
    fields = head.fields = [f for f in headers[i:] if f[0] not in _JOINED]
    append = fields.append
    cookies: list[bytes] | None = None
    host: bytes | None = None
    if len(fields) != len(headers) - i:  # a host or cookie field: taken apart as read_request does
        for name, value in headers[i:]:
            if name == b"host":
                host = value
            elif name == b"cookie":
                if cookies is None:
                    cookies = []
                cookies.append(value)
    size = sum(map(len, chain.from_iterable(headers)))
    head.size = size
    path = head.path
    if path and path.translate(None, _PATH_CHARS):
        raise Malformed("invalid :path")
    authority = head.authority if head.authority is not None else host
    if authority is not None:
        if not authority or not valid_authority(authority):
            raise Malformed("invalid :authority")
        head.authority = authority
        append((b"host", authority))
    if cookies is not None:
        append((b"cookie", b"; ".join(cookies)))
    return head


def _check_pseudo(head: RequestHead) -> None:
    method = head.method
    if not method:
        raise Malformed("missing :method")
    if method.translate(None, _TCHAR):
        raise Malformed("invalid :method")
    if head.protocol is not None and method != b"CONNECT":
        raise Malformed(":protocol on a request that is not CONNECT (RFC 8441 4)")
    if method == b"CONNECT" and head.protocol is None:
        if head.scheme or head.path or not head.authority:
            raise Malformed("CONNECT takes :authority only")
        return
    path, scheme = head.path, head.scheme
    if not scheme or not path:
        raise Malformed("missing :scheme or :path")
    if scheme.translate(None, _SCHEME_CHARS):
        raise Malformed("invalid :scheme")
    if path.translate(None, _PATH_CHARS) or (path[:1] != b"/" and (path != b"*" or method != b"OPTIONS")):
        raise Malformed("invalid :path")


def read_trailers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Trailer fields, checked: no pseudo-headers (RFC 9113 8.1), nothing connection-specific."""
    for name, value in headers:
        if name[:1] == b":" or name in CONNECTION_SPECIFIC or name.lower() != name:
            raise Malformed(f"field {name.decode('latin-1')!r} not allowed in trailers")
        if value.translate(None, _VALUE_CHARS):
            raise Malformed(f"invalid character in {name.decode('latin-1')!r}")
    return headers


def response_fields(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/1-side response header list (hop-by-hop fields already out) as HTTP/2 sends it."""
    out = [(b":status", b"%d" % status)]
    out.extend(h for h in headers if h[0] not in CONNECTION_SPECIFIC)
    return out
