"""What an endpoint carries besides its address, and how a cluster balances over priorities and localities.

Envoy groups a cluster's endpoints (its ClusterLoadAssignment) by locality and priority: an
`EndpointGroup` is one such group (one LocalityLbEndpoints), shared by the endpoints in it. The
balancer sends traffic to priority 0 while enough of it is healthy, and spills to the next levels as
it is not (meshpy.upstream.priority); within a priority it may weigh localities by their weight
(`locality_weighted`) or prefer the proxy's own zone (zone-aware routing, `ZoneAware`), as Envoy's
load balancers do.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OVERPROVISIONING = 140  # Envoy's overprovisioning_factor: a level counts as whole at 100/140 healthy


@dataclass(frozen=True, slots=True, kw_only=True)
class Locality:
    """Where an endpoint (or this proxy: the bootstrap's node.locality) runs, as Envoy names it."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    def __str__(self) -> str:
        return "/".join((self.region, self.zone, self.sub_zone)) if self != NO_LOCALITY else ""


NO_LOCALITY = Locality()


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointGroup:
    """One LocalityLbEndpoints: its priority, locality and locality weight (0: none given), and the
    overprovisioning factor of the assignment it came in (its ClusterLoadAssignment's policy)."""

    priority: int = 0
    locality: Locality = NO_LOCALITY
    weight: int = 0
    overprovisioning: int = DEFAULT_OVERPROVISIONING


DEFAULT_GROUP = EndpointGroup()


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthTarget:
    """Where active health checks of one endpoint go instead of its own address (Envoy's endpoint
    health_check_config): another port of the same host, another address, another Host header (or
    gRPC authority); `disabled`: this endpoint is never checked and counts as healthy."""

    port: int = 0  # 0: the endpoint's own port
    ip: str = ""  # another IP address ("": the endpoint's own)
    path: str = ""  # a Unix socket (a pipe address) instead
    hostname: str = ""  # "": the check's own host, else the cluster's name
    disabled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneAware:
    """Zone-aware routing (Envoy's ZoneAwareLbConfig, same names and defaults): with the proxy's own
    cluster known (local_cluster_name) and its locality, priority 0 prefers endpoints in the proxy's
    locality, as far as that keeps the load per endpoint even across the fleet of proxies.
    `routing_enabled` is the percent of requests that may be routed so; below `min_cluster_size`
    healthy endpoints it is off; `fail_traffic_on_panic` answers 503 instead of using every endpoint
    when too few are healthy; `force_locality_direct_routing` sends everything to the local locality
    while it has a healthy endpoint."""

    routing_enabled: float = 100.0
    min_cluster_size: int = 6
    fail_traffic_on_panic: bool = False
    force_locality_direct_routing: bool = False


DEFAULT_ZONE_AWARE = ZoneAware()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalityBalancing:
    """A cluster's settings for priorities and localities (Envoy's common_lb_config and the
    locality_lb_config of a typed load_balancing_policy). `panic_threshold`: below this percent of
    healthy endpoints in a priority (when the levels together are short of capacity) the balancer uses
    all of that priority's endpoints; 0 turns panic off. `locality_weighted`: a locality is picked by
    its weight (scaled by how much of it is healthy), then an endpoint in it."""

    panic_threshold: float = 50.0
    locality_weighted: bool = False
    zone_aware: ZoneAware = DEFAULT_ZONE_AWARE


DEFAULT_LOCALITY_BALANCING = LocalityBalancing()
