"""Unix domain sockets (Envoy's `pipe` addresses) on real sockets, with real Envoy as the oracle.

One Envoy bootstrap run by Envoy and by meshpy (on both loops): listeners on Unix sockets (a file with
its mode, over a stale file left at the path; an abstract name for a TCP proxy), clusters of Unix
socket endpoints spoken to in HTTP/1.1, in HTTP/2 (gRPC, with gRPC health checks), over TLS (SNI and a
SAN matcher), and one whose socket is missing. The same answers from both, the same headers upstream
(no x-forwarded-for is added for a peer that has no IP address), and the same access-log peer and
upstream host. Then meshpy alone: outlier detection and health checks over Unix sockets, a reload that
keeps a listener's socket, the admin on a Unix socket with `meshpy wait`, ADS from a control plane on a
Unix socket (Envoy beside it), and the ADS stream's TLS carried over a Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from ext_authz_world import GrpcAuthz
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from grpc_echo import add_handlers
from kit import (
    LOOPS,
    Envoy,
    Proxy,
    Response,
    envoy_binary,
    eventually,
    free_port,
    http,
    read_request_head,
    read_response,
    request_bytes,
)
from pki import make_ca
from xds_world import CLUSTER, listener, routes
from xds_world import bootstrap as ads_bootstrap

from meshpy.model.routes import StringMatch
from meshpy.model.tls import ClientTls, Pem, SanMatch, Validation
from meshpy.model.unix_address import os_path
from meshpy.tasks import TaskOwner
from meshpy.xds.ads_tls import AdsClusterTls

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed")
Json = dict[str, Any]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket's path holds 107 bytes, pytest's tmp_path runs long."""
    path = Path(tempfile.mkdtemp(prefix="mp-unix-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unix_request(path: str | Path, target: str = "/",
                 headers: list[tuple[str, str]] | None = None) -> Response:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(os_path(str(path)))
        sock.sendall(request_bytes("GET", target, "app.local", headers))
        return read_response(sock)


def unix_raw(path: str, data: bytes) -> bytes:
    """Bytes through a TCP proxy on a Unix socket, until the far side closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(os_path(path))
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


class UnixServer:
    """A Unix socket server in threads: `answer(conn)` for each connection, TLS first with `ctx`."""

    def __init__(self, path: Path, answer: Callable[[socket.socket], None],
                 ctx: ssl.SSLContext | None = None) -> None:
        self.answer, self.ctx = answer, ctx
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)  # (the TLS socket takes its fd)
            self.answer(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def fixed_answer(status: int, body: bytes) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        while read_request_head(conn):  # keep-alive: one answer per request until the peer closes
            conn.sendall(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
    return answer


class Upstreams:
    """What the proxies reach over Unix sockets: the demo upstream (HTTP/1.1), a gRPC echo server with
    health (HTTP/2) and a TLS server that says which SNI it was asked for."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.demo = subprocess.Popen([sys.executable, "-m", "meshpy", "demo-upstream", "--listen",
                                      f"unix:{d / 'up.sock'}", "--name", "unix-demo"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.health = {"": 1}
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add_handlers(self.grpc, self.health)
        self.grpc.add_insecure_port(f"unix:{d / 'grpc.sock'}")
        self.grpc.start()
        self.ca = make_ca(d / "pki")
        issued = self.ca.issue("backend", dns=("backend.local",))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(issued.cert, issued.key)
        self.sni: list[str | None] = []
        ctx.sni_callback = lambda obj, name, _ctx: self.sni.append(name)  # type: ignore[func-returns-value]
        self.tls = UnixServer(d / "tls.sock", fixed_answer(200, b"over TLS"), ctx)
        eventually(lambda: (d / "up.sock").exists(), "the demo upstream listens")

    def close(self) -> None:
        self.demo.terminate()
        self.demo.wait(10)
        self.grpc.stop(None)
        self.tls.close()


@pytest.fixture
def upstreams(short_dir: Path) -> Iterator[Upstreams]:
    running = Upstreams(short_dir)
    yield running
    running.close()


# -- one Envoy bootstrap for Envoy and meshpy -----------------------------------------------------------


def access_log(path: Path) -> list[Json]:
    """A JSON line per request: keys of meshpy's own line (what meshpy wrote before it read formats),
    and the other operators that name the client's and the listener's addresses."""
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path), "log_format": {"json_format": {
            "path": "%REQ(:PATH)%", "response_code": "%RESPONSE_CODE%",
            "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            "upstream_host": "%UPSTREAM_HOST%", "remote": "%DOWNSTREAM_REMOTE_ADDRESS%",
            "local": "%DOWNSTREAM_LOCAL_ADDRESS%"}}}}]


