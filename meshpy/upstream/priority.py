"""Priorities, locality weights and zone-aware routing at run time: a balancer over balancers.

Used for a cluster whose endpoints span priorities, or localities when the cluster weighs them
(locality_weighted) or may route by zone (its proxy's own cluster and locality are known); any other
cluster keeps the flat path (ClusterRuntime.round_robin or its one balancer) and pays nothing for this.

On every change of the hosts or their health `rebuild` recomputes what Envoy recomputes on a host-set
update: each level's health and share of the load and which levels panic (priority_loads), one inner
balancer of the cluster's policy per level (over its healthy endpoints, or all of them in panic) and
per locality, the locality schedule (EDF over effective locality weights) and, lazily at the next pick,
priority 0's zone plan against the local cluster. A pick is then a table lookup for the level, maybe a
locality, and one inner pick. As in Envoy: the level is drawn per request (by the request's hash for
ring_hash and maglev), locality weights take precedence over zone-aware routing, and zone-aware
routing applies to priority 0 only.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from typing import TYPE_CHECKING

from meshpy.model.endpoints import DEFAULT_GROUP, NO_LOCALITY, EndpointGroup, Locality
from meshpy.model.types import Cluster, LoadBalancing
from meshpy.upstream.balancers import Balancer, RoundRobinBalancer, make_balancer
from meshpy.upstream.priority_loads import (
    NO_ZONE_PLAN,
    NO_ZONE_ROUTING,
    ZONE_DIRECT,
    Edf,
    Level,
    effective_locality_weight,
    in_panic,
    priority_loads,
    zone_plan,
)

if TYPE_CHECKING:
    from meshpy.upstream.cluster import ClusterRuntime, Host

# The policies Envoy builds on its zone-aware base (ring_hash and maglev hash instead; peak_ewma is
# meshpy's own and has no localities).
ZONE_POLICIES = ("round_robin", "least_request", "random")
_FAIL = -1  # a zone decision that answers 503 (fail_traffic_on_panic)


def in_service(host: Host) -> bool:
    """Whether the balancer may send to `host`: it passes its health checks and is not ejected."""
    return host.hc_healthy and not host.ejected


def group_of(host: Host) -> EndpointGroup:
    endpoint = host.endpoint
    return endpoint.group if endpoint is not None else DEFAULT_GROUP


def _locality_key(locality: Locality) -> tuple[str, str, str]:
    return locality.region, locality.zone, locality.sub_zone


class LocalSite:
    """This proxy's locality and the name of the cluster of its own fleet (Envoy's node.locality and
    cluster_manager.local_cluster_name). `local` is that cluster's runtime, which its owner (the
    cluster manager, at each commit) keeps current: reloads replace runtimes."""

    __slots__ = ("cluster", "local", "locality")

    def __init__(self, cluster: str, locality: Locality, local: ClusterRuntime | None = None) -> None:
        self.cluster = cluster
        self.locality = locality
        self.local = local

    @property
    def known(self) -> bool:
        return bool(self.cluster) and self.locality != NO_LOCALITY


def uses_tiers(model: Cluster, site: LocalSite | None) -> bool:
    """Whether the cluster needs the PriorityBalancer (decided from its endpoints as configured)."""
    endpoints = model.endpoints
    if any(e.group.priority for e in endpoints):
        return True
    lb = model.load_balancing
    if lb.policy not in ZONE_POLICIES or len({e.group.locality for e in endpoints}) < 2:
        return False  # one locality: picking it first changes nothing
    return lb.locality.locality_weighted or (site is not None and site.known)


def cluster_balancer(model: Cluster, site: LocalSite | None) -> Balancer | None:
    """The balancer of a cluster that is not original_dst: None for the plain round robin fast path."""
    if uses_tiers(model, site):
        return PriorityBalancer(model.load_balancing, site)
    return make_balancer(model.load_balancing)


class _Tier:
    """One priority level: its balancer, whether it panics, and its localities (when they matter)."""

    __slots__ = ("edf", "has_local", "healthy_counts", "healthy_total", "lb", "local_lbs", "localities",
                 "panic")

    def __init__(self, lb: Balancer, panic: bool) -> None:
        self.lb = lb
        self.panic = panic
        self.localities: list[Locality] = []  # the proxy's own first (has_local), then in Envoy's order
        self.has_local = False
        self.local_lbs: list[Balancer] = []  # over each locality's healthy endpoints
        self.healthy_counts: list[int] = []
        self.healthy_total = 0
        self.edf: Edf | None = None  # locality weighted: the locality schedule


class PriorityBalancer(Balancer):
    tiered = True

    def __init__(self, config: LoadBalancing, site: LocalSite | None) -> None:
        super().__init__(config)
        # Zone-aware routing: only where Envoy has it, and with a site to route from.
        known = site is not None and site.known and config.policy in ZONE_POLICIES
        self._site = site if known else None
        proto = self._inner([])
        self.hashed = proto.hashed
        self.measures = proto.measures
        self._proto = proto
        zone = config.locality.zone_aware
        self._routing = round(zone.routing_enabled)
        self._fail_on_panic = zone.fail_traffic_on_panic
        self._tiers: list[_Tier] = []
        self._table: list[_Tier] = []  # 100 entries: the level for each percent of the load
        self._zone = NO_ZONE_PLAN
        self._local_panic = False
        self._local_rt: ClusterRuntime | None = None  # the local cluster the zone plan was made for,
        self._local_epoch = -1  # and its epoch then

    def _inner(self, hosts: list[Host]) -> Balancer:
        lb = make_balancer(self.config) or RoundRobinBalancer(self.config)
        lb.rebuild(hosts)
        return lb

    def done(self, host: Host, seconds: float) -> None:
        self._proto.done(host, seconds)  # (peak EWMA keeps its state on the host)

    def rebuild(self, hosts: list[Host]) -> None:
        """From all the cluster's hosts, healthy or not (unlike the flat balancers)."""
        self.hosts = hosts
        by_level: list[list[Host]] = [[]]
        for h in hosts:
            p = group_of(h).priority
            while len(by_level) <= p:
                by_level.append([])  # (an empty level between two others counts, as in Envoy)
            by_level[p].append(h)
        healthy = [[h for h in level if in_service(h)] for level in by_level]
        levels = [Level(len(ok), len(level), group_of(level[0]).overprovisioning if level else 140)
                  for level, ok in zip(by_level, healthy, strict=True)]
        loads, panic = priority_loads(levels, self.config.locality.panic_threshold)
        weighted = self.config.locality.locality_weighted
        tiers = []
        for i, level in enumerate(by_level):
            tier = _Tier(self._inner(level if panic[i] else healthy[i]), panic[i])
            if not self.hashed and (weighted or (i == 0 and self._site is not None)):
                self._localities(tier, level, healthy[i], weighted)
            tiers.append(tier)
        table: list[_Tier] = []
        for tier, load in zip(tiers, loads, strict=True):
            table += [tier] * load
        self._tiers, self._table = tiers, table
        self._local_epoch = -1  # priority 0 changed: its zone plan is made again at the next pick

    def _localities(self, tier: _Tier, hosts: list[Host], healthy: list[Host], weighted: bool) -> None:
        order = sorted({group_of(h).locality for h in hosts}, key=_locality_key)
        own = self._site.locality if self._site is not None else None
        if own in order:
            order.remove(own)
            order.insert(0, own)
            tier.has_local = True
        index = {loc: i for i, loc in enumerate(order)}
        every: list[list[Host]] = [[] for _ in order]
        ok: list[list[Host]] = [[] for _ in order]
        for h in hosts:
            every[index[group_of(h).locality]].append(h)
        for h in healthy:
            ok[index[group_of(h).locality]].append(h)
        tier.localities = order
        tier.local_lbs = [self._inner(group) for group in ok]
        tier.healthy_counts = [len(group) for group in ok]
        tier.healthy_total = len(healthy)
        if weighted and healthy:
            weights = []
            for all_hosts, ok_hosts in zip(every, ok, strict=True):
                g = group_of(all_hosts[0])
                weights.append(effective_locality_weight(g.weight, len(ok_hosts), len(all_hosts),
                                                         g.overprovisioning))
            if any(w > 0 for w in weights):
                tier.edf = Edf(weights)

    def pick(self, key: int | None = None) -> Host | None:
        tier = self._table[key % 100 if key is not None else int(random.random() * 100)]
        if tier.panic:
            return None if self._fail_on_panic else tier.lb.pick(key)
        edf = tier.edf
        if edf is not None:
            return tier.local_lbs[edf.pick()].pick(key)
        if self._site is not None and tier is self._tiers[0]:
            i = self._zone_locality()
            if i == _FAIL:
                return None
            if i is not None:
                host = tier.local_lbs[i].pick(key)
                if host is not None:
                    return host
        return tier.lb.pick(key)

    def _zone_locality(self) -> int | None:
        """Priority 0's locality for this request by zone-aware routing (None: no preference)."""
        assert self._site is not None
        local = self._site.local
        epoch = local.epoch if local is not None else -2
        if local is not self._local_rt or epoch != self._local_epoch:
            self._plan_zones(local)
            self._local_rt, self._local_epoch = local, epoch
        plan = self._zone
        if plan.mode == NO_ZONE_ROUTING or (self._routing < 100 and random.random() * 100 >= self._routing):
            return None
        if self._local_panic:
            return _FAIL if self._fail_on_panic else None
        if plan.mode == ZONE_DIRECT or random.random() * 10000 < plan.local_percent:
            return 0
        residual = plan.residual
        top = residual[-1]
        if top == 0:  # (rounding left no capacity anywhere: any locality, as Envoy)
            return int(random.random() * len(residual))
        return bisect.bisect_right(residual, int(random.random() * top))

    def _plan_zones(self, local: ClusterRuntime | None) -> None:
        """Envoy's regenerateLocalityRoutingStructures: no zone routing unless priority 0 spans two
        localities or more, the local cluster too (or direct routing is forced), the proxy's own
        locality has proxies in it, and priority 0 has min_cluster_size healthy endpoints."""
        self._zone = NO_ZONE_PLAN
        self._local_panic = False
        tier = self._tiers[0]
        zone = self.config.locality.zone_aware
        if local is None or len(tier.localities) < 2 or self._site is None:
            return
        everywhere = Counter(group_of(h).locality for h in local.hosts)
        if len(everywhere) < 2 and not zone.force_locality_direct_routing:
            return
        if not everywhere[self._site.locality] or tier.healthy_total < zone.min_cluster_size:
            return
        healthy = Counter(group_of(h).locality for h in local.hosts if in_service(h))
        total = sum(healthy.values())
        self._local_panic = in_panic(total, len(local.hosts), self.config.locality.panic_threshold)
        self._zone = zone_plan(tier.healthy_counts, [healthy[loc] for loc in tier.localities], total,
                               tier.has_local, zone.force_locality_direct_routing)


def flat_in_service(hosts: list[Host], model: Cluster) -> list[Host]:
    """The hosts a flat cluster (one priority, localities not weighed) balances over: those in service,
    or all of them in panic (Envoy's rule for one level: only when its health score is short of 100
    and its healthy share under the threshold), or none when the cluster fails traffic on panic."""
    usable = [h for h in hosts if in_service(h)]
    if len(usable) == len(hosts):
        return usable
    lb = model.load_balancing.locality
    factor = model.endpoints[0].group.overprovisioning if model.endpoints else 140
    _loads, panic = priority_loads([Level(len(usable), len(hosts), factor)], lb.panic_threshold)
    if not panic[0]:
        return usable
    return [] if lb.zone_aware.fail_traffic_on_panic and model.load_balancing.policy in ZONE_POLICIES \
        else hosts
