"""The first protocol of a connection to a listener with TLS or several filter chains: it reads what
the chains need of the connection (Envoy's tls_inspector: TLS or not, SNI, ALPN; the HTTP version
for plaintext chains that match on it), picks the chain (meshpy.routing.chains), and hands the
connection on: to the chain's TLS termination (meshpy.transport.tls_layer), or as it is to the chain's
protocol (plaintext, or TLS passthrough on a TCP chain) with the bytes read so far.

A listener with neither (no TLS, one chain) never sees this class: its connections start on their
protocol directly, and pay nothing for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from meshpy.codec.http2 import PREFACE
from meshpy.codec.tls_hello import NotClientHello, looks_like_tls, parse_client_hello
from meshpy.routing.chains import ChainSelector, Facts
from meshpy.transport.accept import accepted, released
from meshpy.transport.detect import DetectingDownstream, sniff_http1, switch_to
from meshpy.transport.downstream_http1 import Http1Downstream
from meshpy.transport.downstream_http2 import Http2Downstream
from meshpy.transport.tcp import TcpDownstream
from meshpy.transport.tls_layer import TlsConnection

if TYPE_CHECKING:
    from meshpy.ports import TlsInfo
    from meshpy.routing.compile import HttpListenerConfig, ListenerSlot
    from meshpy.telemetry.tls_stats import TlsStats
    from meshpy.transport.tls_contexts import ServerContexts

Downstream = Http1Downstream | Http2Downstream | DetectingDownstream | TcpDownstream
# Envoy's listener_filters_timeout default: a client that has not said enough to pick a chain by then
# is closed.
HELLO_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class ChainRuntime:
    """One filter chain, compiled: the config its connections are served with, and its TLS."""

    name: str
    cfg: HttpListenerConfig
    tls: ServerContexts | None


@dataclass(frozen=True, slots=True)
class ListenerChains:
    selector: ChainSelector
    chains: tuple[ChainRuntime, ...]  # [0]: the listener's own chain
    inspect: bool  # SNI, ALPN and TLS-or-not are matched on (a tls_inspector)
    sniff_http: bool  # plaintext chains match on the HTTP version (an http_inspector)
    stats: TlsStats
    # How long the client's first bytes may take: the shortest handshake timeout of the TLS chains
    # (the ClientHello is the handshake's start), else Envoy's listener_filters_timeout.
    hello_timeout: float = HELLO_TIMEOUT

    def reads_first(self) -> bool:
        """Whether the first bytes are needed before the chain is known."""
        return self.inspect or self.sniff_http or any(c.tls is not None for c in self.chains)


def plain_protocol(slot: ListenerSlot, loop: asyncio.AbstractEventLoop, alpn: str = "") -> Downstream:
    """The protocol serving a connection of `slot` once its bytes are plaintext (after TLS, if any):
    the one ALPN agreed on, else the listener's codec (or first-bytes detection)."""
    cfg = slot.current
    if cfg.tcp is not None:
        return TcpDownstream(slot, loop)
    if alpn == "h2":
        return Http2Downstream(slot, loop)
    codec = cfg.options.codec
    if alpn == "http/1.1" or (codec == "http1" and cfg.tcp_fallback is None):
        return Http1Downstream(slot, loop)
    if codec == "http2" and cfg.tcp_fallback is None:
        return Http2Downstream(slot, loop)
    return DetectingDownstream(slot, loop)


def _address(value: object) -> tuple[str, int]:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) and len(value) >= 2 else ("", 0)


