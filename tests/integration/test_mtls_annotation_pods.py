"""A pod's inbound mTLS mode from nothing but an annotation on its Service: network-namespace pods with
meshpy sidecars following `meshpy control --kubernetes`, beside the shipped ConfigMap's listeners (whose
plaintext `inbound` every node gets), each sidecar's identity from the control plane's CA, proved by a
token that the (fake) Kubernetes API's TokenReview knows:

    namespace net (10.82.0.254): the Kubernetes API on 127.0.0.1, the control plane and CA
    namespace a   (10.82.0.1): the payments app (curl) and its sidecar, node payments-1.shop (.../sa/payments)
    namespace b   (10.82.0.2): the orders app (:8080) and its sidecar, node orders-1.shop (.../sa/orders)
    namespace b2  (10.82.0.3): the orders app (:8080) and an unmodified Envoy as its sidecar, node
                               orders-2.shop (its key pair from the control plane over SDS), when Envoy
                               is installed
    namespace e   (10.82.0.5): a pod outside the mesh (curl, no sidecar)

b's sidecar is set up as `meshpy inject` sets up the orders Pod's (its probe port excluded from capture,
the app's original probes in MESHPY_APP_PROBES): the node (the net namespace) probes it as the kubelet
would probe the rewritten probes, while its plaintext calls to the app's port are refused.

Service shop/orders (cluster IP 10.96.61.10, no pod's address) selects app=orders and says
`security.meshpy.io/mtls: strict`. Nothing else says how b takes its calls: the control plane generates
the inbound listener of b (and b2) from the annotation, and a's sidecar calls it over mutual TLS,
expecting the service account the API's Pods orders-1 and orders-2 (b and b2) say. The outside pod is
refused; a gets through and the app sees a's SPIFFE ID in x-forwarded-client-cert. The annotation turns
permissive, then disable, through the API, and the Pods say another account: the control plane pushes
and the pods follow, nothing restarted. Skipped where namespaces or iptables are not available.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import envoy_binary, eventually
from kubeapi import PODS, SERVICES, SLICES, write_kubeconfig
from kubeobjects import endpoint, endpoint_slice, service
from kubeobjects import pod as pod_object
from netns_pods import MESHPY, PROXY_GID, Pods, curl, in_ns, metric, pod_network, served_by
from test_kubernetes_pods import shipped_mesh_yaml

from meshpy.sidecar.inject import InjectOptions, inject_text

TAG = f"ma{os.getpid() % 100000}"
NET, POD_A, POD_B, POD_B2, POD_E = (f"{TAG}-{x}" for x in ("net", "a", "b", "b2", "e"))
ENVOY = envoy_binary()
IP = {POD_A: "10.82.0.1", POD_B: "10.82.0.2", **({POD_B2: "10.82.0.3"} if ENVOY else {}), POD_E: "10.82.0.5"}
GATEWAY = "10.82.0.254"
KUBE_PORT = 16444
TRUST = "mesh.test"
ORDERS_IP = "10.96.61.10"
VIA_SERVICE = f"http://{ORDERS_IP}:8080/who"
TO_POD = f"http://{IP[POD_B]}:8080/who"
TO_ENVOY_POD = "http://10.82.0.3:8080/who"
NODES = {POD_A: ("payments-1.shop", "payments"), POD_B: ("orders-1.shop", "orders")}
# The Pods in the API (name, address); b2's only when Envoy runs it. a's is there as in a cluster, in
# no Service's slice.
API_PODS = {POD_A: ("payments-1", IP[POD_A]), POD_B: ("orders-1", IP[POD_B]),
            **({POD_B2: ("orders-2", IP[POD_B2])} if ENVOY else {})}
ADS = {"ads": {}, "resource_api_version": "V3"}
MTLS = "security.meshpy.io/mtls"
ORDERS_CLUSTER = "outbound|8080||orders.shop.svc.cluster.local"


def spiffe(account: str) -> str:
    return f"spiffe://{TRUST}/ns/shop/sa/{account}"


def orders_service(mode: str | None, account: str | None = None) -> dict[str, Any]:
    """The Service; its callers expect its pods' accounts unless `account` names one."""
    svc = service("orders", clusterIP=ORDERS_IP, clusterIPs=[ORDERS_IP])  # port 8080 named http, app=orders
    annotations = svc["metadata"]["annotations"]
    if account is not None:
        annotations["security.meshpy.io/serviceAccount"] = account
    if mode is not None:
        annotations[MTLS] = mode
    return svc


def orders_pods(account: str) -> list[dict[str, Any]]:
    """The Pods of the Service's endpoints (b, and b2), as the API says they run."""
    return [pod_object(name, ip, account) for p, (name, ip) in API_PODS.items() if p != POD_A]


