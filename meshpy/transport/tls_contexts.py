"""ssl.SSLContexts made from the model's ServerTls and ClientTls, and what a finished handshake says
about the peer.

Contexts are made once per config (and again when a certificate file changes), never per connection:
OpenSSL keeps the session-ticket keys in the context, so one context for the life of a config is
also what lets clients resume their sessions.

Envoy's defaults are kept where Python's differ: TLS 1.2 at least, Envoy's ECDHE AEAD cipher suites
for TLS 1.2, no renegotiation, no hostname check on upstream certificates (SAN matchers do that).
"""

from __future__ import annotations

import _ssl
import functools
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from meshpy.codec.x509_text import openssl_name
from meshpy.model.tls import ClientTls, ServerTls, TlsParams, Validation
from meshpy.ports import TlsInfo
from meshpy.routing.matchers import compile_string_match
from meshpy.transport import tls_native
from meshpy.transport.tls_material import (
    CertInfo,
    KeyPair,
    MaterialError,
    ca_bundle,
    key_pair,
    read_pem,
    sans_of,
)

_VERSIONS = {
    "TLSv1.0": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# Envoy's default TLS 1.2 suites (BoringSSL's equal-preference groups written out in order).
ENVOY_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
# Envoy's default groups are X25519 then P-256, which OpenSSL offers first by default too.
ENVOY_CURVES = ("X25519", "P-256")
_CURVE_NAMES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1", "X25519": "X25519"}
SecretMaterial = Mapping[str, tuple[bytes, bytes]]
_SENT_CHAINS = 1024  # client certificates whose intermediates are kept for resumed sessions
SanTest = Callable[[TlsInfo], bool]


def cipher_list(ciphers: tuple[str, ...]) -> str:
    """Envoy's cipher_suites as OpenSSL reads them: BoringSSL's "[A|B]" groups become "A:B"."""
    names: list[str] = []
    for entry in ciphers:
        names.extend(n for n in entry.strip("[]").split("|") if n)
    return ":".join(names)


def _params(ctx: ssl.SSLContext, params: TlsParams, path: str) -> None:
    ctx.minimum_version = _VERSIONS[params.min_version]
    ctx.maximum_version = _VERSIONS[params.max_version]
    if _VERSIONS[params.min_version] > _VERSIONS[params.max_version]:
        raise MaterialError(
            f"{path}.tls_params",
            f"minimum version {params.min_version} is above the maximum {params.max_version}",
        )
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        ctx.set_ciphers(cipher_list(params.ciphers or ENVOY_CIPHERS))
    except ssl.SSLError as err:
        raise MaterialError(
            f"{path}.tls_params.cipher_suites", f"no usable cipher suite among {list(params.ciphers)}"
        ) from err
    curves = params.curves
    if curves and tuple(curves) != ENVOY_CURVES:
        # One group goes through Python's own API; a list needs OpenSSL's (tls_native).
        why = tls_native.set_groups(ctx, tuple(curves)) if len(curves) > 1 else _one_curve(ctx, curves[0])
        if why is not None:
            raise MaterialError(f"{path}.tls_params.ecdh_curves", why)


def _one_curve(ctx: ssl.SSLContext, name: str) -> str | None:
    try:
        ctx.set_ecdh_curve(_CURVE_NAMES.get(name, name))
    except ValueError:
        return f"unknown curve {name!r}"
    return None


def _san_test(validation: Validation | None, path: str) -> SanTest | None:
    """What the peer's SANs must satisfy beyond the CA (None: nothing): any one matcher matching any
    one SAN of its kind."""
    if validation is None or not validation.san:
        return None
    tests = []
    for i, m in enumerate(validation.san):
        test = compile_string_match(m.match, f"{path}.match_typed_subject_alt_names[{i}]")
        tests.append((m.kind, test))

    def check(info: TlsInfo) -> bool:
        for kind, test in tests:
            values = (
                info.peer_uris
                if kind == "uri"
                else info.peer_dns
                if kind == "dns"
                else (info_extra(info, kind))
            )
            if any(test is None or test(v) for v in values):
                return True
        return False

    return check


def info_extra(info: TlsInfo, kind: str) -> tuple[str, ...]:
    """SANs TlsInfo does not carry as fields (email, IP), read from the certificate itself."""
    if not info.peer_certificate:
        return ()
    from cryptography import x509  # (loaded by the first TLS peer, not by every proxy: see tls_material)

    sans = sans_of(x509.load_der_x509_certificate(info.peer_certificate))
    return sans.emails if kind == "email" else sans.ips


def _trust(
    ctx: ssl.SSLContext, validation: Validation, path: str, secrets: SecretMaterial | None
) -> tuple[CertInfo, ...]:
    if validation.ca_secret is not None:
        found = (secrets or {}).get(validation.ca_secret)
        if found is None:
            raise MaterialError(
                f"{path}.validation_context",
                f"secret {validation.ca_secret!r} has not arrived",
                "ssl_secret_missing",
            )
        pem = found[0]
    elif validation.ca is not None:
        pem = read_pem(validation.ca, f"{path}.validation_context.trusted_ca")
    else:
        return ()
    text, infos = ca_bundle(pem, f"{path}.validation_context.trusted_ca")
    ctx.load_verify_locations(cadata=text)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return infos


@dataclass(frozen=True, slots=True)
class ServerContexts:
    """One SSLContext per certificate of a chain's ServerTls; `for_name` picks by SNI."""

    contexts: tuple[tuple[tuple[str, ...], ssl.SSLContext], ...]  # (the certificate's names, context)
    pairs: tuple[KeyPair, ...]
    trust: tuple[CertInfo, ...]
    san: SanTest | None
    tls: ServerTls
    # The intermediates each client certificate came with at a full handshake: a session ticket from
    # OpenSSL keeps the client's own certificate only (Envoy's BoringSSL keeps them all), and tickets
    # live as long as these contexts, so a resumed session's are here.
    sent_chains: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict, compare=False)

    def for_name(self, sni: str) -> ssl.SSLContext:
        if sni and len(self.contexts) > 1:
            for names, ctx in self.contexts:
                for name in names:
                    if name == sni or (
                        name.startswith("*.")
                        and sni.endswith(name[1:])
                        and "." not in sni[: len(sni) - len(name) + 1]
                    ):
                        return ctx
        return self.contexts[0][1]

    def local_uris(self, ctx: ssl.SSLContext) -> tuple[str, ...]:
        """The URI SANs of the certificate `ctx` presents (x-forwarded-client-cert's By)."""
        for (_, made), pair in zip(self.contexts, self.pairs, strict=True):
            if made is ctx:
                return pair.leaf.uris
        return ()

    def completed(self, info: TlsInfo, local_uris: tuple[str, ...]) -> TlsInfo:
        """`info` with what peer_info cannot know: this proxy's certificate's URI SANs, and a resumed
        session's intermediates (see sent_chains)."""
        chain = info.peer_chain
        if chain:
            if len(self.sent_chains) >= _SENT_CHAINS:
                self.sent_chains.clear()
            self.sent_chains[info.peer_certificate] = chain
        elif info.resumed and info.peer_certificate:
            chain = self.sent_chains.get(info.peer_certificate, ())
        if not local_uris and chain is info.peer_chain:
            return info
        return replace(info, local_uris=local_uris, peer_chain=chain)


