"""A mesh in STRICT mutual TLS across network-namespace pods, each sidecar with its identity from
`meshpy control`'s CA (its own key, a CSR proved by a bootstrap token), listeners pushed over ADS:

    namespace net (10.79.0.254): the control plane and CA
    namespace a   (10.79.0.1): the payments app and its sidecar (identity .../sa/payments)
    namespace b   (10.79.0.2): the orders app (:8080) and its sidecar (.../sa/orders), inbound mtls: strict,
                               authorization: payments only, x-forwarded-client-cert to the app
    namespace d   (10.79.0.4): another app with a sidecar of another identity (.../sa/reports)
    namespace e   (10.79.0.5): a pod outside the mesh (no sidecar)

The outside pod is refused (plaintext to a STRICT port), the other identity is denied by RBAC (403), the
allowed one gets through and the app sees who called (XFCC). Skipped where namespaces or iptables are
not available.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit import eventually
from netns_pods import MESHPY, Pods, curl, in_ns, pod_network

TAG = f"mt{os.getpid() % 100000}"
NET, POD_A, POD_B, POD_D, POD_E = (f"{TAG}-{x}" for x in ("net", "a", "b", "d", "e"))
IP = {POD_A: "10.79.0.1", POD_B: "10.79.0.2", POD_D: "10.79.0.4", POD_E: "10.79.0.5"}
GATEWAY = "10.79.0.254"
TRUST = "mesh.test"
ACCOUNTS = {POD_A: "payments", POD_B: "orders", POD_D: "reports"}


def spiffe(account: str) -> str:
    return f"spiffe://{TRUST}/ns/shop/sa/{account}"


CLIENT = f"""
clusters:
  - {{name: orders, endpoints: [10.79.0.2:8080], mtls: "{spiffe("orders")}"}}
  - {{name: passthrough, type: original_dst}}
listeners:
  - {{name: outbound, address: 0.0.0.0:15001, original_destination: true, direction: outbound, protocol: tcp,
     cluster: passthrough}}
  - name: orders_8080
    address: 10.79.0.2:8080
    bind: false
    direction: outbound
    routes: [{{match: /, cluster: orders}}]
"""

SERVER = f"""
clusters:
  - {{name: inbound_app, type: original_dst}}
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    original_destination: true
    direction: inbound
    mtls: strict
    forward_client_cert: sanitize_set
    client_cert_details: [uri]
    authz:
      policies:
        payments-only: {{from: [{{principal: "{TRUST}/ns/shop/sa/payments"}}]}}
    routes: [{{match: /, cluster: inbound_app}}]
"""


@dataclass
class Mesh:
    pods: Pods
    logs: Path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with pod_network(tmp_path_factory, "mtls-pods", NET, GATEWAY, IP) as (pods, logs):
        control_dir = logs / "control"
        for name, text in (("client", CLIENT), ("server", SERVER)):
            (control_dir / "node-cluster" / name).mkdir(parents=True)
            (control_dir / "node-cluster" / name / "config.yaml").write_text(text)
        tokens = logs / "tokens.yaml"
        tokens.write_text("tokens:\n" + "".join(
            f"  - {{token: {account}-token-0123456789, namespace: shop, service_account: {account}}}\n"
            for account in ACCOUNTS.values()))
        pods.start("control", NET, *MESHPY, "control", "--listen", f"{GATEWAY}:18000", "--admin",
                   "127.0.0.1:18001", "--meshpy-dir", str(control_dir), "--poll-interval", "0.2",
                   "--bootstrap-tokens", str(tokens), "--trust-domain", TRUST)
        pods.start("app-b", POD_B, *MESHPY, "demo-upstream", "--listen", "0.0.0.0:8080", "--name", "orders")
        for pod, cluster in ((POD_A, "client"), (POD_B, "server"), (POD_D, "client")):
            token = logs / f"{pod}.token"
            token.write_text(f"{ACCOUNTS[pod]}-token-0123456789")
            os.chmod(token, 0o644)  # read by the sidecar's group
            pods.sidecar(pod, cluster, f"{GATEWAY}:18000", "--identity", spiffe(ACCOUNTS[pod]),
                         "--ca-token", str(token))
        m = Mesh(pods, logs)
        pods.wait_ready(POD_A, POD_B, POD_D)
        eventually(lambda: curl(POD_A, "http://10.79.0.2:8080/")[0] == 200, "the first call gets through", 30)
        yield m


def test_the_allowed_identity_gets_through_and_the_app_sees_it(mesh: Mesh) -> None:
    status, body = curl(POD_A, "http://10.79.0.2:8080/who")
    assert status == 200, (body, mesh.pods.proxy_logs())
    headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    xfcc = headers["x-forwarded-client-cert"]
    assert f"URI={spiffe('payments')}" in xfcc and f"By={spiffe('orders')}" in xfcc, xfcc


def test_another_identity_is_denied(mesh: Mesh) -> None:
    status, body = curl(POD_D, "http://10.79.0.2:8080/who")
    assert (status, body) == (403, "RBAC: access denied"), mesh.pods.proxy_logs()


def test_a_pod_outside_the_mesh_is_refused(mesh: Mesh) -> None:
    status, body = curl(POD_E, "http://10.79.0.2:8080/who")
    assert status == 0, body  # plaintext to a STRICT port: no answer at all
    # The proxy of the server counted a handshake that was not one.
    done = in_ns(POD_B, "curl", "-s", "http://127.0.0.1:15000/stats/prometheus")
    failed = [line for line in done.stdout.splitlines()
              if line.startswith("meshpy_downstream_tls_failures_total") and '"connection_error"' in line]
    assert failed and float(failed[0].rsplit(" ", 1)[1]) >= 1, failed


def test_sidecars_hold_their_own_identities(mesh: Mesh) -> None:
    for pod, account in ACCOUNTS.items():
        done = in_ns(pod, "curl", "-s", "http://127.0.0.1:15000/certs")
        certs = json.loads(done.stdout)["certificates"]
        uris = {san["uri"] for c in certs for cert in c["cert_chain"] for san in cert["subject_alt_names"]
                if "uri" in san}
        assert uris == {spiffe(account)}, (pod, certs)
