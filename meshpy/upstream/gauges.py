"""Scrape-time gauges of the clusters' live state: circuit breakers, ejections, health."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from meshpy.upstream.cluster import ClusterRuntime


def cluster_gauges(clusters: Mapping[str, ClusterRuntime]) -> Iterator[Metric]:
    """How close each circuit breaker is to its limit (Envoy's remaining_* gauges, always on)."""
    labels = ["cluster", "resource"]
    remaining = GaugeMetricFamily("meshpy_upstream_circuit_breaker_remaining",
                                  "What is left before a circuit breaker trips.", labels=labels)
    open_ = GaugeMetricFamily("meshpy_upstream_circuit_breaker_open",
                              "1 while a circuit breaker is at its limit.", labels=labels)
    for name, rt in sorted(clusters.items()):
        for resource, (used, limit) in rt.breaker_state().items():
            remaining.add_metric([name, resource], float(max(0, limit - used)))
            open_.add_metric([name, resource], 1.0 if used >= limit else 0.0)
    yield remaining
    yield open_
    ejected = GaugeMetricFamily("meshpy_upstream_hosts_ejected", "Endpoints out by outlier detection.",
                                labels=["cluster"])
    ejections = CounterMetricFamily("meshpy_upstream_outlier_ejections",
                                    "Endpoints ejected by outlier detection, by reason.",
                                    labels=["cluster", "reason"])
    for name, rt in sorted(clusters.items()):
        if rt.outlier is not None:
            ejected.add_metric([name], float(sum(h.ejected for h in rt.hosts)))
            for reason, n in sorted(rt.outlier.ejections.items()):
                ejections.add_metric([name, reason], float(n))
    yield ejected
    yield ejections
    unhealthy = GaugeMetricFamily("meshpy_upstream_hosts_unhealthy",
                                  "Endpoints failing active health checks.", labels=["cluster"])
    changes = CounterMetricFamily("meshpy_upstream_health_transitions",
                                  "Endpoints that changed health by active checks, by new state.",
                                  labels=["cluster", "state"])
    for name, rt in sorted(clusters.items()):
        if rt.health is not None:
            unhealthy.add_metric([name], float(sum(not h.hc_healthy for h in rt.hosts)))
            for state, n in sorted(rt.health.transitions.items()):
                changes.add_metric([name, state], float(n))
    yield unhealthy
    yield changes