def server_contexts(tls: ServerTls, path: str, secrets: SecretMaterial | None = None) -> ServerContexts:
    """Contexts for `tls` (its ALPN list is the one offered: the loaders fill in the default)."""
    if not tls.certificates:
        raise MaterialError(f"{path}.tls_certificates", "at least one certificate is required")
    made = []
    pairs = []
    trust: tuple[CertInfo, ...] = ()
    ticket_keys = tuple(read_pem(k, f"{path}.session_ticket_keys.keys[{i}]", key=True)
                        for i, k in enumerate(tls.ticket_keys))
    for i, cert in enumerate(tls.certificates):
        at = f"{path}.tls_certificates[{i}]"
        pair = key_pair(cert, at, dict(secrets or {}))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _params(ctx, tls.params, path)
        pair.load_into(ctx, at)
        if tls.validation is not None:
            trust = _trust(ctx, tls.validation, path, secrets)
            if not tls.require_client_certificate:
                ctx.verify_mode = ssl.CERT_OPTIONAL
        elif tls.require_client_certificate:
            raise MaterialError(
                f"{path}.require_client_certificate",
                "needs a validation context with trusted CA certificates",
            )
        if tls.alpn:
            ctx.set_alpn_protocols(list(tls.alpn))
        if not tls.session_tickets:
            ctx.options |= ssl.OP_NO_TICKET
            ctx.num_tickets = 0
        elif ticket_keys:
            why = tls_native.set_ticket_keys(ctx, ticket_keys)
            if why is not None:
                raise MaterialError(f"{path}.session_ticket_keys", why)
        made.append((pair.names(), ctx))
        pairs.append(pair)
    return ServerContexts(
        tuple(made), tuple(pairs), trust, _san_test(tls.validation, f"{path}.validation_context"), tls
    )


