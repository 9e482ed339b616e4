"""Envoy's resilience settings -> the model: a cluster's circuit breakers (and, as they land, outlier
detection, health checks and balancers) and a route's retry policy, rate limit and faults.

Split from `translate_clusters` and `translate_routes` to keep each module short. Same rule as the rest
of the translator: a field meshpy does not act on is an issue naming it, never dropped.
"""

from __future__ import annotations

from typing import Any

from meshpy.model.types import DEFAULT_BREAKERS, CircuitBreakers
from meshpy.xds.translate_base import Issues, child, item, wrapped

_DEFAULT_PRIORITY = 0  # RoutingPriority.DEFAULT; meshpy has no route priorities, so HIGH is refused
# track_remaining only adds Envoy's remaining_* gauges; meshpy always exports how close each limit is.
_THRESHOLDS = frozenset(
    {"priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "track_remaining"}
)


def circuit_breakers(issues: Issues, msg: Any, path: str) -> CircuitBreakers:
    """A Cluster's `circuit_breakers` (its DEFAULT-priority thresholds), with Envoy's defaults."""
    if not msg.HasField("circuit_breakers"):
        return DEFAULT_BREAKERS
    cb = msg.circuit_breakers
    cb_path = child(path, "circuit_breakers")
    issues.fields(cb, cb_path, {"thresholds"})
    found = DEFAULT_BREAKERS
    seen = False
    for i, t in enumerate(cb.thresholds):
        t_path = item(child(cb_path, "thresholds"), i)
        issues.fields(t, t_path, _THRESHOLDS)
        if t.priority != _DEFAULT_PRIORITY:
            issues.add(child(t_path, "priority"), "only DEFAULT is supported by meshpy (no route priorities)")
            continue
        if seen:
            issues.add(t_path, "a second DEFAULT threshold")
        seen = True
        d = DEFAULT_BREAKERS
        found = CircuitBreakers(
            max_connections=wrapped(t, "max_connections", d.max_connections),
            max_pending_requests=wrapped(t, "max_pending_requests", d.max_pending_requests),
            max_requests=wrapped(t, "max_requests", d.max_requests),
            max_retries=wrapped(t, "max_retries", d.max_retries),
        )
    return found
