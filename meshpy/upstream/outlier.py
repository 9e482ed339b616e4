"""Outlier detection: endpoints that fail are ejected from their cluster's balancer for a while.

Envoy's algorithm, with its names and defaults (model.OutlierDetection): consecutive 5xx, consecutive
gateway failures (502, 503, 504) and consecutive local-origin failures (connect failures, resets,
timeouts) eject at once; every `interval` the success rate and the failure percentage of the endpoints
with enough requests are compared and the outliers ejected. An ejection lasts base_ejection_time times
the endpoint's ejection count (capped by max_ejection_time); the count decays by one per interval the
endpoint spends in service. At most max_ejection_percent of the endpoints are out at once, though one
always may be. Without `split_external_local_origin_errors`, a local-origin failure counts as a 503
(Envoy's mapping), so it feeds the 5xx and gateway counters.

The request path reports each result with one call; the counters live on the Host objects.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import TYPE_CHECKING

from meshpy.model.types import OutlierDetection
from meshpy.upstream import outlier_events

if TYPE_CHECKING:
    from meshpy.upstream.cluster import ClusterRuntime, Host

_GATEWAY = (502, 503, 504)


class OutlierDetector:
    __slots__ = ("_loop", "_ticker", "cluster", "config", "ejections")

    def __init__(
        self, cluster: ClusterRuntime, config: OutlierDetection, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.cluster = cluster
        self.config = config
        self._loop = loop
        self.ejections: dict[str, int] = {}  # reason -> ejections so far, for /metrics
        self._ticker: asyncio.Handle | None = loop.call_later(config.interval, self._tick)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for host in self.cluster.hosts:
            if host.uneject is not None:
                host.uneject.cancel()
                host.uneject = None

    # -- results, from the request path ---------------------------------------------------------------
    def result(self, host: Host, status: int) -> None:
        """A response head from `host`."""
        host.c_local = 0
        if status < 500:
            host.c_5xx = host.c_gateway = 0
            host.rq_ok += 1
            return
        host.rq_fail += 1
        host.c_5xx += 1
        host.c_gateway = host.c_gateway + 1 if status in _GATEWAY else 0
        self._check_consecutive(host)

    def local_failure(self, host: Host) -> None:
        """No response from `host`: a failed connect, a reset, a timeout."""
        cfg = self.config
        host.rq_fail += 1
        if cfg.split_external_local_origin_errors:
            host.c_local += 1
            if host.c_local >= cfg.consecutive_local_origin_failure:
                enforcing = cfg.enforcing_consecutive_local_origin_failure
                self.eject(host, "consecutive_local_origin_failure", enforcing)
            return
        host.c_5xx += 1  # mapped to a 503, as Envoy does
        host.c_gateway += 1
        self._check_consecutive(host)

    def _check_consecutive(self, host: Host) -> None:
        cfg = self.config
        if host.c_5xx >= cfg.consecutive_5xx:
            self.eject(host, "consecutive_5xx", cfg.enforcing_consecutive_5xx)
        elif host.c_gateway >= cfg.consecutive_gateway_failure:
            self.eject(host, "consecutive_gateway_failure", cfg.enforcing_consecutive_gateway_failure)

    # -- ejection ---------------------------------------------------------------------------------------
    def eject(self, host: Host, reason: str, enforcing: float,
              rates: tuple[float, float, float] | None = None) -> bool:
        """`rates`: (the host's, the cluster's mean, the threshold) success rates in %, for the event
        log of a success-rate or failure-percentage ejection."""
        if host.ejected or host not in self.cluster.hosts:
            return False
        if enforcing < 100.0 and random.random() * 100.0 >= enforcing:
            outlier_events.ejected(self.cluster.model.name, host, reason, False, rates)  # (Envoy logs it too)
            return False
        hosts = self.cluster.hosts
        out = sum(1 for h in hosts if h.ejected)
        if out >= 1 and 100.0 * (out + 1) / len(hosts) > self.config.max_ejection_percent:
            return False
        cfg = self.config
        host.ejected = True
        host.eject_count += 1
        cap = max(cfg.max_ejection_time, cfg.base_ejection_time)
        duration = min(cfg.base_ejection_time * host.eject_count, cap)
        host.uneject = self._loop.call_later(duration, self._return, host)
        host.c_5xx = host.c_gateway = host.c_local = 0
        self.ejections[reason] = self.ejections.get(reason, 0) + 1
        self.cluster.rebuild_order()
        outlier_events.ejected(self.cluster.model.name, host, reason, True, rates)
        return True

    def _return(self, host: Host) -> None:
        host.uneject = None
        host.ejected = False
        self.cluster.rebuild_order()
        outlier_events.returned(self.cluster.model.name, host)

    # -- every interval ---------------------------------------------------------------------------------
    def _tick(self) -> None:
        cfg = self.config
        hosts = list(self.cluster.hosts)
        self._success_rate(hosts)
        self._failure_percentage(hosts)
        for h in hosts:
            h.rq_ok = h.rq_fail = 0
            if not h.ejected and h.eject_count > 0:
                h.eject_count -= 1
        self._ticker = self._loop.call_later(cfg.interval, self._tick)

    def _success_rate(self, hosts: list[Host]) -> None:
        cfg = self.config
        rates = {h: h.rq_ok / (h.rq_ok + h.rq_fail) for h in hosts
                 if not h.ejected and h.rq_ok + h.rq_fail >= cfg.success_rate_request_volume}
        if len(rates) < cfg.success_rate_minimum_hosts:
            return
        mean = sum(rates.values()) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
        floor = mean - cfg.success_rate_stdev_factor / 1000.0 * stdev
        for h, rate in rates.items():
            if rate < floor:
                self.eject(h, "success_rate", cfg.enforcing_success_rate,
                           (rate * 100, mean * 100, floor * 100))

    def _failure_percentage(self, hosts: list[Host]) -> None:
        cfg = self.config
        volume = cfg.failure_percentage_request_volume
        eligible = [h for h in hosts if not h.ejected and h.rq_ok + h.rq_fail >= volume]
        if len(eligible) < cfg.failure_percentage_minimum_hosts:
            return
        for h in eligible:
            failed = 100.0 * h.rq_fail / (h.rq_ok + h.rq_fail)
            if failed >= cfg.failure_percentage_threshold:
                self.eject(h, "failure_percentage", cfg.enforcing_failure_percentage,
                           (100.0 - failed, 0.0, 0.0))
