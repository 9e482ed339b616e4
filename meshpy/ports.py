"""The interfaces between layers: what a transport offers the stack and the stack offers a transport.

A leaf module: it imports nothing of meshpy at run time, and transports, the stack and the upstream
side all import it (transports never import the stack; meshpy.routing.compile, which builds a
listener's config, is where the stack's exchange classes are handed to the transports). Each port is a
typing Protocol: nothing here runs on the request path, and no class has to inherit from one.

    client ─ transport (downstream_http1, h2_stream) ──ResponseWriter──┐
                  │ DownstreamExchange / StreamExchange                │
                  v                                                    │
             stack (Exchange) ────── UpstreamStream ──> transport (upstream_http1, upstream_h2_stream)
                  ^                                                    │
                  └──────────────────── UpstreamSink <─────────────────┘
    pools and the TCP proxy open connections through a Connector (one per cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import asyncio

    from meshpy.codec.http2 import RequestHead
    from meshpy.codec.request_facts import RequestFacts
    from meshpy.errors import BadRequest
    from meshpy.routing.compile import HttpListenerConfig, ListenerSlot

Header = tuple[bytes, bytes]

# What an exchange tells a writer of a response body it is about to send (ResponseWriter.respond_head).
NO_BODY = 0  # a HEAD answer, a 1xx, 204 or 304
SIZED = 1  # its content-length is among the headers
UNSIZED = 2  # no length: chunked upstream, or delimited by the upstream connection's end
EMPTY = 3  # no body follows, though the status allows one (an HTTP/2 head that ended its stream)
P = TypeVar("P", bound="asyncio.BaseProtocol")


# -- downstream: the client side -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A client connection, as every downstream connection describes itself (made when first asked,
    then kept): what filters read as `request.connection`, and where the TLS identity goes next."""

    peer: str  # the client's address (the connection's, not X-Forwarded-For)
    peer_port: int
    local: str  # the address the proxy accepted it on
    local_port: int
    # Where the client was connecting before interception redirected it (a sidecar); None otherwise.
    original_destination: tuple[str, int] | None
    listener: str  # the listener serving it
    direction: str  # the listener's traffic direction: inbound, outbound or unspecified
    tls: TlsInfo | None = None  # None: plaintext


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a downstream TLS handshake established: the connection's TLS facts and, when the client
    presented a certificate that was verified, its identity (what authorization and
    x-forwarded-client-cert read)."""

    version: str  # "TLSv1.3", "TLSv1.2"
    cipher: str  # OpenSSL's name of the negotiated cipher suite
    sni: str  # the server name the client asked for ("" when it sent none)
    alpn: str  # the application protocol agreed on ("" when none)
    # The verified client certificate's subject alternative names by kind (a SPIFFE ID is a URI SAN),
    # its subject (RFC 2253 as OpenSSL prints it, Envoy's spelling: meshpy.codec.x509_text) and its
    # DER bytes; all empty when the client sent no certificate.
    peer_uris: tuple[str, ...] = ()
    peer_dns: tuple[str, ...] = ()
    peer_subject: str = ""
    peer_certificate: bytes = b""
    resumed: bool = False  # the session was resumed (a ticket), not a full handshake
    # The certificates the client sent after its own (intermediates, DER, in its order): with
    # peer_certificate, x-forwarded-client-cert's Chain. Empty when it sent its certificate alone.
    peer_chain: tuple[bytes, ...] = ()
    # The URI SANs of the certificate this proxy presented (x-forwarded-client-cert's By).
    local_uris: tuple[str, ...] = ()


class ResponseWriter(Protocol):
    """The client side an exchange answers to: an HTTP/1.1 connection, or one HTTP/2 stream.

    `out` collects HTTP/1.1 bytes and is used by the HTTP/1.1 exchange only; the HTTP/2 exchange
    writes frames through its stream (meshpy.transport.h2_stream.H2Stream)."""

    loop: asyncio.AbstractEventLoop
    slot: ListenerSlot
    peer: str
    original_dst: tuple[str, int] | None  # where an intercepted client was connecting
    out: list[bytes]
    write_paused: bool

    def connection_info(self) -> ConnectionInfo: ...
    # The answer. The exchange decides what it is (status, final headers, body pieces); the writer
    # how it goes on the wire (HTTP/1.1 framing and Connection; HTTP/2 frames). A writer may set
    # `ex.keep_alive` (HTTP/1.1: a connection-delimited body, draining).
    def respond_raw(self, ex: Responding, status: int, fields: bytes) -> bool: ...
    def respond_interim(self, ex: Responding, status: int, headers: list[Header]) -> None: ...
    def respond_head(self, ex: Responding, status: int, headers: list[Header], body: int) -> None: ...
    def respond_body(self, ex: Responding, data: bytes) -> None: ...
    def respond_end(self, ex: Responding) -> None: ...
    def respond_whole(self, ex: Responding, status: int, headers: list[Header], body: bytes) -> None: ...
    # The handshake accepted (an upgrade's 101, CONNECT's 200): the head that says so, then the client
    # joined to `upstream`; returns the status sent and the tunnel (`on_close` runs when it ends).
    def join_tunnel(self, ex: Responding, headers: list[Header], upstream: asyncio.Transport, early: bytes,
                    on_close: Callable[[int, int], None]) -> tuple[int, TunnelFeed]: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...
    def exchange_done(self, ex: DownstreamExchange, keep_alive: bool) -> None: ...


class Responding(Protocol):
    """The state of an exchange's answer that its writer reads, and for HTTP/1.1 framing sets."""

    http10: bool
    keep_alive: bool
    head_request: bool
    down_chunked: bool
    upgrade: bytes | None  # the Upgrade accepted (b"connect" for CONNECT)


