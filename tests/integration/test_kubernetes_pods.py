"""Kubernetes Services to sidecars, end to end: "pods" as network namespaces on a bridge, each with
`meshpy iptables` and a meshpy sidecar following `meshpy control --kubernetes` over ADS, the control
plane watching a Kubernetes API (tests/kubeapi.py as a process) and serving, beside the Services'
clusters and listeners, exactly the intercepting listeners of the shipped ConfigMap
(config/kubernetes/control-plane.yaml, `mesh.yaml`).

    namespace net  (10.80.0.254, the bridge): the Kubernetes API on 127.0.0.1, the control plane
    namespace a    (10.80.0.1): curl, the client app; sidecar node-cluster "client"
    namespace b1   (10.80.0.2): demo app "b1" on :8080; sidecar node-cluster "orders"
    namespace b2   (10.80.0.3): demo app "b2" on :8080; sidecar node-cluster "orders"

Service shop/orders has the cluster IP 10.96.50.10, which is no pod's and which nothing routes: a call
from a to it gets anywhere only because a's sidecar intercepts it, finds the listener the Kubernetes
source made for 10.96.50.10:8080 and balances it over the ready endpoints of the Service's
EndpointSlice, through b1's or b2's inbound listener to the app. The test changes the slice and the
Service through the API and watches the calls follow. Skipped, with the reason, where the machine does
not allow namespaces or has no iptables.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kit import ROOT, eventually
from kubeapi import SERVICES, SLICES, write_kubeconfig
from kubeobjects import endpoint, endpoint_slice, service
from netns_pods import MESHPY, Pods, curl, in_ns, metric, pod_network, served_by

TAG = f"mk{os.getpid() % 100000}"
NET, POD_A, POD_B1, POD_B2 = f"{TAG}-net", f"{TAG}-a", f"{TAG}-b1", f"{TAG}-b2"
IP = {POD_A: "10.80.0.1", POD_B1: "10.80.0.2", POD_B2: "10.80.0.3"}
GATEWAY = "10.80.0.254"
KUBE_PORT = 16443  # the fake API, on 127.0.0.1 in the net namespace (the control plane's)
ORDERS_IP = "10.96.50.10"  # the Service's cluster IP: no pod's address, routed nowhere
URL = f"http://{ORDERS_IP}:8080/"
LISTENER = f"{ORDERS_IP}_8080"  # the listener the Kubernetes source makes for it
CLUSTER = "outbound|8080||orders.shop.svc.cluster.local"
MANIFEST = ROOT / "config" / "kubernetes" / "control-plane.yaml"
CALLS = 16


def shipped_mesh_yaml() -> str:
    """The ConfigMap's mesh.yaml, as the control plane's Deployment mounts it."""
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "meshpy-control-config":
            return str(doc["data"]["mesh.yaml"])
    raise AssertionError(f"no ConfigMap meshpy-control-config in {MANIFEST}")


def orders_service() -> dict[str, Any]:
    return service("orders", clusterIP=ORDERS_IP, clusterIPs=[ORDERS_IP])  # port 8080, named http


def orders_slice(b2_ready: bool = True) -> dict[str, Any]:
    return endpoint_slice("orders", [endpoint(IP[POD_B1]), endpoint(IP[POD_B2], ready=b2_ready)])


@dataclass
class Cluster:
    pods: Pods

    def kube(self, action: str, body: dict[str, Any]) -> None:
        """A change through the fake API's test port, from the net namespace (where it listens)."""
        done = in_ns(NET, "curl", "-s", "-S", "-f", "-m", "5", "-X", "POST", "-H",
                     "Content-Type: application/json", "--data-binary", json.dumps(body),
                     f"http://127.0.0.1:{KUBE_PORT}/_test/{action}", check=False)
        assert done.returncode == 0, f"{action}: {done.stderr}{done.stdout}"

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        self.kube("apply", {"kind": kind, "object": obj})

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.kube("delete", {"kind": kind, "namespace": namespace, "name": name})

    def calls(self, n: int = CALLS, *args: str) -> Counter[tuple[int, str]]:
        """(status, app) of n calls from pod a to the cluster IP."""
        return Counter((status, served_by(body)) for status, body in (curl(POD_A, URL, *args)
                                                                      for _ in range(n)))

    def inbound(self) -> dict[str, float]:
        """Requests each server pod's inbound listener has handled."""
        return {pod: metric(pod, "meshpy_downstream_rq_total", listener="inbound")
                for pod in (POD_B1, POD_B2)}

    def hosts(self) -> list[str]:
        """The hosts a's sidecar has for the Service's cluster."""
        view = json.loads(in_ns(POD_A, "curl", "-s", "-m", "5", "http://127.0.0.1:15000/clusters").stdout)
        return sorted(ep["address"] for c in view["clusters"] if c["name"] == CLUSTER
                      for ep in c["endpoints"])

    def listeners(self) -> list[str]:
        dump = json.loads(in_ns(POD_A, "curl", "-s", "-m", "5", "http://127.0.0.1:15000/config_dump").stdout)
        return [lis["name"] for lis in dump["config"]["listeners"]]


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with pod_network(tmp_path_factory, "kubepods", NET, GATEWAY, IP) as (pods, logs):
        control_dir = logs / "control"
        control_dir.mkdir()
        (control_dir / "mesh.yaml").write_text(shipped_mesh_yaml())
        objects = [{"kind": SERVICES, "object": orders_service()}, {"kind": SLICES, "object": orders_slice()}]
        kubeconfig = write_kubeconfig(logs / "kubeconfig", KUBE_PORT)
        pods.kube_api(NET, KUBE_PORT, objects)
        pods.start("control", NET, *MESHPY, "control", "--kubernetes", "--kubeconfig", str(kubeconfig),
                   "--meshpy-dir", str(control_dir), "--listen", f"{GATEWAY}:18000", "--admin",
                   "127.0.0.1:18001", "--poll-interval", "0.2")
        for pod, name in ((POD_B1, "b1"), (POD_B2, "b2")):
            pods.start(name, pod, *MESHPY, "demo-upstream", "--listen", "0.0.0.0:8080", "--name", name)
        for pod, node_cluster in ((POD_A, "client"), (POD_B1, "orders"), (POD_B2, "orders")):
            pods.sidecar(pod, node_cluster, f"{GATEWAY}:18000")
        pods.wait_ready(POD_A, POD_B1, POD_B2, timeout=30)
        c = Cluster(pods)
        eventually(lambda: curl(POD_A, URL, timeout=2)[0] == 200, "the first call gets through", 20)
        yield c


