"""Rotating the mesh's root end to end, under a steady load, with the operator's commands.

`meshpy control --ca-dir` signs certificates for two meshpy sidecars (orders serves over mutual
TLS, payments calls it) and an Envoy node (billing, whose key pair comes over SDS) that calls orders too.
The orders sidecar closes each connection after a few requests, so that handshakes, with whatever
certificates and trust bundle each side holds at that moment, never stop. Then, with `meshpy ca`:
stage a new root (both roots trusted everywhere), rotate (every leaf from the new root), retire the
old root (trusted nowhere): no request fails throughout, and at the end a leaf of the retired root is
refused while one of the new root is taken.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, eventually, free_port, http, wait_port
from test_mesh_envoy import address as envoy_address
from test_mesh_envoy import envoy_bootstrap, hcm, sds
from test_mesh_mtls import ORDERS, PAYMENTS, TRUST, client_config
from xds_world import Control

from control.ca import CertificateAuthority
from control.ca_files import load_issuer

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed")
BILLING = f"spiffe://{TRUST}/ns/shop/sa/billing"
TOKENS = {"orders": "orders-token-0123456789", "payments": "payments-token-0123456789",
          "billing": "billing-token-0123456789"}
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"


def server_config(admin: int, inbound: int, demo: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: inbound
    address: 127.0.0.1:{inbound}
    mtls: strict
    max_requests_per_connection: 10   # new handshakes all along: each side's current certificates in use
    authz:
      policies:
        payments: {{from: [{{principal: "{TRUST}/ns/shop/sa/payments"}}]}}
        billing: {{from: [{{principal: "{TRUST}/ns/shop/sa/billing"}}]}}
    routes: [{{match: /, cluster: app}}]
clusters:
  app: 127.0.0.1:{demo}
"""


def envoy_resources(outbound: int, orders_inbound: int) -> dict[str, object]:
    """The billing Envoy: an outbound listener to the orders sidecar over mutual TLS (SDS secrets)."""
    common = {
        "tls_certificate_sds_secret_configs": [sds("default")],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": ORDERS}}]},
            "validation_context_sds_secret_config": sds("ROOTCA")},
    }
    return {
        "outbound": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "outbound",
                     "address": envoy_address(outbound),
                     "filter_chains": [{"filters": [hcm("outbound", {"route": {"cluster": "orders"}})]}]},
        "orders": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "orders",
                   "type": "STATIC", "connect_timeout": "1s",
                   "transport_socket": {"name": "tls", "typed_config": {
                       "@type": f"{TLS}.UpstreamTlsContext", "common_tls_context": common}},
                   "load_assignment": {"cluster_name": "orders", "endpoints": [{"lb_endpoints": [
                       {"endpoint": {"address": envoy_address(orders_inbound)}}]}]}},
    }


