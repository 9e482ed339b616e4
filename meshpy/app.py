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
from typing import Any

from meshpy.admin.server import AdminServer, start_admin
from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.dump import dump_config
from meshpy.model.types import AccessLog, Address, Config, Lifecycle, Listener
from meshpy.routing.compile import HttpListenerConfig, ListenerSlot, Snapshot, compile_snapshot
from meshpy.telemetry.accesslog import AccessLogger
from meshpy.telemetry.metrics import Metrics
from meshpy.transport.downstream_http1 import Http1Downstream
from meshpy.transport.tcp import TcpDownstream
from meshpy.upstream.cluster import ClusterManager

log = logging.getLogger("meshpy")


class BoundListener:
    __slots__ = ("address", "kind", "port", "server", "slot")

    def __init__(
        self, address: Address, kind: str, server: asyncio.AbstractServer, slot: ListenerSlot
    ) -> None:
        self.address = address
        self.kind = kind
        self.server = server
        self.slot = slot
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else address.port


def config_version(config: Config) -> str:
    return hashlib.sha256(repr(config).encode()).hexdigest()[:12]


class App:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, drain_time: float | None = None,
        grace_time: float | None = None,
    ) -> None:
        self.loop = loop
        self.metrics = Metrics()
        self.clusters = ClusterManager(self.metrics, loop)
        self.snapshot: Snapshot | None = None
        self.listeners: dict[str, BoundListener] = {}
        self.admin: AdminServer | None = None
        self._admin_address: Address | None = None
        self._loggers: dict[str | None, AccessLogger] = {}
        self._state = "PRE_INITIALIZING"
        # Command-line overrides win over the config's values, field by field.
        self._drain_time = drain_time
        self._grace_time = grace_time
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None

    # -- config ------------------------------------------------------------------------------------
    async def apply(self, config: Config, source: str = "") -> Snapshot:
        """Make `config` live, or raise ConfigError and keep the old one serving."""
        try:
            snap = await self._apply(config, source)
        except ConfigError:
            self.metrics.config_load(False)
            raise
        self.metrics.config_load(True, snap.version)
        return snap

    async def _apply(self, config: Config, source: str) -> Snapshot:
        new_clusters = self.clusters.reconcile(config.clusters)
        try:
            snap = compile_snapshot(
                config, new_clusters, self.metrics, self._logger_for, config_version(config), source
            )
            await self._bind_new(config, snap)
        except BaseException:
            self.clusters.discard(new_clusters)
            raise
        old_clusters = self.clusters.clusters
        self.clusters.commit(new_clusters)
        self._swap_listeners(snap)
        self.snapshot = snap
        await self._ensure_admin(config)
        del old_clusters
        if self._state == "PRE_INITIALIZING":
            self._state = "LIVE"
        log.info(
            "config %s live: %d listeners, %d clusters", snap.version, len(snap.listeners), len(snap.clusters)
        )
        return snap

    def _logger_for(self, a: AccessLog) -> AccessLogger:
        key = None if a.path in (None, "", "-", "stdout") else a.path
        logger = self._loggers.get(key)
        if logger is None:
            logger = self._loggers[key] = AccessLogger(key, self.loop)
        return logger

    async def _bind_new(self, config: Config, snap: Snapshot) -> None:
        """Bind sockets for listeners that are new or moved. Nothing is published yet: on failure the
        sockets bound so far are closed and the error names the listener."""
        opened: list[BoundListener] = []
        self._pending_bind: dict[str, BoundListener] = {}
        try:
            for i, lm in enumerate(config.listeners):
                cur = self.listeners.get(lm.name)
                if cur is not None and cur.address == lm.address and cur.kind == lm.kind:
                    continue
                cfg = snap.listeners[lm.name]
                try:
                    bound = await self._bind(lm, cfg)
                except OSError as err:
                    raise ConfigError(
                        [
                            ConfigIssue(
                                f"listeners[{i}].address",
                                f"cannot listen on {lm.address}: {err.strerror or err}",
                            )
                        ]
                    ) from err
                opened.append(bound)
                self._pending_bind[lm.name] = bound
        except BaseException:
            for b in opened:
                b.server.close()
            self._pending_bind = {}
            raise

    async def _bind(self, lm: Listener, cfg: HttpListenerConfig) -> BoundListener:
        slot = ListenerSlot(current=cfg)
        loop = self.loop
        if lm.kind == "tcp":

            def factory() -> asyncio.Protocol:
                return TcpDownstream(slot, loop)
        else:

            def factory() -> asyncio.Protocol:
                return Http1Downstream(slot, loop)

        host = lm.address.host or None
        family = socket.AF_INET6 if host and ":" in host else socket.AF_UNSPEC
        server = await loop.create_server(
            factory, host, lm.address.port, family=family, reuse_address=True, backlog=1024
        )
        bound = BoundListener(lm.address, lm.kind, server, slot)
        log.info("listener %s (%s) on %s:%d", lm.name, lm.kind, lm.address.host, bound.port)
        return bound

    def _swap_listeners(self, snap: Snapshot) -> None:
        pending = getattr(self, "_pending_bind", {})
        self._pending_bind = {}
        new: dict[str, BoundListener] = {}
        for name, cfg in snap.listeners.items():
            if name in pending:
                new[name] = pending[name]
                old = self.listeners.get(name)
                if old is not None:
                    self._retire(name, old)
            else:
                bound = self.listeners[name]
                bound.slot.current = cfg  # requests already started keep the config they captured
                new[name] = bound
        for name, old in self.listeners.items():
            if name not in snap.listeners:
                self._retire(name, old)
                self.metrics.forget_listener(name)
        self.listeners = new

    def _retire(self, name: str, bound: BoundListener) -> None:
        """A listener removed or moved: stop accepting, let its connections finish their requests."""
        log.info("listener %s removed: draining its connections", name)
        bound.server.close()
        bound.slot.draining = True
        for conn in list(bound.slot.connections):
            conn.start_drain()

    async def _ensure_admin(self, config: Config) -> None:
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
                log.error("admin: cannot listen on %s: %s", addr, err)

    # -- AdminHost ---------------------------------------------------------------------------------
    def state(self) -> str:
        return self._state

    def config_dump(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            return {"version": None}
        return {
            "version": snap.version,
            "loaded_at": snap.loaded_at,
            "source": snap.source,
            "config": dump_config(snap.config),
            "listeners": [
                {"name": n, "address": str(b.address), "bound_port": b.port}
                for n, b in self.listeners.items()
            ],
        }

    def clusters_view(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, rt in self.clusters.clusters.items():
            out.append(
                {
                    "name": name,
                    "type": rt.model.discovery,
                    "endpoints": [
                        {
                            "address": h.label,
                            "hostname": h.hostname,
                            "weight": h.weight,
                            "health": "healthy",
                            "active_requests": h.active_requests,
                            "active_connections": h.pool.total,
                            "idle_connections": h.pool.idle_count,
                        }
                        for h in rt.hosts
                    ],
                }
            )
        return out

    def drain_listeners(self) -> None:
        if self._drain_task is None:
            self._drain_task = self.loop.create_task(self._drain(stop_after=False))

    def quit(self) -> None:
        self.shutdown(drain=False)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def lifecycle(self) -> Lifecycle:
        base = self.snapshot.config.lifecycle if self.snapshot is not None else Lifecycle()
        return Lifecycle(
            drain_time=base.drain_time if self._drain_time is None else self._drain_time,
            grace_time=base.grace_time if self._grace_time is None else self._grace_time,
        )

    def bound_port(self, listener: str) -> int:
        return self.listeners[listener].port

    def shutdown(self, drain: bool = True) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = self.loop.create_task(self._shutdown(drain))

    async def _drain(self, stop_after: bool) -> None:
        self._state = "DRAINING"
        for bound in self.listeners.values():
            bound.slot.draining = True
        await asyncio.sleep(self.lifecycle.drain_time)
        for bound in self.listeners.values():
            bound.server.close()
            for conn in list(bound.slot.connections):
                conn.start_drain()

    async def _shutdown(self, drain: bool) -> None:
        lc = self.lifecycle
        log.info("shutting down: drain %.1fs, grace %.1fs", lc.drain_time if drain else 0.0, lc.grace_time)
        self._state = "DRAINING"
        for bound in self.listeners.values():
            bound.slot.draining = True
        if drain:
            await asyncio.sleep(lc.drain_time)
        for bound in self.listeners.values():
            bound.server.close()
            for conn in list(bound.slot.connections):
                conn.start_drain()
        deadline = self.loop.time() + lc.grace_time
        while self.loop.time() < deadline and any(b.slot.connections for b in self.listeners.values()):
            await asyncio.sleep(0.05)
        for bound in self.listeners.values():
            for conn in list(bound.slot.connections):
                conn.close()
        await self.close()
        self._stopped.set()

    async def close(self) -> None:
        self.clusters.close()
        await self.clusters.wait_closed()
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        for logger in self._loggers.values():
            logger.close()
        for bound in self.listeners.values():
            bound.server.close()
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task

    async def wait_stopped(self) -> None:
        await self._stopped.wait()
