"""meshpy as an xDS client: one ADS stream (state of the world or delta) feeding `App.apply`.

The protocol halves live in `client_streams`; this module holds what both share: the accepted
resources (`XdsStore`), initialization (Envoy's `initial_fetch_timeout`: /ready says PRE_INITIALIZING
until every subscribed type has answered and every listener's routes and cluster's endpoints are in,
or the time is up), the step that turns a response into a live config or a NACK, reconnection with
jittered exponential back-off, and the client's metrics.

A response is accepted only if every resource in it translates, the whole config holds together and
the App makes it live; otherwise the response is NACKed with every reason, and the store and the
running Snapshot stay as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import meshpy
from meshpy.errors import ConfigError
from meshpy.model.types import Config, XdsSource
from meshpy.xds.client_streams import Rejected, delta_stream, sotw_stream
from meshpy.xds.secrets import SECRET
from meshpy.xds.store import (
    CLUSTER,
    ENDPOINT,
    KIND,
    LISTENER,
    MESSAGES,
    ORDER,
    ROUTE,
    WILDCARD,
    XdsStore,
)

if TYPE_CHECKING:
    from meshpy.app import App
    from meshpy.identity.control_trust import ControlPlaneTls

log = logging.getLogger("meshpy.xds")


def node_proto(source: XdsSource) -> base_pb2.Node:
    node = json_format.Parse(source.node_json, base_pb2.Node())
    node.user_agent_name = "meshpy"
    node.user_agent_version = meshpy.__version__
    return node


def _tls_hint(details: str, trust: ControlPlaneTls | None) -> str:
    from meshpy.identity.control_trust import tls_hint  # grpc only: no cryptography at start

    return tls_hint(details, trust)


def _detail(err: ConfigError) -> str:
    return "; ".join(str(i) for i in err.issues)


def short_type(type_url: str) -> str:
    return KIND.get(type_url, type_url.rsplit(".", 1)[-1])


class AdsClient:
    def __init__(self, app: App, static: Config, source: XdsSource,
                 trust: ControlPlaneTls | None = None) -> None:
        """`trust`: the control plane serves TLS, reached with it (meshpy run --xds-ca, or the bootstrap's
        ADS cluster's UpstreamTlsContext: meshpy.xds.ads_tls)."""
        self.app = app
        self.source = source
        self.trust = trust
        self.node = node_proto(source)
        self.store = XdsStore.start(static, source.static_resources, frozenset(app.local_secrets))
        wanted = ((CLUSTER, ENDPOINT) if source.cds else ()) + ((LISTENER, ROUTE) if source.lds else ()) + (
            (SECRET,) if source.cds or source.lds else ())
        self.types = tuple(t for t in ORDER if t in wanted)
        self.versions: dict[str, str] = {}  # state of the world: last accepted version per type
        self.resource_versions: dict[str, dict[str, str]] = {t: {} for t in ORDER}  # delta
        self.answered: set[str] = set()  # wildcard types that have had a first response
        self.initialized = asyncio.Event()
        self.connected = False
        self.last_nack: dict[str, str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.reconnects = 0
        self._warming: dict[str, float] = {}  # listener name -> when it started waiting for routes
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.Handle | None = None
        app.metrics.add_callback_collector(self._collect)

    # -- life ----------------------------------------------------------------------------------------
    def start(self) -> None:
        loop, tasks = self.app.loop, self.app.tasks
        self._task = tasks.spawn(self._run(), name="xds")
        timeout = self.source.initial_fetch_timeout
        if timeout is not None:
            self._timer = loop.call_later(timeout, lambda: tasks.spawn(self._fetch_timed_out()))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        attempt = 0
        while True:
            channel = (grpc.aio.insecure_channel(self.source.server) if self.trust is None
                       else self.trust.channel(self.source.server))  # the roots as they are now
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            got_response = False
            try:
                stream = delta_stream if self.source.delta else sotw_stream
                async for _ in stream(self, stub):
                    if not got_response:
                        got_response = True
                        attempt = 0
                        log.info("xds: connected to %s", self.source.server)
                    self.connected = True
            except grpc.aio.AioRpcError as err:
                # Said once per outage; the retries that follow are debug noise.
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                details = err.details() or ""
                log.log(level, "xds: stream to %s failed: %s %s%s", self.source.server, err.code().name,
                        details, _tls_hint(details, self.trust))
            except Exception:  # a bug must not end xDS for the life of the process
                log.exception("xds: stream to %s broke", self.source.server)
            finally:
                self.connected = False
                await channel.close()
            self.reconnects += 1
            # Jittered exponential back-off, as Envoy's but uniform in [ceiling/2, ceiling] rather than
            # [0, ceiling], so that a flapping server never meets a tight reconnect loop.
            ceiling = min(self.source.backoff_max, self.source.backoff_base * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    # -- one response --------------------------------------------------------------------------------
    async def accept(self, type_url: str, resources: Iterable[Any], removed: Iterable[str] = (),
                     replace: bool = False) -> None:
        """Make a response live, or raise Rejected with the reasons (the store stays as it was)."""
        if type_url not in MESSAGES:
            raise Rejected(f"{type_url} is not a type meshpy subscribes to")
        msgs = []
        for i, any_msg in enumerate(resources):
            if any_msg.type_url != type_url:
                raise Rejected(f"resources[{i}]: a {any_msg.type_url} in a {short_type(type_url)} response")
            msg = MESSAGES[type_url]()
            try:
                decoded = any_msg.Unpack(msg)
            except DecodeError as err:
                # Bytes that are no such message: a NACK, as for any bad resource. Uncaught, this broke
                # the stream, and the reconnect got the same bytes again (found by fuzzing).
                raise Rejected(f"resources[{i}]: cannot decode a {short_type(type_url)}: {err}") from None
            if not decoded:
                raise Rejected(f"resources[{i}]: cannot decode a {short_type(type_url)}")
            msgs.append(msg)
        async with self._lock:
            try:
                store = self.store.update(type_url, msgs, removed, replace)
            except ConfigError as err:
                self._count(type_url, "rejected")
                raise Rejected(_detail(err)) from None
            if type_url in WILDCARD:
                self.answered.add(type_url)
            if self.initialized.is_set() or self._complete(store):
                try:
                    await self._go_live(store)
                except ConfigError as err:
                    self._count(type_url, "rejected")
                    raise Rejected(_detail(err)) from None
            else:
                self.store = store
            self._count(type_url, "accepted")
            self.last_nack.pop(type_url, None)

    def _complete(self, store: XdsStore) -> bool:
        wildcard = {t for t in self.types if t in WILDCARD}
        return wildcard <= self.answered and not store.missing()

    async def _go_live(self, store: XdsStore) -> None:
        """Assemble and apply `store`; ConfigError leaves everything as it was."""
        now = time.monotonic()
        timeout = self.source.initial_fetch_timeout
        if not self.initialized.is_set():
            expired = frozenset(store.of(LISTENER))  # complete, or the initial fetch time is over
        else:
            expired = frozenset(n for n, since in self._warming.items()
                                if timeout is not None and now - since >= timeout)
        config, store, warming = store.assemble(expired)
        # A reconnect re-sends what is already served: applied only when something changed.
        if self.app.snapshot is None or self.app.given_config != config:
            await self.app.apply(config, source=f"xds {self.source.server}")
        self.store = store
        new = warming - self._warming.keys()
        self._warming = {n: self._warming.get(n, now) for n in warming}
        if new and timeout is not None:
            tasks = self.app.tasks
            self.app.loop.call_later(timeout, lambda: tasks.spawn(self._rewarm()))
        if not self.initialized.is_set():
            self.initialized.set()
            if self._timer is not None:
                self._timer.cancel()
            await self.app.initialized()
            log.info("xds: initial config from %s is live", self.source.server)

    async def set_static(self, static: Config) -> None:
        """A reloaded config file: its resources replace the static ones; dynamic ones stay."""
        async with self._lock:
            store = self.store.with_static(static)
            if self.initialized.is_set():
                await self._go_live(store)
            else:
                await self.app.apply(static, source=f"xds {self.source.server}")
                self.store = store

    async def _fetch_timed_out(self) -> None:
        async with self._lock:
            if self.initialized.is_set():
                return
            waiting = sorted(self.store.missing() | {f"{short_type(t)} (all)" for t in self.types
                                                     if t in WILDCARD and t not in self.answered})
            log.warning("xds: initial fetch timed out after %ss; serving what has arrived. Still missing: %s",
                        self.source.initial_fetch_timeout, ", ".join(waiting) or "nothing")
            try:
                await self._go_live(self.store)
            except ConfigError as err:
                log.error("xds: the config received so far cannot be served: %s", _detail(err))
                self.initialized.set()
                await self.app.initialized()

    async def _rewarm(self) -> None:
        """A listener waited its whole fetch time for routes: serve it without them (404), as Envoy."""
        async with self._lock:
            if self._warming:
                try:
                    await self._go_live(self.store)
                except ConfigError as err:
                    log.error("xds: listeners that waited for routes cannot be served: %s", _detail(err))

    def _count(self, type_url: str, result: str) -> None:
        key = (short_type(type_url), result)
        self.counts[key] = self.counts.get(key, 0) + 1

    def nacked(self, type_url: str, detail: str) -> None:
        self.last_nack[type_url] = detail
        log.error("xds: rejected %s update: %s", short_type(type_url), detail)

    # -- what admin shows ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "server": self.source.server,
            "protocol": "delta" if self.source.delta else "sotw",
            "node": json.loads(self.source.node_json),
            "connected": self.connected,
            "initialized": self.initialized.is_set(),
            "versions": {short_type(t): v for t, v in self.versions.items()},
            "resources": {short_type(t): sorted(self.store.of(t)) for t in ORDER},
            "warming_listeners": sorted(self._warming),
            "last_nack": {short_type(t): d for t, d in self.last_nack.items()},
        }

    def _collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("meshpy_xds_connected", "1 while the ADS stream is up")
        up.add_metric([], 1.0 if self.connected else 0.0)
        yield up
        updates = CounterMetricFamily("meshpy_xds_updates", "xDS responses by type and outcome",
                                      labels=["type", "result"])
        for (kind, result), n in sorted(self.counts.items()):
            updates.add_metric([kind, result], float(n))
        yield updates
        again = CounterMetricFamily("meshpy_xds_reconnects", "ADS streams opened again after a failure")
        again.add_metric([], float(self.reconnects))
        yield again
