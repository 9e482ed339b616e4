"""Smaller pieces of Envoy configs that real bootstraps use, each run by real Envoy and by meshpy with
the same bootstrap and the same requests: route `grpc: {}` matches, the local rate limit's
response_headers_to_add, the router's dynamic_stats, HIGH-priority breaker thresholds."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import h2.events
import pytest
from ext_authz_world import HttpAuthz
from h2peer import H2Peer
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, envoy_http_bootstrap, eventually, free_port, http
from test_websocket import EchoServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="needs envoy")


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoUpstream]:
    d = DemoUpstream(free_port()).start()
    yield d
    d.stop()


Requests = list[tuple[str, list[tuple[str, str]]]] | list[tuple[str, str, list[tuple[str, str]]]]


def both(config_for: object, requests: Requests,
         keep: tuple[str, ...] = ()) -> list[list[tuple[int, object]]]:
    """Each proxy's (status, kept headers) per request, Envoy's first; with keep ("path",), the path
    the upstream saw instead."""
    out = []
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        config = config_for(admin, port)  # type: ignore[operator]
        proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
        try:
            seen = []
            for request in requests:
                method, path, headers = request if len(request) == 3 else ("GET", *request)
                r = http(port, method=method, path=path, headers=headers)
                if keep == ("path",):
                    seen.append((r.status, json.loads(r.body)["path"]))
                else:
                    seen.append((r.status, {k: r.header(k) for k in keep}))
            out.append(seen)
        finally:
            proc.stop()
    return out


def test_a_grpc_route_match_takes_grpc_requests_only(demo: DemoUpstream) -> None:
    def config(admin: int, port: int) -> str:
        return envoy_http_bootstrap(admin, port, demo.port, routes=(
            "{ match: { prefix: /, grpc: {} }, route: { cluster: backend, prefix_rewrite: /grpc/ } }, "))
    requests = [(method, "/svc/M", [("content-type", ct)]) for method in ("POST", "GET") for ct in (
        "application/grpc", "application/grpc+proto", "application/grpc;x=1", "application/grpc-web",
        "application/grpcx", "text/plain")] + [("POST", "/svc/M", [])]
    envoy, meshpy = both(config, requests, keep=("path",))
    assert meshpy == envoy
    grpc, plain = "/grpc/svc/M", "/svc/M"
    assert [p for _, p in meshpy] == ([grpc] * 2 + [plain] * 4) * 2 + [plain]  # POST and GET alike


def test_local_rate_limit_headers_on_limited_answers(demo: DemoUpstream) -> None:
    limit = """
- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: limited
    token_bucket: { max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s }
    filter_enabled: { runtime_key: rl_on, default_value: { numerator: 100, denominator: HUNDRED } }
    filter_enforced: { runtime_key: rl_on, default_value: { numerator: 100, denominator: HUNDRED } }
    response_headers_to_add:
    - append_action: OVERWRITE_IF_EXISTS_OR_ADD
      header: { key: x-local-rate-limit, value: "true" }
    - header: { key: x-limit-note, value: "try later" }