def hcm(name: str, routes: list[Json], log: Path, **extra: Any) -> Json:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name, "access_log": access_log(log), **extra,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}


def route(prefix: str, cluster: str) -> Json:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


def pipe_cluster(name: str, path: Path, **extra: Any) -> Json:
    return {"name": name, "connect_timeout": "1s", **extra, "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "pipe": {"path": str(path)}}}}]}]}}


def bootstrap(d: Path, mine: Path, raw: str, admin: int, port: int, ca: Path) -> str:
    log = mine / "access.log"
    listeners = [
        {"name": "web", "address": {"pipe": {"path": str(mine / "web.sock"), "mode": 0o660}},
         "filter_chains": [{"filters": [hcm("web", [route("/tls", "tls"), route("/gone", "gone"),
                                                    route("/", "backend")], log, use_remote_address=True)]}]},
        {"name": "grpc", "address": {"pipe": {"path": str(mine / "grpc-in.sock")}},
         "filter_chains": [{"filters": [hcm("grpc", [route("/", "grpc")], log)]}]},
        {"name": "raw", "address": {"pipe": {"path": raw}}, "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP, "stat_prefix": "raw", "cluster": "backend", "access_log": access_log(log)}}]}]},
        {"name": "plain", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
         "filter_chains": [{"filters": [hcm("plain", [route("/", "backend")], log)]}]},
    ]
    h2 = {HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                         "explicit_http_config": {"http2_protocol_options": {}}}}
    clusters = [
        pipe_cluster("backend", d / "up.sock",
                     upstream_connection_options={"tcp_keepalive": {"keepalive_time": 300}},
                     outlier_detection={"consecutive_5xx": 5}),
        pipe_cluster("grpc", d / "grpc.sock", typed_extension_protocol_options=h2, health_checks=[{
            "timeout": "1s", "interval": "0.5s", "unhealthy_threshold": 1, "healthy_threshold": 1,
            "grpc_health_check": {}}]),
        pipe_cluster("tls", d / "tls.sock", transport_socket={"name": "envoy.transport_sockets.tls",
                                                             "typed_config": {
            "@type": TLS, "sni": "backend.local", "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": str(ca)},
                "match_typed_subject_alt_names": [{"san_type": "DNS",
                                                   "matcher": {"exact": "backend.local"}}]}}}}),
        pipe_cluster("gone", d / "missing.sock"),
    ]
    admin_address = {"socket_address": {"address": "127.0.0.1", "port_value": admin}}
    return json.dumps({"admin": {"address": admin_address},
                       "static_resources": {"listeners": listeners, "clusters": clusters}})


