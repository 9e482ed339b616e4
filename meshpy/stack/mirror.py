"""Request mirroring (Envoy's request_mirror_policies): a copy of each request of a route goes to another
cluster as well, fire and forget; its answer is read and dropped, and nothing of it reaches the client.

The copy is the request as it goes upstream (the router's headers added, the path rewritten), with
"-shadow" after its authority's host unless the policy says not. A request with a body is copied once
the body is whole: the body passes the route's body hook (read only, so the request keeps its
content-length), up to MAX_SHADOW_BODY; a longer one is not mirrored. The copies go through
meshpy.upstream.side_calls, bounded by the route's timeout; failures are counted and logged at debug
level. A route without mirrors has no such filter (no cost).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from meshpy.model.routes import MirrorPolicy
from meshpy.upstream.side_calls import SideCallError, SideClient

if TYPE_CHECKING:
    from meshpy.stack.exchange import Exchange
    from meshpy.upstream.cluster import ClusterRuntime

log = logging.getLogger("meshpy.mirror")
MAX_SHADOW_BODY = 1 << 20  # as Envoy's default per-connection buffer limit
_STATE = "meshpy.mirror"  # the exchange's filter state: its pending copies
SHARED = SideClient()  # the process's mirror connections, by endpoint
_DROPPED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"te", b"upgrade"})


class _Copy:
    __slots__ = ("body", "clusters", "head", "over")

    def __init__(self) -> None:
        self.head: tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]] | None = None
        self.clusters: list[tuple[str, bool]] = []
        self.body = bytearray()
        self.over = False  # the body grew past MAX_SHADOW_BODY: no copy


class MirrorFilter:
    """The mirror policies of one route, as a filter of its chain (upstream head and body hooks)."""

    __slots__ = ("client", "policies", "timeout")
    keeps_body_length = True  # it reads the body, never changes it

    def __init__(self, policies: tuple[MirrorPolicy, ...], timeout: float | None,
                 client: SideClient | None = None) -> None:
        self.policies = policies
        self.timeout = timeout if timeout is not None else 15.0
        self.client = client if client is not None else SHARED

    @property
    def user(self) -> MirrorFilter:
        """What the chain asks a body filter (Request.pass_body bookkeeping, keeps_body_length): itself."""
        return self

    def on_upstream(self, ex: Exchange, headers: list[tuple[bytes, bytes]]) -> None:
        chosen: list[tuple[str, bool]] = []
        runtime = ex.cfg.runtime
        for p in self.policies:
            share = p.percent / 100.0
            if p.runtime_key and runtime is not None and runtime.snapshot.values:
                share = runtime.snapshot.fraction(p.runtime_key, share)
            if share < 1.0 and random.random() >= share:
                continue
            name = p.cluster
            if not name:
                found = next((v for k, v in headers if k == p.cluster_header.encode("latin-1")), None)
                if not found:
                    continue  # Envoy mirrors nowhere when the header is missing
                name = found.decode("latin-1")
            chosen.append((name, p.host_suffix))
        if not chosen:
            return
        route = ex.route
        target = route.rewrite_path(ex.path).encode("latin-1") if route is not None and route.rewrites \
            else ex.target
        copy = self._copy(ex)
        copy.clusters = chosen
        copy.head = (ex.method, target, ex.authority.encode("latin-1"),
                     [h for h in headers if h[0] not in _DROPPED])
        if not ex.has_body() or ex.req_done:
            self._send(ex, copy)

    def on_request_body(self, ex: Exchange, chunk: bytes, end: bool) -> bytes:
        copy = self._copy(ex)
        if not copy.over:
            copy.body += chunk
            if len(copy.body) > MAX_SHADOW_BODY:
                copy.over, copy.body = True, bytearray()
        if end and copy.head is not None:
            self._send(ex, copy)
        return chunk

    @staticmethod
    def _copy(ex: Exchange) -> _Copy:
        state = ex.filter_request().state
        copy = state.get(_STATE)
        if copy is None:
            copy = state[_STATE] = _Copy()
        assert isinstance(copy, _Copy)
        return copy

    def _send(self, ex: Exchange, copy: _Copy) -> None:
        head, clusters = copy.head, copy.clusters
        assert head is not None
        copy.clusters = []  # sent once
        if copy.over:
            log.debug("not mirrored: a body over %d bytes", MAX_SHADOW_BODY)
            return
        method, target, authority, fields = head
        body = bytes(copy.body)
        for name, suffix in clusters:
            cluster = ex.cfg.clusters.get(name)
            if cluster is None:
                log.debug("not mirrored: no cluster %r", name)
                continue
            shadow = shadow_authority(authority) if suffix else authority
            ex.down.loop.create_task(self._call(cluster, method, target, shadow, fields, body))

    async def _call(self, cluster: ClusterRuntime, method: bytes, target: bytes, authority: bytes,
                    fields: list[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.call(cluster, method, target, authority, fields, body)
        except (TimeoutError, OSError, SideCallError, ValueError) as err:
            log.debug("mirror to %s failed: %s", cluster.model.name, err)


def shadow_authority(authority: bytes) -> bytes:
    """Envoy's shadow host: "-shadow" after the host, before its port if it has one."""
    if authority.startswith(b"["):  # an IPv6 literal: its port follows the bracket
        end = authority.find(b"]")
        cut = end + 1 if end >= 0 else len(authority)
    else:
        host, sep, port = authority.rpartition(b":")
        cut = len(host) if sep and port.isdigit() else len(authority)
    return authority[:cut] + b"-shadow" + authority[cut:]
