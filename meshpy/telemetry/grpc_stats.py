"""gRPC calls by service, method and status, per listener (what Envoy's grpc_stats filter and Istio's
`grpc_response_status` label give): a counter and a duration histogram.

Service and method come from the request path, so the label values are the clients' to choose: at
most MAX_METHODS (service, method) pairs are kept per listener, and calls beyond them are counted under
service and method "other", so that a client cannot grow the proxy's memory or the scrape without end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from meshpy.telemetry.metrics import Histogram, ListenerStats

MAX_METHODS = 512
_OTHER = ("other", "other")


class GrpcStats:
    """The gRPC calls of one listener. `record` runs once per call, at its end."""

    __slots__ = ("_bounds", "_histogram", "calls", "durations")

    def __init__(self, histogram: type[Histogram], bounds: tuple[float, ...]) -> None:
        self._histogram = histogram  # passed in: metrics.py imports this module
        self._bounds = bounds
        self.calls: dict[tuple[str, str], dict[int, int]] = {}
        self.durations: dict[tuple[str, str], Histogram] = {}

    def record(self, path: str, status: int, seconds: float) -> None:
        service, _, method = path[1:].partition("/")
        key = (service, method.partition("?")[0])
        by_status = self.calls.get(key)
        if by_status is None:
            if len(self.calls) >= MAX_METHODS:
                key = _OTHER
                by_status = self.calls.get(key)
            if by_status is None:
                by_status = self.calls[key] = {}
                self.durations[key] = self._histogram(self._bounds)
        by_status[status] = by_status.get(status, 0) + 1
        self.durations[key].observe(seconds)


def families(listeners: Iterable[ListenerStats], le_labels: Callable[[tuple[float, ...]], list[str]]) \
        -> Iterable[Metric]:
    calls = CounterMetricFamily("meshpy_grpc_requests", "gRPC calls by service, method and grpc-status.",
                                labels=["listener", "grpc_service", "grpc_method", "grpc_status"])
    durations = HistogramMetricFamily("meshpy_grpc_request_duration_seconds",
                                      "gRPC call durations by service and method.",
                                      labels=["listener", "grpc_service", "grpc_method"])
    for stats in listeners:
        grpc = stats.grpc
        for (service, method), by_status in sorted(grpc.calls.items()):
            for status, n in sorted(by_status.items()):
                calls.add_metric([stats.name, service, method, str(status)], n)
            hist = grpc.durations[(service, method)]
            running = 0
            buckets = []
            for le, n in zip(le_labels(hist.bounds), hist.counts, strict=True):
                running += n
                buckets.append((le, running))
            durations.add_metric([stats.name, service, method], buckets, hist.sum)
    return [calls, durations]