def log_lines(path: Path, count: int) -> list[Json]:
    def enough() -> bool:
        return path.exists() and len(path.read_text().splitlines()) >= count
    eventually(enough, f"{count} access log lines in {path}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _normal(key: str, value: object, d: Path, mine: Path, raw: str) -> str:
    """A logged value with this run's directories, abstract name and TCP ports written alike."""
    text = str(value).replace(str(mine), "<mine>").replace(str(d), "<d>").replace(raw, "<raw>")
    return re.sub(r":\d+$", ":<port>", text) if key in ("remote", "local") else text


def observe(d: Path, mine: Path, raw: str, port: int) -> Json:
    """What a client and the upstreams see through one proxy, with its own directory written <mine>."""
    web = mine / "web.sock"
    info = os.stat(web)
    seen: Json = {"web socket": (stat.S_ISSOCK(info.st_mode), oct(info.st_mode & 0o777))}
    plain = unix_request(web)
    echoed = json.loads(plain.body)["headers"]
    seen["GET /"] = (plain.status, echoed.get("x-forwarded-for"), echoed.get("x-forwarded-proto"))
    told = json.loads(unix_request(web, headers=[("x-forwarded-for", "203.0.113.7")]).body)["headers"]
    seen["GET / with x-forwarded-for"] = told.get("x-forwarded-for")
    over_tls = unix_request(web, "/tls")
    seen["GET /tls"] = (over_tls.status, over_tls.body)
    seen["GET /gone"] = unix_request(web, "/gone").status
    tunnel = unix_raw(raw, request_bytes("GET", "/raw", "app.local", [("connection", "close")]))
    seen["tcp proxy"] = (tunnel.split(b"\r\n", 1)[0], b"unix-demo" in tunnel)
    with grpc.insecure_channel(f"unix:{mine / 'grpc-in.sock'}") as channel:
        seen["grpc"] = channel.unary_unary("/echo.Echo/Unary")(b"ping", timeout=10)
    seen["tcp listener to a unix endpoint"] = http(port, path="/plain").status
    lines = log_lines(mine / "access.log", 7)
    seen["access log"] = sorted(json.dumps({k: _normal(k, v, d, mine, raw) for k, v in line.items()},
                                           sort_keys=True) for line in lines)
    return seen


def run_envoy(d: Path, upstreams: Upstreams) -> Json:
    mine = d / "envoy"
    mine.mkdir()
    (mine / "web.sock").write_text("a stale file where the socket goes\n")
    raw, admin, port = f"@mp-{os.getpid()}-envoy", free_port(), free_port()
    envoy = Envoy(bootstrap(d, mine, raw, admin, port, upstreams.ca.path), admin,
                  extra_args=["--file-flush-interval-msec", "50"]).start()
    try:
        return observe(d, mine, raw, port)
    finally:
        envoy.stop()


def run_meshpy(d: Path, upstreams: Upstreams, loop: str) -> Json:
    mine = d / f"meshpy-{loop}"
    mine.mkdir()
    (mine / "web.sock").write_text("a stale file where the socket goes\n")
    raw, admin, port = f"@mp-{os.getpid()}-{loop}", free_port(), free_port()
    proxy = Proxy(bootstrap(d, mine, raw, admin, port, upstreams.ca.path), admin, loop=loop).start()
    try:
        return observe(d, mine, raw, port)
    finally:
        proxy.stop()


@needs_envoy
def test_envoy_and_meshpy_on_unix_sockets(short_dir: Path, upstreams: Upstreams) -> None:
    def line(path: str, code: str, peer: str, upstream: str) -> str:
        # On a Unix socket the client's address is the listener's path, with or without "port".
        with_port = "127.0.0.1:<port>" if peer == "127.0.0.1" else peer
        return json.dumps({"path": path, "response_code": code, "downstream_remote_address": peer,
                           "remote": with_port, "local": with_port, "upstream_host": upstream},
                          sort_keys=True)

    expected_log = sorted([
        line("/", "200", "<mine>/web.sock", "<d>/up.sock"),
        line("/", "200", "<mine>/web.sock", "<d>/up.sock"),
        line("/tls", "200", "<mine>/web.sock", "<d>/tls.sock"),
        line("/gone", "503", "<mine>/web.sock", "<d>/missing.sock"),
        line("None", "0", "<raw>", "<d>/up.sock"),
        line("/echo.Echo/Unary", "200", "<mine>/grpc-in.sock", "<d>/grpc.sock"),
        line("/plain", "200", "127.0.0.1", "<d>/up.sock"),
    ])
    envoy = run_envoy(short_dir, upstreams)
    assert envoy == {
        "web socket": (True, "0o660"),  # the stale file replaced, the mode set
        "GET /": (200, None, "http"),  # use_remote_address, yet no x-forwarded-for: the peer has no IP
        "GET / with x-forwarded-for": "203.0.113.7",  # kept as the client sent it, nothing appended
        "GET /tls": (200, b"over TLS"),
        "GET /gone": 503,
        "tcp proxy": (b"HTTP/1.1 200 OK", True),
        "grpc": b"ping",
        "tcp listener to a unix endpoint": 200,
        "access log": expected_log,  # the peer: the listener's path, as Envoy reads it (getsockname)
    }
    assert upstreams.sni and set(upstreams.sni) == {"backend.local"}
    for loop in LOOPS:
        assert run_meshpy(short_dir, upstreams, loop) == envoy, loop


# -- meshpy alone -----------------------------------------------------------------------------------------


def clusters_view(proxy: Proxy) -> dict[str, list[Json]]:
    return {c["name"]: c["endpoints"] for c in json.loads(proxy.admin("/clusters")[1])["clusters"]}


def test_outlier_detection_and_health_checks_over_unix_sockets(short_dir: Path, upstreams: Upstreams) -> None:
    d = short_dir
    failing = UnixServer(d / "bad.sock", fixed_answer(503, b"down"))
    admin = free_port()
    config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: unix:{d / "web.sock"}
    routes: [{{match: /echo.Echo/, cluster: grpc}}, {{match: /, cluster: backend}}]
clusters:
  backend:
    endpoints: [unix:{d / "up.sock"}, unix:{d / "bad.sock"}]
    outlier_detection:
      {{consecutive_5xx: 2, interval: 100ms, base_ejection_time: 30s, max_ejection_percent: 50}}
  grpc:
    protocol: http2
    endpoints: [unix:{d / "grpc.sock"}]
    health_check: {{type: grpc, interval: 100ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1}}
"""
    proxy = Proxy(config, admin).start()
    try:
        statuses = [unix_request(d / "web.sock", "/x").status for _ in range(8)]
        assert statuses.count(503) >= 2  # until the failing endpoint is ejected
        health = {e["address"]: e["health"] for e in clusters_view(proxy)["backend"]}
        assert health == {str(d / "up.sock"): "healthy", str(d / "bad.sock"): "/failed_outlier_check"}
        assert [unix_request(d / "web.sock", "/y").status for _ in range(6)] == [200] * 6
        served = failing.connections
        upstreams.health[""] = 2  # NOT_SERVING: the gRPC check over the Unix socket says so
        eventually(lambda: clusters_view(proxy)["grpc"][0]["health"] == "/failed_active_hc", "checked out")
        upstreams.health[""] = 1
        eventually(lambda: clusters_view(proxy)["grpc"][0]["health"] == "healthy", "checked back in")
        assert failing.connections == served  # an ejected endpoint gets no traffic
    finally:
        proxy.stop()
        failing.close()


def test_a_reload_keeps_a_unix_listeners_socket(short_dir: Path, upstreams: Upstreams) -> None:
    d, admin = short_dir, free_port()
    web = d / "web.sock"

    def config(name: str, body: str, mode: str = "0600") -> str:
        return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: {name}
    address: {{unix: {web}, mode: {mode}}}
    routes: [{{match: /, direct: {{status: 200, body: {body}}}}}]
"""

    proxy = Proxy(config("web", "one"), admin).start()
    try:
        first = os.stat(web)
        assert oct(first.st_mode & 0o777) == "0o600" and unix_request(web).body == b"one"
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a keep-alive client across reloads
        held.connect(str(web))
        proxy.rewrite(config("renamed", "two"))
        eventually(lambda: unix_request(web).body == b"two", "the new routes serve")
        assert os.stat(web).st_ino == first.st_ino  # the same socket, renamed listener and all
        held.sendall(request_bytes("GET", "/", "app.local"))
        assert read_response(held).status == 200
        held.close()
        proxy.rewrite(config("renamed", "three", mode="0666"))
        eventually(lambda: unix_request(web).body == b"three", "served from the new socket")
        after = os.stat(web)
        assert after.st_ino != first.st_ino and oct(after.st_mode & 0o777) == "0o666"
    finally:
        proxy.stop()
    assert stat.S_ISSOCK(os.stat(web).st_mode)  # left behind, as Envoy leaves it: the next bind replaces it
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(web))


