"""The CA with real keys and certificates: what an SVID carries, which CSRs are refused and why, an
intermediate under a root made by openssl (and checked by `openssl verify`), the CA's directory, and a
root rotation whose bundle holds both roots while they overlap."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from control import ca_files
from control.ca import BACKDATE, MAX_TTL, CertificateAuthority, CsrError, Issuer
from control.ca_files import CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, CaSetupError, open_ca_dir
from meshpy.identity.spiffe import SpiffeId

ORDERS = SpiffeId("cluster.local", "shop", "orders")
NOW = 1_900_000_000.0  # a fixed wall time, inside the roots' validity below


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def root() -> Issuer:
    return ca_files.self_signed_root("cluster.local", now=NOW - 3600)


def make_ca(issuer: Issuer, clock: Clock | None = None, default_ttl: float = 24 * 3600.0,
            max_ttl: float | None = None) -> CertificateAuthority:
    return CertificateAuthority(issuer, clock=clock or Clock(), default_ttl=default_ttl, max_ttl=max_ttl)


def csr_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None = None,
            names: list[x509.GeneralName] | None = None,
            extensions: Sequence[x509.ExtensionType] = ()) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "whatever the workload says")]))
    names = [x509.UniformResourceIdentifier(str(ORDERS))] if names is None else names
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext in extensions:
        builder = builder.add_extension(ext, critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def load(chain: list[str]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in chain]


def verifies(leaf: x509.Certificate, roots: list[x509.Certificate],
             middle: Sequence[x509.Certificate] = (), at: float = NOW) -> bool:
    verifier = PolicyBuilder().store(Store(roots)).time(dt.datetime.fromtimestamp(at, dt.UTC)) \
        .build_client_verifier()
    try:
        verifier.verify(leaf, list(middle))
    except VerificationError:
        return False
    return True


def test_an_svid_names_the_workload_by_its_spiffe_id_only(root: Issuer) -> None:
    ca = make_ca(root)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf, chain_root = load(ca.sign_csr(csr_pem(key), ORDERS))
    assert chain_root == root.cert  # [leaf, root], as Istio answers
    assert leaf.public_key() == key.public_key()
    assert leaf.subject == x509.Name([])  # the CSR's CN is not copied
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(str(ORDERS))]
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root.cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert leaf.not_valid_before_utc.timestamp() == NOW - BACKDATE  # a peer a minute behind accepts it
    assert leaf.not_valid_after_utc.timestamp() == NOW + 24 * 3600
    assert verifies(leaf, [root.cert])


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(65537, 2048)], ids=["p384", "rsa2048"])
def test_other_accepted_keys(root: Issuer, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    leaf = load(make_ca(root).sign_csr(csr_pem(key), ORDERS))[0]
    assert leaf.public_key() == key.public_key()


def test_lifetimes_default_requested_and_clamped(root: Issuer) -> None:
    ca = make_ca(root, default_ttl=600.0)
    def lifetime(ttl: float | None) -> float:
        leaf = load(ca.sign_csr(csr_pem(), ORDERS, ttl))[0]
        return leaf.not_valid_after_utc.timestamp() - NOW

    assert lifetime(None) == lifetime(0) == 600
    assert lifetime(3) == 3
    assert lifetime(10 * MAX_TTL) == MAX_TTL
    short_lived = ca_files.self_signed_root("cluster.local", lifetime=7200, now=NOW - 3600)
    assert load(make_ca(short_lived).sign_csr(csr_pem(), ORDERS))[0].not_valid_after_utc == \
        short_lived.cert.not_valid_after_utc  # never past its CA


def _tampered() -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature: it still parses, but no longer verifies
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


URI = x509.UniformResourceIdentifier
REFUSED = {
    "dns-san": (csr_pem(names=[URI(str(ORDERS)), x509.DNSName("orders.shop.svc")]), "san", True,
                "DNS:orders.shop.svc"),
    "ip-san": (csr_pem(names=[URI(str(ORDERS)), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), "san",
               True, "IP:10.0.0.1"),
    "email-san": (csr_pem(names=[URI(str(ORDERS)), x509.RFC822Name("a@b.c")]), "san", True, "email:a@b.c"),
    "two-uris": (csr_pem(names=[URI(str(ORDERS)), URI("spiffe://cluster.local/ns/shop/sa/billing")]), "san",
                 True, "2 URI SANs"),
    "other-identity": (csr_pem(names=[URI("spiffe://cluster.local/ns/shop/sa/billing")]), "identity", True,
                       f"asks for spiffe://cluster.local/ns/shop/sa/billing, but the caller is {ORDERS}"),
    "other-trust-domain": (csr_pem(names=[URI("spiffe://evil.example/ns/shop/sa/orders")]), "trust_domain",
                           True, "this CA signs for 'cluster.local'"),
    "not-spiffe": (csr_pem(names=[URI("https://orders.shop")]), "san", True, "not a SPIFFE ID"),
    "no-san": (csr_pem(names=[]), "san", False, "no subjectAltName"),
    "ca-true": (csr_pem(extensions=[x509.BasicConstraints(ca=True, path_length=None)]), "extension", True,
                "CA:TRUE"),
    "cert-sign": (csr_pem(extensions=[x509.KeyUsage(True, False, False, False, False, True, False, False,
                                                    False)]), "extension", True, "keyCertSign"),
    "rsa-1024": (csr_pem(rsa.generate_private_key(65537, 1024)), "key", False, "1024 bits"),
    "p521": (csr_pem(ec.generate_private_key(ec.SECP521R1())), "key", False, "secp521r1"),
    "ed25519": (csr_pem(ed25519.Ed25519PrivateKey.generate()), "key", False, "Ed25519PublicKey"),
    "bad-signature": (_tampered(), "signature", False, "does not verify"),
    "not-pem": (b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
                "malformed", False, "not a PEM certificate request"),
    "huge": (b"x" * 70_000, "malformed", False, "at most"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_say_why(root: Issuer, case: str) -> None:
    csr, reason, denied, words = REFUSED[case]
    with pytest.raises(CsrError) as err:
        make_ca(root).sign_csr(csr, ORDERS)
    assert (err.value.reason, err.value.denied) == (reason, denied)
    assert words in str(err.value)


def test_issue_key_pair_for_a_client_without_a_csr(root: Issuer) -> None:
    pair = make_ca(root).issue_key_pair("spiffe://cluster.local/ns/shop/sa/envoy", ttl=60)
    key = serialization.load_pem_private_key(pair.key_pem.encode(), None)
    [leaf] = x509.load_pem_x509_certificates(pair.chain_pem.encode())  # the root is in the bundle, not here
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert leaf.public_key() == key.public_key()
    assert leaf.not_valid_after_utc.timestamp() == NOW + 60
    assert verifies(leaf, [root.cert])
    with pytest.raises(ValueError, match="trust domain"):
        make_ca(root).issue_key_pair("spiffe://elsewhere/ns/shop/sa/envoy")


# -- the CA's directory -----------------------------------------------------------------------------------

def test_a_new_root_is_kept_in_its_directory(tmp_path: Path) -> None:
    first, made = open_ca_dir(tmp_path / "ca", "cluster.local")
    assert made and (tmp_path / "ca" / ROOT_CERT).read_text() == (tmp_path / "ca" / CA_CERT).read_text()
    assert os.stat(tmp_path / "ca" / CA_KEY).st_mode & 0o777 == 0o600
    again, made = open_ca_dir(tmp_path / "ca", "cluster.local")
    assert not made and again.cert == first.cert and again.above == ()
    (tmp_path / "ca" / CA_CERT).unlink()
    with pytest.raises(CaSetupError, match=r"ca-key\.pem without ca-cert\.pem"):
        open_ca_dir(tmp_path / "ca", "cluster.local")


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def user_ca(tmp_path: Path) -> Path:
    """A root and an intermediate made with openssl, as a user's PKI would hand them over."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    d = tmp_path / "user"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root-key.pem", "-out", ROOT_CERT,
            "-days", "3650", "-subj", "/O=Example Corp/CN=Example Root", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", CA_KEY,
            "-out", "ca.csr", "-subj", "/O=Example Corp/CN=Mesh Intermediate", cwd=d)
    (d / "ext.cnf").write_text("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,"
                               "cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\n"
                               "authorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "ca.csr", "-CA", ROOT_CERT, "-CAkey", "root-key.pem", "-CAcreateserial",
            "-out", CA_CERT, "-days", "365", "-extfile", "ext.cnf", cwd=d)
    (d / CERT_CHAIN).write_text((d / CA_CERT).read_text() + (d / ROOT_CERT).read_text())
    return d


