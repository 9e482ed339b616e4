"""The xDS client's conversations with config sources other than ADS, inside a real App, against real
servers on 127.0.0.1 on the same event loop: a second control plane's per-type SDS stream (started when
a listener first names it, rotated, retired when nothing names it), a watched file, REST polling through
failures, and an RTDS layer on a stream of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import any_pb2, json_format
from kit import free_port
from pki import Ca, Issued, make_ca

from control.ads import AdsServer, add_to_server
from control.cache import LISTENER, SECRET, SnapshotCache, make_snapshot
from meshpy.app import App
from meshpy.model.routes import StringMatch
from meshpy.model.runtime import LayeredRuntime, RuntimeLayer
from meshpy.model.tls import ClientTls, Pem, SanMatch, Validation
from meshpy.model.types import ApiSource, Config, XdsServer, XdsSource
from meshpy.xds.client import AdsClient
from meshpy.xds.store import MESSAGES, RUNTIME
from meshpy.xds.translate import load_bootstrap

pytestmark = pytest.mark.asyncio(loop_scope="module")
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
ROUTER = {"name": "router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
NODE = json.dumps({"id": "node-1", "cluster": "web"})


class Plane:
    """`meshpy control`'s gRPC services (ADS and each type's own) on a port of their own."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.port = free_port()
        self.cache = SnapshotCache()
        self.ads = AdsServer(self.cache)
        self.server = grpc.aio.server()
        add_to_server(self.ads, self.server)
        if credentials is None:
            self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            self.server.add_secure_port(f"127.0.0.1:{self.port}", credentials)

    def publish(self, resources: dict[str, dict[str, Any]]) -> None:
        self.cache.set(make_snapshot({t: {n: json_format.ParseDict(d, MESSAGES[t]())
                                          for n, d in named.items()} for t, named in resources.items()}))


@contextlib.asynccontextmanager
async def planes(n: int, credentials: grpc.ServerCredentials | None = None) -> AsyncIterator[list[Plane]]:
    """`n` control planes; the last over TLS with `credentials`."""
    started = [Plane(credentials if i == n - 1 else None) for i in range(n)]
    for p in started:
        await p.server.start()
    try:
        yield started
    finally:
        for p in started:
            await p.server.stop(0)


@contextlib.asynccontextmanager
async def client_for(static: Config, source: XdsSource) -> AsyncIterator[tuple[App, AdsClient]]:
    app = App(asyncio.get_running_loop(), drain_time=0.0, grace_time=0.5)
    app.hold_initialization()
    await app.apply(static)
    client = AdsClient(app, static, source)
    client.start()
    try:
        yield app, client
    finally:
        await client.close()
        app.shutdown(drain=False)
        await app.wait_stopped()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


