"""HostPool: taking the idle upstream connection and giving it back, what every keep-alive request does."""

from __future__ import annotations

import asyncio

import pytest
from micro_stack import FakeTransport
from pytest_benchmark.fixture import BenchmarkFixture

from meshpy.telemetry.metrics import ClusterStats
from meshpy.transport.connector import Connector
from meshpy.transport.upstream_http1 import UpstreamHttp1
from meshpy.upstream.pool import HostPool

pytestmark = pytest.mark.benchmark(group="pool")


def _no_wait(result: UpstreamHttp1 | BaseException) -> None:
    # Called only if checkout found no idle connection, which must not happen here.
    raise AssertionError(f"pool had no idle connection: {result!r}")


def bench_checkout_release(benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop) -> None:
    stats = ClusterStats("up")
    pool = HostPool(loop, ("127.0.0.1", 2), stats, Connector(loop, 1.0), max_connections=100)
    conn = UpstreamHttp1(pool)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    pool.busy += 1  # as if it had just been connected for a request
    pool.release(conn)
    checkout, release = pool.checkout, pool.release

    def cycle() -> UpstreamHttp1 | None:
        got = checkout(_no_wait)
        # A miss would start a connect task and return None; release(None) then fails loudly.
        release(got)  # type: ignore[arg-type]
        return got

    assert benchmark(cycle) is conn
    # Back where it started: one idle connection, none busy or connecting, the gauge in step.
    assert (pool.idle_count, pool.busy, pool.total, stats.pool_idle) == (1, 0, 1, 1)
    assert conn.is_usable()
