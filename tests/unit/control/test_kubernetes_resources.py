"""Services and EndpointSlices -> clusters and assignments (what meshpy's own translator then accepts),
a meshpy directory whose routes name Kubernetes clusters, and how the two are published together."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
from kubeobjects import RECORDED_SERVICE, RECORDED_SLICE, endpoint, endpoint_slice, service

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache
from control.server import Publisher
from control.sources.envoy_dir import SourceError
from control.sources.kubernetes_meshpy import meshpy_dir_beside_kubernetes
from control.sources.kubernetes_resources import speaks_http2, translate
from meshpy.xds.translate import cluster_from_proto, endpoints_from_cla

ORDERS = "outbound|8080||orders.shop.svc.cluster.local"


def hosts(resources: dict[str, dict[str, Any]], name: str) -> list[str]:
    return [f"{e.address.host}:{e.address.port}" for e in endpoints_from_cla(resources[ENDPOINT][name])]


def test_recorded_objects_make_one_eds_cluster_that_meshpy_accepts() -> None:
    out = translate([RECORDED_SERVICE], [RECORDED_SLICE], "cluster.local")
    assert list(out.resources[CLUSTER]) == [ORDERS] and list(out.resources[ENDPOINT]) == [ORDERS]
    cla = out.resources[ENDPOINT][ORDERS]
    [zone] = cla.endpoints
    assert (zone.locality.zone, zone.load_balancing_weight.value) == ("eu-west-1a", 1)
    model = cluster_from_proto(out.resources[CLUSTER][ORDERS], "c", {ORDERS: endpoints_from_cla(cla)})
    assert model.protocol == "http1"
    assert [f"{e.address.host}:{e.address.port}" for e in model.endpoints] == ["10.244.1.17:8080"]
    assert out.skipped == ()


def test_not_ready_endpoints_are_left_out_and_unknown_readiness_counts_as_ready() -> None:
    s = endpoint_slice("orders", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False),
                                  endpoint("10.0.0.3", ready=None)])
    out = translate([service("orders")], [s], "cluster.local")
    assert hosts(out.resources, ORDERS) == ["10.0.0.1:8080", "10.0.0.3:8080"]


def test_service_ports_meet_slice_ports_by_name() -> None:
    svc = service("orders", ports=[
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
        {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9100}])
    s = endpoint_slice("orders", [endpoint("10.0.0.1")], ports=[
        {"name": "metrics", "port": 9100, "protocol": "TCP"},
        {"name": "http", "port": 8081, "protocol": "TCP"}])
    out = translate([svc], [s], "cluster.local")
    assert hosts(out.resources, "outbound|80||orders.shop.svc.cluster.local") == ["10.0.0.1:8081"]
    assert hosts(out.resources, "outbound|9090||orders.shop.svc.cluster.local") == ["10.0.0.1:9100"]


def test_slices_of_one_service_join_and_a_pod_in_two_counts_once() -> None:
    a = endpoint_slice("orders", [endpoint("10.0.0.1"), endpoint("10.0.0.2", zone="b")], name="orders-1")
    b = endpoint_slice("orders", [endpoint("10.0.0.2", zone="b"), endpoint("10.0.0.3")], name="orders-2")
    other_ns = endpoint_slice("orders", [endpoint("10.9.9.9")], namespace="staging")
    other_svc = endpoint_slice("billing", [endpoint("10.8.8.8")])
    fqdn = endpoint_slice("orders", [endpoint("orders.example.com")], name="orders-3", address_type="FQDN")
    out = translate([service("orders")], [a, b, other_ns, other_svc, fqdn], "cluster.local")
    assert hosts(out.resources, ORDERS) == ["10.0.0.2:8080", "10.0.0.1:8080", "10.0.0.3:8080"]  # zone b first
    groups = out.resources[ENDPOINT][ORDERS].endpoints
    zones = {g.locality.zone: g.load_balancing_weight.value for g in groups}
    assert zones == {"eu-west-1a": 2, "b": 1}


def test_the_result_does_not_depend_on_the_order_objects_arrive_in() -> None:
    services = [service(f"s{i}") for i in range(5)]
    slices = [endpoint_slice(f"s{i}", [endpoint(f"10.0.{i}.{j}") for j in range(3)], name=f"s{i}-{k}")
              for i in range(5) for k in range(2)]
    first = translate(services, slices, "cluster.local").resources
    random.Random(7).shuffle(services)
    random.Random(8).shuffle(slices)
    assert translate(services, slices, "cluster.local").resources == first


@pytest.mark.parametrize(("port", "http2"), [
    ({"name": "web", "appProtocol": "grpc"}, True),
    ({"name": "web", "appProtocol": "kubernetes.io/h2c"}, True),
    ({"name": "web", "appProtocol": "HTTP2"}, True),
    ({"name": "grpc-api"}, True),
    ({"name": "http2"}, True),
    ({"name": "http"}, False),
    ({"name": "grpcish"}, False),
    ({"name": "grpc-api", "appProtocol": "http"}, True),  # Istio's name prefix holds with any appProtocol
    ({}, False),
])
def test_http2_is_read_from_app_protocol_and_port_name(port: dict[str, Any], http2: bool) -> None:
    assert speaks_http2(port) is http2


def test_an_http2_cluster_is_http2_for_meshpy_too() -> None:
    svc = service("orders", ports=[{"name": "api", "port": 8080, "protocol": "TCP", "appProtocol": "grpc"}])
    s = endpoint_slice("orders", [endpoint("10.0.0.1")], ports=[{"name": "api", "port": 50051}])
    out = translate([svc], [s], "cluster.local").resources
    model = cluster_from_proto(out[CLUSTER][ORDERS], "c", {ORDERS: endpoints_from_cla(out[ENDPOINT][ORDERS])})
    assert model.protocol == "http2"
    assert [e.address.port for e in model.endpoints] == [50051]


def test_headless_and_selectorless_services_are_served_external_names_and_udp_are_not() -> None:
    headless = service("db", clusterIP="None", clusterIPs=["None"])
    manual = service("legacy")
    del manual["spec"]["selector"]
    manual_slice = endpoint_slice("legacy", [endpoint("192.168.7.7")], name="legacy-manual")
    del manual_slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
    external = service("mail", type="ExternalName", externalName="smtp.example.com")
    dns = service("dns", ports=[{"name": "dns", "port": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    out = translate([headless, manual, external, dns],
                    [endpoint_slice("db", [endpoint("10.0.0.5")]), manual_slice], "corp.internal")
    assert sorted(out.resources[CLUSTER]) == ["outbound|53||dns.shop.svc.corp.internal",
                                              "outbound|8080||db.shop.svc.corp.internal",
                                              "outbound|8080||legacy.shop.svc.corp.internal"]
    assert hosts(out.resources, "outbound|8080||db.shop.svc.corp.internal") == ["10.0.0.5:8080"]
    assert hosts(out.resources, "outbound|8080||legacy.shop.svc.corp.internal") == ["192.168.7.7:8080"]
    assert hosts(out.resources, "outbound|53||dns.shop.svc.corp.internal") == []
    assert out.skipped == ("service shop/dns port 53/UDP: only TCP is served",
                           "service shop/mail: type ExternalName (a DNS alias) is not served")


LISTENER_YAML = """
listeners:
  - name: web
    address: 127.0.0.1:10555
    routes:
      - match: /
        cluster: "{cluster}"