class DownstreamExchange(Protocol):
    """One request as a downstream transport drives it."""

    cfg: HttpListenerConfig
    done: bool
    flag: str  # the access log's response flags

    def request_body(self, data: bytes) -> None: ...
    def request_end(self) -> None: ...
    def downstream_lost(self) -> None: ...
    def down_pause_writing(self) -> None: ...
    def down_resume_writing(self) -> None: ...


class Http1Exchange(DownstreamExchange, Protocol):
    """What the HTTP/1.1 connection fills in from its parser's callbacks, and then calls."""

    target: bytes
    headers: list[Header]
    facts: RequestFacts
    upgrade: bytes | None  # an Upgrade the listener allows and the request asks for
    early: bytes  # bytes after an upgrade request's head, for the tunnel

    def head_complete(self, method: bytes, version: str, keep_alive: bool, upgrading: bool = False) -> None:
        ...
    def start(self) -> None: ...
    def has_body(self) -> bool: ...
    def request_broken(self, err: BadRequest) -> None: ...


class StreamExchange(DownstreamExchange, Protocol):
    """What an HTTP/2 stream calls: the request head comes checked, in one piece."""

    trailers: list[Header] | None  # the response's, sent as the stream's end

    def begin(self, head: RequestHead, ended: bool) -> None: ...
    def request_trailers(self, trailers: list[Header]) -> None: ...


class TunnelFeed(Protocol):
    """A tunnel a connection became part of: it takes the bytes read together with the 101 head (or,
    for CONNECT, while the answer went out)."""

    def from_upstream(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def close(self) -> None: ...


class StreamTunnel(TunnelFeed, Protocol):
    """A tunnel over one HTTP/2 stream (WebSocket over HTTP/2, RFC 8441)."""

    def to_upstream(self, data: bytes) -> None: ...  # the client's DATA
    def pause_upstream(self, paused: bool) -> None: ...  # the stream's window is full (or not)
    def client_ended(self) -> None: ...


# -- upstream: the server side ---------------------------------------------------------------------
class UpstreamSink(Protocol):
    """What an exchange offers its upstream connection or stream."""

    def up_head(self, status: int, fields: bytes, keep_alive: bool) -> None: ...
    def up_body(self, data: bytes) -> None: ...
    def up_end(self, keep_alive: bool) -> None: ...
    def up_trailers(self, trailers: list[Header]) -> None: ...
    def up_failed(self, exc: BaseException | None, protocol_error: bool) -> None: ...
    def up_pause_writing(self) -> None: ...
    def up_resume_writing(self) -> None: ...
    def flush(self) -> None: ...


class OutgoingRequest(Protocol):
    """The request head an exchange built for its upstream, in the two forms the protocols take."""

    method: bytes
    up_target: bytes
    up_chunked: bool

    def upstream_head(self) -> bytes: ...  # the HTTP/1.1 head, serialized when first asked for
    def upstream_fields(self) -> list[Header]: ...  # the header list (Host in it), for HTTP/2


class ConnectionPool(Protocol):
    """Where an upstream stream goes back when its exchange is done with it."""

    def release(self, conn: UpstreamStream) -> None: ...  # reusable
    def discard(self, conn: UpstreamStream) -> None: ...  # not reusable: closed (HTTP/2: cancelled)


class UpstreamStream(Protocol):
    """One request's way to an upstream: an HTTP/1.1 connection or a stream of an HTTP/2 one."""

    multiplexed: bool
    used: bool  # carried an exchange before (a failure may be a stale keep-alive)
    head_ended: bool  # the response head ended the response (HTTP/2 END_STREAM on it)

    @property
    def pool(self) -> ConnectionPool: ...

    def attach(self, exchange: UpstreamSink, head_request: bool) -> None: ...
    def detach(self) -> None: ...
    def send_request(self, req: OutgoingRequest, body: list[bytes] | None, done: bool) -> None: ...
    def write_body(self, data: bytes, chunked: bool) -> None: ...
    def end_body(self, chunked: bool) -> None: ...
    def response_fields(self, fields: bytes) -> list[Header]: ...  # the head up_head gave, as a list
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_usable(self) -> bool: ...
    def close(self) -> None: ...
    # After a 101 the connection leaves its pool and becomes the upstream side of a tunnel: its
    # transport, the tunnel that takes what it already read, and its pool's bookkeeping at the end.
    def hand_over(self) -> asyncio.Transport: ...
    def feed(self, tunnel: TunnelFeed) -> None: ...
    def tunnel_closed(self) -> None: ...


class Connector(Protocol):
    """Opens a cluster's upstream connections: its timeout, socket options and, next, TLS."""

    async def open(self, address: tuple[str, int], factory: Callable[[], P]) -> P: ...
