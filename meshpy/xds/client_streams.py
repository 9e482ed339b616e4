"""The two gRPC conversations of the xDS client, state of the world and delta, on the ADS stream or on
a stream of one type's own discovery service (a channel: meshpy.xds.channels).

Each is an async generator that opens the stream, sends the subscriptions (with the versions already
held, so a reconnect to a restarted server costs nothing that did not change), then for every response
accepts it through `AdsClient.accept`, ACKs or NACKs it, and follows the dependencies: when the
listeners or clusters change, the RouteConfiguration, ClusterLoadAssignment and Secret subscriptions
change with them, on this stream and on every other channel (`AdsClient.resubscribe`). It yields once
the stream is up and then once per response handled, which tells the caller the stream is alive.

Writes go through a queue that grpc.aio drains as the request iterator: one write at a time, and the
reader never waits on a write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc import status_pb2

from meshpy.xds.store import WILDCARD

if TYPE_CHECKING:
    from meshpy.xds.channels import Channel

_INVALID_ARGUMENT = 3  # google.rpc.Code, what a NACK carries (gRPC's own client says the same)
_END = object()


class Rejected(Exception):
    """A response the client NACKs; the message is the error_detail sent back."""


class _Outbox:
    """Requests on their way to the sender; the node goes with the first one only (Envoy's
    set_node_on_first_message_only), as the server keeps it for the life of the stream, or with every
    one (`every`). With a rate limit (rate_limit_settings: a bucket of `max tokens`, refilled at `per
    second`), a request that finds the bucket empty waits for a token, as in Envoy."""

    def __init__(self, node: Any, rate_limit: tuple[int, float] | None = None, every: bool = False) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._node: Any = node
        self._every = every
        self._limit = rate_limit
        self._tokens = float(rate_limit[0]) if rate_limit is not None else 0.0
        self._filled = 0.0

    def put(self, req: Any) -> None:
        if self._node is not None:
            req.node.CopyFrom(self._node)
            if not self._every:
                self._node = None
        self.queue.put_nowait(req)

    async def requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            if self._limit is not None:
                await self._token(self._limit)
            yield item

    async def _token(self, limit: tuple[int, float]) -> None:
        loop = asyncio.get_running_loop()
        most, rate = limit
        while True:
            now = loop.time()
            if self._filled:
                self._tokens = min(float(most), self._tokens + (now - self._filled) * rate)
            self._filled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / rate)

    def close(self) -> None:
        self.queue.put_nowait(_END)


async def sotw_stream(ch: Channel, open_call: Callable[..., Any]) -> AsyncIterator[None]:
    client = ch.client
    out = _Outbox(client.node, ch.rate_limit, ch.node_every)
    nonces: dict[str, str] = {}
    subscribed: dict[str, frozenset[str]] = {}

    def send(type_url: str, error: str | None = None, version: str | None = None) -> None:
        req = DiscoveryRequest(
            type_url=type_url,
            version_info=ch.versions.get(type_url, "") if version is None else version,
            response_nonce=nonces.get(type_url, ""),
            resource_names=sorted(subscribed.get(type_url, ())),
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=error))
        out.put(req)

    def follow() -> None:
        """Subscribe RDS, EDS, SDS and RTDS to what the listeners and clusters now need."""
        # An empty name list would mean "everything" to the server: when nothing is needed any more,
        # the old subscription stays and what it brings is dropped by the store.
        for dep in ch.types:
            if dep in WILDCARD:
                continue
            names = ch.wanted(dep)
            if names and names != subscribed.get(dep):
                subscribed[dep] = names
                send(dep)

    for type_url in ch.types:
        if type_url in WILDCARD:
            send(type_url)
        else:
            names = ch.wanted(type_url)
            if names:
                subscribed[type_url] = names
                send(type_url)
    call = open_call(out.requests(), metadata=ch.metadata or None)
    ch.follow = follow
    try:
        await call.wait_for_connection()
        yield None  # connected: a delta server with nothing new says nothing, so this is the signal
        async for resp in call:
            assert isinstance(resp, DiscoveryResponse)
            type_url = resp.type_url
            nonces[type_url] = resp.nonce
            if type_url not in ch.types:
                send(type_url, error=f"{type_url} is not subscribed")
                continue
            try:
                await client.accept(type_url, resp.resources, replace=type_url in WILDCARD)
            except Rejected as err:
                client.nacked(type_url, str(err))
                send(type_url, error=str(err))
            else:
                ch.versions[type_url] = resp.version_info
                send(type_url, version=resp.version_info)
                client.resubscribe(type_url)
            yield None
    finally:
        if ch.follow is follow:
            ch.follow = None
        out.close()
        call.cancel()


async def delta_stream(ch: Channel, open_call: Callable[..., Any]) -> AsyncIterator[None]:
    client = ch.client
    out = _Outbox(client.node, ch.rate_limit, ch.node_every)
    send = out.put
    subscribed: dict[str, frozenset[str]] = {}

    def follow() -> None:
        for dep in ch.types:
            if dep in WILDCARD:
                continue
            names, old = ch.wanted(dep), subscribed.get(dep, frozenset())
            if names != old:
                subscribed[dep] = names
                send(DeltaDiscoveryRequest(type_url=dep, resource_names_subscribe=sorted(names - old),
                                           resource_names_unsubscribe=sorted(old - names)))

    for type_url in ch.types:
        held = ch.resource_versions[type_url]
        if type_url in WILDCARD:
            # An empty first subscription is the wildcard, as in state of the world.
            send(DeltaDiscoveryRequest(type_url=type_url, initial_resource_versions=held))
        else:
            names = ch.wanted(type_url)
            if names:
                subscribed[type_url] = names
                send(DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=sorted(names),
                    initial_resource_versions={n: v for n, v in held.items() if n in names}))
    call = open_call(out.requests(), metadata=ch.metadata or None)
    ch.follow = follow
    try:
        await call.wait_for_connection()
        yield None
        async for resp in call:
            assert isinstance(resp, DeltaDiscoveryResponse)
            type_url = resp.type_url
            ack = DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
            if type_url not in ch.types:
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
                held = ch.resource_versions[type_url]
                for name in resp.removed_resources:
                    held.pop(name, None)
                held.update({r.name: r.version for r in present})
                kept = client.store.of(type_url)
                for name in [n for n in held if n not in kept]:
                    del held[name]
                ch.versions[type_url] = resp.system_version_info
                send(ack)
                client.resubscribe(type_url)
            yield None
    finally:
        if ch.follow is follow:
            ch.follow = None
        out.close()
        call.cancel()