"""


def test_a_meshpy_directory_may_route_to_kubernetes_clusters_only(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(LISTENER_YAML.format(cluster=ORDERS))
    load = meshpy_dir_beside_kubernetes("cluster.local")
    out = load(tmp_path, None)
    assert list(out[LISTENER]) == ["web"] and out[CLUSTER] == {} and out[ENDPOINT] == {}
    (tmp_path / "web.yaml").write_text(LISTENER_YAML.format(cluster="orders"))
    with pytest.raises(SourceError, match="unknown cluster 'orders'"):
        load(tmp_path, None)
    (tmp_path / "web.yaml").write_text(LISTENER_YAML.format(cluster=ORDERS.replace("cluster.local", "x.y")))
    with pytest.raises(SourceError, match="unknown cluster"):
        load(tmp_path, None)


def test_directory_and_kubernetes_publish_together_and_the_directory_wins_a_clash(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "web.yaml").write_text(LISTENER_YAML.format(cluster=ORDERS))
    cache = SnapshotCache()
    publisher = Publisher(cache, kubernetes=True)
    loader = meshpy_dir_beside_kubernetes("cluster.local")
    assert publisher.load_directory(tmp_path, loader)
    assert not cache.ready  # nothing until Kubernetes has listed: routes would name missing clusters
    publisher.kubernetes(translate([], [], "cluster.local").resources)
    assert not cache.ready  # the route names a Service that does not exist
    kube = translate([service("orders")], [endpoint_slice("orders", [endpoint("10.0.0.1")])], "cluster.local")
    publisher.kubernetes(kube.resources)
    snap = cache.get("any")
    assert snap is not None and set(snap.of(CLUSTER)) == {ORDERS}
    assert set(snap.of(ROUTE)) == {"web", *kube.resources[ROUTE]}  # the directory's and the Service's
    # A directory version that routes elsewhere too is held back, the last one keeps serving with new
    # endpoints, and the held one goes out when Kubernetes brings the cluster it needs.
    (tmp_path / "web.yaml").write_text(LISTENER_YAML.format(cluster=ORDERS.replace("orders", "billing")))
    assert not publisher.load_directory(tmp_path, loader)
    kube = translate([service("orders")], [endpoint_slice("orders", [endpoint("10.0.0.2")])], "cluster.local")
    publisher.kubernetes(kube.resources)
    snap = cache.get("any")
    assert snap is not None and hosts(dict(snap.resources), ORDERS) == ["10.0.0.2:8080"]
    assert "billing" not in str(snap.of(ROUTE)["web"])
    both = translate([service("orders"), service("billing")], [], "cluster.local")
    publisher.kubernetes(both.resources)
    snap = cache.get("any")
    assert snap is not None and "billing" in str(snap.of(ROUTE)["web"])
    # Same name in both: the directory's cluster (here: a static one with its own endpoint) is served.
    (tmp_path / "web.yaml").write_text(LISTENER_YAML.format(cluster=ORDERS) + f"""
