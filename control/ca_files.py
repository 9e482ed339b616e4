"""Where the CA's signing certificate comes from: a root made here, kept in memory or in a directory so a
restart keeps it, or the user's intermediate under the user's own root.

The directory uses the file names of Istio's plugged-in CA certificates (its `cacerts` Secret), so one
Secret serves either control plane:

  ca-cert.pem     the signing certificate (a root of our own, or the user's intermediate)
  ca-key.pem      its private key (PKCS#8 or traditional PEM, unencrypted; written 0600)
  root-cert.pem   the root: the trust bundle (the same certificate as ca-cert.pem for our own root)
  cert-chain.pem  optional: ca-cert, the intermediates above it, and the root, in that order
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from control.ca import Issuer, SigningKey, fingerprint, pem, signature_hash

CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN = "ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"
ROOT_LIFETIME = 10 * 365 * 24 * 3600.0


class CaSetupError(Exception):
    """The CA's files are missing, unreadable or do not fit together: said with the file's name."""


def self_signed_root(trust_domain: str, *, lifetime: float = ROOT_LIFETIME,
                     now: float | None = None) -> Issuer:
    """A new EC P-256 root for `trust_domain`, signing leaves directly."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = time.time() if now is None else now
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # Two roots side by side during a rotation: each named apart (its date and key id), for operators
    # reading a bundle, and for verifiers that look issuers up by name before checking key ids.
    made = dt.datetime.fromtimestamp(int(start), dt.UTC).strftime("%Y-%m-%d")
    common_name = f"meshpy root CA {made} {ski.digest[:4].hex()}"
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(int(start) - 3600, dt.UTC))  # clock skew, as leaves
        .not_valid_after(dt.datetime.fromtimestamp(int(start + lifetime), dt.UTC))
        # pathlen 0: this root signs leaves only, so a leaf key that leaked can never sign anything.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        # The trust domain it vouches for, as the SPIFFE ID of the trust domain itself (what SPIRE's CAs
        # carry): a root meant for another mesh is told apart before it is staged.
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                       critical=False)
        .sign(key, signature_hash(key))
    )
    return Issuer(cert, key)


def open_ca_dir(directory: Path, trust_domain: str) -> tuple[Issuer, bool]:
    """The issuer the directory holds, or a new root written into it when it holds none; and whether it
    was made now."""
    present = [n for n in (CA_CERT, CA_KEY) if (directory / n).exists()]
    if len(present) == 2:
        return load_issuer(directory), False
    if present:
        raise CaSetupError(f"{directory}: {present[0]} without {({CA_CERT, CA_KEY} - set(present)).pop()}; "
                           "give both, or neither for a new root")
    issuer = self_signed_root(trust_domain)
    write_root(directory, issuer)
    return issuer, True


def write_root(directory: Path, issuer: Issuer) -> None:
    """Write a root of our own: the key first (0600, never over an existing file), then the certs."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = issuer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    try:
        fd = os.open(directory / CA_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise CaSetupError(f"{directory / CA_KEY}: cannot create: {err.strerror}") from err
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    for name in (CA_CERT, ROOT_CERT):
        (directory / name).write_text(pem(issuer.cert))


def load_issuer(directory: Path) -> Issuer:
    """The signing certificate and key of `directory`, checked: the key is the certificate's, it is a
    CA, and every certificate up to the root is signed by the next."""
    cert = _certs(directory / CA_CERT)[0]
    key = _key(directory / CA_KEY)
    if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
        raise CaSetupError(f"{directory / CA_KEY}: not the key of {CA_CERT}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CaSetupError(f"{directory / CA_CERT}: not a CA certificate (no basicConstraints CA:TRUE)")
    self_signed = cert.subject == cert.issuer and _signed_by(cert, cert)
    root_file = directory / ROOT_CERT
    if root_file.exists():
        root = _certs(root_file)[0]
    elif self_signed:
        root = cert
    else:
        raise CaSetupError(f"{root_file}: missing: {CA_CERT} is an intermediate, so its root is needed")
    if not _signed_by(root, root):
        raise CaSetupError(f"{root_file}: not a self-signed root")
    middle: list[x509.Certificate] = []
    if (directory / CERT_CHAIN).exists():
        ends = {fingerprint(cert), fingerprint(root)}
        middle = [c for c in _certs(directory / CERT_CHAIN) if fingerprint(c) not in ends]
    above = () if fingerprint(cert) == fingerprint(root) else (*middle, root)
    path = (cert, *above)
    for child, parent in itertools.pairwise(path):
        if not _signed_by(child, parent):
            raise CaSetupError(f"{directory}: {child.subject.rfc4514_string()} is not signed by "
                               f"{parent.subject.rfc4514_string()} (check {CERT_CHAIN} and {ROOT_CERT})")
    now = time.time()
    for c in path:
        if c.not_valid_after_utc.timestamp() <= now:
            raise CaSetupError(f"{directory}: {c.subject.rfc4514_string()} expired at "
                               f"{c.not_valid_after_utc.isoformat()}")
    return Issuer(cert, key, above)


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):  # names differ, unsupported key, bad signature
        return False
    return True


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as err:
        raise CaSetupError(f"{path}: cannot read: {err.strerror}") from err
    except ValueError as err:
        raise CaSetupError(f"{path}: not PEM certificates: {err}") from err
    return certs


def _key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise CaSetupError(f"{path}: cannot read: {err.strerror}") from err
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:  # TypeError: it is encrypted
        raise CaSetupError(f"{path}: not an unencrypted PEM private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaSetupError(f"{path}: a {type(key).__name__} cannot sign here: EC or RSA keys only")
    return key