@dataclass
class World:
    control: Control
    ca_dir: Path
    orders: Proxy
    payments: Proxy
    envoy_admin: int
    ports: dict[str, int]
    failures: list[str] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def world(demo: DemoUpstream, tmp_path: Path) -> Iterator[World]:
    (tmp_path / "resources").mkdir()
    ports = {n: free_port() for n in ("orders_in", "payments_out", "billing_out")}
    for name, resource in envoy_resources(ports["billing_out"], ports["orders_in"]).items():
        (tmp_path / "resources" / f"{name}.yaml").write_text(json.dumps(resource))
    (tmp_path / "tokens.yaml").write_text("tokens:\n" + "".join(
        f"  - {{token: {tok}, namespace: shop, service_account: {sa}}}\n" for sa, tok in TOKENS.items()))
    for sa, tok in TOKENS.items():
        (tmp_path / f"{sa}.token").write_text(tok)
    ca_dir = tmp_path / "ca"
    control = Control(tmp_path / "resources", free_port(), tmp_path / "control.log", poll_interval=0.2)
    # Certificates of two minutes: no renewal falls inside the test, so each step reaches the nodes by
    # the push (the sidecars' bundle watch, Envoy's SDS), not by a renewal that happened to come.
    control.extra = ["--bootstrap-tokens", str(tmp_path / "tokens.yaml"), "--trust-domain", TRUST,
                     "--svid-ttl", "120", "--ca-dir", str(ca_dir)]
    control.start()
    ca = f"127.0.0.1:{control.port}"
    o_admin, p_admin, e_admin = free_port(), free_port(), free_port()
    orders = Proxy(server_config(o_admin, ports["orders_in"], demo.port), o_admin, extra_args=[
        "--identity", ORDERS, "--ca", ca, "--ca-token", str(tmp_path / "orders.token")])
    payments = Proxy(client_config(p_admin, ports["payments_out"], ports["orders_in"]), p_admin, extra_args=[
        "--identity", PAYMENTS, "--ca", ca, "--ca-token", str(tmp_path / "payments.token")])
    bootstrap = json.loads(envoy_bootstrap(e_admin, control.port))
    bootstrap["node"] = {"id": "billing-envoy", "cluster": "billing"}
    bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"] = [
        {"key": "authorization", "value": f"Bearer {TOKENS['billing']}"}]
    envoy = Envoy(json.dumps(bootstrap), e_admin)
    try:
        wait_port(control.port)
        orders.start()
        payments.start()
        envoy.start()
        yield World(control, ca_dir, orders, payments, e_admin, ports)
    finally:
        envoy.stop()
        payments.stop()
        orders.stop()
        control.stop()


def meshpy_ca(world: World, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "meshpy", "ca", *args, "--admin",
                           f"127.0.0.1:{world.control.admin}"], capture_output=True, text=True, timeout=20,
                          check=False)
    assert done.returncode == 0, (done.stdout, done.stderr, world.control.logs()[-3000:])
    return done.stdout


def ca_status(world: World) -> dict[str, object]:
    status, body = world.control.get("/ca")
    assert status == 200, body
    return dict(json.loads(body))


def tls_view(proxy: Proxy, context: str) -> tuple[str, set[str]]:
    """The issuer of the proxy's own leaf in `context`, and the subjects of the roots it trusts there."""
    for entry in json.loads(proxy.admin("/certs")[1])["certificates"]:
        if entry["context"] == context:
            return entry["cert_chain"][0]["issuer"], {c["subject"] for c in entry["ca_cert"]}
    return "", set()


def envoy_took_the_latest_secrets(world: World) -> Callable[[], bool]:
    def check() -> bool:
        _, body = world.control.get("/nodes")
        nodes = [n for n in json.loads(body) if n["node"] == "billing-envoy"]
        return bool(nodes) and nodes[0]["acked"].get("sds") == nodes[0]["snapshot"].get("sds")
    return check