async def served_serial(port: int) -> int | None:
    """The serial number of the certificate the TLS listener on `port` presents (None: none yet)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 2)
    except (OSError, TimeoutError):
        return None
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return int(x509.load_der_x509_certificate(der).serial_number)


async def serves(port: int, leaf: Issued) -> bool:
    return await served_serial(port) == serial(leaf)


def serial(leaf: Issued) -> int:
    return int(x509.load_pem_x509_certificate(leaf.cert_pem).serial_number)


def secret(leaf: Issued) -> dict[str, Any]:
    return {"name": "server-cert", "tls_certificate": {
        "certificate_chain": {"inline_string": leaf.cert_pem.decode()},
        "private_key": {"inline_string": leaf.key_pem.decode()}}}


def tls_listener(port: int, sds_config: dict[str, Any]) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "tls", "http_filters": [ROUTER], "route_config": {"virtual_hosts": [
        {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                      "direct_response": {"status": 204}}]}]}}
    return {"name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}], "transport_socket": {
                "name": "tls", "typed_config": {
                    "@type": f"{TLS}.DownstreamTlsContext", "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [
                            {"name": "server-cert", "sds_config": sds_config}]}}}}]}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(("kind", "tls"), [("GRPC", False), ("DELTA_GRPC", False), ("GRPC", True)],
                         ids=["sotw", "delta", "sotw over TLS"])
async def test_secrets_from_a_second_server_start_rotate_and_retire_a_stream(kind: str, tls: bool, ca: Ca,
                                                                             ) -> None:
    port = free_port()
    sds = {"resource_api_version": "V3", "api_config_source": {
        "api_type": kind, "grpc_services": [{"envoy_grpc": {"cluster_name": "sds"}}]}}
    agent_cert = ca.issue("agent", dns=("agent.test",))
    credentials = grpc.ssl_server_credentials([(agent_cert.key_pem, agent_cert.cert_pem)]) if tls else None
    # The agent's cluster checks the agent's certificate as its UpstreamTlsContext says (meshpy.xds.ads_tls).
    checked = ClientTls(validation=Validation(ca=Pem(path=str(ca.path)), san=(
        SanMatch(kind="dns", match=StringMatch(kind="exact", value="agent.test")),))) if tls else None
    async with planes(2, credentials) as (ads, agent):
        first, second = ca.issue("one", dns=("a.test",)), ca.issue("two", dns=("a.test",))
        agent.publish({SECRET: {"server-cert": secret(first)}})
        ads.publish({LISTENER: {"tls": tls_listener(port, sds)}})
        source = XdsSource(server=f"127.0.0.1:{ads.port}", node_json=NODE, backoff_base=0.05, backoff_max=0.2,
                           servers=(XdsServer(target=f"127.0.0.1:{agent.port}", cluster="sds", tls=checked),))
        async with client_for(Config(), source) as (app, client):
            await asyncio.wait_for(client.initialized.wait(), 5)
            assert await served_serial(port) == serial(first)
            name = f"{'grpc' if kind == 'GRPC' else 'delta'} sds Secret"
            assert sorted(client.status()["sources"]) == ["ADS", name]
            [node] = agent.ads.nodes.values()
            await eventually(lambda: SECRET in node.acked, "the agent got its ACK")
            assert LISTENER not in node.acked  # the agent's stream carries secrets only
            agent.publish({SECRET: {"server-cert": secret(second)}})
            await eventually(lambda: serves(port, second), "the rotated certificate")
            # Nothing names the agent any more: its stream is closed.
            ads.publish({LISTENER: {}})
            await eventually(lambda: "tls" not in app.listeners, "the listener removed")
            await eventually(lambda: not agent.ads.nodes, "the agent's stream closed")
            assert sorted(client.status()["sources"]) == ["ADS"]


async def test_a_secret_from_a_watched_file(tmp_path: Path, ca: Ca) -> None:
    port, path = free_port(), tmp_path / "cert.json"
    first, second = ca.issue("one", dns=("a.test",)), ca.issue("two", dns=("a.test",))

    def write(leaf: Issued | None) -> None:
        body: Any = [] if leaf is None else {"version_info": "x",
                                              "resources": [{"@type": f"{TLS}.Secret", **secret(leaf)}]}
        (tmp_path / "next").write_text(json.dumps(body))
        os.replace(tmp_path / "next", path)  # as Envoy expects a file to change: moved into place

    write(first)
    config = load_bootstrap({"node": {"id": "n", "cluster": "c"}, "static_resources": {"listeners": [
        tls_listener(port, {"path_config_source": {"path": str(path)}})]}})
    assert config.xds is not None and config.listeners == ()
    async with client_for(config, config.xds) as (_app, client):
        await asyncio.wait_for(client.initialized.wait(), 5)
        assert await served_serial(port) == serial(first)
        write(None)  # not a DiscoveryResponse: refused, the old certificate stays
        await eventually(lambda: SECRET in client.last_nack, "the bad file refused", 4)
        assert client.last_nack[SECRET].startswith(f"{path}: not a DiscoveryResponse")
        assert await served_serial(port) == serial(first)
        write(second)
        await eventually(lambda: serves(port, second), "the new file's certificate", 4)


async def test_rest_polls_through_failures() -> None:
    answers: list[tuple[int, bytes]] = [(500, b"busy"), (200, b"{not json"), (404, b"")]
    asked: list[dict[str, Any]] = []
    listener_port = free_port()
    listener = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                **tls_listener(listener_port, {})}
    del listener["filter_chains"][0]["transport_socket"]
    good = json.dumps({"version_info": "7", "resources": [listener]}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        body = json.loads(await reader.readexactly(length))
        asked.append({"head": head.decode(), **body})
        status, data = answers.pop(0) if answers else ((304, b"") if body.get("version_info") == "7"
                                                        else (200, good))
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    rest = XdsServer(target=f"127.0.0.1:{server.sockets[0].getsockname()[1]}", cluster="xds_cluster")
    source = XdsSource(server="", node_json=NODE, cds=False, initial_fetch_timeout=None, lds_source=ApiSource(
        protocol="rest", server=rest, refresh_delay=0.02, request_timeout=1.0))
    try:
        async with client_for(Config(), source) as (app, client):
            await asyncio.wait_for(client.initialized.wait(), 5)
            assert "tls" in app.listeners
            assert client.counts[("Listener", "rejected")] == 1  # the body that was no JSON
            await eventually(lambda: any(a.get("version_info") == "7" for a in asked), "polled with v7")
            await eventually(lambda: len(asked) > 6, "polling goes on (304: nothing new)")
            assert client.status()["sources"]["rest xds_cluster Listener"]["versions"] == {"Listener": "7"}
    finally:
        server.close()
        await server.wait_closed()
    first = asked[0]
    assert first["head"].startswith("POST /v3/discovery:listeners HTTP/1.1\r\n")
    assert "host: xds_cluster" in first["head"].lower()
    assert first["type_url"] == "type.googleapis.com/envoy.config.listener.v3.Listener"
    assert all(a["node"]["id"] == "node-1" for a in asked)  # REST keeps nothing: the node every time


async def test_an_rtds_layer_on_a_stream_of_its_own() -> None:
    seen: list[DiscoveryRequest] = []

    async def stream_runtime(requests: AsyncIterator[DiscoveryRequest], _: Any) -> AsyncIterator[Any]:
        async for req in requests:
            seen.append(req)
            if req.response_nonce:
                continue  # an ACK
            resources = []
            for name in req.resource_names:
                packed = any_pb2.Any()
                packed.Pack(json_format.ParseDict({"name": name, "layer": {"demo": {"flag": "on"}}},
                                                  rtds_pb2.Runtime()))
                resources.append(packed)
            yield DiscoveryResponse(version_info="1", type_url=RUNTIME, nonce="1", resources=resources)

    server = grpc.aio.server()
    method = grpc.stream_stream_rpc_method_handler(
        stream_runtime, request_deserializer=DiscoveryRequest.FromString,
        response_serializer=DiscoveryResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "envoy.service.runtime.v3.RuntimeDiscoveryService", {"StreamRuntime": method}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    grpc_source = ApiSource(protocol="grpc", server=XdsServer(target=f"127.0.0.1:{port}", cluster="rt"))
    static = Config(runtime=LayeredRuntime(layers=(RuntimeLayer(name="rt", kind="rtds", resource="rt-0"),)))
    source = XdsSource(server="", node_json=NODE, lds=False, cds=False,
                       runtime_sources=(("rt-0", grpc_source),))
    try:
        async with client_for(static, source) as (app, client):
            await asyncio.wait_for(client.initialized.wait(), 5)
            assert app.runtime.snapshot.get("demo.flag") == "on"
            await eventually(lambda: len(seen) == 2, "the ACK")
            assert [list(r.resource_names) for r in seen] == [["rt-0"], ["rt-0"]]
            # No set_node_on_first_message_only: the node in every request, as Envoy sends it.
            assert [r.node.id for r in seen] == ["node-1", "node-1"]
            assert seen[1].response_nonce == "1" and seen[1].version_info == "1"
    finally:
        await server.stop(0)
