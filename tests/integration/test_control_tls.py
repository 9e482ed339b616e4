"""The control plane's gRPC port over TLS (`meshpy control --grpc-tls-names`), its certificate from the
mesh's own CA: a meshpy sidecar gets its config and its certificate over it (`meshpy run --xds-ca`) and
keeps connecting after a root rotation with the file of the old root only; a client with the wrong root,
or without TLS, is refused and told why; real Envoy follows it with its bootstrap's xds cluster over TLS
and gets its SDS identity there, and meshpy follows it with the same bootstrap (a wrong root in it is
said and retried); a plaintext port says once that tokens arrive in the clear."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, eventually, free_port, http, wait_port
from test_mesh_envoy import envoy_bootstrap
from xds_world import TEAPOT, Control, routes, write_resources

from control.ca_files import self_signed_root, write_root
from meshpy.identity.control_trust import ControlPlaneTrust
from meshpy.identity.csr import CaClient, CaUnreachable
from meshpy.identity.spiffe import SpiffeId

TRUST = "test.local"
ORDERS = f"spiffe://{TRUST}/ns/shop/sa/orders"
TOKEN = "orders-token-0123456789"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
PLAINTEXT_WARNING = "came over a plaintext gRPC port"


@dataclass
class Plane:
    control: Control
    root: Path  # the mesh's root as the CA wrote it: what a ConfigMap would carry
    source: Path
    listener: int
    token: Path
    tmp: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.control.port}"


@pytest.fixture
def plane(tmp_path: Path, demo: DemoUpstream) -> Iterator[Plane]:
    source, listener = tmp_path / "resources", free_port()
    write_resources(source, listener, demo.port)
    (source / "routes.yaml").write_text(routes(TEAPOT))
    (tmp_path / "tokens.yaml").write_text(
        f"tokens:\n  - {{token: {TOKEN}, namespace: shop, service_account: orders}}\n")
    (tmp_path / "orders.token").write_text(TOKEN)
    control = Control(source, free_port(), tmp_path / "control.log", poll_interval=0.1)
    control.extra = ["--bootstrap-tokens", str(tmp_path / "tokens.yaml"), "--trust-domain", TRUST,
                     "--ca-dir", str(tmp_path / "ca"), "--grpc-tls-names", "localhost,127.0.0.1"]
    control.start()
    try:
        wait_port(control.port)
        root = tmp_path / "root-cert.pem"
        root.write_bytes((tmp_path / "ca" / "root-cert.pem").read_bytes())
        yield Plane(control, root, source, listener, tmp_path / "orders.token", tmp_path)
    finally:
        if control.proc is not None and control.proc.poll() is None:
            control.stop()


def sidecar(plane: Plane, root: Path, identity: bool = True) -> Proxy:
    admin = free_port()
    args = ["--xds", plane.address, "--node-id", "orders-1", "--admin", f"127.0.0.1:{admin}",
            "--xds-ca", str(root)]
    if identity:
        args += ["--identity", ORDERS, "--ca-token", str(plane.token)]
    return Proxy("", admin, extra_args=args)


def meshpy_ca(plane: Plane, action: str, expect: int = 0) -> str:
    done = subprocess.run([sys.executable, "-m", "meshpy", "ca", action, "--admin",
                           f"127.0.0.1:{plane.control.admin}"], capture_output=True, text=True, timeout=20,
                          check=False)
    assert done.returncode == expect, (done.stdout, done.stderr)
    return done.stderr


def test_a_sidecar_gets_config_and_certificate_over_tls_through_a_rotation(plane: Plane) -> None:
    proxy = sidecar(plane, plane.root)
    try:
        proxy.start()  # ready: its certificate came from the CA, its listener over ADS, both over TLS
        assert http(plane.listener, path="/teapot").status == 418
        assert f"issued {ORDERS} to" in plane.control.logs()
        _, body = plane.control.get("/nodes")
        assert [n["node"] for n in json.loads(body)] == ["orders-1"]

        # Out of order: refused, said why, nothing changed.
        refused = meshpy_ca(plane, "rotate", expect=1)
        assert "meshpy ca rotate: refused: nothing is staged" in refused, refused
        # A rotation: the port's certificate comes from the new root, which the sidecar learned from the
        # bundle watch; its --xds-ca file still holds the old root only.
        for action in ("stage", "rotate", "retire"):
            meshpy_ca(plane, action)
        assert "serving certificate for localhost, 127.0.0.1" in plane.control.logs()
        plane.control.stop()
        plane.control.start()  # new connections, checked against the file's root and the learned one
        (plane.source / "routes.yaml").write_text(routes(TEAPOT.replace("418", "419")))
        eventually(lambda: http(plane.listener, path="/teapot").status == 419,
                   "a change pushed over the new TLS connection", 15)
    finally:
        proxy.stop()
    assert PLAINTEXT_WARNING not in plane.control.logs()
    assert "xds: connected to" in proxy.logs()


def test_the_wrong_root_and_plaintext_are_refused_with_the_reason(plane: Plane) -> None:
    other = plane.tmp / "other"
    write_root(other, self_signed_root(TRUST))
    orders = SpiffeId.parse(ORDERS)

    async def ask(trust: ControlPlaneTrust | None) -> str:
        async with CaClient(plane.address, plane.token, orders, trust=trust, timeout=5) as client:
            with pytest.raises(CaUnreachable) as refused:
                await client.fetch_svid()
        return str(refused.value)

    wrong = asyncio.run(ask(ControlPlaneTrust(other / "root-cert.pem")))
    assert "CERTIFICATE_VERIFY_FAILED" in wrong and "does not verify against --xds-ca" in wrong, wrong
    assert "if the control plane serves TLS, give its root with --xds-ca" in asyncio.run(ask(None))
    assert "issued" not in plane.control.logs()  # no token ever reached the CA

    # The same as a sidecar process: not ready, and its log says why.
    proxy = sidecar(plane, other / "root-cert.pem", identity=False)
    try:
        proxy.start(wait_ready=False)
        eventually(lambda: "does not verify against --xds-ca" in proxy.logs(), "the reason logged")
        assert proxy.admin("/ready")[0] == 503
    finally:
        proxy.stop()
    done = subprocess.run([sys.executable, "-m", "meshpy", "run", "--xds", plane.address, "--node-id", "x",
                           "--xds-ca", str(plane.tmp / "nope.pem")], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 2 and "--xds-ca" in done.stderr and "cannot read" in done.stderr


@pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed")
def test_envoy_follows_the_control_plane_over_tls(plane: Plane) -> None:
    tls_port = free_port()
    (plane.source / "tls-listener.yaml").write_text(json.dumps({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "tls",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": tls_port}},
        "filter_chains": [{
            "transport_socket": {"name": "tls", "typed_config": {
                "@type": f"{TLS}.DownstreamTlsContext", "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [
                        {"name": "default", "sds_config": {"ads": {}, "resource_api_version": "V3"}}]}}},
            "filters": [{"name": "tcp", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tls", "cluster": "demo"}}]}]}))
    admin = free_port()
    bootstrap = tls_bootstrap(plane, admin, plane.root)  # the one meshpy runs in the next test
    bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"] = [
        {"key": "authorization", "value": f"Bearer {TOKEN}"}]
    envoy = Envoy(json.dumps(bootstrap), admin)
    try:
        envoy.start()
        eventually(lambda: http(plane.listener, path="/teapot").status == 418, "Envoy's listener over ADS")

        def served_identity() -> str:
            shown = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port}"], input=b"",
                                   capture_output=True, timeout=10, check=False).stdout
            return subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=shown,
                                  capture_output=True, check=False).stdout.decode()

        # Its key pair came over SDS, on the TLS stream (the listener waits for it).
        # (Envoy's listener warms until the secret arrives; on a loaded machine that has taken over 10 s.)
        eventually(lambda: f"URI:{ORDERS}" in served_identity(), "Envoy serves its SPIFFE certificate", 30.0)
    finally:
        envoy.stop()
    assert PLAINTEXT_WARNING not in plane.control.logs()


def tls_bootstrap(plane: Plane, admin: int, root: Path) -> dict[str, Any]:
    """An Envoy bootstrap whose xds cluster speaks TLS, checked against `root` and the name the control
    plane's certificate carries; reconnecting at least every second."""
    bootstrap = json.loads(envoy_bootstrap(admin, plane.control.port))
    (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    del service["initial_metadata"]  # (a token for SDS secrets: meshpy makes its own key, with --identity)
    service["envoy_grpc"]["retry_policy"] = {
        "retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"}}
    (xds,) = bootstrap["static_resources"]["clusters"]
    xds["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": f"{TLS}.UpstreamTlsContext", "sni": "localhost", "common_tls_context": {
            "validation_context": {
                "trusted_ca": {"filename": str(root)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}]}}}}
    return cast(dict[str, Any], bootstrap)


