"""The numbers behind priorities, locality weights and zone-aware routing, as Envoy computes them.

Pure functions of host counts, so that each is checked against the tables of Envoy's documentation
(load_balancing/priority, panic_threshold, locality_weight, zone_aware) and against its source
(LoadBalancerBase::recalculatePerPriorityState and recalculatePerPriorityPanic,
HostSetImpl::effectiveLocalityWeight, ZoneAwareLoadBalancerBase::regenerateLocalityRoutingStructures).
Envoy's integer arithmetic is kept on purpose: its truncations decide the percent points at the edges
(71% healthy is 99% of the load, not 99.4%).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Level:
    """One priority level as the computations see it: healthy and total endpoints, and its
    overprovisioning factor (percent)."""

    healthy: int
    total: int
    overprovisioning: int = 140


def level_health(level: Level) -> int:
    """A level's health score, 0 to 100: its healthy share times the overprovisioning factor, capped."""
    if level.total == 0:
        return 0
    return min(100, level.overprovisioning * level.healthy // level.total)


def in_panic(healthy: int, total: int, threshold: float) -> bool:
    """Too few healthy endpoints in one set: the balancer then uses all of them (0 disables panic)."""
    percent = 100.0 * healthy / total if total else 0.0
    return percent < threshold


def priority_loads(levels: Sequence[Level], threshold: float) -> tuple[list[int], list[bool]]:
    """(The percent of requests each level gets, whether each level is in panic). The loads sum to
    100. While the levels' health scores sum to 100 or more no level panics; below that a level under
    the panic threshold uses all its endpoints, and when every level panics the load follows the
    number of endpoints per level instead of their health."""
    n = len(levels)
    health = [level_health(lv) for lv in levels]
    normalized = min(100, sum(health))
    loads = [0] * n
    if normalized:
        remaining, first = 100, -1
        for i, h in enumerate(health):
            if first < 0 and h > 0:
                first = i
            loads[i] = min(remaining, h * 100 // normalized)
            remaining -= loads[i]
        loads[first] += remaining  # what integer division left over: to the first healthy level
    if threshold <= 0 and normalized == 0:
        # Nothing healthy and no panic: all to P=0, which has no endpoint to give (503).
        return [100] + [0] * (n - 1), [False] * n
    panic = [normalized < 100 and in_panic(lv.healthy, lv.total, threshold) for lv in levels]
    if n and all(panic):
        total = sum(lv.total for lv in levels)
        if total == 0:
            return [100] + [0] * (n - 1), panic
        loads = [100 * lv.total // total for lv in levels]
        first = next(i for i, lv in enumerate(levels) if lv.total)
        loads[first] += 100 - sum(loads)
    return loads, panic


def effective_locality_weight(weight: int, healthy: int, total: int, overprovisioning: int) -> float:
    """A locality's weight scaled by how much of it is healthy (with the overprovisioning factor:
    a locality 72% healthy keeps its whole weight)."""
    if total == 0:
        return 0.0
    return weight * min(1.0, overprovisioning / 100.0 * healthy / total)


class Edf:
    """Earliest deadline first over weighted entries (Envoy's EdfScheduler): each pick takes the entry
    whose deadline comes first and gives it a new one 1/weight later, so picks follow the weights
    smoothly, with no run of one entry."""

    __slots__ = ("_heap", "_weights")

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = list(weights)
        # (deadline, position, entry): the position breaks ties in order, as Envoy's order offset
        self._heap = [(1.0 / w, i, i) for i, w in enumerate(weights) if w > 0]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def pick(self) -> int:
        deadline, _order, entry = self._heap[0]
        heapq.heapreplace(self._heap, (deadline + 1.0 / self._weights[entry], _order, entry))
        return entry


# Zone-aware routing. Percentages are in hundredths of a percent (10000 is all), as in Envoy.
NO_ZONE_ROUTING, ZONE_DIRECT, ZONE_RESIDUAL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class ZonePlan:
    """How priority 0 routes by zone: not at all, all to the local locality (index 0), or a share
    `local_percent` of 10000 to it and the rest by `residual` (cumulative capacity per locality)."""

    mode: int = NO_ZONE_ROUTING
    local_percent: int = 0
    residual: tuple[int, ...] = ()


NO_ZONE_PLAN = ZonePlan()


def zone_plan(upstream: Sequence[int], local: Sequence[int], local_total: int, has_local: bool,
              force_direct: bool = False) -> ZonePlan:
    """The zone routing of priority 0 from its healthy endpoints per locality (`upstream`, the
    proxy's own locality first when `has_local`), the healthy proxies of the local cluster in those
    localities (`local`, aligned with `upstream`) and in all (`local_total`: proxies in localities the
    upstream lacks count there only). The caller has made Envoy's preconditions hold (two localities
    or more, enough endpoints, the proxy's own locality in the local cluster)."""
    up_total = sum(upstream)
    # (local, upstream) per locality; a locality with no healthy endpoint counts as 0 on both sides
    pct = [(10000 * lo // local_total if local_total else 0, 10000 * up // up_total) if up else (0, 0)
           for up, lo in zip(upstream, local, strict=True)]
    if has_local:
        local_pct, up_pct = pct[0]
        if (up_pct > 0 and up_pct >= local_pct) or force_direct:
            return ZonePlan(mode=ZONE_DIRECT)
    first = pct[0] if pct else (0, 0)
    local_percent = first[1] * 10000 // first[0] if has_local and first[0] > 0 else 0
    residual: list[int] = []
    last = 0
    for i, (lo, up) in enumerate(pct):
        if not (i == 0 and has_local) and up > lo:
            last += up - lo
        residual.append(last)
    return ZonePlan(mode=ZONE_RESIDUAL, local_percent=local_percent, residual=tuple(residual))
