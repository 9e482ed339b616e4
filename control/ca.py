"""The mesh's certificate authority: signs workloads' CSRs into short-lived X.509 SVIDs.

An SVID names one workload by its SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/sa/<account>`) as
its only subjectAltName, and nothing else: no DNS names, no CN, no CA rights. The CA copies the public
key and that one URI from a CSR and ignores the rest of it, after checking that the CSR asks for
exactly what its caller is entitled to (control/ca_service.py says who the caller is).

The signing certificate (`Issuer`) is either a root of our own or an intermediate under the user's root
(control/ca_files.py reads and writes them). A new root is brought in without breaking anything: it is
`stage`d (it joins the trust bundle while the old one still signs, so peers learn to trust it first),
then `rotate` switches signing to it and keeps the old root in the bundle until every leaf it signed has
expired.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshpy.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId, SpiffeIdError

DEFAULT_TTL = 24 * 3600.0
MAX_TTL = 7 * 24 * 3600.0  # what a caller may ask for, unless the default is longer still
# notBefore this far in the past: a peer whose clock is a little behind ours must not see a certificate
# from the future (SPIRE backdates its SVIDs too).
BACKDATE = 60.0
MAX_CSR = 64 * 1024  # a CSR is a few hundred bytes; more is not parsed at all
ACCEPTED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192  # above 8192 the signature checks alone would be a cost attack

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CaError(Exception):
    """The CA cannot sign at all (its certificate has expired): the operator's problem, not the caller's."""


class CsrError(Exception):
    """A CSR this CA will not sign. `reason` is a short label (for metrics); `denied` says the caller asked
    for more than it is entitled to (gRPC PERMISSION_DENIED) rather than sent a bad request
    (INVALID_ARGUMENT)."""

    def __init__(self, reason: str, message: str, denied: bool = False) -> None:
        super().__init__(message)
        self.reason, self.denied = reason, denied


@dataclass(frozen=True)
class Issuer:
    """A signing certificate and its key, with the certificates above it: intermediates, then the root.
    `above` is empty when `cert` is the root itself."""

    cert: x509.Certificate
    key: SigningKey
    above: tuple[x509.Certificate, ...] = ()

    @property
    def root(self) -> x509.Certificate:
        return self.above[-1] if self.above else self.cert

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.cert, *self.above)


class KeyPair(NamedTuple):
    """An SVID made whole by the CA, for a client that cannot send a CSR (Envoy over SDS).
    `chain_pem`: leaf and intermediates, as a TLS peer sends them (the root is in the trust bundle)."""

    chain_pem: str
    key_pem: str


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The hash that matches the key's strength (P-384 with SHA-384, as RFC 5480 advises)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384() if key.curve.key_size <= 384 else hashes.SHA512()
    return hashes.SHA256()


def ski_of(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # the user's CA may lack one: derive it as RFC 5280 method 1 does
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


class CertificateAuthority:
    """Signs SVIDs in one trust domain with `issuer`. `clock` is wall time in seconds (certificates
    carry wall time)."""

    def __init__(self, issuer: Issuer, *, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 default_ttl: float = DEFAULT_TTL, max_ttl: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        SpiffeId(trust_domain, "ns", "sa")  # the trust domain is checked as SPIFFE IDs will use it
        if default_ttl <= 0:
            raise ValueError("the default SVID lifetime must be > 0")
        self.trust_domain, self.default_ttl, self.clock = trust_domain, default_ttl, clock
        self.max_ttl = max(default_ttl, MAX_TTL) if max_ttl is None else max_ttl
        if self.max_ttl < default_ttl:
            raise ValueError("the maximum SVID lifetime is below the default one")
        self._issuer = issuer
        self._staged: Issuer | None = None
        self._retiring: list[tuple[x509.Certificate, float]] = []  # old roots, and when they leave
        # The latest notAfter signed under each root (by fingerprint), in this process: what an operator
        # weighs before ending an overlap early.
        self.last_leaf_expiry: dict[bytes, float] = {}

    @property
    def issuer(self) -> Issuer:
        return self._issuer

    @property
    def staged(self) -> Issuer | None:
        return self._staged

    def retiring(self) -> list[tuple[x509.Certificate, float]]:
        """Old roots still in the bundle, and when each leaves it."""
        self.trust_bundle()  # drops those whose time is up
        return list(self._retiring)

    def keep_retiring(self, root: x509.Certificate, until: float) -> None:
        """Keep an old root in the bundle until `until` (a rotation's overlap, restored after a restart)."""
        self._retiring.append((root, until))

    # -- the trust bundle and its rotation --------------------------------------------------------------
    def trust_bundle(self) -> list[x509.Certificate]:
        """The roots a peer must trust: the signing root first, then a staged one, then old roots
        until they retire (or expire)."""
        now = self.clock()
        self._retiring = [(root, until) for root, until in self._retiring
                          if now < until and now < root.not_valid_after_utc.timestamp()]
        roots = [self._issuer.root, *([self._staged.root] if self._staged else []),
                 *(root for root, _ in self._retiring)]
        unique: dict[bytes, x509.Certificate] = {}
        for root in roots:
            unique.setdefault(fingerprint(root), root)  # a staged issuer may share the signing root
        return list(unique.values())

    def trust_bundle_pem(self) -> list[str]:
        return [pem(root) for root in self.trust_bundle()]

    def stage(self, issuer: Issuer) -> None:
        """Publish `issuer`'s root in the bundle beside the current one; signing does not change yet."""
        self._staged = issuer

    def rotate(self, issuer: Issuer | None = None, overlap: float | None = None) -> None:
        """Sign with `issuer` (default: the staged one) from now on. The old root stays in the bundle for
        `overlap` seconds; by default until the last leaf it may have signed has expired."""
        new = issuer or self._staged
        if new is None:
            raise ValueError("nothing to rotate to: stage an issuer or give one")
        old, self._issuer, self._staged = self._issuer, new, None
        # A root signing again (a rollback) is no longer on its way out.
        self._retiring = [(r, u) for r, u in self._retiring if fingerprint(r) != fingerprint(new.root)]
        if fingerprint(old.root) != fingerprint(new.root):
            # A leaf signed just before now expires within max_ttl; a minute more for clock skew.
            keep = self.max_ttl + BACKDATE if overlap is None else overlap
            self._retiring.insert(0, (old.root, self.clock() + keep))

    def retire_old_roots(self) -> None:
        """End the overlap now: only the signing (and a staged) root stay in the bundle."""
        self._retiring.clear()

    # -- issuing ----------------------------------------------------------------------------------------
    def ttl_for(self, requested: float | None) -> float:
        """The lifetime an SVID gets: the default when none (or 0) is asked, else the request clamped
        to the maximum."""
        if requested is None or requested <= 0:
            return self.default_ttl
        return min(float(requested), self.max_ttl)

    def sign_csr(self, csr_pem: str | bytes, entitled: SpiffeId, ttl: float | None = None) -> list[str]:
        """Check the CSR against the identity its caller owns and sign it: [leaf, intermediates..., root]
        as PEM (the order Istio returns). Raises CsrError saying why not."""
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        if len(data) > MAX_CSR:
            raise CsrError("malformed", f"the CSR is {len(data)} bytes; at most {MAX_CSR} are read")
        try:
            csr = x509.load_pem_x509_csr(data)
            extensions = csr.extensions
            valid = csr.is_signature_valid
            key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as err:
            raise CsrError("malformed", f"not a PEM certificate request: {err}") from err
        if not valid:
            raise CsrError("signature", "the CSR's signature does not verify: it was not signed by its key")
        accepted = _accepted_key(key)
        _check_extensions(extensions)
        self._check_san(extensions, entitled)
        return self._issue(accepted, entitled, ttl)

    def issue_key_pair(self, spiffe_id: SpiffeId | str, ttl: float | None = None) -> KeyPair:
        """Make an EC P-256 key and its SVID, for a client that cannot make a CSR (Envoy, over SDS)."""
        sid = SpiffeId.parse(spiffe_id) if isinstance(spiffe_id, str) else spiffe_id
        if sid.trust_domain != self.trust_domain:
            raise ValueError(f"{sid} is not in this CA's trust domain {self.trust_domain!r}")
        key = ec.generate_private_key(ec.SECP256R1())
        chain = self._issue(key.public_key(), sid, ttl)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return KeyPair("".join(chain[:-1]), key_pem)

    def _check_san(self, extensions: x509.Extensions, entitled: SpiffeId) -> None:
        try:
            san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CsrError("san", f"the CSR has no subjectAltName: it must name {entitled} as its only "
                           "URI SAN") from None
        others = [n for n in san if not isinstance(n, x509.UniformResourceIdentifier)]
        if others:
            raise CsrError("san", f"the CSR asks for SANs other than its SPIFFE ID ({_names(others)}); "
                           f"only the URI {entitled} is allowed", denied=True)
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise CsrError("san", f"the CSR has {len(uris)} URI SANs ({', '.join(uris)}); exactly one, "
                           f"{entitled}, is allowed", denied=True)
        try:
            asked = SpiffeId.parse(uris[0])
        except SpiffeIdError as err:
            raise CsrError("san", f"the URI SAN is not a SPIFFE ID of this mesh: {err}", True) from None
        if asked.trust_domain != self.trust_domain:
            raise CsrError("trust_domain", f"the CSR asks for {asked}, in trust domain "
                           f"{asked.trust_domain!r}; this CA signs for {self.trust_domain!r}", denied=True)
        if asked != entitled:
            raise CsrError("identity", f"the CSR asks for {asked}, but the caller is {entitled}", denied=True)

    def _issue(self, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, sid: SpiffeId,
               ttl: float | None) -> list[str]:
        issuer = self._issuer
        now = self.clock()
        # A leaf never outlives (or predates) a certificate above it: it would not verify there.
        not_before = max([now - BACKDATE, *(c.not_valid_before_utc.timestamp() for c in issuer.chain)])
        not_after = min([now + self.ttl_for(ttl), *(c.not_valid_after_utc.timestamp() for c in issuer.chain)])
        if not_after <= now:
            raise CaError(f"the CA certificate {issuer.cert.subject.rfc4514_string()} has expired")
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(sid))])
        usage = x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False,
                              crl_sign=False, encipher_only=False, decipher_only=False)
        builder = (
            x509.CertificateBuilder()
            # Empty subject, critical SAN (RFC 5280 4.2.1.6): the SPIFFE ID is the whole identity, as in
            # Istio's and SPIRE's SVIDs; a CN would be one more name for verifiers to misread.
            .subject_name(x509.Name([]))
            .issuer_name(issuer.cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before))
            .not_valid_after(_utc(not_after))
            .add_extension(san, critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski_of(issuer.cert)),
                           critical=False)
        )
        leaf = builder.sign(issuer.key, signature_hash(issuer.key))
        root = fingerprint(issuer.root)
        self.last_leaf_expiry[root] = max(self.last_leaf_expiry.get(root, 0.0), float(int(not_after)))
        return [pem(leaf), *(pem(c) for c in issuer.chain)]


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.UTC)


