"""The load computations of meshpy.upstream.priority_loads against the numbers of Envoy's documentation
(intro/arch_overview/upstream/load_balancing: priority, panic_threshold, locality_weight, zone_aware)
and, where those tables round differently from Envoy's code, against the code (named in each case)."""

from __future__ import annotations

import pytest

from meshpy.upstream.priority_loads import (
    NO_ZONE_ROUTING,
    ZONE_DIRECT,
    ZONE_RESIDUAL,
    Edf,
    Level,
    effective_locality_weight,
    level_health,
    priority_loads,
    zone_plan,
)


def pct(healthy_percent: int) -> Level:
    """A level of 100 endpoints with that many healthy (the docs speak in percents of a level)."""
    return Level(healthy_percent, 100)


# priority.html: two levels, P=1 100% healthy.
@pytest.mark.parametrize(("p0", "loads"), [
    (100, [100, 0]), (72, [100, 0]), (71, [99, 1]), (50, [70, 30]), (25, [35, 65]), (0, [0, 100]),
])
def test_priority_doc_two_levels_p1_healthy(p0: int, loads: list[int]) -> None:
    assert priority_loads([pct(p0), pct(100)], 50) == (loads, [False, False])


# priority.html: the normalized total health below 100 is scaled up to 100.
@pytest.mark.parametrize(("p0", "p1", "loads"), [
    (100, 100, [100, 0]), (72, 72, [100, 0]), (71, 71, [99, 1]), (50, 50, [70, 30]), (25, 100, [35, 65]),
    (25, 25, [50, 50]),
])
def test_priority_doc_two_levels(p0: int, p1: int, loads: list[int]) -> None:
    assert priority_loads([pct(p0), pct(p1)], 50)[0] == loads


# priority.html: three levels; each takes what the ones above it leave. (The page leaves panic aside:
# threshold 0 here. With the default 50 the last row, every level under half healthy, is total panic.)
@pytest.mark.parametrize(("healthy", "loads"), [
    ((100, 100, 100), [100, 0, 0]), ((72, 72, 100), [100, 0, 0]), ((71, 71, 100), [99, 1, 0]),
    ((50, 50, 100), [70, 30, 0]), ((25, 100, 100), [35, 65, 0]), ((25, 25, 100), [35, 35, 30]),
    # The doc says 36/36/28 here; Envoy's distributeLoad gives the 2 points integer division leaves to
    # the first healthy level: 35+2, 35, 28.
    ((25, 25, 20), [37, 35, 28]),
])
def test_priority_doc_three_levels(healthy: tuple[int, int, int], loads: list[int]) -> None:
    assert priority_loads([pct(h) for h in healthy], 0)[0] == loads
    if healthy == (25, 25, 20):
        assert priority_loads([pct(h) for h in healthy], 50) == ([34, 33, 33], [True, True, True])


def test_health_score_is_integer_and_capped() -> None:
    assert [level_health(pct(h)) for h in (100, 80, 72, 71, 50, 0)] == [100, 100, 100, 99, 70, 0]
    assert level_health(Level(1, 3)) == 46  # 140 * 1 // 3
    assert level_health(Level(0, 0)) == 0
    assert level_health(Level(1, 2, overprovisioning=200)) == 100  # a factor of its assignment's policy


# panic_threshold.html, first table: P=1 healthy keeps the total at 100, so P=0 never panics.
@pytest.mark.parametrize(("p0", "loads"), [(72, [100, 0]), (71, [99, 1]), (50, [70, 30]), (25, [35, 65]),
                                           (0, [0, 100])])
def test_panic_doc_p1_healthy(p0: int, loads: list[int]) -> None:
    assert priority_loads([pct(p0), pct(100)], 50) == (loads, [False, False])


def test_panic_doc_both_low() -> None:
    # 25% and 25%: the total is 70, both levels under 50% panic, and in total panic the load follows
    # the number of endpoints of each level (equal here).
    assert priority_loads([pct(25), pct(25)], 50) == ([50, 50], [True, True])
    assert priority_loads([Level(1, 4), Level(3, 12)], 50) == ([25, 75], [True, True])


def test_panic_doc_one_level_panics() -> None:
    # 5% and 65%: the total is 98, so the thresholds count: P=0 panics, P=1 (65%) does not. The doc
    # shows 7/93; Envoy's code gives the point left by rounding to the first healthy level: 8/92.
    assert priority_loads([pct(5), pct(65)], 50) == ([8, 92], [True, False])


