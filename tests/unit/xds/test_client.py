"""The xDS client inside a real App, against the real control plane (control.ads on grpc.aio), both on
one event loop over 127.0.0.1, for state of the world and delta: initialization and /ready, live
changes, NACKs with their error_detail, endpoint updates that keep pools, listeners added and
removed, reconnection to a restarted server, and the initial fetch timeout."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from kit import free_port

from control.ads import AdsServer, add_to_server
from control.cache import SnapshotCache, make_snapshot
from control.sources.export import export
from meshpy.app import App
from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import Config, XdsSource
from meshpy.xds.bootstrap import short_form
from meshpy.xds.client import AdsClient
from meshpy.xds.store import CLUSTER, ENDPOINT, ROUTE

grpc_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = grpc_loop

MESHPY = """
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /teapot
        direct: {{status: {teapot}, body: "short and stout"}}
      - match: /
        cluster: backend
{extra}
clusters:
  - name: backend
    endpoints: [{endpoints}]
"""


def snapshot(port: int, teapot: int = 418, endpoints: str = "127.0.0.1:9", extra: str = "") -> Any:
    text = MESHPY.format(port=port, teapot=teapot, endpoints=endpoints, extra=extra)
    return make_snapshot(export(load_text(text)))


class Plane:
    """The control plane on a fixed port, so that it can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.cache = SnapshotCache()
        self.ads = AdsServer(self.cache)
        self.server: grpc.aio.Server | None = None

    async def start(self) -> Plane:
        self.ads = AdsServer(self.cache)
        self.server = grpc.aio.server()
        add_to_server(self.ads, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@contextlib.asynccontextmanager
async def following(plane: Plane, delta: bool, static: Config | None = None,
                    fetch_timeout: float | None = 10.0) -> AsyncIterator[tuple[App, AdsClient]]:
    app = App(asyncio.get_running_loop(), drain_time=0.0, grace_time=0.5)
    base = short_form(f"127.0.0.1:{plane.port}", "node-1", "web", delta)
    source = XdsSource(server=base.server, delta=delta, node_json=base.node_json,
                       initial_fetch_timeout=fetch_timeout, backoff_base=0.05, backoff_max=0.2)
    static = static or Config()
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


@contextlib.asynccontextmanager
async def live(delta: bool, endpoints: str = "127.0.0.1:9",
               ) -> AsyncIterator[tuple[Plane, App, AdsClient, int]]:
    """A started control plane with one listener's config published, and an App that has taken it."""
    plane = await Plane().start()
    port = free_port()
    try:
        async with following(plane, delta) as (app, client):
            plane.cache.set(snapshot(port, endpoints=endpoints))
            await asyncio.wait_for(client.initialized.wait(), 5)
            yield plane, app, client, port
    finally:
        await plane.stop()


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


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


async def status_is(port: int, path: str, status: int) -> bool:
    with contextlib.suppress(OSError):
        return (await get(port, path))[0] == status
    return False


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_initial_config_then_live_changes(delta: bool) -> None:
    plane = await Plane().start()
    port = free_port()
    try:
        async with following(plane, delta) as (app, client):
            await asyncio.sleep(0.2)
            assert app.state() == "PRE_INITIALIZING"  # connected, but the server has nothing yet
            plane.cache.set(snapshot(port))
            await asyncio.wait_for(client.initialized.wait(), 5)
            assert app.state() == "LIVE"
            assert await get(port, "/teapot") == (418, b"short and stout")
            # Every type ACKed at the version the server sent.
            [status] = plane.ads.nodes.values()
            await eventually(lambda: len(status.acked) == 4, "four types ACKed")
            assert status.last_nack is None and status.node_id == "node-1"

            plane.cache.set(snapshot(port, teapot=202))
            await eventually(lambda: status_is(port, "/teapot", 202), "the route change is served")
            extra = ("  - name: admin\n    address: 127.0.0.1:{p}\n"
                     "    routes: [{{match: /, direct: {{status: 204}}}}]")
            second = free_port()
            plane.cache.set(snapshot(port, teapot=202, extra=extra.format(p=second)))
            await eventually(lambda: status_is(second, "/", 204), "a listener added")
            plane.cache.set(snapshot(port, teapot=202))
            await eventually(lambda: "admin" not in app.listeners, "the listener removed")
            with pytest.raises(OSError):
                await get(second, "/")
            assert await get(port, "/teapot") == (202, b"short and stout")
            assert client.counts[("Listener", "accepted")] >= 3
    finally:
        await plane.stop()


async def test_nack_names_the_resource_and_keeps_the_old_config(delta: bool) -> None:
    async with live(delta) as (plane, app, client, port):
        version = app.snapshot.version if app.snapshot else None
        bad = export(load_text(MESHPY.format(port=port, teapot=418, endpoints="127.0.0.1:9", extra="")))
        bad[CLUSTER]["backend"].lb_policy = 6  # CLUSTER_PROVIDED
        plane.cache.set(make_snapshot(bad))
        [status] = plane.ads.nodes.values()
        await eventually(lambda: status.last_nack is not None, "the server got a NACK")
        assert status.last_nack is not None
        assert "Cluster backend: lb_policy: CLUSTER_PROVIDED is not supported by meshpy" in status.last_nack
        assert client.last_nack[CLUSTER].startswith("Cluster backend: lb_policy:")
        assert app.snapshot is not None and app.snapshot.version == version
        assert await get(port, "/teapot") == (418, b"short and stout")
        assert client.counts[("Cluster", "rejected")] == 1
        # A good config afterwards is taken again, and clears the NACK.
        plane.cache.set(snapshot(port, teapot=203))
        await eventually(lambda: status_is(port, "/teapot", 203), "a fixed config is served")
        assert CLUSTER not in client.last_nack


async def test_endpoint_changes_keep_the_cluster_runtime(delta: bool) -> None:
    async with live(delta, endpoints="127.0.0.1:9, 127.0.0.1:10") as (plane, app, _client, port):
        runtime = app.clusters.clusters["backend"]
        kept = runtime.hosts[0]
        plane.cache.set(snapshot(port, endpoints="127.0.0.1:9, 127.0.0.1:11"))
        await eventually(lambda: [h.label for h in runtime.hosts] == ["127.0.0.1:9", "127.0.0.1:11"],
                         "the new endpoints")
        assert app.clusters.clusters["backend"] is runtime  # same runtime: pools stay warm
        assert runtime.hosts[0] is kept


async def test_reconnects_to_a_restarted_server_and_converges(delta: bool) -> None:
    async with live(delta) as (plane, app, client, port):
        loads = app.metrics.config_version
        await plane.stop()
        await eventually(lambda: not client.connected, "the stream is down")
        assert await get(port, "/teapot") == (418, b"short and stout")  # serving on meanwhile
        # The same config again: the client re-subscribes with what it holds; nothing is re-applied.
        await plane.start()
        await eventually(lambda: client.connected and len(plane.ads.nodes) == 1, "reconnected")
        await asyncio.sleep(0.2)
        assert app.metrics.config_version == loads
        assert client.reconnects >= 1
        plane.cache.set(snapshot(port, teapot=201))
        await eventually(lambda: status_is(port, "/teapot", 201), "the new state after the restart")


async def test_initial_fetch_timeout_goes_live_with_what_there_is() -> None:
    plane = Plane()  # never started: nothing answers
    port = free_port()
    static = load_text(f"listeners:\n  - name: local\n    address: 127.0.0.1:{port}\n"
                       "    routes: [{match: /, direct: {status: 200}}]\n")
    async with following(plane, False, static, fetch_timeout=0.3) as (app, client):
        assert await get(port, "/") == (200, b"")  # static listeners serve at once
        assert app.state() == "PRE_INITIALIZING"
        await eventually(lambda: app.state() == "LIVE", "LIVE after the initial fetch timeout", 3)
        assert client.initialized.is_set() and not client.connected


async def test_a_listener_that_cannot_bind_is_nacked(delta: bool) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    taken = blocker.sockets[0].getsockname()[1]
    try:
        async with live(delta) as (plane, _app, _client, port):
            plane.cache.set(snapshot(taken))
            [status] = plane.ads.nodes.values()
            await eventually(lambda: status.last_nack is not None, "the NACK")
            assert status.last_nack is not None
            assert f"cannot listen on 127.0.0.1:{taken}" in status.last_nack
            assert await get(port, "/teapot") == (418, b"short and stout")  # the old listener serves on
    finally:
        blocker.close()


async def test_a_reloaded_static_file_keeps_the_dynamic_resources() -> None:
    plane = await Plane().start()
    port, static_port = free_port(), free_port()
    static_text = ("listeners:\n  - name: local\n    address: 127.0.0.1:{}\n"
                   "    routes: [{{match: /, direct: {{status: {}}}}}]\n")
    try:
        async with following(plane, False, load_text(static_text.format(static_port, 200))) as (_app, client):
            plane.cache.set(snapshot(port))
            await asyncio.wait_for(client.initialized.wait(), 5)
            await client.set_static(load_text(static_text.format(static_port, 201)))
            assert (await get(static_port, "/"))[0] == 201
            assert await get(port, "/teapot") == (418, b"short and stout")
            # A static listener named like a dynamic one is refused; both stay as they were.
            clash = load_text(static_text.format(free_port(), 202).replace("name: local", "name: web"))
            with pytest.raises(ConfigError) as err:
                await client.set_static(clash)
            assert "Listener web: a dynamic resource has this name already" in str(err.value)
            assert (await get(static_port, "/"))[0] == 201
    finally:
        await plane.stop()


PINNED_BOOTSTRAP = """
node: {{ id: node-1 }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{ google_grpc: {{ target_uri: "x", stat_prefix: x }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: pinned
    type: EDS
    eds_cluster_config: {{ service_name: pinned-cla, eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
  listeners:
  - name: edge
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\\
HttpConnectionManager"
          stat_prefix: edge
          rds: {{ route_config_name: edge-routes, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
          http_filters:
          - name: router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"""


async def test_static_listener_with_rds_and_static_eds_cluster_follow_the_server(delta: bool) -> None:
    """Envoy allows static resources that take their routes or endpoints over ADS: so does meshpy."""
    plane = await Plane().start()
    port = free_port()
    static = load_text(PINNED_BOOTSTRAP.format(port=port))
    assert static.xds is not None and static.listeners == () and static.clusters == ()
    res = export(load_text(MESHPY.format(port=free_port(), teapot=418, endpoints="127.0.0.1:9", extra="")))
    rc, cla = type(res[ROUTE]["web"])(), type(res[ENDPOINT]["backend"])()
    rc.CopyFrom(res[ROUTE]["web"])
    rc.name = "edge-routes"
    cla.CopyFrom(res[ENDPOINT]["backend"])
    cla.cluster_name = "pinned-cla"
    res[ROUTE]["edge-routes"] = rc
    res[ENDPOINT]["pinned-cla"] = cla
    plane.cache.set(make_snapshot(res))
    app = App(asyncio.get_running_loop(), drain_time=0.0, grace_time=0.5)
    source = dataclasses.replace(static.xds, server=f"127.0.0.1:{plane.port}", delta=delta,
                                 backoff_base=0.05, backoff_max=0.2)
    app.hold_initialization()
    await app.apply(static)
    client = AdsClient(app, static, source)
    client.start()
    try:
        await asyncio.wait_for(client.initialized.wait(), 5)
        assert await get(port, "/teapot") == (418, b"short and stout")  # the static listener's RDS routes
        assert [h.label for h in app.clusters.clusters["pinned"].hosts] == ["127.0.0.1:9"]  # its EDS
        assert "edge" in app.listeners and "web" in app.listeners  # beside the dynamic ones
    finally:
        await client.close()
        app.shutdown(drain=False)
        await app.wait_stopped()
        await plane.stop()
