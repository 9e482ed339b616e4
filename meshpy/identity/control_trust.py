"""How a sidecar checks the control plane's gRPC port (ADS and the CA) when it serves TLS
(`meshpy control --grpc-tls-names`): `meshpy run --xds-ca FILE` (an Envoy bootstrap's ADS cluster with a
transport_socket is the other way: meshpy.xds.ads_tls; both are a `ControlPlaneTls`).

The roots are those of the file, read again for each new connection (a mounted ConfigMap is rewritten
in place, as Istio's istio-ca-root-cert is), and those of the mesh's trust bundle once the CA has sent
it over a connection the file's roots verified (`learn`). A root rotation thus needs no change of the
file: the control plane's certificate comes from the new root only after that root was staged, and
by then every sidecar has learned it. gRPC checks the certificate's names against the host of the
address (a DNS name, or an IP address), as for any TLS client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("meshpy.identity")

_TLS_FAILURES = ("CERTIFICATE_VERIFY_FAILED", "andshake failed", "WRONG_VERSION_NUMBER", "Connection reset")


class ControlPlaneTls(Protocol):
    """TLS to the control plane: `ControlPlaneTrust` (--xds-ca), or an Envoy bootstrap's ADS cluster's
    UpstreamTlsContext (meshpy.xds.ads_tls.AdsClusterTls)."""

    def channel(self, address: str) -> grpc.aio.Channel:
        """A new channel to `address`, with the roots (and files) as they are now."""
        ...

    def learn(self, roots: Iterable[x509.Certificate]) -> None:
        """The mesh's trust bundle, from the CA over a checked connection."""
        ...

    def hint(self, details: str) -> str:
        """What to add to a failed call's `details` when TLS is the likely cause ("" for nothing)."""
        ...


class ControlPlaneTrust:
    def __init__(self, ca_file: str | Path) -> None:
        self.ca_file = Path(ca_file)
        self._file_pem = b""  # the last good read of the file
        self._learned = b""

    def check(self) -> None:
        """Read the file now; ValueError says why it cannot be used."""
        from cryptography import x509

        try:
            data = self.ca_file.read_bytes()
        except OSError as err:
            raise ValueError(f"--xds-ca {self.ca_file}: cannot read: {err.strerror}") from None
        try:
            x509.load_pem_x509_certificates(data)
        except ValueError as err:
            raise ValueError(f"--xds-ca {self.ca_file}: not PEM certificates: {err}") from None
        self._file_pem = data

    def learn(self, roots: Iterable[x509.Certificate]) -> None:
        """The mesh's trust bundle, from the CA: trusted for the control plane too from now on."""
        from cryptography.hazmat.primitives import serialization

        self._learned = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)

    def roots_pem(self) -> bytes:
        try:
            data = self.ca_file.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" in data:
                self._file_pem = data
        except OSError as err:  # a ConfigMap being rewritten: the last good read stands in
            log.warning("--xds-ca %s: cannot read (%s): using its last good content", self.ca_file,
                        err.strerror)
        return self._file_pem + (b"\n" + self._learned if self._learned else b"")

    def channel(self, address: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(root_certificates=self.roots_pem())
        return grpc.aio.secure_channel(address, credentials)


    def hint(self, details: str) -> str:
        if not any(mark in details for mark in _TLS_FAILURES):
            return ""
        return (f" (the control plane's certificate does not verify against --xds-ca {self.ca_file} and the "
                "mesh's trust bundle, does not name the address's host, or the port is not TLS)")


def open_channel(address: str, trust: ControlPlaneTls | None) -> grpc.aio.Channel:
    """A channel to the control plane: TLS checked with `trust`, or plaintext without."""
    return grpc.aio.insecure_channel(address) if trust is None else trust.channel(address)


def tls_hint(details: str, trust: ControlPlaneTls | None) -> str:
    """What to add to a failed call's details when TLS is the likely cause."""
    if trust is None:
        # A TLS port hangs up on a plaintext client at once, which is all gRPC can say of it.
        if "Socket closed" in details or any(mark in details for mark in _TLS_FAILURES):
            return (" (if the control plane serves TLS, give its root with --xds-ca FILE, or a bootstrap's "
                    "ADS cluster a transport_socket)")
        return ""
    return trust.hint(details)
