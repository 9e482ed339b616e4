"""Incremental (delta) ADS: only what changed goes out, with the names of what was removed.

Every resource carries its own version, a hash of its content, so a client that reconnects (to a
restarted control plane, say) reports the versions it holds in `initial_resource_versions` and is sent
only what differs. An ACK is the nonce alone; a NACK adds error_detail and the same versions are not
sent again. When a cluster changes, Envoy does not ask for its endpoints again: the server forgets that
the client has them, so the ClusterLoadAssignment goes out right after the cluster (CDS before EDS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from google.protobuf.message import Message

from control.cache import CLUSTER, ENDPOINT, PUSH_ORDER, WILDCARD_TYPES, Snapshot

if TYPE_CHECKING:
    from control.ads import AdsServer

log = logging.getLogger("meshpy.control")


class _DeltaType:
    __slots__ = ("known", "names", "nonce", "sent_at", "sent_version", "wildcard")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.wildcard = False
        self.known: dict[str, str] = {}  # name -> version the client holds (or was last sent)
        self.nonce = ""
        self.sent_at = 0.0
        self.sent_version = ""  # the snapshot version of the last response


class DeltaStream:
    def __init__(self, ads: AdsServer, key: int) -> None:
        self.ads = ads
        self.key = key
        self.types: dict[str, _DeltaType] = {}

    def on_request(self, req: DeltaDiscoveryRequest) -> None:
        status = self.ads.node_status(self.key, req.node)
        ts = self.types.get(req.type_url)
        if ts is None:
            ts = self.types[req.type_url] = _DeltaType()
            ts.known.update(req.initial_resource_versions)
            # An empty first subscription to LDS or CDS means "everything", as in state of the world.
            ts.wildcard = req.type_url in WILDCARD_TYPES and not req.resource_names_subscribe
        if req.response_nonce and req.response_nonce == ts.nonce:
            if req.HasField("error_detail"):
                self.ads.nack(status, req.type_url, ts.sent_version, req.error_detail.message)
            else:
                self.ads.ack(status, req.type_url, ts.sent_version, ts.sent_at)
        for name in req.resource_names_subscribe:
            if name == "*":
                ts.wildcard = True
            else:
                ts.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                ts.wildcard = False
            ts.names.discard(name)
            ts.known.pop(name, None)

    def responses(self, snap: Snapshot) -> list[DeltaDiscoveryResponse]:
        out = []
        for type_url in PUSH_ORDER:
            ts = self.types.get(type_url)
            if ts is None:
                continue
            resp = self._diff(snap, type_url, ts)
            if resp is not None:
                out.append(resp)
        return out

    def _diff(self, snap: Snapshot, type_url: str, ts: _DeltaType) -> DeltaDiscoveryResponse | None:
        available = snap.packed.get(type_url, {})
        versions = snap.versions.get(type_url, {})
        wanted = set(available) if ts.wildcard else ts.names & set(available)
        changed: list[discovery_pb2.Resource] = []
        for name in sorted(wanted):
            version = versions[name]
            if ts.known.get(name) == version:
                continue
            changed.append(discovery_pb2.Resource(name=name, version=version, resource=available[name]))
            ts.known[name] = version
            if type_url == CLUSTER:
                self._forget_endpoints(snap.of(CLUSTER)[name], name)
        gone = [n for n in sorted(ts.known) if n not in available and (ts.wildcard or n in ts.names)]
        for name in gone:
            del ts.known[name]
        if not changed and not gone:
            return None
        ts.nonce = self.ads.next_nonce()
        ts.sent_at = time.monotonic()
        ts.sent_version = snap.type_versions[type_url]
        self.ads.counters.pushes += 1
        return DeltaDiscoveryResponse(system_version_info=ts.sent_version, resources=changed,
                                                    type_url=type_url, removed_resources=gone, nonce=ts.nonce)

    def _forget_endpoints(self, msg: Message, name: str) -> None:
        eds = self.types.get(ENDPOINT)
        if eds is not None and isinstance(msg, cluster_pb2.Cluster):
            eds.known.pop(msg.eds_cluster_config.service_name or name, None)


async def delta_stream(ads: AdsServer, requests: AsyncIterator[DeltaDiscoveryRequest],
                       context: Any = None) -> AsyncIterator[DeltaDiscoveryResponse]:
    wake = asyncio.Event()
    key = id(wake)
    stream = DeltaStream(ads, key)
    await ads.identify(key, context)

    async def read() -> None:
        try:
            async for req in requests:
                stream.on_request(req)
                wake.set()
        finally:
            wake.set()

    ads.cache.watch(wake)
    reader = asyncio.create_task(read())
    try:
        while True:
            await wake.wait()
            wake.clear()
            if reader.done():
                return
            status = ads.nodes.get(key)
            snap = ads.snapshot_for(status, key)
            if snap is not None:
                for resp in stream.responses(snap):
                    yield resp
    finally:
        reader.cancel()
        ads.cache.unwatch(wake)
        ads.disconnected(key)