def test_the_cluster_ip_is_balanced_over_the_slice(k8s: Cluster) -> None:
    def connections() -> dict[str, float]:
        return {lis: metric(POD_A, "meshpy_downstream_cx_total", listener=lis)
                for lis in ("outbound", LISTENER)}

    before_a = metric(POD_A, "meshpy_downstream_rq_total", listener=LISTENER)
    before_cx = connections()
    before_cluster = metric(POD_A, "meshpy_upstream_rq_total", cluster=CLUSTER)
    before_b = k8s.inbound()
    seen = k8s.calls()
    assert set(seen) == {(200, "b1"), (200, "b2")}, (seen, k8s.pods.proxy_logs())
    # a's sidecar served every call on the Service's listener, to the Service's cluster: the outbound
    # listener intercepted each connection and handed it over by its original destination ...
    assert {lis: n - before_cx[lis] for lis, n in connections().items()} == {"outbound": 0, LISTENER: CALLS}
    assert metric(POD_A, "meshpy_downstream_rq_total", listener=LISTENER) == before_a + CALLS
    assert metric(POD_A, "meshpy_upstream_rq_total", cluster=CLUSTER) == before_cluster + CALLS
    # ... and each call went through the inbound listener of the pod whose app answered it.
    after_b = k8s.inbound()
    assert after_b[POD_B1] - before_b[POD_B1] == seen[(200, "b1")]
    assert after_b[POD_B2] - before_b[POD_B2] == seen[(200, "b2")]
    assert k8s.hosts() == [f"{IP[POD_B1]}:8080", f"{IP[POD_B2]}:8080"]


def test_the_generated_routes_match_the_service_host_names(k8s: Cluster) -> None:
    for host in ("orders.shop.svc.cluster.local", "orders.shop:8080", "orders"):
        status, body = curl(POD_A, URL, "-H", f"Host: {host}")
        assert (status, served_by(body) in ("b1", "b2")) == (200, True), (host, body)
    # A Host the Service does not have matches no virtual host: answered by a's sidecar, no pod reached.
    before_b = k8s.inbound()
    status, _ = curl(POD_A, URL, "-H", "Host: payments.shop.svc.cluster.local")
    assert status == 404
    assert k8s.inbound() == before_b


def test_an_endpoint_marked_not_ready_gets_no_more_calls(k8s: Cluster) -> None:
    k8s.apply(SLICES, orders_slice(b2_ready=False))
    try:
        eventually(lambda: k8s.hosts() == [f"{IP[POD_B1]}:8080"], "b2 leaves a's cluster", 20)
        before_b = k8s.inbound()
        assert k8s.calls() == Counter({(200, "b1"): CALLS})
        assert k8s.inbound()[POD_B2] == before_b[POD_B2]
    finally:
        k8s.apply(SLICES, orders_slice())
    eventually(lambda: set(k8s.calls()) == {(200, "b1"), (200, "b2")}, "b2 serves again when ready", 20)


def test_a_deleted_service_is_no_longer_reached(k8s: Cluster) -> None:
    assert LISTENER in k8s.listeners()
    k8s.delete(SERVICES, "shop", "orders")
    try:
        eventually(lambda: LISTENER not in k8s.listeners(), "the Service's listener leaves a's sidecar", 20)
        assert k8s.hosts() == []  # and its cluster
        before_b = k8s.inbound()
        before_outbound = metric(POD_A, "meshpy_downstream_cx_total", listener="outbound")
        # Now the outbound listener's passthrough dials 10.96.50.10 itself, which nothing answers.
        status, body = curl(POD_A, URL, timeout=2)
        assert status != 200 and served_by(body) == "", (status, body)
        assert k8s.inbound() == before_b
        # a's sidecar took the call on its outbound listener, which kept it: no listener has that address.
        assert metric(POD_A, "meshpy_downstream_cx_total", listener="outbound") == before_outbound + 1
    finally:
        k8s.apply(SERVICES, orders_service())
    eventually(lambda: curl(POD_A, URL, timeout=2)[0] == 200, "the Service back, calls get through", 20)
