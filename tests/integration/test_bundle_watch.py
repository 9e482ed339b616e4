"""A sidecar's identity follows a root rotation between its renewals (meshpy/identity/bundle_watch.py),
over real gRPC against the control plane's CA service in-process: a staged root is trusted at once with
the certificate it holds, a rotation brings a new certificate within seconds, a root retired under a
certificate brings one at once; and a CA without the watch (istiod) is left alone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from control.ca import CertificateAuthority
from control.ca_auth import BootstrapTokens
from control.ca_files import self_signed_root
from control.ca_rotation import RootRotation
from control.ca_service import IdentityService
from meshpy.identity import ca_proto
from meshpy.identity.bundle_watch import watch_bundle
from meshpy.identity.csr import CaClient
from meshpy.identity.rotation import REROOT_SPREAD, Material, Rotation
from meshpy.identity.spiffe import SpiffeId

ORDERS = SpiffeId("cluster.local", "shop", "orders")
TOKEN = "orders-bootstrap-token-0123456789"


async def until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def serve(service: IdentityService) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def root_of(material: Material, roots: list[x509.Certificate]) -> x509.Certificate:
    (found,) = [r for r in roots if material.svid.leaf.issuer == r.subject]
    return found


async def test_a_sidecar_follows_stage_rotate_and_retire(tmp_path: Path) -> None:
    ca = CertificateAuthority(self_signed_root("cluster.local"), default_ttl=3600.0)  # no renewal due
    service = IdentityService(ca, BootstrapTokens({TOKEN: ("shop", "orders")}))
    operator = RootRotation(ca)
    operator.listeners.append(service.bundle_changed)
    server, address = await serve(service)
    (tmp_path / "token").write_text(TOKEN)
    got: list[Material] = []
    async with CaClient(address, tmp_path / "token", ORDERS) as client:
        rotation = Rotation(client, got.append, rng=lambda: 0.9)  # a rotation's spread: 4.5 s
        tasks = [asyncio.create_task(rotation.run()), asyncio.create_task(watch_bundle(rotation))]
        try:
            await asyncio.wait_for(rotation.ready.wait(), 5)
            await until(lambda: service.watchers == 1, "the sidecar watches the bundle", 5)
            old = ca.issuer.root
            assert got[-1].bundle == (old,)

            operator.stage()
            new = ca.staged.root if ca.staged else None
            await until(lambda: len(got) == 2, "the staged root trusted", 2)
            assert got[1].bundle == (old, new) and got[1].svid is got[0].svid  # no renewal for it

            operator.rotate()
            await until(lambda: len(got) == 4, "a certificate from the new root", REROOT_SPREAD + 2)
            assert got[2].bundle == (new, old) and got[2].svid is got[0].svid  # the bundle first...
            assert got[3].svid is not got[0].svid and root_of(got[3], [old, new]) == new  # ...then a leaf

            operator.retire()
            await until(lambda: len(got) == 5, "the old root dropped", 2)
            assert got[4].bundle == (new,) and got[4].svid is got[3].svid

            # Rotated and retired at once: the sidecar's certificate chains to nothing it may show, so it
            # renews now, not within the spread.
            operator.stage()
            operator.rotate()
            newest = ca.issuer.root
            started = time.monotonic()
            operator.retire()
            await until(lambda: root_of(got[-1], [new, newest]) == newest, "renewed at once", 2)
            assert time.monotonic() - started < 0.9 * REROOT_SPREAD
            assert got[-1].bundle == (newest,) and rotation.failures == 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.stop(None)


class IstiodLike(IdentityService):
    """Istio's CSR API and nothing else: no trust bundle RPCs at all."""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        create = grpc.unary_unary_rpc_method_handler(
            self.CreateCertificate, request_deserializer=ca_proto.IstioCertificateRequest.FromString,
            response_serializer=ca_proto.IstioCertificateResponse.SerializeToString)
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(ca_proto.ISTIO_SERVICE, {"CreateCertificate": create}),))


async def test_a_ca_without_the_watch_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = CertificateAuthority(self_signed_root("cluster.local"))
    server, address = await serve(IstiodLike(ca, BootstrapTokens({TOKEN: ("shop", "orders")})))
    (tmp_path / "token").write_text(TOKEN)
    caplog.set_level(logging.INFO, "meshpy.identity")
    try:
        async with CaClient(address, tmp_path / "token", ORDERS) as client:
            await asyncio.wait_for(watch_bundle(Rotation(client, lambda m: None)), 5)  # returns
    finally:
        await server.stop(None)
    assert "the CA has no trust bundle watch" in caplog.text


async def test_the_watch_comes_back_after_the_ca_does(tmp_path: Path) -> None:
    ca = CertificateAuthority(self_signed_root("cluster.local"))
    service = IdentityService(ca, BootstrapTokens({TOKEN: ("shop", "orders")}))
    server, address = await serve(service)
    seen: list[int] = []

    class Counting(Rotation):
        async def bundle_changed(self, roots: list[x509.Certificate]) -> None:
            seen.append(len(roots))

    (tmp_path / "token").write_text(TOKEN)
    async with CaClient(address, tmp_path / "token", ORDERS) as client:
        task = asyncio.create_task(watch_bundle(Counting(client, lambda m: None), backoff_first=0.1))
        try:
            await until(lambda: seen == [1], "the first bundle", 5)
            await server.stop(None)
            port = int(address.rsplit(":", 1)[1])
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            service.add_to_server(server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await until(lambda: seen == [1, 1], "the bundle again from the CA restarted", 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop(None)
