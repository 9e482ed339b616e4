"""meshpy as an xDS client: the ADS stream (state of the world or delta) and the conversations of the
other config sources (meshpy.xds.channels: a gRPC stream per type, REST polling, a watched file),
feeding `App.apply`.

The protocol halves live in `client_streams` and `polled`; this module holds what all share: the
accepted resources (`XdsStore`), the channels (started when a resource first names a config source,
retired when nothing is wanted from it any more), initialization (Envoy's `initial_fetch_timeout`:
/ready says PRE_INITIALIZING until every subscribed type has answered and every listener's routes and
cluster's endpoints are in, or the time is up), the step that turns a response into a live config or a
NACK, and the client's metrics.

A response is accepted only if every resource in it translates, the whole config holds together and
the App makes it live; otherwise the response is NACKed with every reason (REST and files have no
NACK: the update is refused and logged, as in Envoy), and the store and the running Snapshot stay as
they were.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import meshpy
from meshpy.errors import ConfigError
from meshpy.model.types import ADS_SOURCE, ApiSource, Config, XdsSource
from meshpy.xds import channels, polled
from meshpy.xds.channels import Channel
from meshpy.xds.client_streams import Rejected
from meshpy.xds.config_sources import describe
from meshpy.xds.secrets import SECRET
from meshpy.xds.store import (
    CLUSTER,
    ENDPOINT,
    KIND,
    LISTENER,
    MESSAGES,
    ORDER,
    ROUTE,
    RUNTIME,
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
        self.store = XdsStore.start(static, source.static_resources, frozenset(app.local_secrets), source)
        wanted = ((CLUSTER, ENDPOINT) if source.cds else ()) + ((LISTENER, ROUTE) if source.lds else ()) + (
            (SECRET,) if source.cds or source.lds or source.static_resources else ())
        if static.runtime.rtds_names():
            wanted += (RUNTIME,)  # the bootstrap's RTDS layers, subscribed by name
        if source.static_resources:
            wanted += (ROUTE, ENDPOINT)  # what static listeners and clusters may fetch
        self.types = tuple(t for t in ORDER if t in wanted)
        self.answered: set[str] = set()  # wildcard types that have had a first response
        self.initialized = asyncio.Event()
        self.last_nack: dict[str, str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        # The conversations, by (source, type); the ADS stream is (ADS_SOURCE, "") and carries every
        # type whose source is ADS.
        self.channels: dict[tuple[ApiSource, str], Channel] = {}
        self._retired_reconnects = 0
        self._warming: dict[str, float] = {}  # listener name -> when it started waiting for routes
        self._lock = asyncio.Lock()
        self._timer: asyncio.Handle | None = None
        app.metrics.add_callback_collector(self._collect)

    # -- life ----------------------------------------------------------------------------------------
    def start(self) -> None:
        loop, tasks = self.app.loop, self.app.tasks
        self._sync_channels()
        timeout = self.source.initial_fetch_timeout
        if timeout is not None:
            self._timer = loop.call_later(timeout, lambda: tasks.spawn(self._fetch_timed_out()))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await channels.closed(list(self.channels.values()))

    @property
    def connected(self) -> bool:
        """Every conversation is up (the ADS stream, and each config source's)."""
        return bool(self.channels) and all(ch.connected for ch in self.channels.values())

    @property
    def reconnects(self) -> int:
        return self._retired_reconnects + sum(ch.reconnects for ch in self.channels.values())

    @property
    def versions(self) -> dict[str, str]:
        """The last version accepted of each type (from whichever conversation brings it)."""
        return {t: v for ch in self.channels.values() for t, v in ch.versions.items()}

    def _needed(self) -> dict[tuple[ApiSource, str], tuple[str, ...]]:
        """The conversations the current resources call for, with the types each carries."""
        src = self.source
        needed: dict[tuple[ApiSource, str], tuple[str, ...]] = {}
        if src.ads:
            ads = [t for t in self.types if not (t == LISTENER and src.lds_source != ADS_SOURCE)
                   and not (t == CLUSTER and src.cds_source != ADS_SOURCE)]
            needed[(ADS_SOURCE, "")] = tuple(ads)
        for type_url, source, on in ((LISTENER, src.lds_source, src.lds), (CLUSTER, src.cds_source, src.cds)):
            if on and source != ADS_SOURCE:
                needed[(source, type_url)] = (type_url,)
        for type_url in (t for t in self.types if t not in WILDCARD):
            for fetch in self.store.needs(type_url).values():
                if fetch.source != ADS_SOURCE:
                    needed[(fetch.source, type_url)] = (type_url,)
        return needed

    def _sync_channels(self) -> None:
        """Start the conversations now called for, and retire those nothing is wanted from any more."""
        needed = self._needed()
        for key in [k for k in self.channels if k not in needed]:
            ch = self.channels.pop(key)
            self._retired_reconnects += ch.reconnects
            channels.stop(ch)
            log.info("xds: %s: nothing is wanted from it any more", ch.name)
        for key, types in needed.items():
            if key in self.channels:
                continue
            ch = self.channels[key] = Channel(self, key[0], types)
            protocol = key[0].protocol
            if protocol in ("ads", "grpc", "delta"):
                job = channels.run_grpc(ch, self.trust if protocol == "ads" else None)
            else:
                job = channels.converse(ch, polled.rest_poll if protocol == "rest" else polled.file_watch)
            ch.task = self.app.tasks.spawn(job, name=f"xds {ch.name}")

    def resubscribe(self, type_url: str) -> None:
        """After an accepted update of `type_url`: when listeners or clusters changed, every conversation
        subscribes to what is now wanted of it (nothing else changes what is wanted)."""
        if type_url not in WILDCARD:
            return
        self._sync_channels()
        for ch in list(self.channels.values()):
            if ch.follow is not None:
                ch.follow()

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
            if type_url == RUNTIME:  # runtime values are no config: the app's runtime takes them now
                self.app.runtime.set_rtds(self.store.runtimes)
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
                                if (t := store.fetch_timeout(n, timeout)) is not None and now - since >= t)
        config, store, warming = store.assemble(expired)
        # A reconnect re-sends what is already served: applied only when something changed.
        if self.app.snapshot is None or self.app.given_config != config:
            await self.app.apply(config, source=f"xds {self._origin()}")
        self.store = store
        new = warming - self._warming.keys()
        self._warming = {n: self._warming.get(n, now) for n in warming}
        tasks = self.app.tasks
        for wait in {t for n in new if (t := store.fetch_timeout(n, timeout)) is not None}:
            self.app.loop.call_later(wait, lambda: tasks.spawn(self._rewarm()))
        if not self.initialized.is_set():
            self.initialized.set()
            if self._timer is not None:
                self._timer.cancel()
            await self.app.initialized()
            log.info("xds: initial config from %s is live", self._origin())

    async def set_static(self, static: Config) -> None:
        """A reloaded config file: its resources replace the static ones; dynamic ones stay."""
        async with self._lock:
            store = self.store.with_static(static)
            if self.initialized.is_set():
                await self._go_live(store)
            else:
                await self.app.apply(static, source=f"xds {self._origin()}")
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

    def refused(self, type_url: str, detail: str) -> None:
        """An answer that is no update at all (a REST body or a file that is no DiscoveryResponse)."""
        self._count(type_url, "rejected")
        self.nacked(type_url, detail)

    def _origin(self) -> str:
        return self.source.server or ", ".join(sorted({describe(k[0]) for k in self.channels})) or "-"

    # -- what admin shows ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "server": self.source.server,
            "sources": {ch.name: {"target": ch.target, "connected": ch.connected,
                                  "versions": {short_type(t): v for t, v in ch.versions.items()}}
                        for ch in self.channels.values()},
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
        up = GaugeMetricFamily("meshpy_xds_connected", "1 while every xDS stream (ADS, config sources) is up")
        up.add_metric([], 1.0 if self.connected else 0.0)
        yield up
        updates = CounterMetricFamily("meshpy_xds_updates", "xDS responses by type and outcome",
                                      labels=["type", "result"])
        for (kind, result), n in sorted(self.counts.items()):
            updates.add_metric([kind, result], float(n))
        yield updates
        again = CounterMetricFamily("meshpy_xds_reconnects", "xDS streams opened again after a failure")
        again.add_metric([], float(self.reconnects))
        yield again
