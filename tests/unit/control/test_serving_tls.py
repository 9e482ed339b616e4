"""The gRPC port's own certificate (control/serving_tls.py): what it names and who signed it, renewal at
half its life and at once after a rotation, handed to gRPC once per change, and the names it takes."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, PolicyBuilder, Store

from control.ca import CertificateAuthority
from control.ca_files import self_signed_root
from control.ca_rotation import RootRotation
from control.serving_tls import ServingCertificate, parse_names


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def leaf(serving: ServingCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificates(serving.chain_pem.encode())[0]


def test_names_ttl_and_renewals() -> None:
    import time

    clock = Clock(time.time())
    ca = CertificateAuthority(self_signed_root("test.local"), trust_domain="test.local")
    names = ("meshpy-control.meshpy-system.svc", "127.0.0.1")
    serving = ServingCertificate(ca, names, ttl=3600.0, clock=clock)
    cert = leaf(serving)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["meshpy-control.meshpy-system.svc"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]  # never a client of the mesh
    # A TLS client holding the mesh's root accepts it for that name (RFC 5280 path, serverAuth).
    PolicyBuilder().store(Store(ca.trust_bundle())).build_server_verifier(
        DNSName("meshpy-control.meshpy-system.svc")).verify(cert, [])
    assert serving.renew_at == pytest.approx(clock.now + 1800, abs=2)

    assert serving._next_configuration() is None  # nothing new: gRPC keeps the current one
    clock.now = serving.renew_at  # (run() renews at this point)
    serving.renew("half of its life")
    assert serving._next_configuration() is not None and serving._next_configuration() is None
    assert leaf(serving).serial_number != cert.serial_number

    rotation = RootRotation(ca)
    rotation.listeners.append(serving.bundle_changed)
    rotation.stage()
    assert serving._next_configuration() is None  # staged: the old root still signs
    rotation.rotate()
    assert serving._next_configuration() is not None
    assert leaf(serving).issuer == ca.issuer.cert.subject  # from the new root at once


@pytest.mark.parametrize("text", ["", " , ", "bad name!", "-leading.example", "a..b"])
def test_bad_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--grpc-tls-names"):
        parse_names(text)


def test_names_are_dns_names_and_addresses() -> None:
    assert parse_names("meshpy-control.meshpy-system.svc, localhost,127.0.0.1,::1") == (
        "meshpy-control.meshpy-system.svc", "localhost", "127.0.0.1", "::1")
