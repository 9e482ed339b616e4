"""Workload identity end to end, over real gRPC on 127.0.0.1 with real keys: a sidecar's CaClient asks the
control plane's CA (in-process here, then the `meshpy control` process) for its SVID with a bootstrap
token or, through the fake Kubernetes API's TokenReview, with a pod's token; the refusals and their
codes; the private key never on the wire; and Rotation renewing certificates of a few seconds' life,
through an outage of the CA."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kit import free_port, wait_port
from kubeapi import FakeKubeApi, ThreadedKubeApi, write_kubeconfig

from control.ca import CertificateAuthority
from control.ca_auth import Authenticator, Authenticators, BootstrapTokens, TokenReviewer
from control.ca_files import self_signed_root
from control.ca_service import IdentityService
from control.sources.kubernetes import api_client
from meshpy.identity import ca_proto
from meshpy.identity.csr import CaClient, CaUnreachable, CertificateRefused, IdentityError
from meshpy.identity.rotation import Material, Rotation
from meshpy.identity.spiffe import DEFAULT_TOKEN_AUDIENCE, SpiffeId

ORDERS = SpiffeId("cluster.local", "shop", "orders")
ORDERS_TOKEN = "orders-bootstrap-token-0123456789"
BILLING_TOKEN = "billing-bootstrap-token-0123456789"


class RecordingService(IdentityService):
    """The real service, keeping each request as it arrived (bytes and metadata) for the assertions."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.received: list[tuple[bytes, dict[str, str]]] = []

    async def CreateCertificate(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.received.append((request.SerializeToString(), dict(context.invocation_metadata() or ())))
        return await super().CreateCertificate(request, context)


@dataclass
class ControlPlane:
    ca: CertificateAuthority
    service: RecordingService
    server: grpc.aio.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start(ca: CertificateAuthority, authenticators: Sequence[Authenticator], port: int = 0,
                service: RecordingService | None = None) -> ControlPlane:
    service = service or RecordingService(ca, Authenticators(authenticators))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service.add_to_server(server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return ControlPlane(ca, service, server, bound)


def bootstrap_tokens() -> BootstrapTokens:
    return BootstrapTokens({ORDERS_TOKEN: ("shop", "orders"), BILLING_TOKEN: ("shop", "billing")})


@pytest_asyncio.fixture
async def control() -> AsyncIterator[ControlPlane]:
    plane = await start(CertificateAuthority(self_signed_root("cluster.local")), [bootstrap_tokens()])
    yield plane
    await plane.server.stop(None)


def token_file(tmp_path: Path, token: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    return path


async def test_a_sidecar_gets_its_svid_and_its_key_stays_home(control: ControlPlane, tmp_path: Path) -> None:
    async with CaClient(control.address, token_file(tmp_path, ORDERS_TOKEN), ORDERS) as client:
        svid = await client.fetch_svid()
        bundle = await client.fetch_bundle()
    assert bundle == [control.ca.issuer.root] and svid.chain[-1] == control.ca.issuer.root
    assert svid.leaf.public_key() == svid.key.public_key()
    assert svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier) == [str(ORDERS)]
    assert control.service.counters.issued == 1
    # What the server received: a CSR with the public key, and nothing of the private one.
    [(raw, metadata)] = control.service.received
    assert metadata["authorization"] == f"Bearer {ORDERS_TOKEN}"
    request = ca_proto.IstioCertificateRequest.FromString(raw)
    csr = x509.load_pem_x509_csr(request.csr.encode())
    assert csr.public_key() == svid.key.public_key()
    secret = svid.key.private_numbers().private_value.to_bytes(32, "big")
    pkcs8 = svid.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    for blob in (raw, csr_der):
        assert secret not in blob and pkcs8 not in blob and b"PRIVATE KEY" not in blob


async def test_refusals_carry_their_code_and_reason(control: ControlPlane, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "meshpy.control.ca")
    # billing's token, orders' SPIFFE ID in the CSR
    async with CaClient(control.address, token_file(tmp_path, BILLING_TOKEN), ORDERS) as client:
        with pytest.raises(CertificateRefused) as denied:
            await client.fetch_svid()
    assert denied.value.code == "PERMISSION_DENIED"
    assert denied.value.details == (f"the CSR asks for {ORDERS}, but the caller is "
                                    "spiffe://cluster.local/ns/shop/sa/billing")
    elsewhere = SpiffeId("other.domain", "shop", "orders")
    async with CaClient(control.address, token_file(tmp_path, ORDERS_TOKEN), elsewhere) as client:
        with pytest.raises(CertificateRefused, match=r"PERMISSION_DENIED: .*trust domain 'other\.domain'"):
            await client.fetch_svid()
    unknown = token_file(tmp_path, "a-token-nobody-knows-at-all")
    async with CaClient(control.address, unknown, ORDERS) as client:
        with pytest.raises(CertificateRefused, match="UNAUTHENTICATED: the bearer token is not valid"):
            await client.fetch_svid()
    async with grpc.aio.insecure_channel(control.address) as channel:
        create = channel.unary_unary(ca_proto.CREATE_CERTIFICATE,
                                     request_serializer=ca_proto.IstioCertificateRequest.SerializeToString,
                                     response_deserializer=ca_proto.IstioCertificateResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await create(ca_proto.IstioCertificateRequest(csr="not a CSR"),
                         metadata=(("authorization", f"Bearer {ORDERS_TOKEN}"),), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await create(ca_proto.IstioCertificateRequest(csr="x"), timeout=5)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert control.service.counters.issued == 0
    assert control.service.counters.refused == {"identity": 1, "trust_domain": 1, "bad_token": 1,
                                                "malformed": 1, "no_token": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("shop/billing (bootstrap token)" in w and "[identity]" in w for w in warnings), warnings
    refusals = [w for w in warnings if w.startswith("refused a certificate")]
    assert len(refusals) == 5
    # Over this plaintext port the tokens went in the clear: said once, not at each request.
    assert [w for w in warnings if w not in refusals] == [w for w in warnings if "plaintext gRPC port" in w]
    assert len(warnings) == 6 and control.service.clear_tokens.count == 4


async def test_a_pods_token_is_checked_with_tokenreview(tmp_path: Path) -> None:
    kube = await FakeKubeApi().start()
    kube.add_token("pod-token-of-orders", "shop", "orders")
    kube.add_token("pod-token-of-payments", "pay", "payments")
    api = await api_client(str(write_kubeconfig(tmp_path / "kubeconfig", kube.port)))
    ca = CertificateAuthority(self_signed_root("cluster.local"))
    # The audience `meshpy control` asks for by default (--token-audiences), as the pods' tokens are made.
    plane = await start(ca, [bootstrap_tokens(), TokenReviewer(api, (DEFAULT_TOKEN_AUDIENCE,), timeout=2)])
    try:
        async with CaClient(plane.address, token_file(tmp_path, "pod-token-of-orders"), ORDERS) as client:
            assert (await client.fetch_svid()).spiffe_id == ORDERS
        reviews = [(path, auth) for path, _, auth in kube.requests if path.endswith("/tokenreviews")]
        # The control plane's own credentials asked; the pod's token was only in the review's body.
        assert reviews == [("/apis/authentication.k8s.io/v1/tokenreviews", "Bearer test-token")]
        async with CaClient(plane.address, token_file(tmp_path, "pod-token-of-payments"), ORDERS) as client:
            with pytest.raises(CertificateRefused, match=r"PERMISSION_DENIED: .*the caller is "
                                                         r"spiffe://cluster\.local/ns/pay/sa/payments"):
                await client.fetch_svid()
        async with CaClient(plane.address, token_file(tmp_path, "expired-or-forged-token"), ORDERS) as client:
            with pytest.raises(CertificateRefused, match="UNAUTHENTICATED"):
                await client.fetch_svid()
            # The API server fails or is away: worth trying again (UNAVAILABLE), not a refusal.
            kube.fail_next(503)
            with pytest.raises(CaUnreachable, match="UNAVAILABLE: the Kubernetes API answered the "
                                                    "TokenReview with 503"):
                await client.fetch_svid()
            await kube.stop()
            with pytest.raises(CaUnreachable, match="UNAVAILABLE: the Kubernetes API is not reachable"):
                await client.fetch_svid()
        assert plane.service.counters.refused == {"identity": 1, "bad_token": 1, "tokenreview_failed": 2}
    finally:
        await plane.server.stop(None)
        await api.close()
        await kube.stop()  # again: nothing left to stop when the test got this far


async def test_rotation_renews_at_half_life_and_rereads_the_token(tmp_path: Path) -> None:
    ca = CertificateAuthority(self_signed_root("cluster.local"), default_ttl=3.0)
    plane = await start(ca, [BootstrapTokens({ORDERS_TOKEN: ("shop", "orders"),
                                              ORDERS_TOKEN + "-rotated": ("shop", "orders")})])
    tokens = token_file(tmp_path, ORDERS_TOKEN)
    got: list[tuple[float, Material]] = []
    async with CaClient(plane.address, tokens, ORDERS) as client:
        rotation = Rotation(client, lambda m: got.append((time.time(), m)))
        task = asyncio.create_task(rotation.run())
        try:
            await asyncio.wait_for(rotation.ready.wait(), 5)
            tokens.write_text(ORDERS_TOKEN + "-rotated")  # as the kubelet rewrites a projected token
            await asyncio.sleep(8)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await plane.server.stop(None)
    assert len(got) >= 4, [m.svid.leaf.serial_number for _, m in got]  # at ~0, 1.5, 3, 4.5, 6, 7.5 s
    for (_, before), (at, after) in itertools.pairwise(got):
        assert at < before.svid.not_after  # renewed while the old one was still valid
        assert after.svid.leaf.serial_number != before.svid.leaf.serial_number
        assert after.svid.key.public_key() != before.svid.key.public_key()  # a new key each time
        assert after.bundle == (ca.issuer.root,)
    assert rotation.current is got[-1][1] and rotation.failures == 0
    seen = [metadata["authorization"] for _, metadata in plane.service.received]
    assert seen[0] == f"Bearer {ORDERS_TOKEN}" and seen[-1] == f"Bearer {ORDERS_TOKEN}-rotated"


async def test_rotation_keeps_a_valid_certificate_through_an_outage(tmp_path: Path) -> None:
    ca = CertificateAuthority(self_signed_root("cluster.local"), default_ttl=6.0)
    plane = await start(ca, [bootstrap_tokens()])
    got: list[Material] = []
    async with CaClient(plane.address, token_file(tmp_path, ORDERS_TOKEN), ORDERS, timeout=1) as client:
        rotation = Rotation(client, got.append, backoff_first=0.2, backoff_most=1.0)
        task = asyncio.create_task(rotation.run())
        try:
            await asyncio.wait_for(rotation.ready.wait(), 5)
            first = got[0]
            await plane.server.stop(None)  # the control plane goes away before the renewal at ~3 s
            deadline = time.monotonic() + 6
            while rotation.failures < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert rotation.failures >= 2 and rotation.current is first and len(got) == 1
            assert time.time() < first.svid.not_after
            plane = await start(ca, [bootstrap_tokens()], port=plane.port, service=plane.service)
            while len(got) < 2 and time.time() < first.svid.not_after:
                await asyncio.sleep(0.05)
            assert len(got) == 2, "not renewed before the first certificate expired"
            assert rotation.current is got[1] and got[1].svid.not_after > first.svid.not_after
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await plane.server.stop(None)


# -- the `meshpy control` process --------------------------------------------------------------------------

def get_svid(address: str, token: Path, sid: SpiffeId) -> tuple[Any, list[x509.Certificate] | None]:
    async def ask() -> tuple[Any, list[x509.Certificate] | None]:
        async with CaClient(address, token, sid) as client:
            try:
                svid: Any = await client.fetch_svid()
            except IdentityError as err:
                svid = err
            return svid, await client.fetch_bundle()
    return asyncio.run(ask())


def test_meshpy_control_runs_the_ca_with_its_options(tmp_path: Path) -> None:
    ads, admin = free_port(), free_port()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{token: {ORDERS_TOKEN}, namespace: shop, service_account: orders}}\n")
    ca_dir, log_path = tmp_path / "ca", tmp_path / "control.log"
    orders = SpiffeId("example.org", "shop", "orders")
    with ThreadedKubeApi() as kube:
        kube.call(kube.api.add_token, "pod-token-of-billing", "shop", "billing")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.port)
        args = [sys.executable, "-m", "meshpy", "control", "--listen", f"127.0.0.1:{ads}", "--admin",
                f"127.0.0.1:{admin}", "--kubernetes", "--kubeconfig", str(kubeconfig), "--trust-domain",
                "example.org", "--ca-dir", str(ca_dir), "--svid-ttl", "120",
                "--bootstrap-tokens", str(tokens)]
        roots = []
        for _ in range(2):  # the second run finds the root the first one wrote
            with open(log_path, "ab") as log:
                control = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_port(ads)
                svid, bundle = get_svid(f"127.0.0.1:{ads}", token_file(tmp_path, ORDERS_TOKEN), orders)
                assert not isinstance(svid, Exception), log_path.read_text()
                assert svid.spiffe_id == orders and bundle is not None and svid.chain[-1] == bundle[0]
                life = svid.leaf.not_valid_after_utc - svid.leaf.not_valid_before_utc
                assert life.total_seconds() == 120 + 60  # --svid-ttl, and the backdating
                roots.append(bundle[0])
                billing = SpiffeId("example.org", "shop", "billing")
                svid, _ = get_svid(f"127.0.0.1:{ads}", token_file(tmp_path, "pod-token-of-billing"), billing)
                assert not isinstance(svid, Exception) and svid.spiffe_id == billing  # through TokenReview
                refused, _ = get_svid(f"127.0.0.1:{ads}", token_file(tmp_path, ORDERS_TOKEN), billing)
                assert isinstance(refused, CertificateRefused) and refused.code == "PERMISSION_DENIED"
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
                    metrics = r.read().decode()
                assert "meshpy_control_ca_certificates_issued_total 2.0" in metrics, metrics
                assert 'meshpy_control_ca_certificates_refused_total{reason="identity"} 1.0' in metrics
            finally:
                control.terminate()
                assert control.wait(10) == 0, log_path.read_text()
        assert roots[0] == roots[1] == x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())
    text = log_path.read_text()
    assert re.search(r"WARNING meshpy\.control\.ca: refused a certificate to shop/orders \(bootstrap token\)"
                     r".*the caller is spiffe://example\.org/ns/shop/sa/orders \[identity\]", text), text


@pytest.mark.parametrize(("args", "message"), [
    (["--svid-ttl", "0"], "--svid-ttl: must be > 0"),
    (["--trust-domain", "Not A Domain"], "--trust-domain: bad trust domain"),
    (["--bootstrap-tokens", "/nonexistent/tokens.yaml"], "/nonexistent/tokens.yaml"),
    (["--grpc-tls-names", "not a name!"], "--grpc-tls-names: 'not a name!' is neither a DNS name"),
])
def test_bad_ca_options_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "meshpy", "control", "--envoy-dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
