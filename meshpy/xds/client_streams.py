"""The two ADS conversations of the xDS client: state of the world and delta.

Each is an async generator that opens the stream, sends the subscriptions (with the versions already
held, so a reconnect to a restarted server costs nothing that did not change), then for every response
accepts it through `AdsClient.accept`, ACKs or NACKs it, and follows the dependencies: when the
listeners or clusters change, the RouteConfiguration and ClusterLoadAssignment subscriptions change
with them. It yields once the stream is up and then once per response handled, which tells the
caller the stream is alive.

Writes go through a queue that grpc.aio drains as the request iterator: one write at a time, and the
reader never waits on a write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc import status_pb2

from meshpy.xds.secrets import SECRET
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, ROUTE, WILDCARD

if TYPE_CHECKING:
    from meshpy.xds.client import AdsClient

_INVALID_ARGUMENT = 3  # google.rpc.Code, what a NACK carries (gRPC's own client says the same)
_DEPENDENT = {LISTENER: (ROUTE, SECRET), CLUSTER: (ENDPOINT, SECRET)}
_END = object()


class Rejected(Exception):
    """A response the client NACKs; the message is the error_detail sent back."""


class _Outbox:
    """Requests on their way to the sender; the node goes with the first one only (Envoy's
    set_node_on_first_message_only), as the server keeps it for the life of the stream."""

    def __init__(self, node: Any) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._node: Any = node

    def put(self, req: Any) -> None:
        if self._node is not None:
            req.node.CopyFrom(self._node)
            self._node = None
        self.queue.put_nowait(req)

    async def requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            yield item

    def close(self) -> None:
        self.queue.put_nowait(_END)


def _dependent(client: AdsClient, type_url: str) -> list[tuple[str, frozenset[str]]]:
    """The types that follow `type_url` (RDS after LDS, EDS after CDS, SDS after either) and the
    names each needs now."""
    return [(dep, client.store.wanted(dep)) for dep in _DEPENDENT.get(type_url, ()) if dep in client.types]


async def sotw_stream(client: AdsClient, stub: Any) -> AsyncIterator[None]:
    out = _Outbox(client.node)
    nonces: dict[str, str] = {}
    subscribed: dict[str, frozenset[str]] = {}

    def send(type_url: str, error: str | None = None, version: str | None = None) -> None:
        req = DiscoveryRequest(
            type_url=type_url,
            version_info=client.versions.get(type_url, "") if version is None else version,
            response_nonce=nonces.get(type_url, ""),
            resource_names=sorted(subscribed.get(type_url, ())),
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=error))
        out.put(req)

    def follow(type_url: str) -> None:
        """Subscribe RDS or EDS to what the listeners or clusters now need."""
        # An empty name list would mean "everything" to the server: when nothing is needed any more,
        # the old subscription stays and what it brings is dropped by the store.
        for dep, names in _dependent(client, type_url):
            if names and names != subscribed.get(dep):
                subscribed[dep] = names
                send(dep)

    for type_url in client.types:
        if type_url in WILDCARD:
            send(type_url)
        else:
            names = client.store.wanted(type_url)
            if names:
                subscribed[type_url] = names
                send(type_url)
    call = stub.StreamAggregatedResources(out.requests())
    try:
        await call.wait_for_connection()
        yield None  # connected: a delta server with nothing new says nothing, so this is the signal
        async for resp in call:
            assert isinstance(resp, DiscoveryResponse)
            type_url = resp.type_url
            nonces[type_url] = resp.nonce
            if type_url not in client.types:
                send(type_url, error=f"{type_url} is not subscribed")
                continue
            try:
                await client.accept(type_url, resp.resources, replace=type_url in WILDCARD)
            except Rejected as err:
                client.nacked(type_url, str(err))
                send(type_url, error=str(err))
            else:
                client.versions[type_url] = resp.version_info
                send(type_url, version=resp.version_info)
                follow(type_url)
            yield None
    finally:
        out.close()
        call.cancel()


async def delta_stream(client: AdsClient, stub: Any) -> AsyncIterator[None]:
    out = _Outbox(client.node)
    send = out.put
    subscribed: dict[str, frozenset[str]] = {}

    def follow(type_url: str) -> None:
        for dep, names in _dependent(client, type_url):
            old = subscribed.get(dep, frozenset())
            if names != old:
                subscribed[dep] = names
                send(DeltaDiscoveryRequest(type_url=dep, resource_names_subscribe=sorted(names - old),
                                           resource_names_unsubscribe=sorted(old - names)))

    for type_url in client.types:
        held = client.resource_versions[type_url]
        if type_url in WILDCARD:
            # An empty first subscription is the wildcard, as in state of the world.
            send(DeltaDiscoveryRequest(type_url=type_url, initial_resource_versions=held))
        else:
            names = client.store.wanted(type_url)
            if names:
                subscribed[type_url] = names
                send(DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=sorted(names),
                    initial_resource_versions={n: v for n, v in held.items() if n in names}))
    call = stub.DeltaAggregatedResources(out.requests())
    try:
        await call.wait_for_connection()
        yield None
        async for resp in call:
            assert isinstance(resp, DeltaDiscoveryResponse)
            type_url = resp.type_url
            ack = DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
            if type_url not in client.types:
                ack.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT,
                                                            message=f"{type_url} is not subscribed"))
                send(ack)
                continue
            # A Resource without a body answers a name the server does not have: nothing to apply.
            present = [r for r in resp.resources if r.HasField("resource")]
            try:
                await client.accept(type_url, [r.resource for r in present], resp.removed_resources)
            except Rejected as err:
                client.nacked(type_url, str(err))
                ack.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=str(err)))
                send(ack)
            else:
                held = client.resource_versions[type_url]
                for name in resp.removed_resources:
                    held.pop(name, None)
                held.update({r.name: r.version for r in present})
                kept = client.store.of(type_url)
                for name in [n for n in held if n not in kept]:
                    del held[name]
                client.versions[type_url] = resp.system_version_info
                send(ack)
                follow(type_url)
            yield None
    finally:
        out.close()
        call.cancel()

