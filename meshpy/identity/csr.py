"""The sidecar's side of the CA: a key of its own, a CSR for its SPIFFE ID, and the checked answer.

The private key is made here and never leaves the process: only the CSR (public key, SPIFFE ID, a
signature) goes on the wire. The bearer token is read from its file on every request, because Kubernetes
rewrites a projected service-account token before it expires. The answer is checked before anything
uses it: the leaf must carry our public key and exactly our SPIFFE ID, and each certificate of the
chain must be signed by the next.

The protocol is Istio's (meshpy/identity/ca_proto.py), so this client can also ask istiod.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshpy.errors import MeshError
from meshpy.identity import ca_proto
from meshpy.identity.control_trust import ControlPlaneTls, tls_hint
from meshpy.identity.spiffe import SpiffeId

REQUEST_TIMEOUT = 10.0  # seconds for one RPC, connecting included
# A bundle watch is a long stream: cut and opened again this often, so that a control plane that vanished
# without a word (no RST) is noticed; a missed change waits for the next renewal at worst.
WATCH_TIMEOUT = 300.0
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class IdentityError(MeshError):
    """No (new) certificate: the CA is away, refused, or answered something we cannot use."""


class CaUnreachable(IdentityError):
    """Worth trying again soon: no connection, a deadline, or the CA itself said UNAVAILABLE."""


class CertificateRefused(IdentityError):
    """The CA said no; `code` is the gRPC status name (PERMISSION_DENIED...), `details` its reason."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


class BadCertificate(IdentityError):
    """The CA answered with a chain that is not ours or does not hold together."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR with an empty subject and the SPIFFE ID as its only SAN: what the CA signs as it is."""
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])) \
        .add_extension(san, critical=True).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Svid:
    """Our certificate: the key stays in memory; `chain` is leaf first, as the CA sent it (with the root
    last when the CA sends it, as Istio's does)."""

    spiffe_id: SpiffeId
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()

    def chain_pem(self) -> str:
        """Leaf and intermediates, as a TLS peer sends them (a self-signed root is left out)."""
        certs = self.chain[:-1] if len(self.chain) > 1 and _is_self_signed(self.chain[-1]) else self.chain
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    def key_pem(self) -> bytes:
        """For this process's TLS context only: nothing in this package ever sends it."""
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


