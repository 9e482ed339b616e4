"""The composition root: snapshot holder, listeners, admin, reload and ordered shutdown.

A config load is: build the model (the caller), reconcile clusters, compile a Snapshot, bind what is
new, then publish by swapping references. Any failure before the swap leaves the running config as it
was. Shutdown is ordered: /ready turns 503, listeners keep accepting through the drain time (answers
carry `Connection: close`), then stop; requests in flight get the grace time; then everything closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from meshpy.admin.server import AdminServer, start_admin
from meshpy.app_stop import Stopping
from meshpy.app_tls import TlsReloading
from meshpy.errors import ConfigError, ConfigIssue
from meshpy.listener_pause import close_spares, pause, resume
from meshpy.model.dump import dump_config
from meshpy.model.process import NO_PROCESS_OPTIONS
from meshpy.model.types import AccessLog, Address, Config, Listener
from meshpy.routing.compile import HttpListenerConfig, ListenerSlot, Snapshot, compile_snapshot
from meshpy.runtime import Runtime
from meshpy.stack.deadlines import Deadlines
from meshpy.stack.policy_runtime import PolicyRuntime
from meshpy.tasks import TaskOwner
from meshpy.telemetry import app_log
from meshpy.telemetry.accesslog import AccessLogger, LogContext, open_access_log
from meshpy.telemetry.metrics import Metrics
from meshpy.transport import unix
from meshpy.transport.admission import Gate, Overload
from meshpy.transport.listen import OriginalDstDispatch, dual_stack, protocol_for
from meshpy.upstream import outlier_events
from meshpy.upstream.cluster import ClusterManager

log = logging.getLogger("meshpy")

INITIAL_RESOLVE_TIMEOUT = 5.0


class BoundListener:
    """One listening socket and the slot its new connections get."""

    __slots__ = ("address", "bound", "extra_servers", "factory", "port", "server", "slot", "spare")

    def __init__(self, address: Address, slot: ListenerSlot, bound: bool = True) -> None:
        self.address = address
        self.bound = bound  # False: no socket; it serves connections an intercepting listener hands it
        self.slot = slot
        self.server: asyncio.Server | None = None
        self.port = address.port
        # While paused by the overload manager (meshpy.listener_pause): the kept sockets, and how to
        # serve them again.
        self.factory: Callable[[], asyncio.BaseProtocol] | None = None
        self.spare: list[socket.socket] = []
        self.extra_servers: list[asyncio.Server] = []


def config_version(config: Config) -> str:
    return hashlib.sha256(repr(config).encode()).hexdigest()[:12]


class App(Stopping, TlsReloading):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        drain_time: float | None = None,
        grace_time: float | None = None,
    ) -> None:
        self.loop = loop
        self.metrics = Metrics()
        self.tasks = TaskOwner(loop)  # every background task, stopped by close()
        self.clusters = ClusterManager(self.metrics, loop, self.tasks)
        self.runtime = Runtime(self.tasks)  # Envoy's layered runtime (meshpy.runtime)
        self._process_options = NO_PROCESS_OPTIONS  # log format, outlier event log: App._process
        self.policies = PolicyRuntime(self.runtime)  # rate-limit buckets and fault state, across compiles
        self.deadlines = Deadlines(loop)
        self.snapshot: Snapshot | None = None
        self.listeners: dict[str, BoundListener] = {}
        self.admin: AdminServer | None = None
        self._admin_address: Address | None = None
        self._loggers: dict[AccessLog, AccessLogger] = {}
        self._log_context = LogContext()  # what every access log's lines share (host name, connection ids)
        self._state = "PRE_INITIALIZING"
        self._plan: dict[str, BoundListener] = {}
        # Listeners without a socket (served through an intercepting one), by address (one per address:
        # the config check refuses two).
        self._virtual: dict[tuple[str, int], ListenerSlot] = {}
        self._old_slots: list[ListenerSlot] = []  # drained slots whose connections still run
        # Command-line overrides win over the config's values, field by field.
        self._drain_time = drain_time
        self._grace_time = grace_time
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # a second stop signal: no more waiting
        self._drain_task: asyncio.Task[None] | None = None
        # An xDS client holds the server in PRE_INITIALIZING until its initial fetch is done.
        self._hold_initialization = False
        self.xds_status: Callable[[], dict[str, Any]] | None = None
        self.overload = Overload(self.runtime)  # connection counts and the memory actions (admission.py)
        self.overload.pause = self._pause_accepting
        self._watch: asyncio.Task[None] | None = None
        self.metrics.add_callback_collector(self.overload.families)
        self.metrics.add_callback_collector(self.runtime.families)

    # -- config ------------------------------------------------------------------------------------
    async def apply(self, config: Config, source: str = "", refresh_tls: bool = False) -> Snapshot:
        """Make `config` live, or raise ConfigError and keep the old one serving. `refresh_tls`: read
        the TLS files again even where the config is unchanged (they changed)."""
        try:
            snap = await self._apply(config, source, refresh_tls)
        except ConfigError:
            self.metrics.config_load(False)
            raise
        self.metrics.config_load(True, snap.version)
        return snap

    async def _apply(self, config: Config, source: str, refresh_tls: bool = False) -> Snapshot:
        given, config = config, self._with_local_secrets(config)
        # The runtime is read when its layers change, not at every push (as Envoy reads it at start).
        runtime_changed = config.runtime != self.runtime.model
        disk = self.runtime.prepare(config.runtime) if runtime_changed else {}
        new_clusters = self.clusters.reconcile(config.clusters, refresh_tls, config.process.local_cluster,
                                               config.service_locality)
        claims = self.policies.claims()
        try:
            snap = compile_snapshot(
                config, new_clusters, self.metrics, self._logger_for, config_version(config), source, claims
            )
            await self._bind_new(config, snap)
        except BaseException:
            self.clusters.discard(new_clusters)
            raise
        self._overload(config, snap)
        old_clusters = self.clusters.clusters
        self.clusters.commit(new_clusters)
        self.policies.commit(claims)  # rate-limit buckets and fault state kept where unchanged
        self._swap_listeners(snap)
        self.snapshot = snap
        if runtime_changed:
            self.runtime.commit(config.runtime, disk)
        self._process(config)
        self.given_config = given
        self._tls_live(config, snap)
        await self._ensure_admin(config)
        del old_clusters
        if self._state == "PRE_INITIALIZING" and not self._hold_initialization:
            await self.initialized()
        log.info(
            "config %s live: %d listeners, %d clusters", snap.version, len(snap.listeners), len(snap.clusters)
        )
        return snap

    def _process(self, config: Config) -> None:
        """The bootstrap's process-wide settings: the format of meshpy's log lines and the outlier
        event log (set again only when they change: the log file stays open across reloads)."""
        process = config.process
        if process != self._process_options:
            self._process_options = process
            app_log.apply(process.log_pattern, process.json_log)
            outlier_events.configure(process.outlier_event_log)

    def _overload(self, config: Config, snap: Snapshot) -> None:
        """The new config's limits: the proxy-wide ones now, the memory monitor running while there
        are actions, and the listeners reading the flags per request only where an action needs it."""
        state = self.overload
        state.configure(config.overload)
        per_request = state if state.per_request() else None
        for cfg in snap.listeners.values():
            cfg.with_overload(None if cfg.model.limits.overload_exempt else per_request)
        wanted = config.overload.max_memory is not None and bool(config.overload.actions)
        if wanted and self._watch is None:
            self._watch = self.tasks.spawn(state.watch(), name="overload monitor")
        elif not wanted and self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _pause_accepting(self, paused: bool) -> None:
        bound = [b for b in self.listeners.values()
                 if b.bound and not b.slot.current.model.limits.overload_exempt]
        if paused:
            log.warning("overload: listeners stop accepting (%d paused)", pause(bound))
        elif self._shutdown_task is None:
            log.warning("overload: listeners accept again")
            self.tasks.spawn(resume(self.loop, bound), name="listeners resume")

    def hold_initialization(self) -> None:
        """Stay PRE_INITIALIZING (/ready 503) through config loads until `initialized` is called."""
        self._hold_initialization = True

    async def initialized(self) -> None:
        """The initial config is complete: LIVE once DNS clusters have their first answer."""
        self._hold_initialization = False
        if self._state == "PRE_INITIALIZING":
            await self._wait_clusters_initialized()
            self._state = "LIVE"

    async def _wait_clusters_initialized(self) -> None:
        """The first config is LIVE once every DNS cluster has had its first answer (bounded, like
        Envoy's cluster initialization), so early requests do not meet empty clusters."""
        waits = [rt.resolved.wait() for rt in self.clusters.clusters.values() if not rt.resolved.is_set()]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INITIAL_RESOLVE_TIMEOUT):
                    await asyncio.gather(*waits)

    def _logger_for(self, a: AccessLog) -> AccessLogger:
        # One logger per log config (destination, format, filter), shared by the listeners naming it.
        key = replace(a, path=None) if a.path in (None, "", "-", "stdout", "/dev/stdout") else a
        logger = self._loggers.get(key)
        if logger is None:
            logger = self._loggers[key] = open_access_log(key, self.loop, self._log_context)
        return logger

    async def _bind_new(self, config: Config, snap: Snapshot) -> None:
        """Pick a socket for every listener: its own, another one's on the same address (a listener
        renamed or turned from http to tcp keeps the socket), or a new one. Nothing is published
        yet: on failure the sockets opened so far are closed and the error names the listener."""
        opened: list[BoundListener] = []
        plan: dict[str, BoundListener] = {}
        claimed: set[int] = set()
        for lm in config.listeners:  # listeners that keep their name and address keep their socket
            cur = self.listeners.get(lm.name)
            if cur is not None and cur.address == lm.address and cur.bound == lm.bind:
                plan[lm.name] = cur
                claimed.add(id(cur))
        by_address = {b.address: b for b in self.listeners.values()
                      if (b.address.port != 0 or b.address.path) and b.bound}
        try:
            for i, lm in enumerate(config.listeners):
                if lm.name in plan:
                    continue
                other = by_address.get(lm.address) if lm.bind else None
                if other is not None and id(other) not in claimed:
                    plan[lm.name] = other
                    claimed.add(id(other))
                    continue
                try:
                    bound = await self._bind(lm, snap.listeners[lm.name])
                except OSError as err:
                    reason = f"cannot listen on {lm.address}: {err.strerror or err}"
                    raise ConfigError([ConfigIssue(f"listeners[{i}].address", reason)]) from err
                opened.append(bound)
                plan[lm.name] = bound
        except BaseException:
            for b in opened:
                if b.server is not None:
                    b.server.close()
            raise
        self._plan = plan

    async def _bind(self, lm: Listener, cfg: HttpListenerConfig) -> BoundListener:
        slot = ListenerSlot(current=cfg, deadlines=self.deadlines, gate=Gate(self.overload))
        bound = BoundListener(lm.address, slot, lm.bind)
        loop = self.loop

        if not lm.bind:  # served only through an intercepting listener: no socket of its own
            return bound

        def factory() -> asyncio.Protocol:
            slot = bound.slot
            if slot.current.model.original_destination:
                return OriginalDstDispatch(slot, loop, self._route_original)
            return protocol_for(slot, loop)

        if lm.address.path:  # a Unix socket (Envoy's pipe): a stale file there is replaced, as by Envoy
            bound.server = await unix.serve(loop, factory, lm.address, backlog=1024)
            bound.factory = factory
            log.info("listener %s (%s) on %s", lm.name, lm.kind, lm.address)
            return bound
        host = lm.address.host or None
        family = socket.AF_INET6 if host and ":" in host else socket.AF_UNSPEC
        if lm.address.v4_compat:  # asyncio makes IPv6 sockets IPv6-only: this one takes both
            bound.server = await loop.create_server(factory, sock=dual_stack(lm.address), backlog=1024)
        else:
            bound.server = await loop.create_server(
                factory, host, lm.address.port, family=family, reuse_address=True, backlog=1024
            )
        bound.factory = factory
        sockets: list[socket.socket] = list(bound.server.sockets or [])
        bound.port = sockets[0].getsockname()[1] if sockets else lm.address.port
        log.info("listener %s (%s) on %s:%d", lm.name, lm.kind, lm.address.host, bound.port)
        return bound

    def _swap_listeners(self, snap: Snapshot) -> None:
        plan, self._plan = self._plan, {}
        new: dict[str, BoundListener] = {}
        retired: list[ListenerSlot] = []
        for name, cfg in snap.listeners.items():
            bound = plan[name]
            if (bound.slot.current.tcp is None) != (cfg.tcp is None):
                # Same socket, other protocol: old connections drain on their old slot.
                self._drain_slot(bound.slot)
                retired.append(bound.slot)
                bound.slot = ListenerSlot(current=cfg, deadlines=self.deadlines, gate=Gate(self.overload))
            else:
                bound.slot.current = cfg  # requests already started keep the config they captured
                bound.slot.refresh_chains()
            bound.address = cfg.model.address
            if bound.slot.gate is not None:
                bound.slot.gate.configure(cfg.model.limits, name)
            new[name] = bound
        kept = {id(b) for b in new.values()}
        for name, old in self.listeners.items():
            if id(old) not in kept:
                log.info("listener %s removed: draining its connections", name)
                if old.server is not None:
                    old.server.close()
                self._drain_slot(old.slot)
                retired.append(old.slot)
            if name not in snap.listeners:
                self.metrics.forget_listener(name)
        self.listeners = new
        self._virtual = {(b.address.host, b.address.port): b.slot for b in new.values() if not b.bound}
        # Drained slots are kept until their last connection ends, so shutdown waits for them too.
        self._old_slots = [slot for slot in self._old_slots + retired if slot.connections]

    def _route_original(self, slot: ListenerSlot, dst: tuple[str, int]) -> ListenerSlot:
        """The listener for a connection going to `dst`: one without a socket of its own at that
        exact address, else at the wildcard address on that port, else the intercepting one. Only
        listeners of the same traffic direction (or of none) qualify, so an outbound listener for port
        8080 of other services never takes the calls coming in to this pod's own port 8080."""
        want = slot.current.model.direction
        for key in (dst, ("::" if ":" in dst[0] else "0.0.0.0", dst[1])):
            found = self._virtual.get(key)
            if found is not None and (found.current.model.direction == want or "unspecified" in (
                    found.current.model.direction, want)):
                return found
        return slot

    def _drain_slot(self, slot: ListenerSlot) -> None:
        """Connections of a listener that is gone finish their current request, then close."""
        slot.set_draining()
        for conn in list(slot.connections):
            conn.start_drain()

    async def _ensure_admin(self, config: Config) -> None:
        await self._ensure_admin_listener(config)
        if self.admin is not None:
            self.admin.access_log.loggers = self._admin_loggers(config)

    def _admin_loggers(self, config: Config) -> tuple[AccessLogger, ...]:
        loggers = []
        for i, a in enumerate(config.admin.access_logs):
            try:
                loggers.append(self._logger_for(a))
            except OSError as err:
                if self._state == "PRE_INITIALIZING":  # as a listener's log: the config is refused
                    raise ConfigError.at(f"admin.access_log[{i}]", f"cannot open: {err}") from err
                log.error("admin: access log %s: cannot open: %s", a.path, err)
        return tuple(loggers)

    async def _ensure_admin_listener(self, config: Config) -> None:
        addr = config.admin.address
        if addr == self._admin_address:
            return
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        self._admin_address = addr
        if addr is not None:
            try:
                self.admin = await start_admin(self, addr, self.loop)
            except OSError as err:
                if self._state == "PRE_INITIALIZING":
                    # At start, as Envoy: no proxy without its admin. Running on would leave its /ready,
                    # drain and stats to whatever holds the port (another proxy answering for it).
                    raise ConfigError.at("admin.address", f"cannot listen on {addr}: "
                                                          f"{err.strerror or err}") from err
                log.error("admin: cannot listen on %s: %s", addr, err)

    # -- AdminHost ---------------------------------------------------------------------------------
    def state(self) -> str:
        return self._state

    def config_dump(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            return {"version": None}
        xds = {"xds": self.xds_status()} if self.xds_status is not None else {}
        return xds | {
            "version": snap.version,
            "loaded_at": snap.loaded_at,
            "source": snap.source,
            "config": dump_config(snap.config),
            "listeners": [
                {"name": n, "address": str(b.address), "bound_port": b.port if b.bound else None}
                for n, b in self.listeners.items()
            ],
            # The live state beside the config: health, ejections and circuit breakers per endpoint.
            "cluster_state": self.clusters_view(),
        }

    def clusters_view(self) -> list[dict[str, Any]]:
        return self.clusters.view()

    def runtime_view(self) -> dict[str, Any]:
        return self.runtime.view()

    def runtime_modify(self, pairs: list[tuple[str, str]]) -> str | None:
        return self.runtime.modify(pairs)

    def bound_port(self, listener: str) -> int:
        return self.listeners[listener].port

    async def close(self) -> None:
        self.deadlines.close()
        self.runtime.close()
        self.clusters.close()
        await self.clusters.wait_closed()
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        for logger in self._loggers.values():
            logger.close()
        for bound in self.listeners.values():
            if bound.server is not None:
                bound.server.close()
        close_spares(self.listeners.values())
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        await self.tasks.stop()  # what is left: connects in flight, the xDS client, config watching

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
