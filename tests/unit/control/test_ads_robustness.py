"""Clients that misbehave do not slow the others: garbage on the gRPC port, a client that never ACKs,
and one that never reads what it is sent (gRPC flow control holds only its own stream)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from test_ads import Client, make_request, resources

from control.ads import AdsServer, add_to_server
from control.cache import CLUSTER, ROUTE, SnapshotCache, make_snapshot

grpc_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def server() -> AsyncIterator[tuple[SnapshotCache, int]]:
    cache = SnapshotCache()
    srv = grpc.aio.server()
    add_to_server(AdsServer(cache), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield cache, port
    await srv.stop(None)


async def close(client: Client, channel: grpc.aio.Channel) -> None:
    await client.close()
    await channel.close()


def big_routes(i: int) -> dict[str, dict[str, object]]:
    """About 1 MiB of routes, different for each i."""
    res = resources()
    rc: route_pb2.RouteConfiguration = res[ROUTE]["local"]
    route = rc.virtual_hosts[0].routes.add()
    route.match.prefix = f"/big{i}"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = str(i) * (1024 * 1024)
    return res


@grpc_loop
async def test_garbage_never_ack_and_stalled_clients(server: tuple[SnapshotCache, int]) -> None:
    cache, port = server
    cache.set(make_snapshot(resources()))
    # Garbage where an HTTP/2 preface belongs, on a connection left open.
    junk = socket.create_connection(("127.0.0.1", port))
    junk.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 8)
    # A client that subscribes and never ACKs; one that subscribes and never reads.
    lazy_ch, stalled_ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}"), grpc.aio.insecure_channel(
        f"127.0.0.1:{port}")
    lazy = Client(lazy_ch)
    lazy.send(CLUSTER)
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(stalled_ch)
    stalled_q: asyncio.Queue[object] = asyncio.Queue()
    stalled_q.put_nowait(make_request(ROUTE, names=("local",)))

    async def stalled_requests() -> AsyncIterator[object]:
        while (req := await stalled_q.get()) is not None:
            yield req

    stalled_call = stub.StreamAggregatedResources(stalled_requests())  # never read
    good_ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    good = Client(good_ch)
    good.send(ROUTE, names=("local",))
    r = await good.recv()
    try:
        for i in range(8):  # ~8 MiB offered to the stalled client, far past its flow-control window
            cache.set(make_snapshot(big_routes(i)))
            r_new = await good.recv(timeout=5)
            assert r_new.version_info != r.version_info
            good.send(ROUTE, names=("local",), nonce=r_new.nonce, version=r_new.version_info)
            r = r_new
        assert (await lazy.recv()).type_url == CLUSTER  # the never-ACKing client got its config too
    finally:
        junk.close()
        stalled_call.cancel()
        stalled_q.put_nowait(None)
        await stalled_ch.close()
        await close(lazy, lazy_ch)
        await close(good, good_ch)
