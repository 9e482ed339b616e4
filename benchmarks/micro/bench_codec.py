"""A typical request head: parsed by httptools, then rewritten and serialised for the upstream."""

from __future__ import annotations

import httptools
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from meshpy.codec.request_facts import scan_request
from meshpy.stack.forwarding import upstream_request_headers

pytestmark = pytest.mark.benchmark(group="codec")

# A browser-ish API call behind an edge proxy: 8 headers, one of them hop-by-hop (Connection), and an
# x-request-id already set, so no id is generated (as Exchange.start with the default options).
REQUEST = (
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n"
    b"Host: orders.internal:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl\r\n"
    b"X-Request-Id: 5a4f0f3c-3a59-4d0e-9d67-5d0e0f9c4a11\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
PEER = "10.1.2.3"

# What must go upstream: names lowered, Connection gone, x-forwarded-for/-proto added, the id kept.
UPSTREAM_HEAD = (
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n"
    b"host: orders.internal:8080\r\n"
    b"user-agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36\r\n"
    b"accept: application/json\r\n"
    b"accept-encoding: gzip, deflate, br\r\n"
    b"accept-language: en-US,en;q=0.9\r\n"
    b"authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl\r\n"
    b"x-request-id: 5a4f0f3c-3a59-4d0e-9d67-5d0e0f9c4a11\r\n"
    b"x-forwarded-for: 10.1.2.3\r\n"
    b"x-forwarded-proto: http\r\n"
    b"\r\n"
)


class HeadSink:
    """The request-head half of Http1Downstream's parser callbacks, doing the same per-callback work
    (bound append, lowered names, the header byte count), without the connection and the Exchange."""

    __slots__ = ("_hdr_append", "hdr_bytes", "headers", "messages", "method", "parser", "target")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self._hdr_append = self.headers.append
        self.target = b""
        self.method = b""
        self.hdr_bytes = 0
        self.messages = 0

    def on_message_begin(self) -> None:
        self.headers = []
        self._hdr_append = self.headers.append
        self.target = b""
        self.hdr_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.target += url
        self.hdr_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.hdr_bytes += len(name) + len(value)
        self._hdr_append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()

    def on_message_complete(self) -> None:
        self.messages += 1


def parse(sink: HeadSink) -> list[tuple[bytes, bytes]]:
    # One parser for many requests, as on a keep-alive connection: llhttp resets itself per message.
    sink.parser.feed_data(REQUEST)
    return sink.headers


def upstream_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Exchange.head_complete + Exchange.start's header work for a forwarded request with default
    listener options and no route edits or rewrites (kept in step with meshpy/stack/exchange.py)."""
    facts = scan_request(headers)
    assert facts.authority is not None
    facts.authority.decode("latin-1")  # Exchange keeps the authority as str for routing and the log
    path = target.decode("latin-1")
    out = upstream_request_headers(
        headers, facts, peer=PEER, host=None, use_remote_address=True, forwarded_proto=True,
        request_id=None,
    )  # fmt: skip
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (
        method, path.encode("latin-1"), b"".join([b"%s: %s\r\n" % kv for kv in out])
    )  # fmt: skip


def parse_and_rewrite(sink: HeadSink) -> bytes:
    parse(sink)
    return upstream_head(sink.method, sink.target, sink.headers)


def bench_parse_head(benchmark: BenchmarkFixture) -> None:
    sink = HeadSink()
    headers = benchmark(parse, sink)
    assert sink.messages > 0 and sink.method == b"GET"
    assert len(headers) == 8 and headers[0] == (b"host", b"orders.internal:8080")
    assert sink.target == b"/api/v1/orders/12345?expand=items"


def bench_rewrite_head(benchmark: BenchmarkFixture) -> None:
    sink = HeadSink()
    parse(sink)
    head = benchmark(upstream_head, sink.method, sink.target, sink.headers)
    assert head == UPSTREAM_HEAD


def bench_parse_and_rewrite_head(benchmark: BenchmarkFixture) -> None:
    sink = HeadSink()
    head = benchmark(parse_and_rewrite, sink)
    assert head == UPSTREAM_HEAD
    assert sink.messages > 1  # the parser really was reused across requests
