"""The ADS stream's TLS as an Envoy bootstrap's ADS cluster says it (meshpy.xds.ads_tls), against a real
gRPC server over TLS on 127.0.0.1: what Envoy checks (the CA, the SAN matchers, nothing without a
validation context) and nothing more (not the address's host, as gRPC's own TLS would), the client
certificate, SNI, the files read again for each connection, the mesh's bundle learned beside them, and
the reason of a failure for the log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_echo import add_handlers
from kit import free_port
from pki import Ca, make_ca

from meshpy.model.routes import StringMatch
from meshpy.model.tls import Certificate, ClientTls, Pem, SanMatch, Validation
from meshpy.tasks import TaskOwner
from meshpy.xds.ads_tls import AdsClusterTls


class Server:
    def __init__(self, ca: Ca, names: tuple[str, ...], client_ca: Ca | None = None) -> None:
        """A gRPC echo server over TLS with a certificate of `ca` for each name (picked by SNI, the first
        without); with `client_ca`, it wants a client certificate of that CA."""
        pairs = []
        for name in names:
            issued = ca.issue(name, dns=(name,))
            pairs.append((issued.key_pem, issued.cert_pem))
        wanted = client_ca.pem if client_ca is not None else None
        credentials = grpc.ssl_server_credentials(pairs, root_certificates=wanted,
                                                  require_client_auth=wanted is not None)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_handlers(self.server)
        self.port = free_port()
        self.server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "mesh", "mesh root")


@pytest.fixture
def server(ca: Ca) -> Iterator[Server]:
    running = Server(ca, ("control.mesh",))
    yield running
    running.server.stop(None)


async def call(tls: AdsClusterTls) -> str:
    """One echo call on a new channel: "ok", or the failure as the xDS client logs it."""
    channel = tls.channel(tls.server)
    try:
        echo = channel.unary_unary("/echo.Echo/Unary")
        answer = await echo(b"ping", timeout=5)
        assert answer == b"ping"
        return "ok"
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name} {err.details()}{tls.hint(err.details() or '')}"
    finally:
        await channel.close()


async def started(server: str, tls: ClientTls) -> AdsClusterTls:
    made = AdsClusterTls(server, tls, 2.0)
    made.check()
    await made.start(TaskOwner(asyncio.get_running_loop()))
    return made


def trusted(path: Path, *san: SanMatch) -> Validation:
    return Validation(ca=Pem(path=str(path)), san=san)


def dns(name: str) -> SanMatch:
    return SanMatch(kind="dns", match=StringMatch(kind="exact", value=name))


async def test_the_ca_is_checked_not_the_address_and_the_file_is_read_for_each_connection(
        server: Server, ca: Ca, tmp_path: Path) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(ca.pem)
    tls = await started(server.address, ClientTls(validation=trusted(roots)))
    try:
        # The certificate names control.mesh, not 127.0.0.1: Envoy (and this) checks names only by SAN
        # matchers, where gRPC's own TLS would refuse.
        assert await call(tls) == "ok"
        other = make_ca(tmp_path / "other", "another root")
        roots.write_bytes(other.pem)  # a ConfigMap rewritten: the next connection reads it
        failed = await call(tls)
        assert failed.startswith("UNAVAILABLE") and "CERTIFICATE_VERIFY_FAILED" in failed, failed
        assert f"(TLS to {server.address}: " in failed, failed
        # The mesh's bundle, learned from the CA, is trusted beside the file.
        tls.learn([x509.load_pem_x509_certificate(ca.pem)])
        assert await call(tls) == "ok" and tls.last_error == ""
    finally:
        await tls.close()


async def test_san_matchers_sni_and_the_client_certificate(ca: Ca, tmp_path: Path) -> None:
    clients = make_ca(tmp_path / "clients", "client root")
    me = clients.issue("sidecar", uris=("spiffe://test.local/ns/shop/sa/orders",))
    running = Server(ca, ("a.mesh", "b.mesh"), client_ca=clients)
    mine = Certificate(chain=Pem(path=str(me.cert)), key=Pem(path=str(me.key)))
    try:
        b_by_sni = await started(running.address, ClientTls(sni="b.mesh", certificate=mine,
                                                             validation=trusted(ca.path, dns("b.mesh"))))
        b_without_sni = await started(running.address, ClientTls(certificate=mine,
                                                                 validation=trusted(ca.path, dns("b.mesh"))))
        no_certificate = await started(running.address, ClientTls(sni="a.mesh", validation=trusted(ca.path)))
        try:
            assert await call(b_by_sni) == "ok"
            # No SNI: the server's first certificate (a.mesh), which the matcher refuses.
            failed = await call(b_without_sni)
            assert "has no SAN that the cluster's matchers accept" in failed, failed
            assert (await call(no_certificate)).startswith("UNAVAILABLE")  # the server wants one
        finally:
            for tls in (b_by_sni, b_without_sni, no_certificate):
                await tls.close()
    finally:
        running.server.stop(None)


async def test_without_a_validation_context_nothing_is_checked_and_that_is_said(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "meshpy.xds"):
        tls = await started(server.address, ClientTls())
    try:
        assert "has no validation_context: the certificate of 127.0.0.1" in caplog.text
        assert await call(tls) == "ok"  # from a CA nobody named, as Envoy connects
    finally:
        await tls.close()


async def test_a_plaintext_port_and_a_missing_file_say_why(tmp_path: Path, ca: Ca) -> None:
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_handlers(plain)
    port = free_port()
    plain.add_insecure_port(f"127.0.0.1:{port}")
    plain.start()
    try:
        tls = await started(f"127.0.0.1:{port}", ClientTls(validation=trusted(ca.path)))
        try:
            failed = await call(tls)
            assert "(TLS to 127.0.0.1:" in failed and "WRONG_VERSION_NUMBER" in failed.upper(), failed
        finally:
            await tls.close()
    finally:
        plain.stop(None)
    with pytest.raises(ValueError, match=r"xds.tls.validation_context.trusted_ca: .*nope.pem"):
        AdsClusterTls("127.0.0.1:1", ClientTls(validation=trusted(tmp_path / "nope.pem")), 1.0).check()
