"""Envoy's AggregatedDiscoveryService over grpc.aio: state of the world here, delta in control/delta.py.

One stream per client carries all the resource types; a client may instead open a stream per type on
each type's own discovery service (LDS, CDS, RDS, EDS, SDS), answered the same way. The server answers
a request when it is the first of its type, when the subscribed names change, when a client asks again
with a nonce it has already ACKed (Envoy does so when a modified cluster needs its endpoints again), and
pushes whenever the node's snapshot changes. A request whose nonce is not the latest sent for its type
is stale and ignored; a NACK (error_detail set) is logged and counted, and the same version is not sent
again: the client keeps its last good config until the snapshot changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest as Request

from control.ca_auth import in_the_clear
from control.cache import PUSH_ORDER, WILDCARD_TYPES, Snapshot, SnapshotCache
from control.delta import delta_stream

if TYPE_CHECKING:
    from control.node_identity import NodeIdentities
    from meshpy.identity.spiffe import SpiffeId

log = logging.getLogger("meshpy.control")


@dataclass
class NodeStatus:
    """What /nodes shows for one connected stream."""

    node_id: str
    cluster: str
    connected_at: float
    metadata: dict[str, str] = field(default_factory=dict)  # the node's string-valued metadata
    acked: dict[str, str] = field(default_factory=dict)  # type URL -> version
    last_nack: str | None = None


@dataclass
class Counters:
    pushes: int = 0
    acks: int = 0
    nacks: int = 0
    push_to_ack_seconds: list[float] = field(default_factory=list)  # the latest ones, for /metrics


class _TypeState:
    __slots__ = ("acked_nonce", "answer", "names", "nonce", "sent_at", "sent_version")

    def __init__(self) -> None:
        self.names: frozenset[str] = frozenset()
        self.nonce = ""
        self.sent_version: str | None = None
        self.sent_at = 0.0
        self.acked_nonce = ""
        self.answer = True  # the first request of a type is always answered


_NONCE_TAG = b"\x2a"  # DiscoveryResponse.nonce: field 5, length-delimited (nonces stay under 128 bytes)
_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# Each type's own discovery service, for clients whose config sources name them (api_config_source of
# GRPC or DELTA_GRPC): the same conversation as ADS, carrying one type (go-control-plane serves both).
_PER_TYPE = {
    "envoy.service.listener.v3.ListenerDiscoveryService": "Listeners",
    "envoy.service.cluster.v3.ClusterDiscoveryService": "Clusters",
    "envoy.service.route.v3.RouteDiscoveryService": "Routes",
    "envoy.service.endpoint.v3.EndpointDiscoveryService": "Endpoints",
    "envoy.service.secret.v3.SecretDiscoveryService": "Secrets",
}


def add_to_server(ads: AdsServer, server: grpc.aio.Server) -> None:
    """Register both ADS methods, and both methods of each type's own service; state-of-the-world
    responses are already serialized bytes."""
    def methods(stream: str, delta: str) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {
            stream: grpc.stream_stream_rpc_method_handler(
                ads.StreamAggregatedResources, request_deserializer=Request.FromString,
                response_serializer=bytes),
            delta: grpc.stream_stream_rpc_method_handler(
                ads.DeltaAggregatedResources, request_deserializer=DeltaDiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString),
        }

    services = [grpc.method_handlers_generic_handler(
        _SERVICE, methods("StreamAggregatedResources", "DeltaAggregatedResources"))]
    services += [grpc.method_handlers_generic_handler(service, methods(f"Stream{kind}", f"Delta{kind}"))
                 for service, kind in _PER_TYPE.items()]
    server.add_generic_rpc_handlers(tuple(services))


class AdsServer:
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.nodes: dict[int, NodeStatus] = {}
        self.counters = Counters()
        self._nonce = 0
        # Serialized responses without their nonce, shared by every client that gets the same type,
        # version and names: the scale benchmark found a response built per client ~11% of the CPU.
        self._encoded: dict[tuple[str, str, frozenset[str] | None], bytes] = {}
        # Key pairs for nodes that cannot send a CSR, served over SDS (control/node_identity.py), and
        # the identity each stream proved with its bearer token.
        self.identities: NodeIdentities | None = None
        self.who: dict[int, SpiffeId] = {}

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Request], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Yields serialized DiscoveryResponses (see add_to_server: they pass through as they are)."""
        wake = asyncio.Event()
        types: dict[str, _TypeState] = {}
        key = id(wake)
        await self.identify(key, context)
        self.cache.watch(wake)
        reader = asyncio.create_task(self._read(request_iterator, types, wake, key))
        try:
            while True:
                await wake.wait()
                wake.clear()
                if reader.done():
                    return  # the client closed its side, or sent garbage
                status = self.nodes.get(key)
                snap = self.snapshot_for(status, key)
                if snap is None:
                    continue
                for type_url in PUSH_ORDER:
                    ts = types.get(type_url)
                    if ts is not None and (ts.answer or ts.sent_version != snap.type_versions[type_url]):
                        yield self._response(snap, type_url, ts)
        finally:
            reader.cancel()
            self.cache.unwatch(wake)
            self.disconnected(key)

    def _response(self, snap: Snapshot, type_url: str, ts: _TypeState) -> bytes:
        version = snap.type_versions[type_url]
        wildcard = not ts.names and type_url in WILDCARD_TYPES
        key = (type_url, version, None if wildcard else ts.names)
        body = self._encoded.get(key)
        if body is None:
            packed = snap.packed.get(type_url, {})
            names = sorted(packed) if wildcard else sorted(n for n in ts.names if n in packed)
            body = discovery_pb2.DiscoveryResponse(version_info=version, resources=[packed[n] for n in names],
                                                   type_url=type_url).SerializeToString()
            if len(self._encoded) >= 1024:
                self._encoded.clear()  # old versions: dropped wholesale, as they are never asked for again
            self._encoded[key] = body
        ts.nonce = self.next_nonce()
        ts.sent_version = version
        ts.sent_at = time.monotonic()
        ts.answer = False
        self.counters.pushes += 1
        # Protobuf fields may come in any order: the nonce (field 5) goes after the shared bytes.
        nonce = ts.nonce.encode()
        return body + _NONCE_TAG + bytes((len(nonce),)) + nonce

    async def _read(self, requests: AsyncIterator[Request], types: dict[str, _TypeState],
                    wake: asyncio.Event, key: int) -> None:
        try:
            async for req in requests:
                # Waking the writer for a plain ACK found nothing to send, for every node after every
                # push: the scale benchmark measured that wake-up at ~N% of the CPU per change.
                if self._on_request(req, types, key):
                    wake.set()
        finally:
            wake.set()  # lets the writer see that the stream is over

    # -- shared with the delta protocol (control/delta.py) ------------------------------------------
    def snapshot_for(self, status: NodeStatus | None, key: int = 0) -> Snapshot | None:
        if status is None:
            return None
        snap = self.cache.get(status.node_id, status.cluster, status.metadata)
        who = self.who.get(key)
        if snap is not None and who is not None and self.identities is not None:
            return self.identities.overlay(snap, who)
        return snap

    async def identify(self, key: int, context: grpc.aio.ServicerContext[Any, Any] | None) -> None:
        """The identity a stream's bearer token proves (none without one)."""
        if self.identities is None or context is None:
            return
        who = await self.identities.identify(context.invocation_metadata(), str(key), in_the_clear(context))
        if who is not None:
            self.who[key] = who

    def node_status(self, key: int, node: Node) -> NodeStatus:
        status = self.nodes.get(key)
        if status is None:
            fields = node.metadata.fields
            metadata = {k: v.string_value for k, v in fields.items() if v.HasField("string_value")}
            status = self.nodes[key] = NodeStatus(node.id, node.cluster, time.time(), metadata=metadata)
            log.info("node %s (cluster %s) connected", node.id or "?", node.cluster or "?")
        return status

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def ack(self, status: NodeStatus, type_url: str, version: str, sent_at: float) -> None:
        self.counters.acks += 1
        status.acked[type_url] = version
        took = self.counters.push_to_ack_seconds
        took.append(time.monotonic() - sent_at)
        del took[:-1000]

    def nack(self, status: NodeStatus, type_url: str, version: str | None, message: str) -> None:
        self.counters.nacks += 1
        status.last_nack = f"{type_url} version {version}: {message}"
        log.warning("node %s rejected %s version %s: %s", status.node_id, type_url, version, message)

    def disconnected(self, key: int) -> None:
        self.who.pop(key, None)
        status = self.nodes.pop(key, None)
        if status is not None:
            log.info("node %s disconnected", status.node_id)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for resp in delta_stream(self, request_iterator, context):
            yield resp

    def _on_request(self, req: Request, types: dict[str, _TypeState], key: int) -> bool:
        """Take in one request; True when it asks for an answer (a plain ACK does not)."""
        status = self.node_status(key, req.node)
        ts = types.get(req.type_url)
        if ts is None:
            ts = types[req.type_url] = _TypeState()
        names = frozenset(req.resource_names)
        if req.response_nonce and req.response_nonce != ts.nonce:
            return False  # stale: answers a response that a newer one replaced
        if req.HasField("error_detail"):
            self.nack(status, req.type_url, ts.sent_version, req.error_detail.message)
            ts.acked_nonce = req.response_nonce
        elif req.response_nonce:
            if ts.acked_nonce == req.response_nonce:
                ts.answer = True  # asked again at an ACKed nonce: it needs the resources once more
            else:
                ts.acked_nonce = req.response_nonce
                self.ack(status, req.type_url, req.version_info, ts.sent_at)
        if names != ts.names:
            ts.names = names
            ts.answer = True  # a changed subscription is answered even at the same version
        return ts.answer