def test_meshpy_follows_an_envoy_bootstrap_whose_xds_cluster_is_tls(plane: Plane) -> None:
    admin = free_port()
    path = plane.tmp / "bootstrap.json"
    path.write_text(json.dumps(tls_bootstrap(plane, admin, plane.root)))
    if envoy_binary() is not None:  # the same file is a bootstrap Envoy takes
        envoy = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert envoy.returncode == 0, envoy.stdout + envoy.stderr
    checked = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(path)], capture_output=True,
                             text=True, timeout=30, check=False)
    assert checked.returncode == 0 and f"xDS from {plane.address} (sotw, TLS)" in checked.stdout, checked
    # The CA on the same server is reached the same way.
    proxy = Proxy(path.read_text(), admin, extra_args=["--identity", ORDERS, "--ca", plane.address,
                                                       "--ca-token", str(plane.token)])
    try:
        proxy.start()  # ready: its certificate and its listener came over TLS (the port serves nothing else)
        assert http(plane.listener, path="/teapot").status == 418
        assert f"xds: connected to {plane.address}" in proxy.logs()
        assert f"issued {ORDERS} to" in plane.control.logs()
        assert proxy.metric("meshpy_xds_reconnects_total") == 0
    finally:
        proxy.stop()
    # Two answers to one question: refused, said why.
    both = subprocess.run([sys.executable, "-m", "meshpy", "run", "-c", str(path), "--xds-ca",
                           str(plane.root)], capture_output=True, text=True, timeout=30, check=False)
    assert both.returncode == 1 and "--xds-ca and the ADS cluster's transport_socket both say" in both.stdout