def _accepted_key(key: object) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ACCEPTED_CURVES:
            raise CsrError("key", f"EC keys on {key.curve.name} are not accepted: P-256 or P-384")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CsrError("key", f"an RSA key of {key.key_size} bits is not accepted: "
                           f"{MIN_RSA_BITS} to {MAX_RSA_BITS}")
        return key
    raise CsrError("key", f"{type(key).__name__.lstrip('_')} is not accepted: EC P-256/P-384 or "
                   f"RSA >= {MIN_RSA_BITS} bits")


def _check_extensions(extensions: x509.Extensions) -> None:
    """Refuse what only a CA certificate carries; other requested extensions are ignored (never copied)."""
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise CsrError("extension", "the CSR asks for a CA certificate (basicConstraints CA:TRUE)", True)
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise CsrError("extension", "the CSR asks for keyCertSign or cRLSign key usage", True)
        if isinstance(value, x509.NameConstraints | x509.PolicyConstraints | x509.InhibitAnyPolicy):
            raise CsrError("extension", f"the CSR asks for {type(value).__name__}, a CA extension", True)


def _names(names: list[x509.GeneralName]) -> str:
    kinds = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email",
             x509.DirectoryName: "dirName", x509.RegisteredID: "RID", x509.OtherName: "otherName"}
    return ", ".join(f"{kinds.get(type(n), type(n).__name__)}:{n.value}" for n in names)
