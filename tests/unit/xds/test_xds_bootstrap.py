"""An Envoy bootstrap's dynamic_resources read into the model's XdsSource, and the short form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xds_world
from xds_world import ENVOY_GRPC

from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.xds.bootstrap import short_form

LOCAL = """
  - name: local
    load_assignment:
      cluster_name: local
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } }
"""


def bootstrap(api_type: str = "GRPC", grpc_service: str = ENVOY_GRPC, cds_extra: str = "") -> str:
    """With a node named proxy-1 that has metadata, and a second static cluster `local`."""
    return xds_world.bootstrap(9901, 18000, api_type, "proxy-1", ", metadata: { team: payments, tier: "
                               "{ level: 2 } }", grpc_service, cds_extra) + LOCAL


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_text(text)
    return [str(i) for i in err.value.issues]


def test_ads_bootstrap_gives_an_xds_source_and_keeps_the_ads_cluster_out() -> None:
    config = load_text(bootstrap())
    assert config.xds is not None
    assert config.xds.server == "127.0.0.1:18000" and not config.xds.delta
    assert config.xds.lds and config.xds.cds and config.xds.initial_fetch_timeout == 15.0
    assert (config.xds.backoff_base, config.xds.backoff_max) == (0.5, 30.0)
    node = json.loads(config.xds.node_json)
    assert node == {"id": "proxy-1", "cluster": "web", "metadata": {"team": "payments", "tier": {"level": 2}}}
    # The ADS cluster carries the stream; the data plane gets the other static clusters only.
    assert [c.name for c in config.clusters] == ["local"]


def test_delta_google_grpc_backoff_and_fetch_timeout() -> None:
    service = ("{ envoy_grpc: { cluster_name: xds, retry_policy: { retry_back_off: "
               "{ base_interval: 0.1s, max_interval: 2s } } } }")
    config = load_text(bootstrap("DELTA_GRPC", service, ", initial_fetch_timeout: 3s"))
    assert config.xds is not None and config.xds.delta
    assert (config.xds.backoff_base, config.xds.backoff_max) == (0.1, 2.0)
    assert config.xds.initial_fetch_timeout == 3.0
    text = bootstrap(grpc_service="{ google_grpc: { target_uri: 'cp.mesh:18000', stat_prefix: x } }",
                     cds_extra=", initial_fetch_timeout: 0s")
    # The cluster `xds` is now an ordinary data plane cluster, which cannot have HTTP/2 options yet.
    text = "\n".join(line for line in text.splitlines() if "typed_extension" not in line
                     and "HttpProtocolOptions" not in line and "explicit_http_config" not in line)
    google = load_text(text)
    assert google.xds is not None and google.xds.server == "cp.mesh:18000"
    assert google.xds.initial_fetch_timeout is None  # 0s: wait for ever, as Envoy
    # Without envoy_grpc no cluster is set aside: both static clusters are served.
    assert [c.name for c in google.clusters] == ["xds", "local"]


def test_bad_dynamic_resources_are_named_by_path() -> None:
    assert issues(bootstrap(api_type="REST")) == [
        "dynamic_resources.ads_config.api_type: only GRPC and DELTA_GRPC are supported by meshpy"
    ]
    # (The cluster `xds` is then an ordinary cluster, and its HTTP/2 option is reported too.)
    found = issues(bootstrap(grpc_service="{ envoy_grpc: { cluster_name: nowhere } }"))
    path = "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name"
    assert f"{path}: no static cluster named 'nowhere'" in found
    text = bootstrap().replace("cds_config: { ads: {}", "cds_config: { path: /etc/cds.yaml")
    assert issues(text) == [  # (Envoy's words)
        "dynamic_resources.cds_config.path: paths must refer to an existing path in the system: "
        "'/etc/cds.yaml' does not exist",
    ]
    assert issues(bootstrap().replace("id: proxy-1, ", "")) == [
        "node.id: required with dynamic_resources: the control plane knows proxies by it"
    ]
    assert issues("dynamic_resources: { lds_config: { ads: {} } }") == [
        "dynamic_resources.lds_config.ads: ads: {} needs the bootstrap's dynamic_resources.ads_config",
        "node.id: required with dynamic_resources: the control plane knows proxies by it",
    ]
    service = "{ envoy_grpc: { cluster_name: xds, retry_policy: { retry_back_off: { base_interval: 5s, " \
              "max_interval: 1s } } } }"
    assert issues(bootstrap(grpc_service=service)) == [
        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.retry_policy.retry_back_off.max_interval: "
        "must be at least base_interval"
    ]


STATIC_LISTENER = """
  listeners:
  - name: web
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
HttpConnectionManager"
          stat_prefix: web
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: dyn } }] }
          http_filters:
          - name: router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"""


def test_static_routes_may_name_clusters_that_cds_will_bring() -> None:
    config = load_text(bootstrap() + STATIC_LISTENER)
    assert [x.name for x in config.listeners] == ["web"]
    # Without xDS the same route is an error: nothing could ever bring that cluster.
    [issue] = issues("static_resources:" + STATIC_LISTENER)
    assert "unknown cluster 'dyn'" in issue


def test_short_form() -> None:
    source = short_form("127.0.0.1:18000", "sidecar-7", "reviews", delta=True)
    assert source.server == "127.0.0.1:18000" and source.delta
    assert json.loads(source.node_json) == {"id": "sidecar-7", "cluster": "reviews"}
    assert json.loads(short_form("cp:1", "n").node_json) == {"id": "n"}


def test_a_reload_keeps_the_xds_settings_it_started_with(tmp_path: Path) -> None:
    import asyncio

    from meshpy.app import App
    from meshpy.runner import FileSource

    started = load_text(bootstrap())
    assert started.xds is not None
    loop = asyncio.new_event_loop()
    try:
        from_file = FileSource(App(loop), str(tmp_path / "b.yaml"), xds=started.xds)
        assert from_file._checked(load_text(bootstrap())) == started
        with pytest.raises(ConfigError) as err:
            from_file._checked(load_text(bootstrap("DELTA_GRPC")))
        assert str(err.value.issues[0]) == "dynamic_resources: xDS settings change only with a restart"
        # Given on the command line, the settings win over whatever the file says, as at start.
        flags = short_form("127.0.0.1:1", "n")
        from_flags = FileSource(App(loop), str(tmp_path / "b.yaml"), xds=flags, xds_from_flags=True)
        assert from_flags._checked(load_text(bootstrap("DELTA_GRPC"))).xds == flags
    finally:
        loop.close()


RDS_LISTENER = """
  listeners:
  - name: edge
    address: { socket_address: { address: 127.0.0.1, port_value: 10010 } }
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\\
HttpConnectionManager"
          stat_prefix: edge
          rds: { route_config_name: edge-routes, config_source: { ads: {}, resource_api_version: V3 } }
          http_filters:
          - name: router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"""
EDS_CLUSTER = """
  - name: pinned
    type: EDS
    eds_cluster_config: { service_name: pinned-cla, eds_config: { ads: {}, resource_api_version: V3 } }
