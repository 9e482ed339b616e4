"""Balancers through a real meshpy process and the fault fleet: peak EWMA steers away from a slow
endpoint, ring hash and Maglev keep a user on one endpoint, least request spreads by load."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fleet import Fleet
from kit import Proxy, fleet_config, free_port, http


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(3) as f:
        yield f


def start(fleet: Fleet, policy: str) -> tuple[Proxy, int]:
    port, admin = free_port(), free_port()
    text = fleet_config(admin, port, fleet.ports, route="hash_policy: [{header: x-user}, {cookie: session}]",
                        cluster=f"lb_policy: {policy}")
    return Proxy(text, admin).start(), port


def test_peak_ewma_moves_traffic_away_from_a_slow_endpoint(fleet: Fleet) -> None:
    fleet.set(0, latency_ms=50)  # 10x slower than the others
    fleet.set(1, latency_ms=5)
    fleet.set(2, latency_ms=5)
    proxy, port = start(fleet, "peak_ewma")
    try:
        with ThreadPoolExecutor(4) as pool:
            seen = list(pool.map(lambda k: http(port, path=f"/{k}").header("x-upstream"), range(600)))
        share = Counter(seen)["host-0"] / len(seen)
        assert share < 0.12, Counter(seen)  # round robin would send it a third
    finally:
        proxy.stop()


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_a_user_stays_on_one_endpoint(fleet: Fleet, policy: str) -> None:
    proxy, port = start(fleet, policy)
    try:
        homes = {}
        for user in range(30):
            got = {http(port, path="/", headers=[("x-user", f"u{user}")]).header("x-upstream")
                   for _ in range(5)}
            assert len(got) == 1, got  # every request of a user on the same endpoint
            homes[user] = got.pop()
        assert len(set(homes.values())) == 3  # and the users spread over all of them
        cookie = {http(port, path="/", headers=[("cookie", "a=1; session=abc")]).header("x-upstream")
                  for _ in range(5)}
        assert len(cookie) == 1
    finally:
        proxy.stop()


def test_least_request_spreads_by_load(fleet: Fleet) -> None:
    fleet.set(0, latency_ms=200)
    proxy, port = start(fleet, "{policy: least_request, choice_count: 3}")
    try:
        with ThreadPoolExecutor(6) as pool:
            seen = list(pool.map(lambda k: http(port, path=f"/{k}").header("x-upstream"), range(120)))
        # With all three compared, the endpoint holding slow requests gets few new ones.
        assert Counter(seen)["host-0"] / len(seen) < 0.15, Counter(seen)
    finally:
        proxy.stop()