@dataclass(frozen=True, slots=True)
class ClientContext:
    ctx: ssl.SSLContext
    sni: str
    pair: KeyPair | None
    trust: tuple[CertInfo, ...]
    san: SanTest | None
    tls: ClientTls


def client_context(tls: ClientTls, path: str, secrets: SecretMaterial | None = None) -> ClientContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # Envoy checks names only through SAN matchers
    ctx.verify_mode = ssl.CERT_NONE
    _params(ctx, tls.params, path)
    pair = None
    if tls.certificate is not None:
        pair = key_pair(tls.certificate, f"{path}.tls_certificates[0]", dict(secrets or {}))
        pair.load_into(ctx, f"{path}.tls_certificates[0]")
    trust: tuple[CertInfo, ...] = ()
    if tls.validation is not None:
        trust = _trust(ctx, tls.validation, path, secrets)
        if tls.validation.system:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.verify_hostname:
        ctx.check_hostname = True
    if tls.alpn:
        ctx.set_alpn_protocols(list(tls.alpn))
    return ClientContext(
        ctx, tls.sni, pair, trust, _san_test(tls.validation, f"{path}.validation_context"), tls
    )


def peer_info(obj: ssl.SSLObject, sni: str) -> TlsInfo:
    """The facts of a finished handshake, and the verified peer certificate's names."""
    cipher = obj.cipher()
    der = obj.getpeercert(binary_form=True)
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    subject = ""
    if der:
        uris, dns, subject = _names(der)
    return TlsInfo(
        version=obj.version() or "",
        cipher=cipher[0] if cipher else "",
        sni=sni,
        alpn=obj.selected_alpn_protocol() or "",
        peer_uris=uris,
        peer_dns=dns,
        peer_subject=subject,
        peer_certificate=der or b"",
        resumed=obj.session_reused,
        peer_chain=_intermediates(obj) if der else (),
    )


def _intermediates(obj: ssl.SSLObject) -> tuple[bytes, ...]:
    """The certificates the peer sent after its own, as sent. Python 3.13 has this as
    SSLObject.get_unverified_chain(); 3.10 to 3.12 have it on the C object only (a server's list
    starts with the peer's own certificate there too)."""
    get = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    sent = get() if get is not None else None
    if not sent or len(sent) < 2:
        return ()
    return tuple(c.public_bytes(_ssl.ENCODING_DER) for c in sent[1:])


@functools.lru_cache(maxsize=256)
def _names(der: bytes) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """A peer certificate's URI and DNS SANs and subject. Kept per certificate: a sidecar's peers
    present the same few certificates on every connection, and parsing one costs more than a lookup."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    sans = sans_of(cert)
    return sans.uris, sans.dns, openssl_name(cert.subject)  # as Envoy spells it, for RBAC, XFCC, access logs
