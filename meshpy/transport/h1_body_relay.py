"""The body of an `Upgrade: h2c` request served as plain HTTP/1.1, which llhttp does not parse.

llhttp (through httptools) hands on every byte after the head of an upgrade request as the new
protocol's, body included. meshpy serves h2c upgrades as plain requests (as Envoy does), so that body
must still be read by its framing, or its bytes would be parsed as the next request. A fresh parser is
primed with a made-up head carrying the same framing (Content-Length or chunked) and then fed the
connection's bytes: it reads the body with llhttp's own strict rules, and everything after it as the
connection's next requests, which the relay passes on to the connection. Only such connections pay
for the one extra call per parser callback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from meshpy.ports import Http1Exchange
    from meshpy.transport.downstream_http1 import Http1Downstream


def relay_parser(down: Http1Downstream, ex: Http1Exchange) -> httptools.HttpRequestParser:
    """A request parser that delivers the body of `ex` first, then the connection's next requests."""
    parser = httptools.HttpRequestParser(_BodyRelay(down, ex))
    framing = b"transfer-encoding: chunked" if ex.facts.chunked else \
        b"content-length: %d" % (ex.facts.content_length or 0)
    parser.feed_data(b"POST / HTTP/1.1\r\nhost: relay\r\n" + framing + b"\r\n\r\n")
    return parser


class _BodyRelay:
    __slots__ = ("down", "ex")

    def __init__(self, down: Http1Downstream, ex: Http1Exchange) -> None:
        self.down = down
        self.ex: Http1Exchange | None = ex  # None once the body has ended: all goes to the connection

    def on_message_begin(self) -> None:
        if self.ex is None:
            self.down.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self.ex is None:
            self.down.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.ex is None:
            self.down.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.ex is None:
            self.down.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.ex is None:
            self.down.on_body(body)
        else:
            self.ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None:
            self.down.on_message_complete()
            return
        self.ex = None
        self.down.body_relayed(ex)