def injected_probes() -> dict[str, Any]:
    """What `meshpy inject` gives the orders Pod's sidecar for the app's probes: a readiness probe of the
    app's named port, and a liveness probe of a port nothing listens on. Its `meshpy-init` args (for the
    ports left uncaptured) and its proxy's env."""
    app = {"name": "orders", "image": "orders:1", "ports": [{"name": "http", "containerPort": 8080}],
           "readinessProbe": {"httpGet": {"path": "/hello", "port": "http"}},
           "livenessProbe": {"tcpSocket": {"port": 9100}, "timeoutSeconds": 2}}
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orders-1", "namespace": "shop"},
                "spec": {"containers": [app]}}
    injected = yaml.safe_load(inject_text(yaml.safe_dump(manifest), InjectOptions(image="meshpy")).text)
    init, proxy = injected["spec"]["initContainers"]
    args = init["args"]
    return {"exclude_inbound": args[args.index("--exclude-inbound-ports") + 1],
            "env": {e["name"]: e["value"] for e in proxy["env"] if "value" in e}}


def san_failures() -> float:
    """a's sidecar's handshakes with the Service's pods refused for the server's SAN."""
    return metric(POD_A, "meshpy_upstream_tls_failures_total", cluster=ORDERS_CLUSTER,
                  reason="fail_verify_san")


def xfcc(body: str) -> str | None:
    """The x-forwarded-client-cert the demo app saw (its JSON echo of the request)."""
    headers = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    return headers.get("x-forwarded-client-cert")


def envoy_bootstrap(token: str) -> dict[str, Any]:
    """An Envoy sidecar that gets everything over ADS, its identity's secrets included (proved by the
    pod's token), as the node meshpy inject would name it."""
    http2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    return {
        "node": {"id": "orders-2.shop", "cluster": "orders"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{
                "envoy_grpc": {"cluster_name": "xds"},
                "initial_metadata": [{"key": "authorization", "value": f"Bearer {token}"}]}]},
            "lds_config": ADS, "cds_config": ADS},
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": http2,
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": GATEWAY, "port_value": 18000}}}}]}]}}]},
    }


def start_envoy(pods: Pods, logs: Path, token: str) -> None:
    """b2's interception rules, then Envoy in the proxy's group (which the rules let through)."""
    assert ENVOY is not None
    in_ns(POD_B2, *MESHPY, "iptables", "--proxy-gid", str(PROXY_GID), "--exclude-inbound-ports", "15000")
    bootstrap = logs / "envoy.json"
    bootstrap.write_text(json.dumps(envoy_bootstrap(token)))
    pods.start("envoy-b2", POD_B2, ENVOY, "-c", str(bootstrap), "--disable-hot-restart", "--concurrency", "1",
               "-l", "info", gid=PROXY_GID)


def envoy_serves_inbound() -> bool:
    done = in_ns(POD_B2, "curl", "-s", "-m", "2", "http://127.0.0.1:15000/listeners", check=False)
    certs = in_ns(POD_B2, "curl", "-s", "-m", "2", "http://127.0.0.1:15000/certs", check=False)
    return "virtualInbound::0.0.0.0:15006" in done.stdout and spiffe("orders") in certs.stdout


def call_reaching(app: str) -> tuple[int, str]:
    """A call of a's app to the Service that the app `app` answered (the Service balances over b and b2)."""
    for _ in range(20):
        status, body = curl(POD_A, VIA_SERVICE, timeout=2)
        if served_by(body) == app:
            return status, body
    return 0, ""


def plaintext_call() -> bool:
    """a's call reached the app and carried no client certificate: it came in the clear."""
    status, body = curl(POD_A, VIA_SERVICE, timeout=2)
    return status == 200 and xfcc(body) is None


