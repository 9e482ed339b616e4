"""Delta ADS rules, driven by a real grpc.aio client over 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from test_ads import StreamClient, resources, serving

from control.ads import AdsServer
from control.cache import CLUSTER, ENDPOINT, LISTENER, SnapshotCache, make_snapshot

grpc_loop = pytest.mark.asyncio(loop_scope="module")


class DeltaClient(StreamClient):
    def send(self, type_url: str, subscribe: tuple[str, ...] = (), nonce: str = "",
             initial: dict[str, str] | None = None, error: str | None = None) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id="d1"), type_url=type_url,
                                                  resource_names_subscribe=list(subscribe),
                                                  initial_resource_versions=initial or {},
                                                  response_nonce=nonce)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
        self.queue.put_nowait(req)


@pytest_asyncio.fixture(loop_scope="module")
async def env() -> AsyncIterator[tuple[SnapshotCache, AdsServer, DeltaClient]]:
    async with serving(delta=True) as running:
        yield running


@grpc_loop
async def test_changes_removals_and_endpoints_after_a_cluster_change(
        env: tuple[SnapshotCache, AdsServer, DeltaClient]) -> None:
    cache, ads, client = env
    cache.set(make_snapshot(resources(clusters=("web", "api"))))
    client.send(CLUSTER)  # wildcard
    client.send(ENDPOINT, subscribe=("web", "api"))
    first = await client.recv()
    assert first.type_url == CLUSTER and sorted(r.name for r in first.resources) == ["api", "web"]
    assert all(r.version == cache.get("d1").versions[CLUSTER][r.name] for r in first.resources)
    eds = await client.recv()
    assert sorted(r.name for r in eds.resources) == ["api", "web"]
    client.send(CLUSTER, nonce=first.nonce)
    client.send(ENDPOINT, nonce=eds.nonce)
    assert await client.nothing() and ads.counters.acks == 2

    # Only endpoints change (a new port): one EDS response, nothing for CDS.
    cache.set(make_snapshot(resources(clusters=("web", "api"), endpoint_port=9)))
    only = await client.recv()
    assert only.type_url == ENDPOINT and sorted(r.name for r in only.resources) == ["api", "web"]
    client.send(ENDPOINT, nonce=only.nonce)
    assert await client.nothing()

    # `api` is removed: named in removed_resources, for clusters and endpoints alike.
    cache.set(make_snapshot(resources(clusters=("web",), endpoint_port=9)))
    gone = await client.recv()
    assert gone.type_url == CLUSTER and list(gone.removed_resources) == ["api"] and not gone.resources
    client.send(CLUSTER, nonce=gone.nonce)
    gone_eds = await client.recv()
    assert gone_eds.type_url == ENDPOINT and list(gone_eds.removed_resources) == ["api"]

    # A changed cluster makes its endpoints go out again, even though they did not change.
    changed = resources(clusters=("web",), endpoint_port=9)
    changed[CLUSTER]["web"] = cluster_pb2.Cluster(name="web", type=cluster_pb2.Cluster.EDS,
                                                  connect_timeout={"seconds": 3})
    cache.set(make_snapshot(changed))
    c = await client.recv()
    e = await client.recv()
    assert (c.type_url, [r.name for r in c.resources]) == (CLUSTER, ["web"])
    assert (e.type_url, [r.name for r in e.resources]) == (ENDPOINT, ["web"])


@grpc_loop
async def test_initial_versions_and_nack(env: tuple[SnapshotCache, AdsServer, DeltaClient]) -> None:
    cache, ads, client = env
    cache.set(make_snapshot(resources()))
    held = cache.get("d1").versions[LISTENER]["l1"]
    client.send(LISTENER, initial={"l1": held})  # a reconnect: the client already has l1
    assert await client.nothing()
    cache.set(make_snapshot(resources(clusters=("web", "x"))))  # l1 itself unchanged
    assert await client.nothing()
    client.send(CLUSTER)
    r = await client.recv()
    client.send(CLUSTER, nonce=r.nonce, error="bad cluster")
    assert await client.nothing()  # not sent again
    assert ads.counters.nacks == 1
    [status] = ads.nodes.values()
    assert status.last_nack is not None and "bad cluster" in status.last_nack
