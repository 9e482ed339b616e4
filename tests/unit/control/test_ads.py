"""The ADS server's state-of-the-world rules, driven by a real grpc.aio client over 127.0.0.1, and the
snapshot cache's consistency check."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from control.ads import AdsServer, add_to_server
from control.cache import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    InconsistentSnapshot,
    SnapshotCache,
    check,
    make_snapshot,
)

# grpc.aio binds its completion queue to the first event loop it runs on: these tests share one loop.
grpc_loop = pytest.mark.asyncio(loop_scope="module")


def resources(route_cluster: str = "web", endpoint_port: int = 8080, clusters: tuple[str, ...] = ("web",),
              ) -> dict[str, dict[str, Any]]:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="x", rds=hcm_pb2.Rds(route_config_name="local"))
    packed = any_pb2.Any()
    packed.Pack(hcm)
    lis = listener_pb2.Listener(name="l1")
    lis.filter_chains.add().filters.add(name="hcm", typed_config=packed)
    rc = route_pb2.RouteConfiguration(name="local")
    vh = rc.virtual_hosts.add(name="all", domains=["*"])
    vh.routes.add(match=route_components_pb2.RouteMatch(prefix="/"),
                  route=route_components_pb2.RouteAction(cluster=route_cluster))
    out: dict[str, dict[str, Any]] = {LISTENER: {"l1": lis}, ROUTE: {"local": rc}, CLUSTER: {}, ENDPOINT: {}}
    for name in clusters:
        out[CLUSTER][name] = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        ep = cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
        ep.address, ep.port_value = "127.0.0.1", endpoint_port
        out[ENDPOINT][name] = cla
    return out


def test_consistency_check_names_every_problem() -> None:
    snap = make_snapshot(resources(route_cluster="nowhere"))
    errors = check(snap)
    assert any("cluster 'nowhere' does not exist" in e for e in errors)
    bad = resources()
    del bad[ENDPOINT]["web"]
    del bad[ROUTE]["local"]
    errors = check(make_snapshot(bad))
    assert "Cluster 'web': no ClusterLoadAssignment 'web' for its endpoints" in errors
    assert "Listener 'l1': no RouteConfiguration 'local'" in errors
    cache = SnapshotCache()
    with pytest.raises(InconsistentSnapshot):
        cache.set(snap)
    assert cache.get("any") is None


def test_version_is_a_content_hash() -> None:
    a, b = make_snapshot(resources()), make_snapshot(resources())
    assert a.version == b.version
    assert make_snapshot(resources(endpoint_port=9)).version != a.version


def make_request(type_url: str, names: tuple[str, ...] = (), nonce: str = "", version: str = "",
                 error: str | None = None) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="n1", cluster="c1"), type_url=type_url,
                                         resource_names=list(names), response_nonce=nonce,
                                         version_info=version)
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


class StreamClient:
    """One ADS stream (state of the world, or delta with `delta`): requests go in through a queue,
    responses come out of `recv`."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool = False) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())
        # One reader for the whole stream: cancelling a grpc.aio read would cancel the call itself.
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _requests(self) -> AsyncIterator[Any]:
        while (req := await self.queue.get()) is not None:
            yield req

    async def _read(self) -> None:
        async for resp in self.call:
            self.responses.put_nowait(resp)

    async def recv(self, timeout: float = 2.0) -> Any:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self, wait: float = 0.3) -> bool:
        await asyncio.sleep(wait)
        return self.responses.empty()

    async def close(self) -> None:
        self.queue.put_nowait(None)
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.reader


class Client(StreamClient):
    def send(self, type_url: str, names: tuple[str, ...] = (), nonce: str = "", version: str = "",
             error: str | None = None) -> None:
        self.queue.put_nowait(make_request(type_url, names, nonce, version, error))


