"""The outlier detector's interval checks (success rate, failure percentage) on a real ClusterRuntime."""

from __future__ import annotations

import asyncio

from meshpy.model.types import Address, Cluster, Endpoint, OutlierDetection
from meshpy.telemetry.metrics import Metrics
from meshpy.upstream.cluster import ClusterRuntime


def runtime(loop: asyncio.AbstractEventLoop, od: OutlierDetection, n: int = 5) -> ClusterRuntime:
    model = Cluster(name="c", endpoints=tuple(Endpoint(address=Address(host="127.0.0.1", port=9000 + i))
                                              for i in range(n)), outlier_detection=od)
    return ClusterRuntime(model, Metrics().cluster("c"), loop)


async def test_success_rate_ejects_the_outlier() -> None:
    rt = runtime(asyncio.get_running_loop(), OutlierDetection(max_ejection_percent=50))
    detector = rt.outlier
    assert detector is not None
    for i, h in enumerate(rt.hosts):
        for k in range(200):
            detector.result(h, 503 if i == 4 and k % 2 else 200)  # host 4: 50% (never 5 in a row)
    assert not any(h.ejected for h in rt.hosts)
    detector._tick()
    assert [h.ejected for h in rt.hosts] == [False, False, False, False, True]
    assert detector.ejections == {"success_rate": 1}
    assert all(h.rq_ok == h.rq_fail == 0 for h in rt.hosts)  # a new interval begins
    assert rt.hosts[4] not in rt._order
    rt.close()


async def test_failure_percentage_only_when_enforced() -> None:
    od = OutlierDetection(max_ejection_percent=50, enforcing_success_rate=0, failure_percentage_threshold=60)
    rt = runtime(asyncio.get_running_loop(), od)
    detector = rt.outlier
    assert detector is not None

    def load() -> None:
        for i, h in enumerate(rt.hosts):
            for k in range(60):
                detector.result(h, 503 if i == 0 and k % 4 != 0 else 200)  # host 0: 75% failures

    load()
    detector._tick()
    assert not any(h.ejected for h in rt.hosts)  # enforcing_failure_percentage is 0 by default
    rt.close()
    rt = runtime(asyncio.get_running_loop(), OutlierDetection(
        max_ejection_percent=50, enforcing_success_rate=0, failure_percentage_threshold=60,
        enforcing_failure_percentage=100))
    detector = rt.outlier
    assert detector is not None
    load()
    detector._tick()
    assert [h.ejected for h in rt.hosts] == [True, False, False, False, False]
    assert detector.ejections == {"failure_percentage": 1}
    rt.close()


async def test_panic_when_most_are_out() -> None:
    rt = runtime(asyncio.get_running_loop(), OutlierDetection(max_ejection_percent=100), n=4)
    detector = rt.outlier
    assert detector is not None
    for h in rt.hosts[:3]:
        for _ in range(5):
            detector.result(h, 500)
    assert sum(h.ejected for h in rt.hosts) == 3
    # Fewer than half in service: the balancer uses every endpoint rather than one.
    assert set(rt._order) == set(rt.hosts)
    rt.close()
