"""Who gets in: listener and proxy-wide connection limits, and the overload actions in force.

`Overload` is the proxy's: the downstream connections open over every listener, and the memory actions
that the monitor (`watch`) turns on and off. `Gate` is a listener's, kept with its slot across reloads
(its counts must outlive a config change) and told the new limits by `configure`. Both are asked once
per connection (`accepted` in transport/accept.py); per request only a flag is read, and only on a
listener whose config asks for it.

Envoy's runtime limits are read at each accept, as Envoy reads them: the listener's
`envoy.resource_limits.listener.<name>.connection_limit` (over it: closed at once, counted as
cx_overflow, Envoy's downstream_cx_overflow) and, when no downstream connections monitor is
configured, `overload.global_downstream_max_connections` (Envoy's downstream_global_cx_overflow).
Without a layered runtime the snapshot is empty and the check is one falsy dict.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from meshpy.model.limits import NO_LIMITS, NO_OVERLOAD, ConnectionLimits
from meshpy.model.limits import Overload as OverloadModel

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from meshpy.routing.compile import HttpListenerConfig
    from meshpy.runtime import Runtime
    from meshpy.telemetry.metrics import ListenerStats

log = logging.getLogger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE")
ACTIONS = ("disable_keepalive", "shed_requests", "stop_accepting_connections", "reject_connections")
GLOBAL_LIMIT_KEY = "overload.global_downstream_max_connections"


def resident_bytes() -> int:
    """This process's resident set, from /proc (one read of a short file)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Overload:
    """Proxy-wide state. The action flags are plain attributes: the hot path reads them directly."""

    __slots__ = ("active", "connections", "memory", "model", "pause", "rejected", "runtime", "shed")

    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime = runtime  # Envoy's runtime: the global connection limit's key, and listeners' keys
        self.model: OverloadModel = NO_OVERLOAD
        self.connections = 0  # downstream connections open, every listener
        self.memory = 0  # resident bytes at the last reading
        self.active: dict[str, bool] = dict.fromkeys(ACTIONS, False)
        self.rejected = 0  # connections closed at accept: the global limit or reject_connections
        self.shed = 0  # requests answered 503 OM
        # Called with True / False when stop_accepting_connections turns on / off (the app's listeners).
        self.pause: Callable[[bool], None] = lambda paused: None

    @property
    def shed_requests(self) -> bool:
        return self.active["shed_requests"]

    @property
    def no_keepalive(self) -> bool:
        return self.active["disable_keepalive"]

    def per_request(self) -> bool:
        """Whether any action reaches requests: only then do listeners read the flags per request."""
        return any(a.action in ("shed_requests", "disable_keepalive") for a in self.model.actions)

    def admit(self) -> bool:
        limit = self.model.max_connections
        if limit is None and self.runtime is not None:
            # Envoy reads the runtime key only when no downstream connections monitor is configured.
            values = self.runtime.snapshot.values
            found = values.get(GLOBAL_LIMIT_KEY) if values else None
            limit = found.integer if found is not None else None
        if (limit is not None and self.connections >= limit) or self.active["reject_connections"]:
            self.rejected += 1
            return False
        self.connections += 1
        return True

    def measure(self, rss: int | None = None) -> None:
        """Read memory and turn each action on at its threshold, off below it, saying so either way."""
        model = self.model
        if model.max_memory is None:
            return
        self.memory = resident_bytes() if rss is None else rss
        share = self.memory / model.max_memory
        for action in model.actions:
            on = share >= action.threshold
            if on != self.active[action.action]:
                self.active[action.action] = on
                log.warning("overload: %s %s (memory %.0f MiB, %.0f%% of %.0f MiB; threshold %.0f%%)",
                            action.action, "on" if on else "off", self.memory / 2**20, share * 100,
                            model.max_memory / 2**20, action.threshold * 100)
                if action.action == "stop_accepting_connections":
                    self.pause(on)

    def configure(self, model: OverloadModel) -> None:
        self.model = model
        for name in ACTIONS:  # an action the new config drops is off
            if self.active[name] and model.threshold(name) is None:
                self.active[name] = False
                if name == "stop_accepting_connections":
                    self.pause(False)

    async def watch(self) -> None:
        """The memory monitor: runs while the config has actions (the app starts and stops it)."""
        while True:
            self.measure()
            await asyncio.sleep(self.model.refresh_interval)

    def families(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        active = GaugeMetricFamily("meshpy_overload_action_active", "1 while an overload action is on.",
                                   labels=["action"])
        for name, on in self.active.items():
            active.add_metric([name], 1 if on else 0)
        yield active
        yield GaugeMetricFamily("meshpy_overload_memory_bytes",
                                "Resident memory at the overload monitor's last reading.", value=self.memory)
        yield GaugeMetricFamily("meshpy_overload_downstream_cx_active",
                                "Downstream connections open, every listener.", value=self.connections)
        yield CounterMetricFamily("meshpy_overload_cx_rejected",
                                  "Connections closed at accept by the global limit or reject_connections.",
                                  value=self.rejected)
        yield CounterMetricFamily("meshpy_overload_rq_shed",
                                  "Requests answered 503 (flag OM) under overload.", value=self.shed)


class Gate:
    """One listener's admission. `admit` returns "" when the connection may stay, else the listener
    counter of why not (ListenerStats: cx_overflow, cx_source_overflow, cx_overload_rejected)."""

    __slots__ = ("by_source", "limit_key", "limits", "overload")

    def __init__(self, overload: Overload) -> None:
        self.overload = overload
        self.limits: ConnectionLimits = NO_LIMITS
        self.by_source: dict[str, int] = {}
        self.limit_key = ""  # the listener's connection limit in Envoy's runtime

    def configure(self, limits: ConnectionLimits, listener: str = "") -> None:
        self.limits = limits
        self.limit_key = f"envoy.resource_limits.listener.{listener}.connection_limit" if listener else ""
        if limits.max_connections_per_source_ip is None:
            self.by_source.clear()

    def admit(self, open_here: int, peer: str) -> str:
        limits = self.limits
        if limits.max_connections is not None and open_here >= limits.max_connections:
            return "cx_overflow"
        runtime = self.overload.runtime
        if runtime is not None and runtime.snapshot.values:
            found = runtime.snapshot.values.get(self.limit_key)
            if found is not None and found.integer is not None and open_here >= found.integer:
                return "cx_overflow"
        per_source = limits.max_connections_per_source_ip
        if per_source is not None:
            n = self.by_source.get(peer, 0)
            if n >= per_source:
                return "cx_source_overflow"
            self.by_source[peer] = n + 1
        if limits.global_exempt:  # neither limited nor counted by the proxy-wide limit (Envoy's flags)
            if not limits.overload_exempt and self.overload.active["reject_connections"]:
                self.overload.rejected += 1
                if per_source is not None:
                    self._forget(peer)
                return "cx_overload_rejected"
            return ""
        if not self.overload.admit():
            if per_source is not None:
                self._forget(peer)
            return "cx_overload_rejected"
        return ""

    def release(self, peer: str) -> None:
        if not self.limits.global_exempt:
            self.overload.connections -= 1
        if self.by_source:
            self._forget(peer)

    def _forget(self, peer: str) -> None:
        n = self.by_source.get(peer, 0)
        if n <= 1:
            self.by_source.pop(peer, None)
        else:
            self.by_source[peer] = n - 1


def keep_alive_allowed(cfg: HttpListenerConfig, stats: ListenerStats, served: int, born: float,
                       now: float) -> bool:
    """Whether a connection that has now taken its `served`th request may take another (asked only on
    listeners with such limits, cfg.conn_limited): max_requests_per_connection, max_connection_duration,
    and the disable_keepalive overload action. HTTP/1.1 then closes after the answer, HTTP/2 GOAWAYs."""
    limits = cfg.http_limits
    if limits is not None:
        most = limits.max_requests_per_connection
        if most is not None and served >= most:
            stats.cx_max_requests += 1
            return False
        longest = limits.max_connection_duration
        if longest is not None and now - born >= longest:
            stats.cx_max_duration += 1
            return False
    overload = cfg.overload
    return overload is None or not overload.no_keepalive
