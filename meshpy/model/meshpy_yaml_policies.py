"""The resilience part of the meshpy YAML: a cluster's circuit breakers (and, as they land, outlier
detection, health checks and balancers) and a route's retry policy, rate limit and faults.

Same conventions as `meshpy_yaml_routes`: each function reads one YAML node, reports problems to the
`Reader` and returns a model value (or the default when the node was unusable; a recorded issue means
the value is never used). Names and defaults are Envoy's, so a reader of Envoy's docs knows them.
"""

from __future__ import annotations

from meshpy.model.types import DEFAULT_BREAKERS, CircuitBreakers
from meshpy.model.yaml_reader import Reader, as_non_negative_int, as_positive_int

_BREAKER_KEYS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


def circuit_breakers(r: Reader, node: object, path: str) -> CircuitBreakers:
    """`circuit_breakers: {max_connections: 100, max_pending_requests: 50, max_requests: 200,
    max_retries: 3}`; a key left out keeps Envoy's default."""
    f = r.mapping(node, path, _BREAKER_KEYS)
    if f is None:
        return DEFAULT_BREAKERS
    d = DEFAULT_BREAKERS
    return CircuitBreakers(
        max_connections=f.get("max_connections", as_positive_int, d.max_connections),
        max_pending_requests=f.get("max_pending_requests", as_positive_int, d.max_pending_requests),
        max_requests=f.get("max_requests", as_positive_int, d.max_requests),
        max_retries=f.get("max_retries", as_non_negative_int, d.max_retries),
    )