@contextlib.asynccontextmanager
async def serving(delta: bool = False) -> AsyncIterator[tuple[SnapshotCache, AdsServer, Any]]:
    """An ADS server on 127.0.0.1 and one client stream to it (a Client, or a DeltaClient)."""
    cache = SnapshotCache()
    ads = AdsServer(cache)
    server = grpc.aio.server()
    add_to_server(ads, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    if delta:
        from test_delta import DeltaClient

        client: StreamClient = DeltaClient(channel, delta=True)
    else:
        client = Client(channel)
    try:
        yield cache, ads, client
    finally:
        await client.close()
        await channel.close()
        await server.stop(None)


@pytest_asyncio.fixture(loop_scope="module")
async def env() -> AsyncIterator[tuple[SnapshotCache, AdsServer, Client]]:
    async with serving() as running:
        yield running


MESSAGES: dict[str, Any] = {CLUSTER: cluster_pb2.Cluster, LISTENER: listener_pb2.Listener,
                            ROUTE: route_pb2.RouteConfiguration, ENDPOINT: endpoint_pb2.ClusterLoadAssignment}


def names_of(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for a in resp.resources:
        msg = MESSAGES[resp.type_url]()
        a.Unpack(msg)
        out.append(msg.cluster_name if resp.type_url == ENDPOINT else msg.name)
    return out


@grpc_loop
async def test_wildcard_then_ack_then_push_on_change(env: tuple[SnapshotCache, AdsServer, Client]) -> None:
    cache, ads, client = env
    client.send(CLUSTER)
    assert await client.nothing()  # no snapshot yet: nothing to say
    cache.set(make_snapshot(resources(clusters=("web", "api"))))
    first = await client.recv()
    assert first.type_url == CLUSTER and sorted(names_of(first)) == ["api", "web"]  # wildcard: all
    client.send(CLUSTER, nonce=first.nonce, version=first.version_info)  # ACK
    assert await client.nothing()
    assert ads.counters.acks == 1 and ads.nodes[next(iter(ads.nodes))].acked[CLUSTER] == first.version_info
    cache.set(make_snapshot(resources(clusters=("web",))))
    second = await client.recv()
    assert names_of(second) == ["web"] and second.version_info != first.version_info


@grpc_loop
async def test_named_types_and_push_order(env: tuple[SnapshotCache, AdsServer, Client]) -> None:
    cache, _ads, client = env
    cache.set(make_snapshot(resources()))
    subscribed: dict[str, tuple[str, ...]] = {ROUTE: ("local",), LISTENER: (), ENDPOINT: ("web", "missing"),
                                              CLUSTER: ()}
    for type_url, names in subscribed.items():
        client.send(type_url, names=names)
    got = [await client.recv() for _ in range(4)]
    nonces = {r.type_url: r.nonce for r in got}
    for r in got:  # ACK each, with the same subscription
        client.send(r.type_url, names=subscribed[r.type_url], nonce=r.nonce, version=r.version_info)
    assert names_of(next(r for r in got if r.type_url == ENDPOINT)) == ["web"]  # only what exists
    await client.nothing()
    # Only the type whose resources changed is pushed: new endpoints go out as EDS alone.
    cache.set(make_snapshot(resources(endpoint_port=9090)))
    only = await client.recv()
    assert only.type_url == ENDPOINT and await client.nothing()
    client.send(ENDPOINT, names=subscribed[ENDPOINT], nonce=only.nonce, version=only.version_info)
    # A change of every type is pushed in the order CDS, EDS, LDS, RDS.
    changed = resources(route_cluster="api", clusters=("web", "api"), endpoint_port=9091)
    changed[LISTENER]["l1"].per_connection_buffer_limit_bytes.value = 65536
    cache.set(make_snapshot(changed))
    order = [(await client.recv()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    assert len(set(nonces.values())) == 4


@grpc_loop
async def test_stale_nonce_ignored_nack_not_resent_reask_answered(
        env: tuple[SnapshotCache, AdsServer, Client]) -> None:
    cache, ads, client = env
    cache.set(make_snapshot(resources()))
    client.send(CLUSTER)
    r1 = await client.recv()
    client.send(CLUSTER, nonce="999", version="old")  # stale: not the latest nonce
    assert await client.nothing()
    client.send(CLUSTER, nonce=r1.nonce, version="", error="bad cluster")  # NACK
    assert await client.nothing()  # the same version is not sent again
    assert ads.counters.nacks == 1 and "bad cluster" in (ads.nodes[next(iter(ads.nodes))].last_nack or "")
    client.send(CLUSTER, nonce=r1.nonce, version="")  # asked again at that nonce: answered
    r2 = await client.recv()
    assert r2.version_info == r1.version_info and r2.nonce != r1.nonce
    client.send(ENDPOINT, names=("web",))
    e1 = await client.recv()
    client.send(ENDPOINT, names=("web",), nonce=e1.nonce, version=e1.version_info)  # ACK
    assert await client.nothing()
    client.send(ENDPOINT, names=("web",), nonce=e1.nonce, version=e1.version_info)  # the same ACKed nonce
    assert (await client.recv()).type_url == ENDPOINT


def test_a_type_over_the_message_limit_is_refused() -> None:
    big = resources()
    rc = big[ROUTE]["local"]
    route = rc.virtual_hosts[0].routes.add()
    route.match.prefix = "/big"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = "x" * (4 * 1024 * 1024)
    errors = check(make_snapshot(big))
    assert len(errors) == 1 and errors[0].startswith("RouteConfiguration resources total 4.0 MiB, over the ")


def test_node_selection_by_id_then_selector_then_default() -> None:
    from control.cache import NodeSelector

    cache = SnapshotCache()
    default, canary, pinned = (make_snapshot(resources(endpoint_port=p)) for p in (1, 2, 3))
    cache.set(default)
    cache.set(canary, selector=NodeSelector(cluster="web", metadata=(("track", "canary"),)))
    cache.set(pinned, node_id="web-7")
    assert cache.get("web-1", "web", {"track": "canary", "zone": "a"}) is canary
    assert cache.get("web-1", "web", {"track": "stable"}) is default
    assert cache.get("api-1", "api", {"track": "canary"}) is default  # another cluster
    assert cache.get("web-7", "web", {"track": "canary"}) is pinned  # the id wins


@grpc_loop
async def test_a_node_gets_the_snapshot_of_its_selector(env: tuple[SnapshotCache, AdsServer, Client]) -> None:
    from control.cache import NodeSelector

    cache, _ads, client = env
    cache.set(make_snapshot(resources(clusters=("web",))))
    cache.set(make_snapshot(resources(clusters=("web", "canary"))), selector=NodeSelector(cluster="c1"))
    client.send(CLUSTER)  # the test client is node n1 of cluster c1
    assert sorted(names_of(await client.recv())) == ["canary", "web"]