def test_the_admin_on_a_unix_socket(short_dir: Path) -> None:
    admin = short_dir / "admin.sock"
    config = f"""
admin: {{address: {{unix: {admin}, mode: 0600}}}}
drain_time: 0s
listeners:
  - name: web
    address: unix:{short_dir / "web.sock"}
    routes: [{{match: /, direct: {{status: 204}}}}]
"""
    proxy = Proxy(config, 0).start(wait_ready=False)
    try:
        done = subprocess.run([sys.executable, "-m", "meshpy", "wait", "--admin", f"unix:{admin}",
                               "--timeout", "15"], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr + proxy.logs()
        assert oct(os.stat(admin).st_mode & 0o777) == "0o600"
        assert unix_request(admin, "/ready").body.strip() == b"LIVE"
        assert unix_request(short_dir / "web.sock").status == 204
    finally:
        proxy.stop()


def test_meshpy_wait_names_a_missing_admin_socket(short_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "meshpy", "wait", "--admin", f"unix:{short_dir / 'none'}",
                           "--timeout", "0.3"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "not ready within" in done.stderr, done.stderr


# -- ADS over a Unix socket (Istio's xds-grpc cluster: its agent's socket) ---------------------------------


def pipe_endpoints(path: Path) -> str:
    return f"""
"@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
cluster_name: demo
endpoints:
- lb_endpoints:
  - endpoint: {{ address: {{ pipe: {{ path: {path} }} }} }}
"""


@needs_envoy
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_ads_from_a_control_plane_on_a_unix_socket(short_dir: Path, upstreams: Upstreams,
                                                   api_type: str) -> None:
    """The bootstrap's ADS cluster is a pipe: Envoy and meshpy, one after the other, take their listener,
    routes and an EDS cluster whose endpoint is a Unix socket from `meshpy control` on a Unix socket."""
    d, port = short_dir, free_port()
    source = d / "resources"
    source.mkdir()
    (source / "listener.yaml").write_text(listener(port))
    (source / "routes.yaml").write_text(routes())
    (source / "cluster.yaml").write_text(CLUSTER)
    (source / "endpoints.yaml").write_text(pipe_endpoints(d / "up.sock"))
    xds = d / "xds.sock"
    with open(d / "control.log", "wb") as log:
        control = subprocess.Popen([sys.executable, "-m", "meshpy", "control", "--listen", f"unix:{xds}",
                                    "--admin", f"127.0.0.1:{free_port()}", "--envoy-dir", str(source)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: xds.exists(), "the control plane listens")
        answers = []
        for proxy_kind in ("envoy", "meshpy"):
            admin = free_port()
            config = ads_bootstrap(admin, 0, api_type).replace(
                "socket_address: { address: 127.0.0.1, port_value: 0 }", f"pipe: {{ path: {xds} }}")
            assert f"pipe: {{ path: {xds} }}" in config
            proxy: Envoy | Proxy = Envoy(config, admin) if proxy_kind == "envoy" else Proxy(config, admin)
            proxy.start()
            try:
                eventually(lambda: http(port).status == 200, f"{proxy_kind} serves what came over ADS")
                answer = http(port, path="/over-ads")
                answers.append((answer.status, json.loads(answer.body)["upstream"]))
            finally:
                proxy.stop()
        assert answers == [(200, "unix-demo")] * 2
    finally:
        control.terminate()
        control.wait(10)


async def test_the_ads_streams_tls_over_a_unix_socket(short_dir: Path) -> None:
    """An ADS cluster on a pipe with an UpstreamTlsContext: the stream's TLS (meshpy.xds.ads_tls) is made
    over the Unix socket, the server's certificate checked by the CA and a SAN matcher."""
    ca = make_ca(short_dir / "mesh", "mesh root")
    issued = ca.issue("control", dns=("control.mesh",))
    credentials = grpc.ssl_server_credentials([(issued.key_pem, issued.cert_pem)])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_handlers(server)
    server.add_secure_port(f"unix:{short_dir / 'ads.sock'}", credentials)
    server.start()
    owner = TaskOwner(asyncio.get_running_loop())
    results = []
    try:
        for name in ("control.mesh", "other.mesh"):
            san = SanMatch(kind="dns", match=StringMatch(kind="exact", value=name))
            tls = AdsClusterTls(f"unix:{short_dir / 'ads.sock'}",
                                ClientTls(validation=Validation(ca=Pem(path=str(ca.path)), san=(san,))), 2.0)
            await tls.start(owner)
            channel = tls.channel(tls.server)
            try:
                results.append(await channel.unary_unary("/echo.Echo/Unary")(b"ping", timeout=5))
            except grpc.aio.AioRpcError as err:
                results.append(tls.hint(err.details() or ""))
            finally:
                await channel.close()
                await tls.close()
    finally:
        await owner.stop()
        server.stop(None)
    assert results[0] == b"ping"
    assert "has no SAN that the cluster's matchers accept" in str(results[1]), results


# -- a gRPC service the proxy calls itself, on a Unix socket ---------------------------------------------


def authz_bootstrap(d: Path, mine: Path, admin: int) -> str:
    """A listener on a Unix socket whose ext_authz filter calls a gRPC service through a pipe cluster."""
    h2 = {HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                         "explicit_http_config": {"http2_protocol_options": {}}}}
    chain = hcm("web", [route("/", "backend")], mine / "access.log")
    chain["typed_config"]["http_filters"].insert(0, {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": EXT_AUTHZ, "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"}}})
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "web", "address": {"pipe": {"path": str(mine / "web.sock")}},
                           "filter_chains": [{"filters": [chain]}]}],
            "clusters": [pipe_cluster("backend", d / "up.sock"),
                         pipe_cluster("authz", d / "authz.sock", typed_extension_protocol_options=h2)]}})