def load(world: World, name: str, port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            answer = http(port, path="/hello")
            if answer.status != 200:
                world.failures.append(f"{name}: {answer.status} {answer.body[:100]!r}")
        except OSError as err:
            world.failures.append(f"{name}: {err!r}")
        world.done[name] = world.done.get(name, 0) + 1
        time.sleep(0.02)


def handshake_answer(port: int, chain_pem: str, key_pem: str, tmp: Path) -> bytes:
    """What the orders sidecar answers a caller presenting this certificate (b"" when it hangs up)."""
    (tmp / "leaf.pem").write_text(chain_pem)
    (tmp / "leaf.key").write_text(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only the server's verdict counts
    context.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw) as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
            return s.recv(4096)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_stage_rotate_retire_under_load_fails_nothing(world: World, tmp_path: Path) -> None:
    orders, payments = world.orders, world.payments
    first = ca_status(world)
    old_root = first["signing"]["subject"]  # type: ignore[index]
    assert tls_view(orders, "listener inbound") == (old_root, {old_root})
    eventually(envoy_took_the_latest_secrets(world), "the Envoy node took its secrets")
    assert http(world.ports["billing_out"], path="/hello").status == 200

    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(world, name, world.ports[port], stop))
               for name, port in (("payments", "payments_out"), ("billing", "billing_out"))]
    for worker in workers:
        worker.start()
    try:
        # 1. Stage: a new root, written to --ca-dir/next, trusted by every node before anything uses it.
        out = meshpy_ca(world, "stage")
        assert "staged a new root (written to" in out and "state         staged" in out, out
        new_root = ca_status(world)["staged"]["subject"]  # type: ignore[index]
        assert (world.ca_dir / "next" / "ca-key.pem").exists()
        both = {old_root, new_root}
        eventually(lambda: tls_view(orders, "listener inbound")[1] == both, "orders trusts both roots", 5)
        eventually(lambda: tls_view(payments, "cluster orders")[1] == both, "payments trusts both roots", 5)
        eventually(envoy_took_the_latest_secrets(world), "Envoy took the bundle of both roots", 5)
        time.sleep(1.0)  # leaves still from the old root, checked against both for a while

        # 2. Rotate: every leaf from the new root (meshpy sidecars renew within seconds, Envoy at once).
        out = meshpy_ca(world, "rotate")
        assert "signing with" in out and "state         overlap" in out, out
        assert (world.ca_dir / "previous" / "retire-after").exists() and not (world.ca_dir / "next").exists()
        eventually(lambda: tls_view(orders, "listener inbound")[0] == new_root, "orders' leaf from the new "
                   "root", 10)
        eventually(lambda: tls_view(payments, "cluster orders")[0] == new_root, "payments' leaf from the new "
                   "root", 10)
        eventually(envoy_took_the_latest_secrets(world), "Envoy took a key pair from the new root", 5)
        time.sleep(1.0)
        old_ca = load_issuer(world.ca_dir / "previous")  # kept for a rollback; used below as an attacker

        # 3. Retire: the old root leaves every bundle.
        out = meshpy_ca(world, "retire")
        assert "retired" in out and "state         steady" in out, out
        assert not (world.ca_dir / "previous").exists()
        eventually(lambda: tls_view(orders, "listener inbound")[1] == {new_root}, "orders dropped the old "
                   "root", 5)
        eventually(lambda: tls_view(payments, "cluster orders")[1] == {new_root}, "payments dropped the "
                   "old root", 5)
        eventually(envoy_took_the_latest_secrets(world), "Envoy took the bundle of the new root", 5)
        time.sleep(1.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert world.failures == [] and min(world.done.values()) > 100, (world.done, world.failures[:5])
    assert ca_status(world)["bundle_watchers"] == 2  # the two meshpy sidecars

    # A leaf of the retired root is refused; one of the new root, for the same identity, is taken.
    port = world.ports["orders_in"]
    stale = CertificateAuthority(old_ca, trust_domain=TRUST).issue_key_pair(PAYMENTS)
    assert handshake_answer(port, stale.chain_pem, stale.key_pem, tmp_path) == b""
    fresh = CertificateAuthority(load_issuer(world.ca_dir), trust_domain=TRUST).issue_key_pair(PAYMENTS)
    assert handshake_answer(port, fresh.chain_pem, fresh.key_pem, tmp_path).startswith(b"HTTP/1.1 200")
    log = world.control.logs()
    for said in ("ca: staged a new root", "ca: rotated: signing with", "ca: retired"):
        assert said in log, log[-3000:]
    # This port is plaintext: said once, though every node sent its token over it.
    assert log.count("came over a plaintext gRPC port") == 1, log[-3000:]
    metrics = world.control.get("/metrics")[1]
    clear = re.search(r"^meshpy_control_tokens_in_the_clear_total (\S+)$", metrics, re.MULTILINE)
    assert clear is not None and float(clear.group(1)) >= 3  # the CSRs of two sidecars, Envoy's stream
