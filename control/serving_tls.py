"""TLS on the control plane's gRPC port (ADS and the CA), as istiod serves its port 15012.

Bootstrap and service-account tokens, and the key pairs the CA makes for Envoy nodes, cross that port:
with `--grpc-tls-names` it serves TLS with a certificate of its own, issued by the mesh's CA for those
DNS names (and IP addresses), so that every client checks it with the roots it already trusts (the
trust bundle, or the root from a mounted ConfigMap, as Istio's istio-ca-root-cert). The certificate is
made again at half its life and at once when the CA starts signing with another root (a rotation); gRPC
takes the new one at the next connection (its dynamic server credentials ask before each handshake), so
the port is never restarted and open streams keep theirs.

Without the option the port stays plaintext (what every existing client expects), and the first token
received in the clear is said at WARNING (control/ca_auth.py `in_the_clear`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from control.ca import BACKDATE, CertificateAuthority, pem, signature_hash, ski_of
from control.ca_rotation import BundleChange

log = logging.getLogger("meshpy.control")

SERVING_TTL = 24 * 3600.0  # as a workload's SVID by default; made again at half of it
CHECK_EVERY = 1.0
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$", re.IGNORECASE)


def parse_names(text: str) -> tuple[str, ...]:
    """`--grpc-tls-names`: comma-separated DNS names and IP addresses. Raises ValueError."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("--grpc-tls-names: at least one DNS name or IP address")
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _DNS_NAME.match(name) or len(name) > 253:
                raise ValueError(f"--grpc-tls-names: {name!r} is neither a DNS name nor an IP address") \
                    from None
    return names


class ServingCertificate:
    """The gRPC port's certificate and key, kept fresh; `credentials()` is what the port is opened with."""

    def __init__(self, ca: CertificateAuthority, names: Sequence[str], ttl: float = SERVING_TTL,
                 clock: Callable[[], float] = time.time) -> None:
        self.ca, self.names, self.ttl, self.clock = ca, tuple(names), ttl, clock
        self._lock = threading.Lock()  # gRPC asks for the certificate from its own threads
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.chain_pem = ""
        self.renew_at = 0.0
        self.renewals = 0
        self._initial = self._make("start")

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self._next_configuration)

    def _next_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new certificate once, else None (keep the current)."""
        with self._lock:
            configuration, self._pending = self._pending, None
        return configuration

    def renew(self, why: str) -> None:
        configuration = self._make(why)
        with self._lock:
            self._pending = configuration

    def bundle_changed(self, change: BundleChange) -> None:
        """A RootRotation listener: after a rotation, a certificate from the new CA at once (clients
        trust its root since it was staged; the old root may soon be retired)."""
        if change.signing:
            self.renew("the CA signs with another root now")

    async def run(self, every: float = CHECK_EVERY) -> None:
        while True:
            await asyncio.sleep(every)
            if self.clock() >= self.renew_at:
                self.renew("half of its life")

    def _make(self, why: str) -> grpc.ServerCertificateConfiguration:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = self.ca.issuer
        now = self.clock()
        not_before = max([now - BACKDATE, *(c.not_valid_before_utc.timestamp() for c in issuer.chain)])
        not_after = min([now + self.ttl, *(c.not_valid_after_utc.timestamp() for c in issuer.chain)])
        sans: list[x509.GeneralName] = []
        for name in self.names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        usage = x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False,
                              crl_sign=False, encipher_only=False, decipher_only=False)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # the names are the SANs (critical, as for SVIDs)
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.fromtimestamp(int(not_before), dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(int(not_after), dt.UTC))
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            # A server only: a leaked serving key cannot pass for a client of the mesh.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski_of(issuer.cert)),
                           critical=False)
            .sign(issuer.key, signature_hash(issuer.key))
        )
        # Leaf and intermediates: clients hold the root (a self-signed one is not sent).
        chain = [leaf, *(c for c in issuer.chain if c.subject != c.issuer)]
        self.chain_pem = "".join(pem(c) for c in chain)
        self.renew_at = now + (not_after - now) / 2
        self.renewals += 1
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        log.info("grpc tls: serving certificate for %s from %s, valid until %s (%s)", ", ".join(self.names),
                 issuer.cert.subject.rfc4514_string(), leaf.not_valid_after_utc.isoformat(), why)
        return grpc.ssl_server_certificate_configuration([(key_pem, self.chain_pem.encode())])