@needs_envoy
def test_ext_authz_over_unix_sockets(short_dir: Path, upstreams: Upstreams) -> None:
    """What the authorization service is asked about a client on a Unix socket (source and destination:
    the listener's path, as pipe addresses) and what the client gets, from Envoy and from meshpy."""
    d = short_dir
    service = GrpcAuthz(0, unix=str(d / "authz.sock")).start()
    seen = []
    try:
        for kind in ("envoy", "meshpy"):
            mine, admin = d / kind, free_port()
            mine.mkdir()
            config = authz_bootstrap(d, mine, admin)
            proxy: Envoy | Proxy = Envoy(config, admin) if kind == "envoy" else Proxy(config, admin)
            proxy.start()
            service.seen.clear()
            try:
                allowed = unix_request(mine / "web.sock", "/ok")
                denied = unix_request(mine / "web.sock", "/deny")
            finally:
                proxy.stop()
            source, destination = (json_format.MessageToDict(a.address) for a in (
                service.seen[0].attributes.source, service.seen[0].attributes.destination))
            seen.append((allowed.status, json.loads(allowed.body)["headers"].get("x-current-user"),
                         denied.status, denied.body, _normal("", source, d, mine, "@none"),
                         _normal("", destination, d, mine, "@none")))
    finally:
        service.stop()
    expected = str({"pipe": {"path": "<mine>/web.sock"}})
    assert seen == [(200, "alice", 401, b"denied by policy", expected, expected)] * 2


def test_a_socket_that_cannot_be_made_is_named(short_dir: Path) -> None:
    (short_dir / "taken").mkdir()  # a directory: removing it fails, and bind then says why
    config = short_dir / "config.yaml"
    config.write_text(f"""
listeners:
  - {{name: a, address: unix:{short_dir / "taken"}, routes: [{{match: /, direct: {{status: 204}}}}]}}
""")
    done = subprocess.run([sys.executable, "-m", "meshpy", "run", "-c", str(config)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert f"listeners[0].address: cannot listen on unix:{short_dir / 'taken'}: Address already in use" in \
        done.stdout + done.stderr
