"""Active health checks against the fault fleet: an endpoint that fails its checks gets no traffic and
comes back after passing again; a TCP check finds a dead port; below half healthy the balancer uses
every endpoint (panic)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fleet import Fleet
from kit import Proxy, eventually, fleet_config, free_port, http


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(3) as f:
        yield f


def start(ports: list[int], check: str) -> tuple[Proxy, int]:
    port, admin = free_port(), free_port()
    return Proxy(fleet_config(admin, port, ports, cluster=f"health_check: {check}"), admin).start(), port


def health(proxy: Proxy) -> list[str]:
    [cluster] = json.loads(proxy.admin("/clusters")[1])["clusters"]
    return [ep["health"] for ep in cluster["endpoints"]]


def test_a_failing_endpoint_leaves_and_returns(fleet: Fleet) -> None:
    fleet.set(0, error_rate=1.0)
    check = "{path: /healthz, interval: 200ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2}"
    proxy, port = start(fleet.ports, check)
    try:
        eventually(lambda: health(proxy)[0] == "/failed_active_hc", "the endpoint marked unhealthy")
        assert health(proxy)[1:] == ["healthy", "healthy"]
        before = fleet.stats(0)["requests"]
        statuses = [http(port, path="/x").status for _ in range(20)]
        assert statuses == [200] * 20
        checks = fleet.stats(0)["requests"] - before
        assert checks <= 10  # only health checks reached it, no traffic
        assert proxy.metric("meshpy_upstream_hosts_unhealthy", cluster="backend") == 1
        fleet.set(0, error_rate=0)
        eventually(lambda: health(proxy)[0] == "healthy", "back after two passes")
        seen = {http(port, path="/y").header("x-upstream") for _ in range(9)}
        assert "host-0" in seen
        assert proxy.metric("meshpy_upstream_health_transitions_total", cluster="backend",
                            state="healthy") == 1
    finally:
        proxy.stop()


def test_a_tcp_check_finds_a_dead_port(fleet: Fleet) -> None:
    dead = free_port()
    check = "{type: tcp, interval: 200ms, unhealthy_threshold: 1}"
    proxy, port = start([fleet.ports[0], fleet.ports[1], dead], check)
    try:
        eventually(lambda: health(proxy)[2] == "/failed_active_hc", "the dead port marked unhealthy")
        assert [http(port, path="/z").status for _ in range(12)] == [200] * 12  # no connect failures
    finally:
        proxy.stop()


def test_panic_below_half_healthy(fleet: Fleet) -> None:
    fleet.set(0, error_rate=1.0)
    fleet.set(1, error_rate=1.0)
    proxy, port = start(fleet.ports, "{path: /h, interval: 200ms, unhealthy_threshold: 1}")
    try:
        eventually(lambda: health(proxy).count("/failed_active_hc") == 2, "two endpoints unhealthy")
        seen = {http(port, path="/p").header("x-upstream") for _ in range(12)}
        assert seen == {"host-0", "host-1", "host-2"}  # one healthy of three: all are used
    finally:
        proxy.stop()