clusters:
  - name: "{ORDERS}"
    endpoints: ["127.0.0.9:7000"]
""")
    with caplog.at_level(logging.INFO, logger="meshpy.control"):
        assert publisher.load_directory(tmp_path, loader)
    snap = cache.get("any")
    assert snap is not None and hosts(dict(snap.resources), ORDERS) == ["127.0.0.9:7000"]
    assert f"the directory's Cluster '{ORDERS}' replaces the one from Kubernetes" in caplog.text


@pytest.mark.parametrize("mode", ["strict", "permissive", "STRICT"])
def test_services_that_take_mutual_tls_are_called_over_it(mode: str) -> None:
    """A Service annotated as taking mutual TLS is called with the caller's mesh identity (the SDS
    secrets default and ROOTCA), and the service account it names must answer (a SAN matcher)."""
    svc = service("orders")
    svc["metadata"]["annotations"] = {"security.meshpy.io/mtls": mode,
                                      "security.meshpy.io/serviceAccount": "orders-sa"}
    out = translate([svc], [endpoint_slice("orders", [endpoint("10.0.0.1")])], "cluster.local",
                    trust_domain="mesh.example")
    model = cluster_from_proto(out.resources[CLUSTER][ORDERS], "c", {ORDERS: ()})
    assert model.tls is not None and model.tls.certificate is not None
    assert model.tls.certificate.secret == "default"
    assert model.tls.validation is not None and model.tls.validation.ca_secret == "ROOTCA"
    assert [s.match.value for s in model.tls.validation.san] == ["spiffe://mesh.example/ns/shop/sa/orders-sa"]


def test_services_without_mutual_tls_or_with_a_bad_mode() -> None:
    plain = translate([service("orders")], [], "cluster.local")
    assert not plain.resources[CLUSTER][ORDERS].HasField("transport_socket")
    svc = service("orders")
    svc["metadata"]["annotations"] = {"security.meshpy.io/mtls": "sometimes"}
    out = translate([svc], [], "cluster.local")
    assert not out.resources[CLUSTER][ORDERS].HasField("transport_socket")
    assert out.skipped == ("service shop/orders: security.meshpy.io/mtls must be strict, permissive or "
                           "disable, not 'sometimes': called in the clear",)