"""


def test_static_resources_that_wait_for_xds_are_held_for_the_client() -> None:
    config = load_text(bootstrap() + EDS_CLUSTER + RDS_LISTENER)
    assert config.xds is not None
    assert [x.name for x in config.listeners] == [] and [c.name for c in config.clusters] == ["local"]
    held = {url.rsplit(".", 1)[-1]: json.loads(text)["name"] for url, text in config.xds.static_resources}
    assert held == {"Listener": "edge", "Cluster": "pinned"}
    # They are still checked at load, with their paths.
    bad = (bootstrap() + EDS_CLUSTER + RDS_LISTENER).replace("stat_prefix: edge", "stat_prefix: edge\n"
                                                             "          via: proxy")
    path = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.via"
    assert issues(bad) == [f"{path}: not supported by meshpy"]
    # Without dynamic_resources, `ads: {}` is an error: nothing would ever bring their routes.
    static_only = "static_resources:" + RDS_LISTENER
    assert "ads: {} needs the bootstrap's dynamic_resources.ads_config" in " ".join(issues(static_only))


TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def with_ads_tls(context: str, secrets: str = "") -> str:
    """The bootstrap with `context` (an UpstreamTlsContext's fields, YAML flow) on the ADS cluster."""
    socket = (f"    connect_timeout: 1s\n    transport_socket:\n      name: envoy.transport_sockets.tls\n"
              f"      typed_config: {{ '@type': {TLS_CONTEXT}, {context} }}\n")
    return bootstrap().replace("    connect_timeout: 1s\n", socket, 1) + secrets


def test_the_ads_clusters_upstream_tls_context_is_read_for_the_stream() -> None:
    from meshpy.model.routes import StringMatch
    from meshpy.model.tls import Certificate, ClientTls, Pem, SanMatch, TlsParams, Validation

    config = load_text(with_ads_tls(
        "sni: control.mesh, common_tls_context: { "
        "tls_certificates: [{ certificate_chain: { filename: /etc/mesh/cert.pem }, "
        "private_key: { filename: /etc/mesh/key.pem } }], "
        "validation_context: { trusted_ca: { filename: /etc/mesh/root-cert.pem }, "
        "match_typed_subject_alt_names: [{ san_type: DNS, matcher: { exact: control.mesh } }] } }"))
    assert config.xds is not None and config.xds.server == "127.0.0.1:18000"
    assert config.xds.tls == ClientTls(
        sni="control.mesh",
        certificate=Certificate(chain=Pem(path="/etc/mesh/cert.pem"), key=Pem(path="/etc/mesh/key.pem")),
        validation=Validation(ca=Pem(path="/etc/mesh/root-cert.pem"), san=(
            SanMatch(kind="dns", match=StringMatch(kind="exact", value="control.mesh")),)),
        params=TlsParams(max_version="TLSv1.2"))  # Envoy's client default
    assert config.xds.connect_timeout == 1.0
    assert [c.name for c in config.clusters] == ["local"]  # still not a data plane cluster
    # Without a transport_socket: plaintext (or --xds-ca), as before.
    plain = load_text(bootstrap())
    assert plain.xds is not None and plain.xds.tls is None


def test_a_static_secret_serves_the_ads_cluster_and_sds_cannot() -> None:
    secrets = ("  secrets:\n  - name: mesh-root\n"
               "    validation_context: { trusted_ca: { inline_string: 'PEM' } }\n")
    config = load_text(with_ads_tls(
        "common_tls_context: { validation_context_sds_secret_config: { name: mesh-root } }", secrets))
    assert config.xds is not None and config.xds.tls is not None
    assert config.xds.tls.validation is not None and config.xds.tls.validation.ca is not None
    assert config.xds.tls.validation.ca.inline == b"PEM"
    sds = "{ ads: {}, resource_api_version: V3 }"
    found = issues(with_ads_tls(
        f"common_tls_context: {{ "
        f"tls_certificate_sds_secret_configs: [{{ name: default, sds_config: {sds} }}], "
        f"combined_validation_context: {{ default_validation_context: {{}}, "
        f"validation_context_sds_secret_config: {{ name: ROOTCA, sds_config: {sds} }} }} }}"))
    at = "static_resources.clusters[0].transport_socket.typed_config.common_tls_context"
    reason = ("the ADS cluster's secrets cannot come over SDS: SDS comes over the stream this cluster "
              "carries (give files, inline PEM or a static secret)")
    assert found == [f"{at}.tls_certificate_sds_secret_configs[0].sds_config: {reason}",
                     f"{at}.combined_validation_context.validation_context_sds_secret_config.sds_config: "
                     f"{reason}"]


def test_what_the_ads_clusters_tls_cannot_be_is_named() -> None:
    at = "static_resources.clusters[0].transport_socket"
    assert issues(with_ads_tls("allow_renegotiation: true")) == [
        f"{at}.typed_config.allow_renegotiation: is not supported: meshpy never renegotiates"]
    downstream = with_ads_tls("common_tls_context: {}").replace(
        "UpstreamTlsContext", "DownstreamTlsContext")
    assert f"{at}: a cluster's TLS is an UpstreamTlsContext" in issues(downstream)


def test_a_reload_cannot_change_the_ads_clusters_tls(tmp_path: Path) -> None:
    import asyncio

    from meshpy.app import App
    from meshpy.runner import FileSource

    started = load_text(with_ads_tls("sni: a.mesh"))
    loop = asyncio.new_event_loop()
    try:
        source = FileSource(App(loop), str(tmp_path / "b.yaml"), xds=started.xds)
        assert source._checked(load_text(with_ads_tls("sni: a.mesh"))) == started
        with pytest.raises(ConfigError, match="xDS settings change only with a restart"):
            source._checked(load_text(with_ads_tls("sni: b.mesh")))
    finally:
        loop.close()


def test_api_versions_left_out_are_v3_and_v2_is_refused() -> None:
    """Envoy reads a transport or resource API version left out (AUTO) as V3, and refuses V2."""
    text = bootstrap()
    assert "transport_api_version: V3" in text and "resource_api_version: V3" in text
    config = load_text(text.replace("transport_api_version: V3", "").replace("resource_api_version: V3", ""))
    assert config.xds is not None and config.xds.server == "127.0.0.1:18000"
    said = issues(text.replace("transport_api_version: V3", "transport_api_version: V2"))
    assert said == ["dynamic_resources.ads_config.transport_api_version: must be V3 (or left out)"]


def test_service_node_cluster_and_zone_override_the_bootstraps_node() -> None:
    """Envoy's --service-node, --service-cluster and --service-zone (`meshpy run` and `validate` take
    them too) win over the bootstrap's node, as in Envoy; a bootstrap without node.id needs one."""
    from meshpy.model.load import set_node_overrides

    try:
        set_node_overrides("gw-7", "edge", "zone-b")
        config = load_text(bootstrap())
        assert config.xds is not None
        node = json.loads(config.xds.node_json)
        assert (node["id"], node["cluster"], node["locality"]) == ("gw-7", "edge", {"zone": "zone-b"})
        assert node["metadata"] == {"team": "payments", "tier": {"level": 2}}  # the rest kept
        without_id = bootstrap().replace("id: proxy-1, ", "")
        assert json.loads(load_text(without_id).xds.node_json)["id"] == "gw-7"  # type: ignore[union-attr]
    finally:
        set_node_overrides()
    assert json.loads(load_text(bootstrap()).xds.node_json)["id"] == "proxy-1"  # type: ignore[union-attr]
