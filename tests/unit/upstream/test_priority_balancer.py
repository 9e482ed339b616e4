"""Priorities, locality weights and zone-aware routing on real ClusterRuntimes: which clusters take the
tiered path, the shares per level and locality as endpoints go unhealthy, panic, and the zone plan
against the local cluster (the integration tests compare the same with real Envoy)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest

from meshpy.model.endpoints import EndpointGroup, Locality, LocalityBalancing, ZoneAware
from meshpy.model.types import Address, Cluster, Endpoint, LoadBalancing
from meshpy.telemetry.metrics import Metrics
from meshpy.upstream.balancers import hash64
from meshpy.upstream.cluster import ClusterRuntime
from meshpy.upstream.priority import LocalSite, PriorityBalancer

_LOOP = asyncio.new_event_loop()  # the pools need one; nothing runs on it
A, B, C = Locality(zone="a"), Locality(zone="b"), Locality(zone="c")


@pytest.fixture(scope="module", autouse=True)
def _close_loop() -> Iterator[None]:
    yield
    _LOOP.close()


def endpoints(*groups: tuple[int, EndpointGroup], base: int = 9000) -> tuple[Endpoint, ...]:
    """`groups`: (count, group) in order; ports from `base`, one per endpoint."""
    out: list[Endpoint] = []
    for count, group in groups:
        start = base + len(out)
        out.extend(Endpoint(address=Address(host="10.0.0.1", port=start + i), group=group)
                   for i in range(count))
    return tuple(out)


def runtime(eps: tuple[Endpoint, ...], site: LocalSite | None = None, name: str = "c",
            **lb: object) -> ClusterRuntime:
    model = Cluster(name=name, endpoints=eps, load_balancing=LoadBalancing(**lb))  # type: ignore[arg-type]
    return ClusterRuntime(model, Metrics().cluster(name), _LOOP, site=site)


def down(rt: ClusterRuntime, *ports: int) -> None:
    for h in rt.hosts:
        h.hc_healthy = h.address[1] not in ports  # type: ignore[index]
    rt.rebuild_order()


def shares(rt: ClusterRuntime, n: int = 20000) -> dict[int, float]:
    seen = Counter(h.address[1] if h is not None else 0 for h in (rt.pick() for _ in range(n)))  # type: ignore[index]
    return {port: count / n for port, count in sorted(seen.items())}


def level_share(rt: ClusterRuntime, ports: range, n: int = 20000) -> float:
    return sum(v for k, v in shares(rt, n).items() if k in ports)


def test_flat_clusters_keep_the_fast_path() -> None:
    # One priority, and localities that nothing weighs: no tiered balancer (round robin: none at all).
    flat = runtime(endpoints((2, EndpointGroup(locality=A)), (2, EndpointGroup(locality=B))))
    assert flat.balancer is None
    # Two priorities, or weighted localities, or a known site for zone-aware routing: tiered.
    assert isinstance(runtime(endpoints((1, EndpointGroup()), (1, EndpointGroup(priority=1)))).balancer,
                      PriorityBalancer)
    weighted = LocalityBalancing(locality_weighted=True)
    assert isinstance(runtime(endpoints((1, EndpointGroup(locality=A)), (1, EndpointGroup(locality=B))),
                              locality=weighted).balancer, PriorityBalancer)
    site = LocalSite("self", A)
    assert isinstance(runtime(endpoints((1, EndpointGroup(locality=A)), (1, EndpointGroup(locality=B))),
                              site=site).balancer, PriorityBalancer)
    # ... but not for ring_hash, which has no zone-aware routing (as in Envoy).
    assert not isinstance(runtime(endpoints((1, EndpointGroup(locality=A)), (1, EndpointGroup(locality=B))),
                                  site=site, policy="ring_hash").balancer, PriorityBalancer)


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "random"])
def test_failover_follows_the_health_of_priority_0(policy: str) -> None:
    rt = runtime(endpoints((2, EndpointGroup()), (2, EndpointGroup(priority=1))), policy=policy)
    assert level_share(rt, range(9000, 9002)) == 1.0  # all healthy: P=0 takes everything
    down(rt, 9000)  # half of P=0: health 70, so 70% stays and 30% spills to P=1
    assert level_share(rt, range(9000, 9002)) == pytest.approx(0.70, abs=0.02)
    assert shares(rt).get(9000, 0) == 0  # never the unhealthy one
    down(rt, 9000, 9001)  # P=0 gone: all to P=1
    assert level_share(rt, range(9002, 9004)) == 1.0


def test_panic_per_level_and_in_total() -> None:
    rt = runtime(endpoints((4, EndpointGroup()), (4, EndpointGroup(priority=1))))
    down(rt, 9000, 9001, 9002, 9004, 9005)  # P=0 1/4 (health 35), P=1 2/4 (70): total 100, no panic
    got = shares(rt)
    assert sum(got.get(p, 0) for p in range(9000, 9004)) == pytest.approx(0.35, abs=0.02)
    assert got.get(9000, 0) == got.get(9004, 0) == 0
    down(rt, 9000, 9001, 9002, 9004, 9005, 9006)  # 35 + 35 = 70: both under half healthy, total panic
    got = shares(rt)
    assert all(got.get(p, 0) == pytest.approx(0.125, abs=0.02) for p in range(9000, 9008)), got


def test_flat_panic_threshold_and_fail_on_panic() -> None:
    eps = endpoints((4, EndpointGroup()))
    rt = runtime(eps, locality=LocalityBalancing(panic_threshold=80))
    assert rt.balancer is None
    down(rt, 9000)  # 75% healthy: health 105 -> 100, so no panic even under 80%
    assert set(shares(rt, 400)) == {9001, 9002, 9003}
    down(rt, 9000, 9001)  # 50%: panic, all four
    assert set(shares(rt, 400)) == {9000, 9001, 9002, 9003}
    failing = runtime(eps, locality=LocalityBalancing(zone_aware=ZoneAware(fail_traffic_on_panic=True)))
    down(failing, 9000, 9001, 9002)
    assert failing.pick() is None  # 503 instead of the unhealthy endpoints
    off = runtime(eps, locality=LocalityBalancing(panic_threshold=0))
    down(off, 9000, 9001, 9002)
    assert set(shares(off, 400)) == {9003}


def test_locality_weights_scaled_by_health() -> None:
    eps = endpoints((4, EndpointGroup(locality=A, weight=1)), (4, EndpointGroup(locality=B, weight=2)))
    rt = runtime(eps, locality=LocalityBalancing(locality_weighted=True))
    assert level_share(rt, range(9000, 9004), 3000) == pytest.approx(1 / 3, abs=0.01)  # EDF: exact-ish
    down(rt, 9000, 9001)  # A half healthy: weight 1 x 0.7 against 2 -> 0.7 / 2.7
    got = shares(rt, 2700)
    assert got[9002] + got[9003] == pytest.approx(0.7 / 2.7, abs=0.01)
    # Priorities first, then the locality within the level.
    two = runtime(endpoints((2, EndpointGroup(locality=A, weight=1)),
                            (2, EndpointGroup(locality=B, weight=1)),
                            (2, EndpointGroup(priority=1, locality=A, weight=1))),
                  locality=LocalityBalancing(locality_weighted=True))
    down(two, 9000, 9001)  # locality A of P=0 gone: P=0 health 70 (2 of 4), all of it to B
    got = shares(two)
    assert got[9002] + got[9003] == pytest.approx(0.70, abs=0.02)
    assert got[9004] + got[9005] == pytest.approx(0.30, abs=0.02)


def test_zero_weight_localities_get_nothing() -> None:
    eps = endpoints((2, EndpointGroup(locality=A, weight=1)), (2, EndpointGroup(locality=B)))
    rt = runtime(eps, locality=LocalityBalancing(locality_weighted=True))
    assert set(shares(rt, 400)) == {9000, 9001}


def zone_setup(local: dict[Locality, int], upstream: dict[Locality, int], **zone: object
               ) -> tuple[ClusterRuntime, LocalSite]:
    """An upstream cluster in zones, and the site of this proxy (in zone a) whose local cluster has
    `local` proxies per zone (ports from 8000)."""
    site = LocalSite("self", A)
    site.local = runtime(endpoints(*((n, EndpointGroup(locality=loc)) for loc, n in local.items()),
                                   base=8000), site, name="self")
    rt = runtime(endpoints(*((n, EndpointGroup(locality=loc)) for loc, n in upstream.items())), site,
                 locality=LocalityBalancing(zone_aware=ZoneAware(**zone)))  # type: ignore[arg-type]
    return rt, site


def test_zone_aware_residual_and_direct() -> None:
    # Proxies: 1 in a, 1 in b. Upstream: 1 in a, 3 in b (min_cluster_size 6 by default: too small).
    rt, _ = zone_setup({A: 1, B: 1}, {A: 1, B: 3})
    assert shares(rt, 4000)[9000] == pytest.approx(0.25, abs=0.01)  # plain round robin
    rt, _ = zone_setup({A: 1, B: 1}, {A: 1, B: 3}, min_cluster_size=1)
    # a has 50% of the proxies and 25% of the upstream: half of a's requests stay in a.
    assert shares(rt)[9000] == pytest.approx(0.5, abs=0.02)
    # 1 of 3 proxies in a, 2 of 4 upstream endpoints: a can take all of a's requests.
    rt, _ = zone_setup({A: 1, B: 2}, {A: 2, B: 2}, min_cluster_size=1)
    assert level_share(rt, range(9000, 9002), 2000) == 1.0
    rt, _ = zone_setup({A: 1, B: 2}, {A: 2, B: 2}, min_cluster_size=1, routing_enabled=50.0)
    assert level_share(rt, range(9000, 9002)) == pytest.approx(0.75, abs=0.02)  # half, plus half of 50%


def test_zone_aware_follows_the_local_cluster() -> None:
    # 1 of 3 proxies in a, 1 of 4 upstream endpoints: 75% of this proxy's requests stay in a (a's one
    # endpoint then gets a quarter of the whole fleet's).
    rt, site = zone_setup({A: 1, B: 2}, {A: 1, B: 3}, min_cluster_size=1)
    assert site.local is not None
    assert shares(rt)[9000] == pytest.approx(0.75, abs=0.02)
    down(site.local, 8001)  # one proxy in b fails its checks: a is now half of the healthy ones
    assert shares(rt)[9000] == pytest.approx(0.5, abs=0.02)
    down(site.local, 8001, 8002)  # 1 of 3 healthy: the local cluster panics, no zone routing
    assert shares(rt)[9000] == pytest.approx(0.25, abs=0.02)
    down(site.local)
    assert shares(rt)[9000] == pytest.approx(0.75, abs=0.02)
    # A reload replaced the local cluster: one zone left in it, so no zone routing.
    site.local = runtime(endpoints((1, EndpointGroup(locality=A)), base=8000), name="self")
    assert shares(rt)[9000] == pytest.approx(0.25, abs=0.02)
    site.local = None  # no local cluster at all
    assert shares(rt)[9000] == pytest.approx(0.25, abs=0.02)
    fail, failing_site = zone_setup({A: 1, B: 2}, {A: 1, B: 3}, min_cluster_size=1,
                                    fail_traffic_on_panic=True)
    assert failing_site.local is not None
    down(failing_site.local, 8001, 8002)
    assert fail.pick() is None  # the local cluster in panic fails the requests zone routing would take


def test_zone_aware_only_in_priority_0() -> None:
    rt, _ = zone_setup({A: 1, B: 1}, {A: 1, B: 3}, min_cluster_size=1)
    more = endpoints((4, EndpointGroup(priority=1, locality=A)), base=9100)
    eps = replace(rt.model, endpoints=rt.model.endpoints + more)
    rt.retarget(eps)
    down(rt, 9001, 9002, 9003)  # P=0 1 of 4 (35), P=1 all healthy (65)
    got = shares(rt)
    assert got.get(9000, 0) == pytest.approx(0.35, abs=0.02)
    assert sum(v for k, v in got.items() if k >= 9100) == pytest.approx(0.65, abs=0.02)


def test_hashed_priorities_keep_keys_and_fail_over() -> None:
    rt = runtime(endpoints((3, EndpointGroup()), (3, EndpointGroup(priority=1))), policy="ring_hash")
    keys = [hash64(f"user-{i}".encode()) for i in range(3000)]
    before = [rt.pick(k) for k in keys]
    assert all(h is not None and h.address[1] < 9003 for h in before)  # type: ignore[index]
    assert [rt.pick(k) for k in keys] == before
    down(rt, 9000, 9001)  # P=0 1/3 healthy: health 46, keys with hash % 100 >= 46 go to P=1
    after = [rt.pick(k) for k in keys]
    to_p1 = [k for k, h in zip(keys, after, strict=True) if h is not None and h.address[1] >= 9003]  # type: ignore[index]
    assert all(k % 100 >= 46 for k in to_p1) and len(to_p1) == sum(k % 100 >= 46 for k in keys)


def test_retarget_moves_between_flat_and_tiered() -> None:
    rt = runtime(endpoints((2, EndpointGroup())))
    assert rt.balancer is None
    rt.retarget(replace(rt.model, endpoints=endpoints((1, EndpointGroup()), (1, EndpointGroup(priority=1)))))
    assert isinstance(rt.balancer, PriorityBalancer)
    assert set(shares(rt, 200)) == {9000}
    rt.retarget(replace(rt.model, endpoints=endpoints((2, EndpointGroup()))))
    assert rt.balancer is None and set(shares(rt, 200)) == {9000, 9001}
