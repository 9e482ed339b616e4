"""One gRPC unary call or one h2 GET through a client and a server codec in memory, timed per side.

The shapes are those of `make bench-h2` (benchmarks/micro_h2.py): h2load's request as the proxy's
downstream (server) side sees it, the same request with the headers meshpy adds as its upstream (client)
side sends it, and nginx's answer. A proxy pays the server side of its downstream connection and the
client side of its upstream one; the window updates each side sends, and the peer's processing of them,
are counted on the side that sends or receives them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .nghttp2_abi import DATA, END, HEADERS, Event, Fields


class Codec(Protocol):
    """What the benchmark needs of one side of a connection (nghttp2_abi.Connection, h2_baseline's)."""

    def send_request(self, headers: Fields, body: bytes = b"", trailers: Fields | None = None) -> int: ...
    def send_response(self, stream_id: int, headers: Fields, body: bytes = b"",
                      trailers: Fields | None = None) -> None: ...
    def consume(self, stream_id: int, length: int) -> None: ...
    def receive(self, data: bytes) -> list[Event]: ...
    def data_to_send(self) -> bytes: ...


Factory = Callable[[bool], Codec]  # client_side -> a connection

_H2LOAD = [(b":scheme", b"http"), (b":authority", b"127.0.0.1:10000"), (b"accept", b"*/*"),
           (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0")]
_NGINX = [(b"server", b"nginx/1.22.1"), (b"date", b"Tue, 01 Dec 2026 04:00:00 GMT")]
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"
GRPC_ANSWER = b"\x00\x00\x00\x00\x05world"


@dataclass(frozen=True)
class Shape:
    request: Fields
    response: Fields
    body: bytes
    answer: bytes
    trailers: Fields | None


SHAPES = {
    "grpc-unary": Shape(
        [(b":method", b"POST"), (b":path", b"/bench.Echo/Unary"), *_H2LOAD, (b"content-length", b"10"),
         (b"content-type", b"application/grpc"), (b"te", b"trailers")],
        [(b":status", b"200"), *_NGINX, (b"content-type", b"application/grpc")],
        GRPC_MESSAGE, GRPC_ANSWER, [(b"grpc-status", b"0"), (b"grpc-message", b"")]),
    "h2-get": Shape(
        [(b":method", b"GET"), (b":path", b"/hello"), *_H2LOAD],
        [(b":status", b"200"), *_NGINX, (b"content-type", b"text/plain"), (b"content-length", b"10")],
        b"", b"hello h2!\n", None),
}


def request_headers(shape: Shape, i: int, upstream: bool) -> Fields:
    """The request as the proxy's downstream side receives it or as its upstream side sends it: the
    latter with meshpy's added headers and a new x-request-id each time (a literal HPACK cannot index)."""
    if not upstream:
        return shape.request
    return [*shape.request, (b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"http"),
            (b"x-request-id", b"5e1a9c3e-0b7d-4c2f-9a55-%012x" % i)]


@dataclass
class Seen:
    """What each end saw of one exchange, checked by verify() outside the timed region."""

    server_headers: Fields = field(default_factory=list)
    server_body: bytearray = field(default_factory=bytearray)
    server_ended: bool = False
    client_headers: list[Fields] = field(default_factory=list)
    client_body: bytearray = field(default_factory=bytearray)
    client_ended: bool = False


class ExchangeFailed(AssertionError):
    pass


def verify(shape: Shape, sent: Fields, seen: Seen) -> None:
    """Raise ExchangeFailed unless the exchange really happened, so a broken codec cannot look fast."""
    problems = []
    if [(bytes(n), bytes(v)) for n, v in seen.server_headers] != sent:
        problems.append(f"server saw request headers {seen.server_headers!r}")
    if bytes(seen.server_body) != shape.body or not seen.server_ended:
        problems.append(f"server saw body {bytes(seen.server_body)!r}, ended {seen.server_ended}")
    blocks = [dict(block) for block in seen.client_headers]
    if not blocks or blocks[0].get(b":status") != b"200":
        problems.append(f"client saw response headers {seen.client_headers!r}")
    if bytes(seen.client_body) != shape.answer or not seen.client_ended:
        problems.append(f"client saw body {bytes(seen.client_body)!r}, ended {seen.client_ended}")
    if shape.trailers is not None and (len(blocks) != 2 or blocks[1].get(b"grpc-status") != b"0"):
        problems.append(f"client saw no grpc-status 0 trailers: {seen.client_headers!r}")
    if problems:
        raise ExchangeFailed("; ".join(problems))


def connect(client_factory: Factory, server_factory: Factory) -> tuple[Codec, Codec]:
    """A client and a server past the preface and both SETTINGS exchanges."""
    client, server = client_factory(True), server_factory(False)
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    return client, server


def measure(factory: Factory, shape_name: str, n: int, upstream: bool,
            check: Callable[[Shape, Fields, Seen], None] = verify,
            peer: Factory | None = None) -> tuple[float, float]:
    """Seconds per exchange spent in (client, server) over `n` exchanges on one connection, each
    exchange checked after the clock has stopped. With a `peer`, the codec is the client upstream and
    the server downstream, and the peer is the other end (its time is then not the codec's)."""
    shape = SHAPES[shape_name]
    if peer is None:
        client, server = connect(factory, factory)
    else:
        client, server = connect(factory, peer) if upstream else connect(peer, factory)
    in_client = in_server = 0.0
    clock = time.perf_counter
    for i in range(n):
        headers = request_headers(shape, i, upstream)
        seen = Seen()
        t0 = clock()
        client.send_request(headers, shape.body)
        wire = client.data_to_send()
        t1 = clock()
        for kind, sid, payload in server.receive(wire):
            if kind == DATA:
                seen.server_body += payload
                server.consume(sid, len(payload))
            elif kind == HEADERS:
                seen.server_headers = payload
            elif kind == END:
                seen.server_ended = True
                server.send_response(sid, shape.response, shape.answer, shape.trailers)
        wire = server.data_to_send()
        t2 = clock()
        for kind, sid, payload in client.receive(wire):
            if kind == DATA:
                seen.client_body += payload
                client.consume(sid, len(payload))
            elif kind == HEADERS:
                seen.client_headers.append(payload)
            elif kind == END:
                seen.client_ended = True
        wire = client.data_to_send()
        t3 = clock()
        if wire:
            server.receive(wire)
            wire = server.data_to_send()
        t4 = clock()
        check(shape, headers, seen)
        in_client += (t1 - t0) + (t3 - t2)
        in_server += (t2 - t1) + (t4 - t3)
    return in_client / n, in_server / n


def proxy_cost(factory: Factory, shape_name: str, n: int, peer: Factory | None = None) -> dict[str, float]:
    """Microseconds per exchange for a proxy: the server side of its downstream connection (h2load's
    request), the client side of its upstream one (the request with meshpy's headers), and their sum."""
    down = measure(factory, shape_name, n, upstream=False, peer=peer)[1]
    up = measure(factory, shape_name, n, upstream=True, peer=peer)[0]
    return {"downstream_server_us": down * 1e6, "upstream_client_us": up * 1e6, "proxy_us": (down + up) * 1e6}
