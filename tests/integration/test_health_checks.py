"""Active health checks against the fault fleet: an endpoint that fails its checks gets no traffic and
comes back after passing again; a TCP check finds a dead port; below half healthy the balancer uses
every endpoint (panic)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from fleet import Fleet
from kit import Proxy, free_port, http

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    cluster: backend
clusters:
  - name: backend
    endpoints: [{endpoints}]
    health_check: {check}
"""


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(3) as f:
        yield f


def start(ports: list[int], check: str) -> tuple[Proxy, int]:
    port, admin = free_port(), free_port()
    endpoints = ", ".join(f"127.0.0.1:{p}" for p in ports)
    text = CONFIG.format(admin=admin, port=port, endpoints=endpoints, check=check)
    return Proxy(text, admin).start(), port


def health(proxy: Proxy) -> list[str]:
    [cluster] = json.loads(proxy.admin("/clusters")[1])["clusters"]
    return [ep["health"] for ep in cluster["endpoints"]]


def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


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
