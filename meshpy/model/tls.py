"""TLS in the config model: what a listener's filter chain terminates and what a cluster originates,
and how a listener with several filter chains picks one for a connection.

The same types come from meshpy YAML (`tls:` on a listener or a cluster, `sni:` routes on a TCP
listener) and from Envoy's DownstreamTlsContext, UpstreamTlsContext and filter_chain_match. Secrets
are PEM: a file (read again when it changes), inline bytes, or a named secret that SDS delivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from meshpy.model.authz import NetworkRbac
    from meshpy.model.routes import StringMatch
    from meshpy.model.types import HttpOptions, ListenerKind, TcpOptions

TlsVersion = Literal["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
TLS_VERSIONS: tuple[TlsVersion, ...] = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
SanKind = Literal["dns", "uri", "email", "ip"]
# Envoy's DEFAULT_DOWNSTREAM_TLS handshake wait: none (the connection waits for its first bytes as
# long as the kernel keeps it). meshpy YAML sets one, so a client that stalls mid-handshake goes.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Pem:
    """PEM text from a file (`path`, watched and read again when it changes) or given inline."""

    path: str | None = None
    inline: bytes | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else "<inline>"


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    """A certificate chain and its private key; or, with `secret`, the name of an SDS secret that
    holds them (Envoy's tls_certificate_sds_secret_configs)."""

    chain: Pem | None = None
    key: Pem | None = None
    secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SanMatch:
    """A subject alternative name the peer's certificate must carry (one of a list)."""

    kind: SanKind
    match: StringMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    """How the peer's certificate is checked: against the CA certificates in `ca` (or in the SDS
    secret `ca_secret`), then its SANs against `san` (any one may match; empty: any name)."""

    ca: Pem | None = None
    ca_secret: str | None = None
    system: bool = False  # the operating system's trust store (meshpy YAML's default for clusters)
    san: tuple[SanMatch, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsParams:
    min_version: TlsVersion = "TLSv1.2"
    max_version: TlsVersion = "TLSv1.3"
    ciphers: tuple[str, ...] = ()  # OpenSSL names for TLS 1.2 and below; empty: OpenSSL's defaults
    curves: tuple[str, ...] = ()  # ECDH groups; empty: OpenSSL's defaults


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """TLS a filter chain terminates. Several certificates: the one whose names match the client's
    SNI serves it, the first otherwise (Envoy's choice among tls_certificates)."""

    certificates: tuple[Certificate, ...]
    validation: Validation | None = None
    require_client_certificate: bool = False
    params: TlsParams = TlsParams()
    # ALPN the server agrees to, preferred first; empty: what the chain's codec speaks.
    alpn: tuple[str, ...] = ()
    session_tickets: bool = True  # stateless resumption (Envoy: disable_stateless_session_resumption)
    # 80-byte keys (Envoy's session_ticket_keys): the first encrypts, any decrypts; empty: made here.
    ticket_keys: tuple[Pem, ...] = ()
    handshake_timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTls:
    """TLS a cluster originates to its endpoints."""

    sni: str = ""  # "" sends no server name
    certificate: Certificate | None = None  # presented when the server asks for one
    validation: Validation | None = None  # None: the server's certificate is not checked
    params: TlsParams = TlsParams(max_version="TLSv1.3")
    alpn: tuple[str, ...] = ()  # empty: none offered
    verify_hostname: bool = False  # the certificate must name `sni` (as a browser checks; wildcards too)


# What a cluster of protocol auto offers when its TLS lists no ALPN of its own (Envoy's default for
# auto_config): HTTP/2 preferred; a server that picks neither, or no ALPN at all, gets HTTP/1.1.
AUTO_ALPN: tuple[str, ...] = ("h2", "http/1.1")

TransportProtocol = Literal["", "tls", "raw_buffer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainMatch:
    """Envoy's filter_chain_match: what a connection must have for a chain to serve it. An empty
    field matches anything; among chains that match, the most specific wins, criterion by criterion
    in this order (Envoy's)."""

    destination_port: int | None = None
    prefix_ranges: tuple[str, ...] = ()  # the destination address, as CIDRs
    server_names: tuple[str, ...] = ()  # SNI: exact names and "*.suffix" wildcards
    transport_protocol: TransportProtocol = ""
    application_protocols: tuple[str, ...] = ()  # ALPN offered (TLS) or HTTP sniffed (plaintext)
    source_prefix_ranges: tuple[str, ...] = ()
    source_ports: tuple[int, ...] = ()

    def empty(self) -> bool:
        return self == ANY_CONNECTION

    def needs_hello(self) -> bool:
        """Whether matching reads the client's first bytes (what Envoy's tls_inspector gives)."""
        return bool(self.server_names or self.transport_protocol == "tls" or self.application_protocols)


ANY_CONNECTION = ChainMatch()


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterChain:
    """One more way a listener serves a connection, beside its own: chosen by `match`, with TLS
    terminated by `tls` (None: the bytes are served as they come, which for a TLS client is TLS
    passthrough on a TCP chain)."""

    name: str
    match: ChainMatch = ANY_CONNECTION
    tls: ServerTls | None = None
    kind: ListenerKind
    http: HttpOptions | None = None
    tcp: TcpOptions | None = None
    authz: NetworkRbac | None = None  # Envoy's network RBAC filter: who may connect at all
