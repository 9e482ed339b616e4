"""The meshpy YAML loader on valid input: every short form, the defaults, values in human form."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshpy.model.load import load_text
from meshpy.model.meshpy_yaml import load_meshpy
from meshpy.model.routes import (
    DEFAULT_ROUTE_TIMEOUT,
    DirectResponseAction,
    ForwardAction,
    GrpcTimeout,
    HeaderMatch,
    HeaderValue,
    QueryMatch,
    RedirectAction,
    RegexRewrite,
    Route,
    RouteMatch,
    StringMatch,
    VirtualHost,
    WeightedCluster,
)
from meshpy.model.types import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEADERS_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_STREAM_IDLE_TIMEOUT,
    DEFAULT_TCP_IDLE_TIMEOUT,
    AccessLog,
    Address,
    Cluster,
    Config,
    Endpoint,
    HttpOptions,
    TcpKeepalive,
)

CLUSTERS = "clusters: {backend: 127.0.0.1:9000, v1: 127.0.0.1:9001, v2: 127.0.0.1:9002}\n"


def load(*parts: str) -> Config:
    """Load YAML written in parts (each dedented on its own, so indented text and CLUSTERS mix)."""
    return load_meshpy(yaml.safe_load("".join(textwrap.dedent(part) for part in parts)))


def http(config: Config, index: int = 0) -> HttpOptions:
    options = config.listeners[index].http
    assert options is not None
    return options


def only_route(config: Config) -> Route:
    (vhost,) = http(config).route_config.virtual_hosts
    (route,) = vhost.routes
    return route


def route_yaml(route: str) -> str:
    """A config with one http listener whose single route is `route` (YAML flow or block text)."""
    body = textwrap.indent(textwrap.dedent(route).strip(), " " * 8)
    return f"listeners:\n  - address: 127.0.0.1:10000\n    routes:\n      - {body.lstrip()}\n" + CLUSTERS


def forward(route: Route) -> ForwardAction:
    assert isinstance(route.action, ForwardAction)
    return route.action


# Short forms and defaults


def test_smallest_config_gets_every_default() -> None:
    config = load("""
        listeners:
          - address: 127.0.0.1:10000
            cluster: app
        clusters:
          app: 127.0.0.1:18080
    """)
    (listener,) = config.listeners
    assert listener.name == "127.0.0.1_10000"
    assert listener.address == Address(host="127.0.0.1", port=10000)
    assert listener.kind == "http"
    assert listener.tcp is None
    options = http(config)
    assert options == HttpOptions(route_config=options.route_config)  # every option at its default
    assert options.stream_idle_timeout == DEFAULT_STREAM_IDLE_TIMEOUT
    assert options.idle_timeout == DEFAULT_IDLE_TIMEOUT
    assert options.request_headers_timeout == DEFAULT_HEADERS_TIMEOUT
    assert options.access_logs == ()
    route_config = options.route_config
    assert route_config.name == "127.0.0.1_10000"
    assert route_config.ignore_port_in_host is True
    assert route_config.virtual_hosts == (
        VirtualHost(
            name="127.0.0.1_10000",
            domains=("*",),
            routes=(Route(match=RouteMatch(), action=ForwardAction(cluster="app")),),
        ),
    )
    assert forward(only_route(config)).timeout == DEFAULT_ROUTE_TIMEOUT
    assert config.clusters == (
        Cluster(name="app", endpoints=(Endpoint(address=Address(host="127.0.0.1", port=18080)),)),
    )
    assert config.clusters[0].connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert config.admin.address is None
    assert (config.lifecycle.drain_time, config.lifecycle.grace_time) == (5.0, 30.0)
    assert config.source_format == "meshpy"


def test_empty_mapping_is_an_empty_config() -> None:
    assert load_meshpy({}) == Config()


def test_admin_short_and_long_forms_and_off() -> None:
    assert load("admin: 127.0.0.1:9901").admin.address == Address(host="127.0.0.1", port=9901)
    assert load("admin: {address: '[::1]:9901'}").admin.address == Address(host="::1", port=9901)
    assert load("admin: off").admin.address is None
    assert load("admin: null").admin.address is None
    assert load("admin: 127.0.0.1:0").admin.address == Address(host="127.0.0.1", port=0)


def test_lifecycle_durations() -> None:
    config = load("drain_time: 250ms\ngrace_time: 1m")
    assert (config.lifecycle.drain_time, config.lifecycle.grace_time) == (0.25, 60.0)
    assert load("drain_time: 0").lifecycle.drain_time == 0.0


def test_colon_port_listens_on_all_interfaces() -> None:
    config = load("listeners: [{address: ':8080', cluster: backend}]\n" + CLUSTERS)
    assert config.listeners[0].address == Address(host="0.0.0.0", port=8080)


def test_routes_short_form_is_one_catch_all_virtual_host_named_after_the_listener() -> None:
    config = load(
        """
        listeners:
          - name: ingress
            address: 127.0.0.1:10000
            routes:
              - {match: /api, cluster: v1}
              - cluster: backend
    """,
        CLUSTERS,
    )
    (vhost,) = http(config).route_config.virtual_hosts
    assert (vhost.name, vhost.domains) == ("ingress", ("*",))
    assert [r.match.path for r in vhost.routes] == ["/api", "/"]
    assert [forward(r).cluster for r in vhost.routes] == ["v1", "backend"]


def test_virtual_hosts_with_domains_names_and_cluster_short_form() -> None:
    config = load(
        """
        listeners:
          - address: 127.0.0.1:10000
            virtual_hosts:
              - domains: [API.example.com, "*.example.com"]
                routes: [{cluster: v1}]
              - name: fallback
                domains: "*"
                cluster: backend
    """,
        CLUSTERS,
    )
    first, second = http(config).route_config.virtual_hosts
    assert (first.name, first.domains) == ("api.example.com", ("api.example.com", "*.example.com"))
    assert (second.name, second.domains) == ("fallback", ("*",))
    assert second.routes == (Route(action=ForwardAction(cluster="backend")),)


def test_virtual_host_domains_default_to_everything() -> None:
    config = load("listeners: [{address: ':1', virtual_hosts: [{name: all, cluster: backend}]}]\n" + CLUSTERS)
    assert http(config).route_config.virtual_hosts[0].domains == ("*",)


@pytest.mark.parametrize(
    "domain", ["*", "*.example.com", "*-staging.example.com", "api.*", "example.com:8443"]
)
def test_domain_wildcards_envoy_allows(domain: str) -> None:
    config = load(
        f"listeners: [{{address: ':1', virtual_hosts: [{{domains: ['{domain}'], cluster: v1}}]}}]\n"
        + CLUSTERS
    )
    assert http(config).route_config.virtual_hosts[0].domains == (domain,)


def test_http_options_in_human_form() -> None:
    config = load(
        """
        listeners:
          - address: 127.0.0.1:10000
            use_remote_address: false
            xff_num_trusted_hops: 2
            forwarded_proto: false
            generate_request_id: false
            preserve_external_request_id: false
            stream_idle_timeout: 2m
            idle_timeout: off
            request_headers_timeout: 0
            max_request_headers: 96KiB
            max_request_headers_count: 50
            max_request_body: 10MiB
            server_name: edge
            ignore_port_in_host: false
            cluster: backend
    """,
        CLUSTERS,
    )
    options = http(config)
    assert options == HttpOptions(
        route_config=options.route_config,
        use_remote_address=False,
        xff_num_trusted_hops=2,
        forwarded_proto=False,
        generate_request_id=False,
        preserve_external_request_id=False,
        stream_idle_timeout=120.0,
        idle_timeout=None,
        request_headers_timeout=None,
        max_request_headers_kb=96,
        max_request_headers_count=50,
        max_request_body_bytes=10 * 1024 * 1024,
        server_name="edge",
    )
    assert options.route_config.ignore_port_in_host is False


def test_max_request_body_off_means_unlimited() -> None:
    config = load("listeners: [{address: ':1', cluster: backend, max_request_body: off}]\n" + CLUSTERS)
    assert http(config).max_request_body_bytes is None


@pytest.mark.parametrize(
    ("written", "logs"),
    [
        ("stdout", (AccessLog(path=None),)),
        ("'-'", (AccessLog(path=None),)),
        ("/var/log/a.log", (AccessLog(path="/var/log/a.log"),)),
        ("[stdout, /tmp/a.log]", (AccessLog(path=None), AccessLog(path="/tmp/a.log"))),
        ("off", ()),
        ("null", ()),
    ],
)
def test_access_log_forms(written: str, logs: tuple[AccessLog, ...]) -> None:
    config = load(f"listeners: [{{address: ':1', cluster: backend, access_log: {written}}}]\n" + CLUSTERS)
    assert http(config).access_logs == logs


def test_tcp_listener() -> None:
    config = load(
        """
        listeners:
          - name: db
            address: 0.0.0.0:15432
            protocol: tcp
            cluster: backend
            idle_timeout: 30m
            access_log: stdout
    """,
        CLUSTERS,
    )
    (listener,) = config.listeners
    assert listener.kind == "tcp" and listener.http is None
    assert listener.tcp is not None
    assert (listener.tcp.cluster, listener.tcp.idle_timeout) == ("backend", 1800.0)
    assert listener.tcp.access_logs == (AccessLog(path=None),)


def test_tcp_idle_timeout_default_and_off() -> None:
    base = "listeners: [{address: ':1', protocol: tcp, cluster: backend%s}]\n" + CLUSTERS
    default_tcp = load(base % "").listeners[0].tcp
    off_tcp = load(base % ", idle_timeout: off").listeners[0].tcp
    assert default_tcp is not None and default_tcp.idle_timeout == DEFAULT_TCP_IDLE_TIMEOUT
    assert off_tcp is not None and off_tcp.idle_timeout is None


# Routes


def test_match_forms() -> None:
    assert only_route(load(route_yaml("{match: /api, cluster: v1}"))).match == RouteMatch(path="/api")
    assert only_route(load(route_yaml("{match: {path: /x, case_sensitive: false}, cluster: v1}"))).match == (
        RouteMatch(path_kind="path", path="/x", case_sensitive=False)
    )
    assert only_route(load(route_yaml("{match: {regex: '/v[0-9]+/.*'}, cluster: v1}"))).match == RouteMatch(
        path_kind="regex", path="/v[0-9]+/.*"
    )
    assert only_route(load(route_yaml("{match: {}, cluster: v1}"))).match == RouteMatch()


def test_prefix_may_contain_a_query_string_because_prefix_sees_it() -> None:
    assert only_route(load(route_yaml("{match: '/a?debug', cluster: v1}"))).match.path == "/a?debug"


def test_methods_are_upper_cased_and_one_string_is_a_list() -> None:
    route = only_route(load(route_yaml("{match: {methods: [get, Post]}, cluster: v1}")))
    assert route.match.methods == ("GET", "POST")
    route = only_route(load(route_yaml("{match: {methods: delete}, cluster: v1}")))
    assert route.match.methods == ("DELETE",)


def test_header_matchers_mapping_form() -> None:
    route = only_route(
        load(
            route_yaml("""
        match:
          headers:
            X-Env: canary
            x-version: 2
            x-user: {prefix: team-, ignore_case: true}
            x-debug: {present: true}
            x-gone: {present: false}
            user-agent: {contains: bot, invert: true}
            ":method": {exact: GET}
        cluster: v1
    """)
        )
    )
    assert route.match.headers == (
        HeaderMatch(name="x-env", match=StringMatch(kind="exact", value="canary")),
        HeaderMatch(name="x-version", match=StringMatch(kind="exact", value="2")),
        HeaderMatch(name="x-user", match=StringMatch(kind="prefix", value="team-", ignore_case=True)),
        HeaderMatch(name="x-debug", match=StringMatch(kind="present")),
        HeaderMatch(name="x-gone", match=StringMatch(kind="present"), invert=True),
        HeaderMatch(name="user-agent", match=StringMatch(kind="contains", value="bot"), invert=True),
        HeaderMatch(name=":method", match=StringMatch(kind="exact", value="GET")),
    )


def test_header_matchers_list_form() -> None:
    route = only_route(
        load(
            route_yaml("""
        match:
          headers:
            - {name: x-env, exact: canary}
            - {name: x-tenant, regex: '[a-z]+', invert: true}
            - {name: x-end, suffix: .json}
            - {name: x-absent, present: false, invert: true}
        cluster: v1
    """)
        )
    )
    assert route.match.headers == (
        HeaderMatch(name="x-env", match=StringMatch(kind="exact", value="canary")),
        HeaderMatch(name="x-tenant", match=StringMatch(kind="regex", value="[a-z]+"), invert=True),
        HeaderMatch(name="x-end", match=StringMatch(kind="suffix", value=".json")),
        HeaderMatch(name="x-absent", match=StringMatch(kind="present")),  # two negations cancel
    )


def test_query_matchers_keep_name_case() -> None:
    route = only_route(
        load(
            route_yaml("""
        match: {query: {Debug: "1", trace: {present: true}}}
        cluster: v1
    """)
        )
    )
    assert route.match.query == (
        QueryMatch(name="Debug", match=StringMatch(kind="exact", value="1")),
        QueryMatch(name="trace", match=StringMatch(kind="present")),
    )
    route = only_route(load(route_yaml("{match: {query: [{name: q, regex: 'a.*'}]}, cluster: v1}")))
    assert route.match.query == (QueryMatch(name="q", match=StringMatch(kind="regex", value="a.*")),)


def test_forward_options() -> None:
    route = only_route(
        load(
            route_yaml("""
        name: users
        match: /users
        cluster: v1
        prefix_rewrite: /
        host_rewrite: users.internal
        timeout: 2s
        idle_timeout: 30s
    """)
        )
    )
    assert route.name == "users"
    assert route.action == ForwardAction(
        cluster="v1", prefix_rewrite="/", host_rewrite="users.internal", timeout=2.0, idle_timeout=30.0
    )


def test_stream_duration_and_grpc_timeout() -> None:
    default = forward(only_route(load(route_yaml("{cluster: v1}"))))
    assert default.max_stream_duration is None and default.grpc_timeout == GrpcTimeout()  # read as sent
    ignored = forward(only_route(load(route_yaml(
        "{cluster: v1, grpc_timeout: ignore, max_stream_duration: 5s}"))))
    assert ignored.grpc_timeout is None and ignored.max_stream_duration == 5.0
    capped = forward(only_route(load(route_yaml("{cluster: v1, grpc_timeout: {max: 10s, offset: 50ms}}"))))
    assert capped.grpc_timeout == GrpcTimeout(max=10.0, offset=0.05)


@pytest.mark.parametrize("written", ["off", "0", "0s", "null"])
def test_route_timeout_off_or_zero_means_none(written: str) -> None:
    assert forward(only_route(load(route_yaml(f"{{cluster: v1, timeout: {written}}}")))).timeout is None


def test_regex_rewrite() -> None:
    route = only_route(
        load(
            route_yaml(r"""
        match: {regex: '/v[0-9]+/(.*)'}
        cluster: v1
        regex_rewrite: {pattern: '^/v[0-9]+/(.*)', substitution: '/\1'}
    """)
        )
    )
    assert forward(route).regex_rewrite == RegexRewrite(pattern="^/v[0-9]+/(.*)", substitution="/\\1")


def test_split() -> None:
    route = only_route(load(route_yaml("{split: {v1: 90, v2: 10}}")))
    assert route.action == ForwardAction(
        weighted=(WeightedCluster(name="v1", weight=90), WeightedCluster(name="v2", weight=10))
    )


def test_redirect() -> None:
    route = only_route(
        load(route_yaml("{redirect: {scheme: HTTPS, host: a.example, port: 8443, code: 308}}"))
    )
    assert route.action == RedirectAction(scheme="https", host="a.example", port=8443, response_code=308)
    route = only_route(load(route_yaml("{redirect: {prefix_rewrite: /v2/, strip_query: true}}")))
    assert route.action == RedirectAction(prefix_rewrite="/v2/", strip_query=True)


def test_direct_response_long_and_short_form() -> None:
    route = only_route(load(route_yaml("{match: {path: /healthz}, direct: {status: 200, body: ok}}")))
    assert route.action == DirectResponseAction(status=200, body="ok")
    assert only_route(load(route_yaml("{direct: 204}"))).action == DirectResponseAction(status=204)


def test_header_edits_on_every_level_in_written_order() -> None:
    config = load(
        """
        listeners:
          - address: 127.0.0.1:10000
            request_headers: {add: {X-A: 1}, set: {x-b: "2"}, add_if_absent: {x-c: "3"},
                              set_if_present: {x-d: "4"}, remove: [X-E, x-f]}
            response_headers: {remove: server-timing}
            virtual_hosts:
              - domains: ["*"]
                response_headers: {set: {x-vh: "1"}}
                routes:
                  - cluster: v1
                    request_headers: {add: {x-route: "r"}}
    """,
        CLUSTERS,
    )
    route_config = http(config).route_config
    assert route_config.request_headers.add == (
        HeaderValue(name="x-a", value="1", append="append"),
        HeaderValue(name="x-b", value="2", append="overwrite"),
        HeaderValue(name="x-c", value="3", append="add_if_absent"),
        HeaderValue(name="x-d", value="4", append="overwrite_if_exists"),
    )
    assert route_config.request_headers.remove == ("x-e", "x-f")
    assert route_config.response_headers.remove == ("server-timing",)
    vhost = route_config.virtual_hosts[0]
    assert vhost.response_headers.add == (HeaderValue(name="x-vh", value="1", append="overwrite"),)
    assert vhost.routes[0].request_headers.add == (HeaderValue(name="x-route", value="r"),)


# Clusters


def test_cluster_list_form_with_every_key() -> None:
    config = load("""
        clusters:
          - name: users
            type: STRICT_DNS
            endpoints: [users.internal:8080, {address: 10.0.0.2:8080, weight: 3}]
            connect_timeout: 500ms
            dns_refresh_rate: 10s
            max_connections_per_endpoint: 32
            pool_idle_timeout: off
            lb_policy: round_robin
    """)
    assert config.clusters == (
        Cluster(
            name="users",
            discovery="strict_dns",
            endpoints=(
                Endpoint(address=Address(host="users.internal", port=8080)),
                Endpoint(address=Address(host="10.0.0.2", port=8080), weight=3),
            ),
            connect_timeout=0.5,
            dns_refresh_rate=10.0,
            max_connections_per_endpoint=32,
            pool_idle_timeout=None,
        ),
    )


def test_cluster_tcp_keepalive() -> None:
    config = load("""
        clusters:
          full: {endpoints: [127.0.0.1:9000], tcp_keepalive: {probes: 3, time: 2m, interval: 5}}
          some: {endpoints: [127.0.0.1:9001], tcp_keepalive: {time: 30s}}
          bare: {endpoints: [127.0.0.1:9002], tcp_keepalive: {}}
          none: 127.0.0.1:9003
    """)
    assert [c.tcp_keepalive for c in config.clusters] == [
        TcpKeepalive(probes=3, time=120.0, interval=5.0),
        TcpKeepalive(time=30.0),
        TcpKeepalive(),  # SO_KEEPALIVE with the kernel's timings
        None,
    ]


def test_cluster_mapping_short_forms() -> None:
    config = load("""
        clusters:
          one: 127.0.0.1:9000
          many: [127.0.0.1:9001, 127.0.0.1:9002]
          full: {endpoints: [127.0.0.1:9003], connect_timeout: 1s}
    """)
    assert [c.name for c in config.clusters] == ["one", "many", "full"]
    assert [len(c.endpoints) for c in config.clusters] == [1, 2, 1]
    assert config.clusters[2].connect_timeout == 1.0


def test_cluster_type_is_static_for_ips_and_strict_dns_for_host_names() -> None:
    config = load("clusters: {ips: ['127.0.0.1:1', '[::1]:2'], names: ['127.0.0.1:1', 'localhost:2']}")
    assert [c.discovery for c in config.clusters] == ["static", "strict_dns"]


def test_logical_dns_with_one_endpoint() -> None:
    config = load("clusters: [{name: a, type: logical_dns, endpoints: [api.example.com:443]}]")
    assert config.clusters[0].discovery == "logical_dns"


def test_load_text_reads_meshpy_yaml() -> None:
    config = load_text("listeners: [{address: ':10000', cluster: a}]\nclusters: {a: 127.0.0.1:1}\n")
    assert config.listeners[0].address.port == 10000
    assert config.source_format == "meshpy"


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
        st.lists(
            st.tuples(st.ip_addresses(), st.integers(1, 65535), st.integers(1, 1000)), min_size=1, max_size=4
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_static_cluster_mapping_loads_as_written(clusters: dict[str, list[tuple[Any, int, int]]]) -> None:
    data = {
        "clusters": {
            name: [
                {"address": str(Address(host=str(ip), port=port)), "weight": weight}
                for ip, port, weight in eps
            ]
            for name, eps in clusters.items()
        }
    }
    config = load(json.dumps(data))
    assert [c.name for c in config.clusters] == list(clusters)
    for cluster, eps in zip(config.clusters, clusters.values(), strict=True):
        assert cluster.discovery == "static"
        assert cluster.endpoints == tuple(
            Endpoint(address=Address(host=str(ip), port=port), weight=weight) for ip, port, weight in eps
        )