def test_an_intermediate_under_the_users_root_verifies_with_openssl(user_ca: Path, tmp_path: Path) -> None:
    issuer, made = open_ca_dir(user_ca, "cluster.local")
    assert not made and issuer.cert.subject.rfc4514_string() == "CN=Mesh Intermediate,O=Example Corp"
    ca = CertificateAuthority(issuer)  # the real clock: openssl checks against it
    chain = ca.sign_csr(csr_pem(), ORDERS)
    assert len(chain) == 3 and load(chain)[1:] == [issuer.cert, issuer.root]  # leaf, intermediate, root
    assert ca.trust_bundle() == [issuer.root]  # the user's root, not the intermediate
    for name, pem in zip(("leaf.pem", "intermediate.pem", "root.pem"), chain, strict=True):
        (tmp_path / name).write_text(pem)
    ok = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "-untrusted", "intermediate.pem",
                         "-purpose", "sslclient", "leaf.pem"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=60, check=False)
    assert ok.returncode == 0 and "leaf.pem: OK" in ok.stdout, ok.stdout + ok.stderr
    alone = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "leaf.pem"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=False)
    assert alone.returncode != 0  # the intermediate is needed: the chain really goes through it


def test_the_users_files_must_fit_together(user_ca: Path) -> None:
    (user_ca / CERT_CHAIN).unlink()
    root_pem = (user_ca / ROOT_CERT).read_text()
    (user_ca / ROOT_CERT).unlink()
    with pytest.raises(CaSetupError, match=r"root-cert\.pem: missing"):
        open_ca_dir(user_ca, "cluster.local")
    (user_ca / ROOT_CERT).write_text(pem_of(ca_files.self_signed_root("cluster.local").cert))
    with pytest.raises(CaSetupError, match="is not signed by"):
        open_ca_dir(user_ca, "cluster.local")
    (user_ca / ROOT_CERT).write_text(root_pem)
    (user_ca / CA_KEY).write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(CaSetupError, match=r"not the key of ca-cert\.pem"):
        open_ca_dir(user_ca, "cluster.local")