@dataclass
class Mesh:
    pods: Pods

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        """An object changes through the API (from the net namespace, where it listens)."""
        body = json.dumps({"kind": kind, "object": obj})
        done = in_ns(NET, "curl", "-s", "-S", "-f", "-m", "5", "-X", "POST", "-H",
                     "Content-Type: application/json", "--data-binary", body,
                     f"http://127.0.0.1:{KUBE_PORT}/_test/apply", check=False)
        assert done.returncode == 0, done.stderr

    def mode(self, mode: str | None, account: str | None = None) -> None:
        self.apply(SERVICES, orders_service(mode, account))

    def pods_run_as(self, account: str) -> None:
        for p in orders_pods(account):
            self.apply(PODS, p)

    def listeners(self, pod: str) -> list[str]:
        dump = json.loads(in_ns(pod, "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump").stdout)
        return sorted(lis["name"] for lis in dump["config"]["listeners"])

    def logs(self) -> str:
        return self.pods.proxy_logs()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with pod_network(tmp_path_factory, "mtls-annotation", NET, GATEWAY, IP) as (pods, logs):
        control_dir = logs / "control"
        control_dir.mkdir()
        (control_dir / "mesh.yaml").write_text(shipped_mesh_yaml())  # no word of mTLS in it
        slice_ = endpoint_slice("orders", [endpoint(ip, pod=name) for p, (name, ip) in API_PODS.items()
                                           if p != POD_A])
        objects = [{"kind": SERVICES, "object": orders_service("strict")}, {"kind": SLICES, "object": slice_},
                   *({"kind": PODS, "object": p} for p in [pod_object("payments-1", IP[POD_A], "payments"),
                                                           *orders_pods("orders")])]
        api = pods.kube_api(NET, KUBE_PORT, objects)
        for pod, (_, account) in (*NODES.items(), (POD_B2, ("", "orders"))):
            token = logs / f"{pod}.token"
            token.write_text(f"{account}-projected-token")
            os.chmod(token, 0o644)  # read by the sidecar's group
            body = json.dumps({"token": token.read_text(), "namespace": "shop", "service_account": account})
            in_ns(NET, "curl", "-s", "-S", "-f", "-m", "5", "-X", "POST", "--data-binary", body,
                  f"{api}/_test/token")
        kubeconfig = write_kubeconfig(logs / "kubeconfig", KUBE_PORT)
        pods.start("control", NET, *MESHPY, "control", "--kubernetes", "--kubeconfig", str(kubeconfig),
                   "--meshpy-dir", str(control_dir), "--listen", f"{GATEWAY}:18000", "--admin",
                   "127.0.0.1:18001", "--poll-interval", "0.2", "--trust-domain", TRUST)
        pods.start("app-b", POD_B, *MESHPY, "demo-upstream", "--listen", "0.0.0.0:8080", "--name", "orders")
        if ENVOY is not None:
            pods.start("app-b2", POD_B2, *MESHPY, "demo-upstream", "--listen", "0.0.0.0:8080", "--name",
                       "orders-2")
            start_envoy(pods, logs, (logs / f"{POD_B2}.token").read_text())
        for pod, (node_id, account) in NODES.items():
            pods.sidecar(pod, account, f"{GATEWAY}:18000", "--identity", spiffe(account), "--ca-token",
                         str(logs / f"{pod}.token"), node_id=node_id,
                         **(injected_probes() if pod == POD_B else {}))
        pods.wait_ready(*NODES)
        eventually(lambda: curl(POD_A, VIA_SERVICE, timeout=2)[0] == 200, "the first call gets through", 30)
        if ENVOY is not None:
            eventually(envoy_serves_inbound, "Envoy serves the generated listener with its identity", 30)
        yield Mesh(pods)


def test_strict_from_the_annotation_lets_the_meshed_caller_in_and_tells_the_app_who_it_is(
        mesh: Mesh) -> None:
    # b's sidecar has the generated listener in place of every node's plaintext one; a's keeps that one.
    assert "virtualInbound" in mesh.listeners(POD_B) and "inbound" not in mesh.listeners(POD_B)
    assert "inbound" in mesh.listeners(POD_A) and "virtualInbound" not in mesh.listeners(POD_A)
    status, body = curl(POD_A, VIA_SERVICE, "-H", "x-forwarded-client-cert: URI=spiffe://forged/sa/admin")
    assert status == 200, (body, mesh.logs())
    seen = xfcc(body)
    # The caller's own certificate, checked by b's sidecar, and b's own identity; the header a's app
    # wrote itself is not passed on as such.
    assert seen is not None and f"URI={spiffe('payments')}" in seen and f"By={spiffe('orders')}" in seen, seen
    assert "forged" not in seen


@pytest.mark.skipif(ENVOY is None, reason="envoy is not installed")
def test_an_envoy_sidecar_takes_the_same_listener(mesh: Mesh) -> None:
    """The same generated listener, served by Envoy with the key pair the control plane sent it: the
    meshed caller is let in and named to the app, the outside pod refused; permissive lets it in."""
    status, body = call_reaching("orders-2")
    assert status == 200, (body, mesh.logs())
    seen = xfcc(body)
    assert seen is not None and f"URI={spiffe('payments')}" in seen and f"By={spiffe('orders')}" in seen, seen
    assert curl(POD_E, TO_ENVOY_POD)[0] == 0
    mesh.mode("permissive")
    try:
        eventually(lambda: curl(POD_E, TO_ENVOY_POD, timeout=2)[0] == 200, "Envoy lets plaintext in", 20)
        status, body = curl(POD_E, TO_ENVOY_POD, "-H", "x-forwarded-client-cert: URI=spiffe://forged/sa/x")
        assert status == 200 and xfcc(body) is None, body
    finally:
        mesh.mode("strict")
    eventually(lambda: curl(POD_E, TO_ENVOY_POD, timeout=2)[0] == 0, "strict again: Envoy refuses", 20)


