"""Opening upstream connections: one `Connector` per cluster (made by ClusterRuntime) opens every
connection meshpy makes to the cluster's endpoints: pooled HTTP/1.1 and HTTP/2 connections, the TCP
proxy's, CONNECT tunnels' and active health checks'.

It owns what all of them share: the cluster's connect timeout and the socket options (TCP_NODELAY on
every TCP connection, as Envoy sets it: asyncio and uvloop set it on their own too, but that is the
loop's choice, not meshpy's; SO_KEEPALIVE with the cluster's `tcp_keepalive` timings when it has one).
An endpoint on a Unix socket (Envoy's pipe; its address a str path) is connected by meshpy.transport.unix
and gets none of them, as in Envoy, where a pipe cluster with tcp_keepalive (Istio's xds-grpc) works.
Upstream TLS and ALPN (Envoy's transport_socket) belong here too, so that every kind of
upstream connection gets them at once; the pool of a cluster of protocol auto asks for a connection
whose codec ALPN chose (`negotiated`).

The options are set once the connect completes, before the caller gets the connection. A protocol's
connection_made has written at most its first flight by then (the HTTP/2 preface), and Nagle never
holds back the first segment of an idle connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from meshpy.model.unix_address import SockAddr, label
from meshpy.transport import unix
from meshpy.transport.tls_contexts import ClientContext, peer_info
from meshpy.transport.tls_layer import failure_reason
from meshpy.transport.upstream_alpn import AlpnChoice
from meshpy.transport.upstream_http1 import UpstreamHttp1
from meshpy.transport.upstream_http2 import UpstreamHttp2

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options, TcpKeepalive
    from meshpy.telemetry.tls_stats import TlsStats
    from meshpy.transport.upstream_http2 import StreamPool
    from meshpy.upstream.pool import HostPool

P = TypeVar("P", bound=asyncio.BaseProtocol)
SocketOption = tuple[int, int, int]  # (level, option, value), as setsockopt takes them

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def socket_options(keepalive: TcpKeepalive | None) -> tuple[SocketOption, ...]:
    """What every upstream TCP socket of a cluster gets."""
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    if keepalive is not None:
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        for option, value in ((socket.TCP_KEEPCNT, keepalive.probes), (socket.TCP_KEEPIDLE, keepalive.time),
                              (socket.TCP_KEEPINTVL, keepalive.interval)):
            if value is not None:  # unset: the kernel's default, as in Envoy
                options.append((socket.IPPROTO_TCP, option, int(value)))
    return tuple(options)


class Connector:
    """Connects to any address it is given: a host's address can change (LOGICAL_DNS re-resolution),
    so callers pass the current one on every connect."""

    __slots__ = ("_loop", "options", "timeout", "tls", "tls_stats")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, keepalive: TcpKeepalive | None = None,
                 tls: ClientContext | None = None, tls_stats: TlsStats | None = None) -> None:
        self._loop = loop
        self.timeout = timeout
        self.options = socket_options(keepalive)
        self.tls = tls  # TLS to every endpoint (the cluster's UpstreamTlsContext), with its counters
        self.tls_stats = tls_stats

    async def open(self, address: SockAddr, factory: Callable[[], P]) -> P:
        """A connection to `address` speaking `factory`'s protocol (which has its transport from
        connection_made). Raises TimeoutError past the connect timeout, OSError when the connect
        fails; cancelling the caller abandons the connect."""
        return (await self._connect(address, factory))[1]

    async def http1(self, pool: HostPool) -> UpstreamHttp1:
        """A new HTTP/1.1 connection for `pool`, to its current address."""
        return await self.open(pool.address, lambda: UpstreamHttp1(pool))

    async def http2(self, pool: StreamPool, opts: Http2Options) -> UpstreamHttp2:
        """A new HTTP/2 connection (prior knowledge) for `pool`, to its current address."""
        return await self.open(pool.address, lambda: UpstreamHttp2(pool, opts))

    async def negotiated(self, address: SockAddr, h1_pool: HostPool, h2_pool: StreamPool,
                         opts: Http2Options) -> UpstreamHttp1 | UpstreamHttp2:
        """A new connection speaking what ALPN agreed on: HTTP/2 for `h2_pool` on `h2`, HTTP/1.1 for
        `h1_pool` otherwise (meshpy.transport.upstream_alpn)."""
        choice = await self.open(address, lambda: AlpnChoice(h1_pool, h2_pool, opts))
        assert choice.real is not None  # connection_made ran: the connect completed
        return choice.real

    async def streams(self, address: SockAddr) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection as asyncio streams (what asyncio.open_connection gives), for health checks."""
        reader = asyncio.StreamReader()
        transport, protocol = await self._connect(address, lambda: asyncio.StreamReaderProtocol(reader))
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    async def _connect(self, address: SockAddr,
                       factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
        tls = self.tls
        if isinstance(address, str):  # a Unix socket (Envoy's pipe): no TCP socket options apply
            async with asyncio.timeout(self.timeout):
                if tls is None:
                    return await unix.connect(self._loop, factory, address)
                return await self._tls_connect(tls, factory, address)
        host, port = address
        async with asyncio.timeout(self.timeout):
            if tls is None:
                transport, protocol = await self._loop.create_connection(factory, host, port)
            else:
                transport, protocol = await self._tls_connect(tls, factory, address)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in _TCP_FAMILIES:
            try:
                for level, option, value in self.options:
                    sock.setsockopt(level, option, value)
            except OSError:
                transport.abort()  # as Envoy closes a connection whose options could not be set
                raise
        return transport, protocol

    async def _tls_connect(self, tls: ClientContext, factory: Callable[[], P],
                           address: SockAddr) -> tuple[asyncio.Transport, P]:
        """TLS by the loop's own implementation (nothing was read before it starts, unlike the
        downstream side), then the checks OpenSSL does not make: the SAN matchers. Over a Unix socket
        too: Envoy's transport_socket does not care what the address is."""
        stats = self.tls_stats
        try:
            if isinstance(address, str):
                transport, protocol = await unix.connect(self._loop, factory, address, ssl=tls.ctx,
                                                         server_hostname=tls.sni or "")
            else:
                transport, protocol = await self._loop.create_connection(
                    factory, address[0], address[1], ssl=tls.ctx, server_hostname=tls.sni or "")
        except ssl.SSLError as err:
            if stats is not None:
                stats.failures[failure_reason(err)] += 1
            raise
        obj = transport.get_extra_info("ssl_object")
        if obj is not None:
            info = peer_info(obj, tls.sni)
            if tls.san is not None and not tls.san(info):
                if stats is not None:
                    stats.failures["fail_verify_san"] += 1
                transport.abort()
                raise ssl.SSLCertVerificationError(f"the certificate of {label(address)} has no SAN that "
                                                   f"the cluster's matchers accept")
            if stats is not None:
                stats.handshake(info.version, info.cipher, info.resumed, bool(info.peer_certificate))
        return transport, protocol