def pem_of(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- rotation -----------------------------------------------------------------------------------------------

def test_a_new_root_overlaps_the_old_one_until_its_leaves_expire(root: Issuer) -> None:
    clock = Clock()
    ca = make_ca(root, clock, default_ttl=3600.0, max_ttl=7200.0)
    old_leaf = load(ca.sign_csr(csr_pem(), ORDERS))[0]
    new = ca_files.self_signed_root("cluster.local", now=NOW - 3600)
    ca.stage(new)  # peers learn the new root first...
    assert ca.trust_bundle() == [root.cert, new.cert]
    assert load(ca.sign_csr(csr_pem(), ORDERS))[1] == root.cert  # ...while the old one still signs
    ca.rotate()
    assert ca.trust_bundle() == [new.cert, root.cert]
    new_leaf, signer = load(ca.sign_csr(csr_pem(), ORDERS))
    assert signer == new.cert
    assert verifies(new_leaf, ca.trust_bundle()) and verifies(old_leaf, ca.trust_bundle())
    assert not verifies(new_leaf, [root.cert])
    clock.now += 7200 + BACKDATE - 1
    assert len(ca.trust_bundle()) == 2  # an old leaf of the longest lifetime may still be out there
    clock.now += 2
    assert ca.trust_bundle() == [new.cert]
    ca.rotate(ca_files.self_signed_root("cluster.local", now=NOW))
    assert len(ca.trust_bundle()) == 2
    ca.retire_old_roots()
    assert len(ca.trust_bundle()) == 1