class CaClient:
    """Asks the CA at `address` (host:port) for SVIDs of `spiffe_id`, with the token in `token_file`.
    `trust`: TLS for the channel (meshpy run --xds-ca, or a bootstrap's ADS cluster's); `credentials`: any
    other TLS (istiod's); neither: plaintext."""

    def __init__(self, address: str, token_file: Path | str, spiffe_id: SpiffeId, *,
                 credentials: grpc.ChannelCredentials | None = None, trust: ControlPlaneTls | None = None,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self.address, self.token_file, self.spiffe_id = address, Path(token_file), spiffe_id
        self.credentials, self.trust, self.timeout = credentials, trust, timeout
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> CaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _open(self) -> grpc.aio.Channel:
        # Made on first use, inside the running loop that grpc.aio binds it to.
        if self._channel is None:
            self._channel = self._new_channel()
        return self._channel

    def _new_channel(self) -> grpc.aio.Channel:
        if self.trust is not None:
            return self.trust.channel(self.address)  # the roots as they are now (a rotation adds one)
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.address, self.credentials)
        return grpc.aio.insecure_channel(self.address)

    def _token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as err:
            raise IdentityError(f"cannot read the token file {self.token_file}: {err.strerror}") from err
        if not token:
            raise IdentityError(f"the token file {self.token_file} is empty")
        return token

    async def fetch_svid(self, ttl: float | None = None) -> Svid:
        """A new key and its certificate; `ttl` asks for a lifetime (the CA clamps it)."""
        key = new_key()
        request = ca_proto.IstioCertificateRequest(csr=build_csr(key, self.spiffe_id).decode(),
                                                   validity_duration=int(ttl or 0))
        call = self._open().unary_unary(ca_proto.CREATE_CERTIFICATE,
                                        request_serializer=ca_proto.IstioCertificateRequest.SerializeToString,
                                        response_deserializer=ca_proto.IstioCertificateResponse.FromString)
        response = await self._call(call, request, (("authorization", f"Bearer {self._token()}"),))
        return Svid(self.spiffe_id, key, check_chain(response.cert_chain, key, self.spiffe_id))

    async def fetch_bundle(self) -> list[x509.Certificate] | None:
        """The CA's roots; None when it has no TrustBundle service (istiod: the chain's root stands in)."""
        call = self._open().unary_unary(ca_proto.GET_BUNDLE,
                                        request_serializer=ca_proto.TrustBundleRequest.SerializeToString,
                                        response_deserializer=ca_proto.TrustBundleResponse.FromString)
        try:
            response = await self._call(call, ca_proto.TrustBundleRequest(), ())
        except CertificateRefused as err:
            if err.code == grpc.StatusCode.UNIMPLEMENTED.name:
                return None
            raise
        return parse_bundle(response)

    async def watch_bundle(self, timeout: float = WATCH_TIMEOUT) -> AsyncIterator[list[x509.Certificate]]:
        """The CA's roots now, then at each change, for `timeout` seconds at most (then it ends). On a
        channel of its own: a failed certificate request closes the shared one. Raises CaUnreachable, or
        CertificateRefused (UNIMPLEMENTED: a CA without the watch, such as istiod)."""
        channel = self._new_channel()
        try:
            call = channel.unary_stream(ca_proto.WATCH_BUNDLE,
                                        request_serializer=ca_proto.TrustBundleRequest.SerializeToString,
                                        response_deserializer=ca_proto.TrustBundleResponse.FromString)
            stream = call(ca_proto.TrustBundleRequest(), timeout=timeout)
            try:
                async for response in stream:
                    yield parse_bundle(response)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # CANCELLED: it stopped
                    details = err.details() or ""
                    raise CaUnreachable(f"the CA at {self.address}: {code.name}: {details}"
                                        f"{tls_hint(details, self.trust)}") from None
                raise CertificateRefused(code.name, err.details() or "") from None
        finally:
            await channel.close()

    async def _call(self, call: Any, request: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await call(request, metadata=metadata, timeout=self.timeout, wait_for_ready=False)
        except TimeoutError:
            unreachable = f"no answer from the CA at {self.address} within {self.timeout:g} s"
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise CertificateRefused(code.name, err.details() or "") from None
            details = err.details() or ""
            unreachable = f"the CA at {self.address}: {code.name}: {details}{tls_hint(details, self.trust)}"
        # A new channel for the next try: the caller's back-off (Rotation's) decides when that is, not
        # grpc's reconnect back-off, which would fail the next tries at once while it waits.
        await self.close()
        raise CaUnreachable(unreachable)


def parse_bundle(response: Any) -> list[x509.Certificate]:
    try:
        roots = [x509.load_pem_x509_certificate(r.encode()) for r in response.roots]
    except ValueError as err:
        raise BadCertificate(f"the trust bundle holds something that is not a PEM certificate: "
                             f"{err}") from err
    if not roots:
        raise BadCertificate("the trust bundle is empty")
    return roots


def check_chain(pems: Any, key: ec.EllipticCurvePrivateKey,
                spiffe_id: SpiffeId) -> tuple[x509.Certificate, ...]:
    """The CA's answer, parsed and checked against what we asked for."""
    try:
        chain = tuple(x509.load_pem_x509_certificate(p.encode()) for p in pems)
    except ValueError as err:
        raise BadCertificate(f"the CA answered something that is not PEM certificates: {err}") from err
    if not chain:
        raise BadCertificate("the CA answered an empty chain")
    leaf = chain[0]
    if leaf.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise BadCertificate("the certificate is not for our key")
    try:
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [str(spiffe_id)]:
        raise BadCertificate(f"the certificate names {uris or 'no URI'}, not {spiffe_id}")
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise BadCertificate(f"the chain is broken at {child.subject.rfc4514_string() or 'the leaf'}: "
                                 f"{err or 'bad signature'}") from None
    return chain


def verify_with_bundle(svid: Svid, bundle: list[x509.Certificate]) -> None:
    """The leaf chains to one of `bundle`'s roots, checked as a TLS peer will (RFC 5280 path validation,
    clientAuth): what we got is usable, not only well-formed."""
    intermediates = [c for c in svid.chain[1:] if not _is_self_signed(c)]
    try:
        PolicyBuilder().store(Store(bundle)).build_client_verifier().verify(svid.leaf, intermediates)
    except VerificationError as err:
        raise BadCertificate(f"the certificate does not verify against the trust bundle: {err}") from None


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
