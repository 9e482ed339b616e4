"""The conversations of the xDS client: the ADS stream, and one per (config source, resource type) for
every config source that is not ADS, as Envoy opens a subscription of its own for each: a gRPC stream
of the type's own discovery service (ListenerDiscoveryService/StreamListeners, ..., state of the world
or delta), REST polling (meshpy.xds.polled), or a watched file.

A `Channel` keeps what outlives a reconnect (the versions it holds) and says what it carries; the
client (meshpy.xds.client) owns the channels, starts one when a resource first names a new source and
retires it when nothing it carries is wanted any more. A gRPC channel reconnects with jittered
exponential back-off, as the ADS stream always did; the protocol halves are meshpy.xds.client_streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from meshpy.model.types import ApiSource
from meshpy.xds.config_sources import describe
from meshpy.xds.secrets import SECRET
from meshpy.xds.store import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME

if TYPE_CHECKING:
    from meshpy.identity.control_trust import ControlPlaneTls
    from meshpy.xds.client import AdsClient

log = logging.getLogger("meshpy.xds")

# Each type's own discovery service: (service, the suffix of its methods Stream*, Delta*).
SERVICES = {
    LISTENER: ("envoy.service.listener.v3.ListenerDiscoveryService", "Listeners"),
    CLUSTER: ("envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters"),
    ROUTE: ("envoy.service.route.v3.RouteDiscoveryService", "Routes"),
    ENDPOINT: ("envoy.service.endpoint.v3.EndpointDiscoveryService", "Endpoints"),
    SECRET: ("envoy.service.secret.v3.SecretDiscoveryService", "Secrets"),
    RUNTIME: ("envoy.service.runtime.v3.RuntimeDiscoveryService", "Runtime"),
}


class Channel:
    """One conversation: the source it follows, the types it carries, and the versions it holds."""

    def __init__(self, client: AdsClient, source: ApiSource, types: tuple[str, ...]) -> None:
        self.client = client
        self.source = source
        self.types = types
        self.versions: dict[str, str] = {}  # state of the world, REST, file: last accepted version per type
        self.resource_versions: dict[str, dict[str, str]] = {t: {} for t in types}  # delta
        self.connected = False
        self.reconnects = 0
        self.retired = False
        # Set by the running conversation: subscribe to what the store now wants of these types.
        self.follow: Callable[[], None] | None = None
        self.task: asyncio.Task[None] | None = None
        xds = client.source
        ads = source.protocol == "ads"
        self.delta = xds.delta if ads else source.protocol == "delta"
        self.rate_limit = xds.rate_limit if ads else source.rate_limit
        self.metadata = xds.initial_metadata if ads else source.initial_metadata
        # The ADS stream sends the node first only (the server keeps it for the stream); a stream of a
        # config source does so when it says set_node_on_first_message_only, else every request has it.
        self.node_every = not ads and not source.node_first_only
        self.backoff = ((xds.backoff_base, xds.backoff_max) if ads
                        else (source.backoff_base, source.backoff_max))
        self.target = xds.server if ads or source.server is None else source.server.target
        self.name = f"{describe(source)} {'+'.join(_short(t) for t in types)}" if not ads else "ADS"
        self.prefix = "" if ads else f"{self.name}: "  # how log lines name it (the ADS stream: as always)

    def wanted(self, type_url: str) -> frozenset[str]:
        """The names of `type_url` this channel subscribes to now."""
        return self.client.store.wanted(type_url, self.source)

    def open(self, channel: grpc.aio.Channel) -> Any:
        """The stream-opening call on `channel`: ADS, or the type's own discovery service."""
        if self.source.protocol == "ads":
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            return stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        service, kind = SERVICES[self.types[0]]
        if self.delta:
            return channel.stream_stream(f"/{service}/Delta{kind}",
                                         request_serializer=DeltaDiscoveryRequest.SerializeToString,
                                         response_deserializer=DeltaDiscoveryResponse.FromString)
        return channel.stream_stream(f"/{service}/Stream{kind}",
                                     request_serializer=DiscoveryRequest.SerializeToString,
                                     response_deserializer=DiscoveryResponse.FromString)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


async def run_grpc(ch: Channel, trust: ControlPlaneTls | None) -> None:
    """A gRPC channel's life: connect, converse, and after a failure reconnect with back-off."""
    from meshpy.xds.client_streams import delta_stream, sotw_stream

    own_tls = await _own_tls(ch) if trust is None else None
    trust = trust if own_tls is None else own_tls
    attempt = 0
    try:
        while not ch.retired:
            channel = grpc.aio.insecure_channel(ch.target) if trust is None else trust.channel(ch.target)
            got_response = False
            try:
                stream = delta_stream if ch.delta else sotw_stream
                async for _ in stream(ch, ch.open(channel)):
                    if not got_response:
                        got_response = True
                        attempt = 0
                        log.info("xds: %sconnected to %s", ch.prefix, ch.target)
                    ch.connected = True
            except grpc.aio.AioRpcError as err:
                # Said once per outage; the retries that follow are debug noise.
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                details = err.details() or ""
                hint = _tls_hint(details, trust) if ch.source.protocol == "ads" or trust is not None else ""
                log.log(level, "xds: %sstream to %s failed: %s %s%s", ch.prefix, ch.target, err.code().name,
                        details, hint)
            except Exception:  # a bug must not end xDS for the life of the process
                log.exception("xds: %sstream to %s broke", ch.prefix, ch.target)
            finally:
                ch.connected = False
                await channel.close()
            ch.reconnects += 1
            # Jittered exponential back-off, as Envoy's but uniform in [ceiling/2, ceiling] rather than
            # [0, ceiling], so that a flapping server never meets a tight reconnect loop.
            ceiling = min(ch.backoff[1], ch.backoff[0] * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
    finally:
        if own_tls is not None:
            await own_tls.close()


def _tls_hint(details: str, trust: ControlPlaneTls | None) -> str:
    from meshpy.identity.control_trust import tls_hint  # grpc only: no cryptography at start

    return tls_hint(details, trust)


async def _own_tls(ch: Channel) -> Any | None:
    """TLS to a config source's server as its cluster says it (the ADS stream's is made by the runner)."""
    server = ch.source.server
    if server is None or server.tls is None:
        return None
    from meshpy.xds.ads_tls import AdsClusterTls

    tls = AdsClusterTls(server.target, server.tls, server.connect_timeout, server.tcp_keepalive)
    while True:
        try:
            tls.check()
            await tls.start(ch.client.app.tasks)
        except (ValueError, OSError) as err:
            log.error("xds: %s: no TLS to %s: %s", ch.name, server.target, err)
            await asyncio.sleep(ch.backoff[1])
            continue
        return tls


async def converse(ch: Channel, run: Callable[[Channel], AsyncIterator[None]]) -> None:
    """A polled channel's life (REST, file): `run` ends only by cancellation, or by a bug, after which it
    starts again."""
    while not ch.retired:
        try:
            async for _ in run(ch):
                pass
        except Exception:  # a bug must not end xDS for the life of the process
            log.exception("xds: %sbroke", ch.prefix)
        ch.connected = False
        await asyncio.sleep(ch.backoff[1])


def stop(ch: Channel) -> None:
    """Retire `ch`: its task ends (at once, or after its current step when it is the caller)."""
    ch.retired = True
    ch.follow = None
    if ch.task is not None and ch.task is not asyncio.current_task():
        ch.task.cancel()


async def closed(channels: list[Channel]) -> None:
    for ch in channels:
        stop(ch)
    for ch in channels:
        if ch.task is not None and ch.task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await ch.task
