"""An original_dst cluster at run time: a host per destination, made on first use, the same host for the
same destination, none without one, and forgotten once nothing holds it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from meshpy.model.types import Cluster
from meshpy.telemetry.metrics import Metrics
from meshpy.upstream.cluster import ClusterRuntime


@pytest.fixture
def rt() -> Iterator[ClusterRuntime]:
    loop = asyncio.new_event_loop()  # the pools need one; nothing runs on it
    model = Cluster(name="passthrough", discovery="original_dst")
    runtime = ClusterRuntime(model, Metrics().cluster("p"), loop)
    yield runtime
    runtime.close()
    loop.close()


def test_a_host_per_destination(rt: ClusterRuntime) -> None:
    assert rt.by_destination and rt.resolved.is_set() and rt.hosts == []
    a = rt.host_for(("10.0.0.1", 80))
    b = rt.host_for(("10.0.0.2", 443))
    assert a is not None and b is not None and a is not b
    assert (a.address, b.address) == (("10.0.0.1", 80), ("10.0.0.2", 443))
    assert rt.host_for(("10.0.0.1", 80)) is a  # the same destination, the same host (and pool)
    assert [h.label for h in rt.hosts] == ["10.0.0.1:80", "10.0.0.2:443"]
    assert rt.host_for(("fd00::1", 8080)) is not None and rt.hosts[-1].label == "[fd00::1]:8080"


def test_no_destination_no_host(rt: ClusterRuntime) -> None:
    """A connection nothing redirected has no original destination: there is nowhere to send it."""
    assert rt.host_for(None) is None
    assert rt.hosts == []
    assert rt.pick() is None and rt.balancer is not None and rt.balancer.by_destination


def test_idle_destinations_are_forgotten(rt: ClusterRuntime) -> None:
    busy = rt.host_for(("10.0.0.1", 80))
    idle = rt.host_for(("10.0.0.2", 80))
    assert busy is not None and idle is not None
    busy.active_requests = 1  # a request (or a TCP session) still on it
    rt.evict_idle(0.0)
    assert rt.hosts == [busy]
    assert rt.host_for(("10.0.0.2", 80)) is not idle  # made again when it is used again
    busy.active_requests = 0
    rt.evict_idle(0.0)
    assert rt.hosts == []