class ChainDispatch(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_done",
        "_parse_at",
        "_timer",
        "chains",
        "loop",
        "original_dst",
        "peer",
        "slot",
        "stats",
        "tls",
        "transport",
    )

    def __init__(self, slot: ListenerSlot, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.original_dst: tuple[str, int] | None = None
        self.tls: TlsConnection | None = None
        self._buf = b""
        self._parse_at = 0  # parse the ClientHello once the buffer is this long
        self._timer: asyncio.TimerHandle | None = None
        self._done = False
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Admission now (limits hold before any handshake); authorization once the chain's protocol
        # takes over, when the TLS identity is known.
        self.peer, self.stats = accepted(self, self.slot, transport, authorize=False)
        if transport.is_closing():
            return  # over a limit
        chains = self.slot.current.dispatch
        assert chains is not None
        self.chains = chains
        if not chains.reads_first():
            self._choose(b"", self._facts())
            return
        self._timer = self.loop.call_later(chains.hello_timeout, self._silent)

    def _facts(self, tls: bool = False, sni: str = "", protocols: tuple[str, ...] = ()) -> Facts:
        transport = self.transport
        assert transport is not None
        source = _address(transport.get_extra_info("peername"))
        destination = self.original_dst or _address(transport.get_extra_info("sockname"))
        if not self.chains.inspect:  # no tls_inspector: Envoy knows nothing of the bytes
            tls, sni = False, ""
            protocols = protocols if self.chains.sniff_http else ()
        return Facts(
            destination=destination[0],
            destination_port=destination[1],
            source=source[0],
            source_port=source[1],
            transport_protocol="tls" if tls else "raw_buffer",
            server_name=sni,
            application_protocols=protocols,
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        tls = looks_like_tls(buf)
        if tls is None:
            self._buf = buf
            return
        if tls:
            if len(buf) < self._parse_at:
                self._buf = buf  # not yet the length the client announced: parsing again would not end
                return
            try:
                hello = parse_client_hello(buf)
            except NotClientHello:
                hello = None  # served as raw bytes: a TLS chain then fails its handshake, as in Envoy
            else:
                if hello is None:
                    # The rest of the ClientHello is on its way. Parse again once the first record is
                    # whole, then every 512 bytes more: a client trickling bytes costs linear time.
                    record = 5 + int.from_bytes(buf[3:5], "big") if len(buf) >= 5 else 5
                    self._parse_at = max(record, len(buf) + 512) if len(buf) >= record else record
                    self._buf = buf
                    return
                self._choose(buf, self._facts(True, hello.sni, hello.alpn), hello.sni)
                return
            self._choose(buf, self._facts())
            return
        protocols: tuple[str, ...] = ()
        if self.chains.sniff_http:
            if len(buf) < len(PREFACE) and PREFACE.startswith(buf):
                self._buf = buf
                return
            http1 = sniff_http1(buf)
            if http1 is None and not buf.startswith(PREFACE):
                self._buf = buf
                return
            protocols = ("h2c",) if buf.startswith(PREFACE) else ("http/1.1",) if http1 else ()
        self._choose(buf, self._facts(protocols=protocols))

    def _silent(self) -> None:
        self._timer = None
        if self._buf[:1] == b"\x16":  # a ClientHello begun and never finished: a stalled handshake
            self.chains.stats.failures["handshake_timeout"] += 1
        self.close()

    def _choose(self, buf: bytes, facts: Facts, sni: str = "") -> None:
        """`sni`: the server name the client asked for, known to TLS whether or not chains match on it."""
        self._buf = b""
        self._stop_timer()
        transport = self.transport
        assert transport is not None
        index = self.chains.selector.select(facts)
        if index is None:
            self.chains.stats.no_chain_match += 1
            self.close()
            return
        chain = self.chains.chains[index]
        if chain.tls is None:
            self._release()
            switch_to(plain_protocol(self._slot(index, chain), self.loop), transport, self.original_dst, buf)
            return
        contexts = chain.tls
        timeout = contexts.tls.handshake_timeout
        slot = self._slot(index, chain)
        ctx = contexts.for_name(sni)
        local_uris = contexts.local_uris(ctx)

        def ready(conn: TlsConnection, info: TlsInfo) -> asyncio.BaseProtocol | None:
            info = conn.info = contexts.completed(info, local_uris)
            stats = self.chains.stats
            if contexts.san is not None and info.peer_certificate and not contexts.san(info):
                stats.failures["fail_verify_san"] += 1
                self._release()
                return None
            stats.handshake(info.version, info.cipher, info.resumed, bool(info.peer_certificate))
            self._release()
            proto = plain_protocol(slot, self.loop, info.alpn)
            switch_to(proto, conn, self.original_dst)
            return proto

        def failed(reason: str | None) -> None:
            if reason is not None:
                self.chains.stats.failures[reason] += 1
            self._release()

        self.tls = TlsConnection(self.loop, ctx, sni, ready, failed, timeout)
        self.tls.start(transport, buf)

    def _slot(self, index: int, chain: ChainRuntime) -> ListenerSlot:
        return self.slot if index == 0 else self.slot.chain_slot(chain.name, chain.cfg)

    def _release(self) -> None:
        """Leave the listener's connections: the protocol taking over joins them (and counts the
        connection) itself, as DetectingDownstream hands over."""
        if not self._done:
            self._done = True
            self.stats.cx_total -= 1
            released(self, self.slot, self.stats, self.peer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if not self._done:
            self._done = True
            released(self, self.slot, self.stats, self.peer)

    def idle(self) -> bool:
        return True  # no request yet

    def begin_drain(self) -> None:
        """Nothing to tell a client that has not started a request."""

    def start_drain(self) -> None:
        self.close()

    def close(self) -> None:
        self._stop_timer()
        if self.tls is not None:
            self.tls.abort()
        elif self.transport is not None:
            self.transport.close()