def test_the_caller_expects_the_service_account_the_services_pods_run_as(mesh: Mesh) -> None:
    """Nothing names the server's identity but the Pods in the API. When they say another account than
    the one the sidecars serving the Service prove (as a workload running as `orders` would look to the
    callers of a Service whose pods run as `payments`), a's sidecar refuses them: 503, and the cluster's
    fail_verify_san counts it. The annotation naming `orders` lets the calls through again, and so do the
    Pods saying `orders` once more without it."""
    before = san_failures()
    mesh.pods_run_as("payments")
    try:
        eventually(lambda: curl(POD_A, VIA_SERVICE, timeout=2)[0] == 503, "a refuses the Service's pods", 20)
        assert san_failures() > before, mesh.logs()
        mesh.mode("strict", account="orders")
        eventually(lambda: curl(POD_A, VIA_SERVICE, timeout=2)[0] == 200, "the annotation overrides", 20)
    finally:
        mesh.pods_run_as("orders")
        mesh.mode("strict")
    eventually(lambda: curl(POD_A, VIA_SERVICE, timeout=2)[0] == 200, "the pods' account is b's again", 20)
    refused = san_failures()
    assert [curl(POD_A, VIA_SERVICE, timeout=2)[0] for _ in range(5)] == [200] * 5
    assert san_failures() == refused


def test_the_kubelets_probes_reach_a_strict_pod_through_its_probe_port(mesh: Mesh) -> None:
    """The node (the net namespace, the pods' gateway) plays the kubelet: the rewritten probes reach b's
    sidecar uncaptured, which makes the original checks of the app inside the pod (its connection to
    127.0.0.1 is its group's, which the rules let through); the node's plaintext call of the app's own
    port is refused, as anyone's is under strict."""
    probe_port = f"http://{IP[POD_B]}:15021"
    assert curl(NET, f"{probe_port}/app-health/orders/readyz") == (200, "the app answered 200\n"), mesh.logs()
    status, body = curl(NET, f"{probe_port}/app-health/orders/livez")
    assert status == 503 and "127.0.0.1:9100: Connection refused" in body, body
    assert curl(NET, f"{probe_port}/stats/prometheus")[0] == 404  # nothing but the probes there
    assert curl(NET, TO_POD)[0] == 0


def test_strict_refuses_a_pod_outside_the_mesh(mesh: Mesh) -> None:
    before = metric(POD_B, "meshpy_downstream_cx_no_chain_match_total", listener="virtualInbound")
    status, body = curl(POD_E, TO_POD)
    assert status == 0, body  # plaintext to a STRICT pod: closed without an answer
    assert metric(POD_B, "meshpy_downstream_cx_no_chain_match_total", listener="virtualInbound") > before


def test_permissive_lets_plaintext_in_without_a_restart_and_mtls_stays(mesh: Mesh) -> None:
    mesh.mode("permissive")
    try:
        eventually(lambda: curl(POD_E, TO_POD, timeout=2)[0] == 200, "the outside pod gets through", 20)
        status, body = curl(POD_E, TO_POD, "-H", "x-forwarded-client-cert: URI=spiffe://forged/sa/admin")
        assert status == 200 and xfcc(body) is None, body  # a plaintext caller proves no one
        status, body = curl(POD_A, VIA_SERVICE)
        seen = xfcc(body)
        assert status == 200 and seen is not None and f"URI={spiffe('payments')}" in seen, body
    finally:
        mesh.mode("strict")
    eventually(lambda: curl(POD_E, TO_POD, timeout=2)[0] == 0, "strict again: the outside pod refused", 20)


def test_disable_takes_plaintext_and_callers_send_it(mesh: Mesh) -> None:
    mesh.mode("disable")
    try:
        eventually(lambda: curl(POD_E, TO_POD, timeout=2)[0] == 200, "the outside pod gets through", 20)
        # a's sidecar follows too: its cluster for the Service no longer originates TLS.
        eventually(plaintext_call, "a's calls arrive in plaintext", 20)
    finally:
        mesh.mode("strict")
    eventually(lambda: curl(POD_E, TO_POD, timeout=2)[0] == 0, "strict again: the outside pod refused", 20)
    assert curl(POD_A, VIA_SERVICE)[0] == 200


def test_without_the_annotation_the_pod_gets_every_nodes_listener_back(mesh: Mesh) -> None:
    mesh.mode(None)
    try:
        eventually(lambda: "inbound" in mesh.listeners(POD_B), "b's generated listener leaves", 20)
        assert "virtualInbound" not in mesh.listeners(POD_B)
        assert curl(POD_E, TO_POD, timeout=2)[0] == 200  # the shipped listener: plaintext
    finally:
        mesh.mode("strict")
    eventually(lambda: curl(POD_E, TO_POD, timeout=2)[0] == 0, "strict again: the outside pod refused", 20)