def test_a_wrong_ca_in_the_bootstrap_is_said_and_retried_until_the_file_is_right(plane: Plane) -> None:
    other = plane.tmp / "other"
    write_root(other, self_signed_root(TRUST))
    root = plane.tmp / "mounted-root.pem"
    root.write_bytes((other / "root-cert.pem").read_bytes())
    admin = free_port()
    proxy = Proxy(json.dumps(tls_bootstrap(plane, admin, root)), admin)
    try:
        proxy.start(wait_ready=False)
        eventually(lambda: "CERTIFICATE_VERIFY_FAILED" in proxy.logs(), "the reason logged")
        failure = next(line for line in proxy.logs().splitlines() if "CERTIFICATE_VERIFY_FAILED" in line)
        assert f"xds: stream to {plane.address} failed: UNAVAILABLE" in failure, failure
        reason = f"(TLS to {plane.address}: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
        assert reason in failure, failure
        # As Envoy, it keeps trying (said once per outage), and is not ready meanwhile.
        eventually(lambda: proxy.metric("meshpy_xds_reconnects_total") >= 3, "retries")
        assert proxy.admin("/ready")[0] == 503 and proxy.logs().count("CERTIFICATE_VERIFY_FAILED") == 1
        # The file is read again for each connection (a ConfigMap rewritten in place).
        root.write_bytes(plane.root.read_bytes())
        proxy.wait_ready()
        assert http(plane.listener, path="/teapot").status == 418
    finally:
        proxy.stop()
    assert "issued" not in plane.control.logs()
