"""x-forwarded-client-cert (XFCC), as Envoy's HTTP connection manager writes it
(forward_client_cert_details, set_current_client_cert_details).

What happens to the header a client sent, by mode:

    sanitize (the default)   removed, always
    forward_only             kept on a mutual TLS connection, removed on others
    append_forward           mutual TLS: this hop's element appended (after a comma); others: removed
    sanitize_set             mutual TLS: replaced by this hop's element; others: removed
    always_forward_only      kept, always

"Mutual TLS" is a TLS connection on which the client presented a certificate. An element is
`By=<each URI SAN of this proxy's certificate>;Hash=<SHA-256 of the client's certificate, hex>`, then the
details asked for, always in Envoy's order: `Cert="<PEM, percent-encoded>"`, `Chain="<the client's
certificates as sent, PEM, percent-encoded>"`, `Subject="<RFC 2253, as OpenSSL prints it>"`,
`URI=<each URI SAN>` (`URI=` when none), `DNS=<each DNS SAN>`. Repeated XFCC headers are one header
to Envoy (their values joined with commas), and so they are here whenever the header is rewritten or kept.

Cost. The exchange calls in only when the request carries an XFCC header (noted by RequestFacts as
the headers are parsed, so a request without one pays nothing) or when the mode adds one on a TLS
listener. An element is built once per connection (hashing and PEM cost tens of microseconds) and
kept, keyed by the connection's TlsInfo.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from meshpy.codec.x509_text import url_encoded_pem

if TYPE_CHECKING:
    from meshpy.model.types import HttpOptions
    from meshpy.ports import Header, ResponseWriter, TlsInfo

XFCC = b"x-forwarded-client-cert"
ADDING = ("append_forward", "sanitize_set")
# Elements kept per policy (one per live client connection): past this many, start over. An entry
# holds its TlsInfo, so an id in the table is never reused by another connection's TlsInfo.
_CACHE_SIZE = 4096


def element(tls: TlsInfo, details: tuple[str, ...]) -> bytes:
    """This hop's XFCC element for a mutual TLS connection (see the module's docstring)."""
    der = tls.peer_certificate
    parts = [f"By={uri}" for uri in tls.local_uris]
    parts.append("Hash=" + hashlib.sha256(der).hexdigest())
    for detail in details:
        if detail == "cert":
            parts.append(f'Cert="{url_encoded_pem(der)}"')
        elif detail == "chain":
            parts.append(f'Chain="{url_encoded_pem(der, *tls.peer_chain)}"')
        elif detail == "subject":
            parts.append(f'Subject="{tls.peer_subject}"')  # (present even when empty, as in Envoy)
        elif detail == "uri":
            parts.extend([f"URI={uri}" for uri in tls.peer_uris] or ["URI="])
        elif detail == "dns":
            parts.extend(f"DNS={name}" for name in tls.peer_dns)
    return ";".join(parts).encode()


def _joined(headers: list[Header]) -> bytes:
    """The values of every XFCC header as one (Envoy's header map joins repeats, skipping empty ones)."""
    return b",".join(v for n, v in headers if n == XFCC and v)


def _with(headers: list[Header], value: bytes | None) -> list[Header]:
    """`headers` with one XFCC header, `value`, where the first was (else last); none if None."""
    out: list[Header] = []
    for h in headers:
        if h[0] == XFCC:
            if value is not None:
                out.append((XFCC, value))
                value = None
        else:
            out.append(h)
    if value is not None:
        out.append((XFCC, value))
    return out


class ClientCertPolicy:
    """A listener's XFCC mode, compiled. `adds`: requests without the header may get one (an adding
    mode where clients may present certificates), so the exchange calls `rewrite` for every request."""

    __slots__ = ("_cache", "adds", "details", "mode")

    def __init__(self, mode: str, details: tuple[str, ...], mutual: bool) -> None:
        """`mutual`: the listener asks TLS clients for certificates."""
        self.mode = mode
        self.details = details
        self.adds = mutual and mode in ADDING
        self._cache: dict[int, tuple[TlsInfo, bytes]] = {}

    @classmethod
    def of(cls, options: HttpOptions | None, mutual: bool) -> ClientCertPolicy:
        if options is None:
            return cls("sanitize", (), mutual)
        return cls(options.forward_client_cert, options.client_cert_details, mutual)

    def rewrite(self, headers: list[Header], present: int, down: ResponseWriter) -> list[Header] | None:
        """The request's headers after this hop's XFCC work, or None when they stay as they are.
        `present`: how many XFCC headers the request has."""
        mode = self.mode
        if mode == "sanitize":
            return _with(headers, None) if present else None
        if mode != "always_forward_only":
            tls = down.connection_info().tls
            if tls is None or not tls.peer_certificate:  # not mutual TLS: never trusted
                return _with(headers, None) if present else None
            if mode in ADDING:
                mine = self._element(tls)
                if mode == "append_forward" and present:
                    before = _joined(headers)
                    mine = before + b"," + mine if before else mine
                return _with(headers, mine)
        return _with(headers, _joined(headers)) if present > 1 else None  # forwarded as one header

    def _element(self, tls: TlsInfo) -> bytes:
        hit = self._cache.get(id(tls))
        if hit is not None and hit[0] is tls:
            return hit[1]
        value = element(tls, self.details)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[id(tls)] = (tls, value)
        return value
