"""The balancers on real ClusterRuntimes: consistent hashing (a key stays, about 1/N of the keys move
when one of N endpoints leaves), least request, weighted random, slow start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpy.model.types import Address, Cluster, Endpoint, LoadBalancing, SlowStart
from meshpy.telemetry.metrics import Metrics
from meshpy.upstream.balancers import Balancer, hash64
from meshpy.upstream.cluster import ClusterRuntime

_LOOP = asyncio.new_event_loop()  # the pools need one; nothing runs on it


@pytest.fixture(scope="module", autouse=True)
def _close_loop() -> Iterator[None]:
    yield
    _LOOP.close()


def runtime(policy: str, n: int, weights: list[int] | None = None, **lb: Any) -> ClusterRuntime:
    ws = weights or [1] * n
    endpoints = tuple(Endpoint(address=Address(host="10.0.0.1", port=9000 + i), weight=ws[i])
                      for i in range(n))
    model = Cluster(name="c", endpoints=endpoints, load_balancing=LoadBalancing(policy=policy, **lb))
    return ClusterRuntime(model, Metrics().cluster("c"), _LOOP)


def owners(rt: ClusterRuntime, keys: list[int]) -> list[str]:
    return [h.label for h in (rt.pick(k) for k in keys) if h is not None]


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_keys_stay_and_one_nth_move(policy: str) -> None:
    keys = [hash64(f"user-{i}".encode()) for i in range(20000)]
    full = runtime(policy, 10)
    before = owners(full, keys)
    assert owners(full, keys) == before  # the same key, the same endpoint
    shares = {label: before.count(label) / len(keys) for label in set(before)}
    assert len(shares) == 10 and all(0.05 < s < 0.15 for s in shares.values()), shares
    gone = full.hosts[3].label
    smaller = runtime(policy, 10)
    smaller._set_hosts([(h.address, 1, h.label) for h in full.hosts if h.label != gone])
    after = owners(smaller, keys)
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(keys)
    assert 0.07 < moved < 0.16, moved  # about 1/10
    # Keys of the endpoints that stayed barely move (none for a ring, a few for Maglev).
    stayed_moved = sum(a != b for a, b in zip(before, after, strict=True) if a != gone) / len(keys)
    assert stayed_moved < (0.001 if policy == "ring_hash" else 0.03), stayed_moved


def test_weights_shape_the_share() -> None:
    for policy in ("random", "ring_hash", "maglev"):
        rt = runtime(policy, 2, weights=[1, 3])
        keys = [hash64(str(i).encode()) for i in range(8000)]
        picks = owners(rt, keys)
        heavy = picks.count(rt.hosts[1].label) / len(picks)
        assert 0.68 < heavy < 0.82, (policy, heavy)


def test_least_request_avoids_the_busy_endpoint() -> None:
    rt = runtime("least_request", 3)
    rt.hosts[0].active_requests = 50
    picks = [rt.pick() for _ in range(3000)]
    busy_share = picks.count(rt.hosts[0]) / len(picks)
    assert busy_share < 0.01  # compared with any other it always loses (two choices out of three)
    rt2 = runtime("least_request", 2, choice_count=2)
    rt2.hosts[0].active_requests = 1
    assert all(rt2.pick() is rt2.hosts[1] for _ in range(100))


def test_slow_start_ramps_a_new_endpoint_up() -> None:
    rt = runtime("least_request", 2, slow_start=SlowStart(window=10.0, aggression=1.0, min_weight_percent=10))
    rt._set_hosts([*((h.address, 1, h.label) for h in rt.hosts), (("10.0.0.9", 9009), 1, "new")])
    newcomer = rt.hosts[2]
    balancer = rt.balancer
    assert isinstance(balancer, Balancer) and newcomer.joined is not None
    assert balancer.weight(newcomer) == pytest.approx(0.1, abs=0.02)  # the floor at first
    newcomer.joined = time.monotonic() - 5.0
    assert balancer.weight(newcomer) == pytest.approx(0.5, abs=0.02)  # half way through its window
    newcomer.joined = time.monotonic() - 11.0
    assert balancer.weight(newcomer) == 1.0 and newcomer.joined is None  # warmed up
    assert rt.hosts[0].joined is None  # the first endpoints never had to warm up
