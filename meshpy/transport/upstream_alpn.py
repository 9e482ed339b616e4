"""The protocol of an upstream connection whose codec TLS's ALPN chooses (a cluster of protocol auto).

The codec must be known before the first byte is read or written, and ALPN's answer is known only once
the handshake is done. The loop calls a TLS connection's `connection_made` exactly then, after the
handshake and before any application data, so `AlpnChoice` stands in for the real protocol until that
call, builds HTTP/2 (`h2`) or HTTP/1.1 (anything else, or no ALPN at all: Envoy's rule) and hands the
transport over to it in the same call: the loop's next event already goes to the real protocol, and
nothing is read or written in between.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from meshpy.transport.upstream_http1 import UpstreamHttp1
from meshpy.transport.upstream_http2 import UpstreamHttp2

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options
    from meshpy.transport.upstream_http2 import StreamPool
    from meshpy.upstream.pool import HostPool


def agreed_protocol(transport: asyncio.BaseTransport) -> str | None:
    """The application protocol ALPN agreed on (None: not TLS, or no ALPN)."""
    obj = transport.get_extra_info("ssl_object")
    return obj.selected_alpn_protocol() if obj is not None else None


class AlpnChoice(asyncio.Protocol):
    """Becomes an UpstreamHttp2 for `h2_pool` or an UpstreamHttp1 for `h1_pool` when the handshake is
    done; `real` is that protocol from then on (what the pool takes)."""

    __slots__ = ("_h1_pool", "_h2_pool", "_opts", "real")

    def __init__(self, h1_pool: HostPool, h2_pool: StreamPool, opts: Http2Options) -> None:
        self._h1_pool = h1_pool
        self._h2_pool = h2_pool
        self._opts = opts
        self.real: UpstreamHttp1 | UpstreamHttp2 | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        real: UpstreamHttp1 | UpstreamHttp2
        if agreed_protocol(transport) == "h2":
            real = UpstreamHttp2(self._h2_pool, self._opts)
        else:
            real = UpstreamHttp1(self._h1_pool)
        self.real = real
        transport.set_protocol(real)
        real.connection_made(transport)  # HTTP/2 writes its preface now, before any byte is read

    def connection_lost(self, exc: Exception | None) -> None:
        """(Never called: until connection_made there is no connection, and after it `real` has it.)"""
