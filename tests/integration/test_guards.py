"""Local rate limits (per route and per virtual host) and injected faults (delay, abort, by share
and by request header), through a real meshpy process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kit import DemoUpstream, Proxy, eventually, fleet_config, free_port, http

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    access_log: stdout
    virtual_hosts:
      - domains: ["*"]
        rate_limit: {{max_tokens: 3, tokens_per_fill: 3, fill_interval: 500ms}}
        routes:
          - match: /shared
            cluster: demo
          - match: /own
            rate_limit: 2/s
            cluster: demo
          - match: /abort
            rate_limit: 1000/s
            fault: {{abort: 503, abort_percent: 50}}
            cluster: demo
          - match: /delay
            rate_limit: 1000/s
            fault: {{delay: 200ms, max_active: 1}}
            cluster: demo
          - match: /chaos
            rate_limit: 1000/s
            fault: {{headers: true}}
            cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:{upstream}]
"""


@pytest.fixture
def proxy(demo: DemoUpstream) -> Iterator[tuple[Proxy, int]]:
    port, admin = free_port(), free_port()
    p = Proxy(CONFIG.format(admin=admin, port=port, upstream=demo.port), admin).start()
    yield p, port
    p.stop()


def test_a_virtual_host_bucket_is_shared_and_refills(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    assert [http(port, path="/shared").status for _ in range(5)] == [200, 200, 200, 429, 429]
    r = http(port, path="/shared")
    assert r.status == 429 and r.body == b"local_rate_limited"
    time.sleep(0.55)
    assert [http(port, path="/shared").status for _ in range(4)] == [200, 200, 200, 429]
    # A route with its own bucket does not draw from the host's.
    assert [http(port, path="/own").status for _ in range(3)] == [200, 200, 429]
    assert p.metric("meshpy_downstream_rq_rate_limited_total", listener="web") == 5
    # The access log is written after the response, so the last lines may trail the client.
    eventually(lambda: p.logs().count('"response_code":429,"response_flags":"RL"') == 5, "5 RL log lines")


def test_aborts_hit_their_share(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    statuses = [http(port, path="/abort").status for _ in range(400)]
    aborted = statuses.count(503)
    assert 150 <= aborted <= 250 and statuses.count(200) == 400 - aborted
    assert p.metric("meshpy_downstream_fault_aborts_total", listener="web") == aborted
    eventually(lambda: p.logs().count('"response_code":503,"response_flags":"FI"') == aborted, "FI log lines")


def test_delays_and_max_active(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    t0 = time.monotonic()
    r = http(port, path="/delay")
    assert r.status == 200 and 0.19 <= time.monotonic() - t0 < 0.5
    eventually(lambda: '"path":"/delay"' in p.logs(), "the /delay request is logged")
    log = json.loads([line for line in p.logs().splitlines() if '"path":"/delay"' in line][-1])
    assert log["response_flags"] == "DI" and log["duration_ms"] >= 190
    # max_active: 1 -- while one request is held, the next one passes at once.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(http, port, "GET", "/delay")
        time.sleep(0.05)
        t0 = time.monotonic()
        assert http(port, path="/delay").status == 200
        assert time.monotonic() - t0 < 0.15
        assert held.result().status == 200


def test_requests_ask_for_their_own_faults(proxy: tuple[Proxy, int]) -> None:
    _p, port = proxy
    assert http(port, path="/chaos").status == 200  # no header, no fault
    r = http(port, path="/chaos", headers=[("x-envoy-fault-abort-request", "418")])
    assert (r.status, r.body) == (418, b"fault filter abort")
    t0 = time.monotonic()
    r = http(port, path="/chaos", headers=[("x-envoy-fault-delay-request", "150")])
    assert r.status == 200 and time.monotonic() - t0 >= 0.14
    none = [http(port, path="/chaos", headers=[("x-envoy-fault-abort-request", "503"),
                                                ("x-envoy-fault-abort-request-percentage", "0")]).status
            for _ in range(10)]
    assert none == [200] * 10


def test_a_reload_that_keeps_the_limit_keeps_its_bucket(demo: DemoUpstream, demo_b: DemoUpstream) -> None:
    """In a cluster, endpoints change all the time: a reload or push that changes only them must not
    refill the rate limits (the bucket belongs to the route and its limit, not to the Snapshot)."""
    port, admin = free_port(), free_port()
    limited = "rate_limit: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}"
    p = Proxy(fleet_config(admin, port, [demo.port], route=limited), admin).start()
    try:
        def accepted() -> float:
            return p.metric("meshpy_config_loads_total", result="accepted")

        assert [http(port, path="/").status for _ in range(3)] == [200, 200, 429]
        loads = accepted()
        p.rewrite(fleet_config(admin, port, [demo.port, demo_b.port], route=limited))  # endpoints only
        eventually(lambda: accepted() > loads, "the new endpoints live")
        assert http(port, path="/").status == 429  # still empty: no refill by the reload
        loads = accepted()
        p.rewrite(fleet_config(admin, port, [demo.port, demo_b.port], route=limited.replace("2,", "3,")))
        eventually(lambda: accepted() > loads, "the new limit live")
        assert http(port, path="/").status == 200  # a changed limit is a new bucket
    finally:
        p.stop()