"""

    def config(admin: int, port: int) -> str:
        return envoy_http_bootstrap(admin, port, demo.port, filters=limit)
    envoy, meshpy = both(config, [("/", [])] * 4, keep=("x-local-rate-limit", "x-limit-note"))
    assert meshpy == envoy
    assert [s for s, _ in meshpy] == [200, 200, 429, 429]
    assert meshpy[2][1] == {"x-local-rate-limit": "true", "x-limit-note": "try later"}
    assert meshpy[0][1] == {"x-local-rate-limit": None, "x-limit-note": None}


def test_dynamic_stats_and_high_priority_thresholds_are_taken(demo: DemoUpstream) -> None:
    """rinha-lb's shape: the router without dynamic stats, and thresholds for HIGH-priority routes
    (which no route of the config has): both proxies serve it alike."""
    def config(admin: int, port: int) -> str:
        text = envoy_http_bootstrap(admin, port, demo.port, cluster="""circuit_breakers:
      thresholds:
      - { priority: DEFAULT, max_requests: 1000 }
      - { priority: HIGH, max_requests: 1 }""")
        router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        return text.replace(f'{{ "@type": {router} }}', f'{{ "@type": {router}, dynamic_stats: false }}')
    assert "dynamic_stats" in config(1, 2)
    envoy, meshpy = both(config, [("/", [])] * 3)
    assert meshpy == envoy == [(200, {})] * 3


class _Echo:
    """A TCP echo server: what a CONNECT tunnel reaches."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def _tunnel(port: int, target: int) -> tuple[int, bytes]:
    """A plain HTTP/2 CONNECT to 127.0.0.1:`target` through the proxy on `port`: the status, and what
    came back through the tunnel for b"ping" (b"" when no tunnel)."""
    peer = H2Peer(port)
    try:
        target_head = [(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:%d" % target)]
        sid = peer.request(target_head, end=False)
        peer.wait(lambda ev: any(isinstance(e, (h2.events.ResponseReceived, h2.events.StreamReset))
                                 for e in ev), 5)
        heads = [e for e in peer.events if isinstance(e, h2.events.ResponseReceived)]
        status = int(dict(heads[0].headers)[b":status"]) if heads else 0
        if status != 200:
            return status, b""
        peer.conn.send_data(sid, b"ping")
        peer.flush()
        peer.wait(lambda ev: b"".join(e.data for e in ev if isinstance(e, h2.events.DataReceived)) == b"ping",
                  5)
        return status, b"".join(e.data for e in peer.events if isinstance(e, h2.events.DataReceived))
    finally:
        peer.close()


@pytest.mark.parametrize("allow", [True, False])
def test_a_plain_connect_over_http2_as_envoy(allow: bool) -> None:
    """envoy/configs/proxy_connect.yaml's shape: a plain CONNECT over HTTP/2 to a CONNECT route is a
    tunnel to the cluster's endpoint, with allow_connect (which is about extended CONNECT) or not."""
    echo = _Echo()

    def config(admin: int, port: int) -> str:
        text = envoy_http_bootstrap(admin, port, echo.port, hcm="codec_type: HTTP2" + (
            "\nhttp2_protocol_options: { allow_connect: true }" if allow else ""), routes=(
            "{ match: { connect_matcher: {} }, route: { cluster: backend, upgrade_configs: "
            "[{ upgrade_type: CONNECT, connect_config: {} }] } }, "))
        return text
    results = []
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        proc: Envoy | Proxy = Envoy(config(admin, port), admin).start() if envoy else \
            Proxy(config(admin, port), admin).start()
        try:
            results.append(_tunnel(port, echo.port))
        finally:
            proc.stop()
    echo.sock.close()
    assert results[1] == results[0], results
    assert results[1] == (200, b"ping")


def _settings_and_refusal(port: int) -> tuple[bool, int, int | None]:
    """Whether the proxy announces extended CONNECT, and what a plain CONNECT that no route takes
    gets: (status, reset code)."""
    peer = H2Peer(port)
    try:
        sid = peer.request([(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:9")], end=False)
        peer.wait(lambda ev: any(isinstance(e, (h2.events.ResponseReceived, h2.events.StreamReset))
                                 for e in ev), 5)
        announced = any(isinstance(e, h2.events.RemoteSettingsChanged) and 8 in e.changed_settings
                        and e.changed_settings[8].new_value == 1 for e in peer.events)
        heads = [e for e in peer.events if isinstance(e, h2.events.ResponseReceived)]
        status = int(dict(heads[0].headers)[b":status"]) if heads else 0
        return announced, status, peer.reset_of(sid) if not heads else None
    finally:
        peer.close()


@pytest.mark.parametrize("allow", [True, False])
def test_allow_connect_announces_extended_connect_as_envoy(demo: DemoUpstream, allow: bool) -> None:
    results = []
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        config = envoy_http_bootstrap(admin, port, demo.port, hcm="codec_type: HTTP2" + (
            "\nhttp2_protocol_options: { allow_connect: true }" if allow else ""))
        proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
        try:
            results.append(_settings_and_refusal(port))
        finally:
            proc.stop()
    assert results[1] == results[0], results
    assert results[1][0] is allow


def _ws_outcome(port: int, path: str) -> object:
    """What a WebSocket client gets on `path`: the echo of "hi", or the refusal's status."""
    async def talk() -> object:
        try:
            async with connect(f"ws://127.0.0.1:{port}{path}") as ws:
                await ws.send("hi")
                return await ws.recv()
        except InvalidStatus as err:
            return err.response.status_code
    return asyncio.run(talk())


def test_per_route_upgrade_configs_as_envoy() -> None:
    """envoyproxy/examples websocket/envoy-ws-route.yaml's shape: WebSocket on /ws only, by the route's
    own upgrade_configs (the connection manager names none)."""
    server = EchoServer(free_port())
    try:
        def config(admin: int, port: int) -> str:
            return envoy_http_bootstrap(admin, port, server.port, routes=(
                "{ match: { prefix: /ws }, route: { cluster: backend, upgrade_configs: "
                "[{ upgrade_type: websocket }] } }, "
                "{ match: { prefix: /off }, route: { cluster: backend, upgrade_configs: "
                "[{ upgrade_type: websocket, enabled: false }] } }, "))
        results = []
        for envoy in (True, False):
            admin, port = free_port(), free_port()
            proc: Envoy | Proxy = Envoy(config(admin, port), admin).start() if envoy else \
                Proxy(config(admin, port), admin).start()
            try:
                results.append([_ws_outcome(port, p) for p in ("/ws", "/off", "/other")])
            finally:
                proc.stop()
    finally:
        server.stop()
    assert results[1] == results[0]
    assert results[1] == ["HI", 403, 403]


def test_request_mirroring_as_envoy(demo: DemoUpstream) -> None:
    """envoyproxy/examples route-mirror's shape: copies to a named cluster and to the cluster a header
    names, their answers dropped; what the mirror receives is compared with what Envoy sends it."""
    mirror = HttpAuthz(free_port()).start()  # (records each request; its answers go nowhere)
    mirror_cluster = f"""
  - name: mirror
    connect_timeout: 1s
    load_assignment:
      cluster_name: mirror
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {mirror.port} }} }}"""

    def config(admin: int, port: int) -> str:
        return envoy_http_bootstrap(admin, port, demo.port, routes=(
            "{ match: { prefix: /m }, route: { cluster: backend, prefix_rewrite: /mm, "
            "request_mirror_policies: [{ cluster: mirror }] } }, "
            "{ match: { prefix: /h }, route: { cluster: backend, "
            "request_mirror_policies: [{ cluster_header: x-mirror-cluster }] } }, "
            "{ match: { prefix: /none }, route: { cluster: backend, request_mirror_policies: "
            "[{ cluster: mirror, runtime_fraction: { default_value: { numerator: 0 } } }] } }, "
            "{ match: { prefix: /keep }, route: { cluster: backend, request_mirror_policies: "
            "[{ cluster: mirror, disable_shadow_host_suffix_append: true }] } }, ")) + mirror_cluster
    requests: list[tuple[str, str, list[tuple[str, str]], bytes | None]] = [
        ("GET", "/m/1?q=1", [("x-a", "1")], None),
        ("POST", "/m/2", [("content-type", "text/plain")], b"mirrored body"),
        ("GET", "/h/1", [("x-mirror-cluster", "mirror")], None),
        ("GET", "/h/2", [], None),
        ("GET", "/none", [], None),
        ("GET", "/keep", [], None)]
    seen = []
    try:
        for envoy in (True, False):
            admin, port = free_port(), free_port()
            proc: Envoy | Proxy = Envoy(config(admin, port), admin).start() if envoy else \
                Proxy(config(admin, port), admin).start()
            mirror.seen.clear()
            try:
                statuses = [http(port, method=m, path=p, headers=h, body=b).status for m, p, h, b in requests]
                eventually(lambda: len(mirror.seen) >= 4, "the copies arrive")
                time.sleep(0.3)  # (any copy that should not come would come by now)
            finally:
                proc.stop()
            copies = sorted((s["method"], s["path"], s["headers"].get("host"), s["body"],
                             s["headers"].get("x-a"), "x-forwarded-proto" in s["headers"],
                             "x-request-id" in s["headers"]) for s in mirror.seen)
            seen.append((statuses, copies))
    finally:
        mirror.stop()
    assert seen[1] == seen[0]
    statuses, copies = seen[1]
    assert statuses == [200] * 6
    assert [c[:4] for c in copies] == [
        ("GET", "/h/1", "example.com-shadow", b""), ("GET", "/keep", "example.com", b""),
        ("GET", "/mm/1?q=1", "example.com-shadow", b""),
        ("POST", "/mm/2", "example.com-shadow", b"mirrored body")]


@pytest.mark.parametrize("compat", [True, False])
def test_ipv4_compat_listeners_as_envoy(demo: DemoUpstream, compat: bool) -> None:
    """Kourier's listener: [::] with ipv4_compat takes IPv4 clients too; without it, IPv6 only."""
    results = []
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        compat_field = ", ipv4_compat: true" if compat else ""
        config = envoy_http_bootstrap(admin, port, demo.port).replace(
            f"address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}",
            f"address: {{ socket_address: {{ address: '::', port_value: {port}{compat_field} }} }}")
        assert "'::'" in config
        proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
        try:
            try:
                v4 = http(port, path="/").status
            except OSError:
                v4 = 0
            with socket.create_connection(("::1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                v6 = int(s.recv(64).split()[1])
            results.append((v4, v6))
        finally:
            proc.stop()
    assert results[1] == results[0]
    assert results[1] == ((200, 200) if compat else (0, 200))
