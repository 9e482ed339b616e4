"""Envoy's router headers (x-envoy-upstream-service-time, x-envoy-expected-rq-timeout-ms,
x-envoy-original-path): on for an Envoy bootstrap unless its router says suppress_envoy_headers, off
in meshpy YAML unless `envoy_headers: true`. (The differential suite compares them with real Envoy's.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, http

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


def test_a_connection_manager_without_a_router_is_refused(demo: DemoUpstream, tmp_path: Path) -> None:
    """Envoy takes an HCM whose http_filters list is left out, then answers none of its requests (no
    filter ends them): meshpy refuses the config instead, saying why."""
    config = json.loads(envoy_bootstrap(0, 0, demo.port, False))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["http_filters"]
    admin, port = free_port(), free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    path = tmp_path / "no-router.json"
    path.write_text(json.dumps(config))
    checked = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(path)], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 1
    assert "http_filters: the router filter (envoy.extensions.filters.http.router.v3.Router) is required: " \
           "without it Envoy takes the listener but answers none of its requests" in checked.stdout, checked
    if envoy_binary() is None:
        return
    envoy = Envoy(json.dumps(config), admin).start()
    try:
        with pytest.raises(TimeoutError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            s.recv(1)  # (Envoy says nothing)
    finally:
        envoy.stop()