def test_panic_disabled_and_everything_down() -> None:
    # Threshold 0: no panic; nothing healthy gives P=0 all the load (and no endpoint to pick: 503).
    assert priority_loads([pct(0), pct(0)], 0) == ([100, 0], [False, False])
    # With a threshold, nothing healthy is total panic: the load follows the endpoint counts.
    assert priority_loads([Level(0, 2), Level(0, 6)], 50) == ([25, 75], [True, True])
    assert priority_loads([Level(0, 0)], 50) == ([100], [True])


def test_one_level_panics_as_the_flat_rule() -> None:
    # One level: panic exactly when fewer than the threshold's share of endpoints are healthy ...
    assert priority_loads([Level(4, 10)], 50)[1] == [True]
    assert priority_loads([Level(5, 10)], 50)[1] == [False]
    # ... unless the health score is whole: 75% healthy with a threshold of 80 is 105 -> 100, no panic.
    assert priority_loads([Level(3, 4)], 80)[1] == [False]
    assert priority_loads([Level(7, 10)], 80)[1] == [True]


def test_empty_level_between_two() -> None:
    # Priorities 0 and 2 (no 1): the empty level counts as 0% healthy and takes no load.
    assert priority_loads([Level(1, 4), Level(0, 0), Level(4, 4)], 50) == ([35, 0, 65], [False, False, False])


# locality_weight.html: X weight 1, Y weight 2 and 100% available. (The page rounds its percents
# either way: 25.9 is 26 and 32.6 is 32; within one point of it.)
@pytest.mark.parametrize(("x_healthy", "x_share"),
                         [(100, 33), (70, 33), (69, 32), (50, 26), (25, 15), (0, 0)])
def test_locality_weight_doc(x_healthy: int, x_share: int) -> None:
    x = effective_locality_weight(1, x_healthy, 100, 140)
    y = effective_locality_weight(2, 100, 100, 140)
    assert abs(100 * x / (x + y) - x_share) < 1


def test_edf_follows_the_weights_smoothly() -> None:
    edf = Edf([1.0, 2.0, 0.0])
    picks = [edf.pick() for _ in range(300)]
    assert picks.count(0) == 100 and picks.count(1) == 200 and 2 not in picks
    assert all(picks[i:i + 3].count(1) == 2 for i in range(0, 300, 3))  # no runs
    assert not Edf([0.0, 0.0])
    weighted = Edf([0.7, 2.0])  # fractional weights (availability-scaled): 0.7 / 2.7 of the picks
    assert [weighted.pick() for _ in range(2700)].count(0) == pytest.approx(700, abs=2)


def test_zone_plan_residual_example_of_envoys_code() -> None:
    # regenerateLocalityRoutingStructures' comment: local 40/40/20%, upstream 25/50/25% -> residual
    # capacity 0, 10000, 15000 (cumulative); 25/40 of the local zone's requests stay local.
    plan = zone_plan([25, 50, 25], [40, 40, 20], 100, has_local=True)
    assert plan.mode == ZONE_RESIDUAL
    assert plan.residual == (0, 1000, 1500)  # hundredths of a percent of the totals given
    assert plan.local_percent == 6250


def test_zone_plan_direct_when_the_local_zone_has_room() -> None:
    # zone_aware.html, second case: the upstream's share of the local zone is not smaller than the
    # local cluster's, so everything goes to the local zone.
    assert zone_plan([2, 2], [1, 2], 3, has_local=True).mode == ZONE_DIRECT
    assert zone_plan([1, 3], [1, 1], 2, has_local=True).mode == ZONE_RESIDUAL
    # force_locality_direct_routing: direct whenever the local zone has upstream endpoints at all
    assert zone_plan([1, 3], [1, 1], 2, has_local=True, force_direct=True).mode == ZONE_DIRECT


def test_zone_plan_first_case() -> None:
    # zone_aware.html, first case: 50% of the proxies but 25% of the upstream in the local zone: half
    # of the local requests stay (2500 / 5000), the rest go where there is room (zone b: 75 - 50).
    plan = zone_plan([1, 3], [1, 1], 2, has_local=True)
    assert (plan.local_percent, plan.residual) == (5000, (0, 2500))


def test_zone_plan_without_a_local_zone_upstream() -> None:
    # No upstream endpoint in the proxy's zone: nothing is local, all by residual capacity.
    plan = zone_plan([2, 2], [1, 1], 3, has_local=False)
    assert plan.local_percent == 0 and plan.mode != NO_ZONE_ROUTING
    assert plan.residual == (1667, 3334)  # each zone: 5000 upstream - 3333 local
