"""Envoy's router headers (x-envoy-upstream-service-time, x-envoy-expected-rq-timeout-ms,
x-envoy-original-path): on for an Envoy bootstrap unless its router says suppress_envoy_headers, off
in meshpy YAML unless `envoy_headers: true`. (The differential suite compares them with real Envoy's.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kit import DemoUpstream, Proxy, free_port, http

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoUpstream]:
    d = DemoUpstream(free_port()).start()
    yield d
    d.stop()


def envoy_bootstrap(admin: int, port: int, upstream: int, suppress: bool) -> str:
    routes = [
        {"match": {"prefix": "/old/"},
         "route": {"cluster": "demo", "prefix_rewrite": "/new/", "timeout": "2.5s"}},
        {"match": {"prefix": "/"},
         "route": {"cluster": "demo", "retry_policy": {"retry_on": "5xx", "per_try_timeout": "0.75s"}}},
    ]
    hcm = {"@type": HCM, "stat_prefix": "web",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "router",
                             "typed_config": {"@type": ROUTER, "suppress_envoy_headers": suppress}}]}
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "web",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
            "clusters": [{"name": "demo", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "demo", "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}})


def seen(port: int, path: str) -> tuple[dict[str, str], dict[str, str]]:
    """The response's headers and the request headers the upstream saw (the demo echoes them)."""
    r = http(port, path=path, headers=[("x-envoy-original-path", "/forged")])
    assert r.status == 200, r
    return dict(r.headers), json.loads(r.body)["headers"]


def test_an_envoy_bootstrap_gets_the_router_headers(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    proxy = Proxy(envoy_bootstrap(admin, port, demo.port, False), admin).start()
    try:
        response, upstream = seen(port, "/old/x?q=1")
        assert response["x-envoy-upstream-service-time"].isdigit()
        assert upstream["x-envoy-expected-rq-timeout-ms"] == "2500"
        assert upstream["x-envoy-original-path"] == "/old/x?q=1"  # the client's own was replaced
        response, upstream = seen(port, "/y")
        assert upstream["x-envoy-expected-rq-timeout-ms"] == "750"  # the per-try timeout comes first
        assert "x-envoy-original-path" not in upstream or upstream["x-envoy-original-path"] == "/forged"
    finally:
        proxy.stop()


def test_suppress_envoy_headers_and_meshpy_yaml_leave_them_out(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    for config in (envoy_bootstrap(admin, port, demo.port, True), f"""
admin: 127.0.0.1:{admin}
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes: [{{match: /old/, cluster: demo, prefix_rewrite: /new/, timeout: 2.5s}}]
clusters: [{{name: demo, endpoints: ["127.0.0.1:{demo.port}"]}}]
"""):
        proxy = Proxy(config, admin).start()
        try:
            response, upstream = seen(port, "/old/x")
            assert "x-envoy-upstream-service-time" not in response
            assert "x-envoy-expected-rq-timeout-ms" not in upstream
            assert upstream["x-envoy-original-path"] == "/forged"  # passed on as the client sent it
        finally:
            proxy.stop()
    proxy = Proxy(f"""
admin: 127.0.0.1:{admin}
listeners:
  - name: web
    address: 127.0.0.1:{port}
    envoy_headers: true
    routes: [{{match: /old/, cluster: demo, prefix_rewrite: /new/, timeout: 2.5s}}]
clusters: [{{name: demo, endpoints: ["127.0.0.1:{demo.port}"]}}]
""", admin).start()
    try:
        response, upstream = seen(port, "/old/x")
        assert response["x-envoy-upstream-service-time"].isdigit()
        assert upstream["x-envoy-expected-rq-timeout-ms"] == "2500"
        assert upstream["x-envoy-original-path"] == "/old/x"
    finally:
        proxy.stop()
