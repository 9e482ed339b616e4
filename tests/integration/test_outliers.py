"""Outlier detection against the fault fleet: a failing endpoint is ejected after consecutive 5xx,
gets no traffic while out, shows in /clusters and the metrics, and comes back when its time is up;
ejections are capped by max_ejection_percent; the ejection time grows with each ejection."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fleet import Fleet
from kit import Proxy, fleet_config, free_port, http


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(3) as f:
        yield f


def start(fleet: Fleet, percent: int = 50, interval: str = "200ms") -> tuple[Proxy, int]:
    port, admin = free_port(), free_port()
    od = (f"outlier_detection: {{consecutive_5xx: 3, interval: {interval}, base_ejection_time: 1s, "
          f"max_ejection_percent: {percent}}}")
    proxy = Proxy(fleet_config(admin, port, fleet.ports, cluster=od), admin)
    return proxy.start(), port


def health(proxy: Proxy) -> dict[str, str]:
    [cluster] = json.loads(proxy.admin("/clusters")[1])["clusters"]
    return {ep["address"]: ep["health"] for ep in cluster["endpoints"]}


def test_a_failing_endpoint_is_ejected_and_comes_back(fleet: Fleet) -> None:
    fleet.set(0, error_rate=1.0)
    proxy, port = start(fleet)
    bad = f"127.0.0.1:{fleet.ports[0]}"
    try:
        statuses = [http(port, path="/a").status for _ in range(12)]
        assert statuses.count(503) == 3  # round robin: its 3rd failure ejected it
        assert health(proxy)[bad] == "/failed_outlier_check"
        before = fleet.stats(0)["requests"]
        assert [http(port, path="/b").status for _ in range(30)] == [200] * 30
        assert fleet.stats(0)["requests"] == before  # no traffic while ejected
        assert proxy.metric("meshpy_upstream_outlier_ejections_total", cluster="backend",
                            reason="consecutive_5xx") == 1
        assert proxy.metric("meshpy_upstream_hosts_ejected", cluster="backend") == 1
        fleet.set(0, error_rate=0)
        time.sleep(1.1)  # its ejection time is up
        assert health(proxy)[bad] == "healthy"
        assert [http(port, path="/c").status for _ in range(9)] == [200] * 9
        assert fleet.stats(0)["requests"] == before + 3  # back in the rotation
    finally:
        proxy.stop()


def test_max_ejection_percent_keeps_endpoints_in_service(fleet: Fleet) -> None:
    for i in range(3):
        fleet.set(i, error_rate=1.0)
    proxy, port = start(fleet, percent=34)
    try:
        for _ in range(30):
            http(port, path="/d")
        # 34% of 3 endpoints: one out at a time (one may always be ejected), never two.
        assert list(health(proxy).values()).count("/failed_outlier_check") == 1
    finally:
        proxy.stop()


def test_the_ejection_time_grows_with_each_ejection(fleet: Fleet) -> None:
    fleet.set(0, error_rate=1.0)
    # A long interval: the ejection count decays by one per interval in service, not within this test.
    proxy, port = start(fleet, interval="30s")
    bad = f"127.0.0.1:{fleet.ports[0]}"
    try:
        for _ in range(9):
            http(port, path="/e")
        assert health(proxy)[bad] == "/failed_outlier_check"
        time.sleep(1.1)  # first ejection: 1 x base_ejection_time
        assert health(proxy)[bad] == "healthy"
        for _ in range(9):
            http(port, path="/f")
        assert health(proxy)[bad] == "/failed_outlier_check"
        time.sleep(1.1)  # second ejection: 2 x base_ejection_time, so still out
        assert health(proxy)[bad] == "/failed_outlier_check"
        time.sleep(1.0)
        assert health(proxy)[bad] == "healthy"
    finally:
        proxy.stop()
