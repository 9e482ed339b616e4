"""Fast metrics: plain ints on slotted objects, turned into Prometheus families only at scrape time.

Why not prometheus_client's own metric types on the hot path: `Counter.inc` takes a lock (a
`threading.Lock` around a `float` in a `_ValueClass`), `Counter.labels(...)` hashes the label tuple and
takes another lock, and `Histogram.observe` walks the bucket list in Python and takes one lock per bucket
it touches. A proxy that is one event loop in one thread pays all of that for nothing. Here the request
path does `x.rq_active += 1`, a dict increment and a `bisect` (see benchmarks/micro_metrics.py for the
figures), and one custom `Collector` walks the live stats objects when Prometheus scrapes. All of the cost
(label strings, cumulative buckets, family objects) moves to scrape time, which is rare and off the
request path.

Stats objects are keyed by listener or cluster *name* and survive config reloads: the compiler asks
`Metrics.listener(name)` once per Snapshot build and binds the object into the compiled listener, so a
request never looks anything up by name (ARCHITECTURE.md: "metric children already bound").

Everything lives in the project's own `CollectorRegistry`; the process-global default registry is never
touched, so two `Metrics` in one process (tests, workers) never collide.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

import meshpy

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "ClusterStats",
    "Histogram",
    "ListenerStats",
    "Metrics",
]

# Seconds. 0.5 ms is about the floor a Python proxy adds per hop; 60 s covers long route timeouts.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# What `generate_latest` writes with its default ("underscores") escaping is the classic 0.0.4 text
# format; naming that version explicitly keeps every scraper generation happy (newer prometheus_client
# advertises 1.0.0 as CONTENT_TYPE_LATEST, which older scrapers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# prometheus_client's own float rendering for `le` labels ("+Inf", "1e+06"), so our buckets read exactly
# like those of its Histogram. The function is untyped upstream.
_go_float = cast(Callable[[float], str], floatToGoString)


class Histogram:
    """Bucket counts for one series. `counts[i]` counts values `<= bounds[i]` and `> bounds[i-1]`;
    the last slot is the +Inf overflow. Cumulative sums are computed at scrape time, so `observe` is
    one C-level bisect and two increments."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = bounds
        self.counts: list[int] = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value: exactly Prometheus' `le` (less or equal) bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


class ListenerStats:
    """Downstream stats of one listener (Envoy's `downstream_*`).

    The data path may touch the attributes directly (`stats.cx_active += 1` is the cheapest thing
    Python can do); the methods are the same thing with a name. `request_started` and `request_done`
    come in pairs: done closes what started opened (rq_active), and counts the answer by status code.
    `rq_total` counts requests started, as Envoy's `downstream_rq_total`; the exported
    `meshpy_downstream_rq_total{response_code=...}` is counted on completion, as Istio's
    `istio_requests_total`, since the code is only known then.
    """

    __slots__ = ("cx_active", "cx_total", "duration", "name", "rq_active", "rq_by_code", "rq_total")

    def __init__(self, name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.cx_total = 0
        self.cx_active = 0
        self.rq_total = 0
        self.rq_active = 0
        self.rq_by_code: dict[int, int] = {}
        self.duration = Histogram(buckets)

    def connection_opened(self) -> None:
        self.cx_total += 1
        self.cx_active += 1

    def connection_closed(self) -> None:
        self.cx_active -= 1

    def request_started(self) -> None:
        self.rq_total += 1
        self.rq_active += 1

    def request_done(self, status: int, seconds: float) -> None:
        """`status` 0 means no response was sent (client went away, TCP session); counted as "0"."""
        self.rq_active -= 1
        by_code = self.rq_by_code
        by_code[status] = by_code.get(status, 0) + 1
        self.duration.observe(seconds)


class ClusterStats:
    """Upstream stats of one cluster (Envoy's `upstream_*`). Same conventions as ListenerStats.

    `pool_idle` is a gauge the connection pools keep current (+1 when a connection goes back to the
    pool, -1 when it is taken or closed); `cx_active` counts open upstream connections, busy or idle.
    """

    __slots__ = (
        "cx_active",
        "cx_connect_fail",
        "cx_total",
        "duration",
        "name",
        "pool_idle",
        "rq_active",
        "rq_by_code",
        "rq_retry",
        "rq_timeout",
        "rq_total",
    )

    def __init__(self, name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.rq_total = 0
        self.rq_active = 0
        self.rq_timeout = 0
        self.rq_retry = 0
        self.rq_by_code: dict[int, int] = {}
        self.cx_total = 0
        self.cx_active = 0
        self.cx_connect_fail = 0
        self.pool_idle = 0
        self.duration = Histogram(buckets)

    def connection_opened(self) -> None:
        self.cx_total += 1
        self.cx_active += 1

    def connection_closed(self) -> None:
        self.cx_active -= 1

    def connect_failed(self) -> None:
        self.cx_connect_fail += 1

    def request_started(self) -> None:
        self.rq_total += 1
        self.rq_active += 1

    def request_timed_out(self) -> None:
        self.rq_timeout += 1

    def request_retried(self) -> None:
        self.rq_retry += 1

    def request_done(self, status: int, seconds: float) -> None:
        self.rq_active -= 1
        by_code = self.rq_by_code
        by_code[status] = by_code.get(status, 0) + 1
        self.duration.observe(seconds)


def _code_class(status: int) -> str:
    # Envoy's rq_1xx..rq_5xx; anything else (0: no response) has no class of its own.
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def _histogram_buckets(hist: Histogram, les: list[str]) -> tuple[list[tuple[str, float]], float]:
    running = 0
    buckets: list[tuple[str, float]] = []
    for le, n in zip(les, hist.counts, strict=True):
        running += n
        buckets.append((le, running))
    return buckets, hist.sum


class _StatsCollector(Collector):
    """Turns the live stats objects into metric families, once per scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._les: dict[tuple[float, ...], list[str]] = {}

    def _le_labels(self, bounds: tuple[float, ...]) -> list[str]:
        les = self._les.get(bounds)
        if les is None:
            les = [_go_float(b) for b in bounds] + ["+Inf"]
            self._les[bounds] = les
        return les

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        # list(...) snapshots: a scrape never races a reload that adds or forgets a name.
        listeners = list(m._listeners.values())
        clusters = list(m._clusters.values())
        yield from self._side("downstream", "listener", listeners)
        yield from self._side("upstream", "cluster", clusters)

        cx_fail = CounterMetricFamily(
            "meshpy_upstream_cx_connect_fail", "Upstream connection attempts that failed.", labels=["cluster"]
        )
        rq_timeout = CounterMetricFamily(
            "meshpy_upstream_rq_timeout", "Upstream requests that hit their timeout.", labels=["cluster"]
        )
        rq_retry = CounterMetricFamily(
            "meshpy_upstream_rq_retry", "Upstream request retries.", labels=["cluster"]
        )
        idle = GaugeMetricFamily(
            "meshpy_upstream_cx_pool_idle", "Idle upstream connections held in the pools.", labels=["cluster"]
        )
        for c in clusters:
            cx_fail.add_metric([c.name], c.cx_connect_fail)
            rq_timeout.add_metric([c.name], c.rq_timeout)
            rq_retry.add_metric([c.name], c.rq_retry)
            idle.add_metric([c.name], c.pool_idle)
        yield from (cx_fail, rq_timeout, rq_retry, idle)

        loads = CounterMetricFamily("meshpy_config_loads", "Config loads by outcome.", labels=["result"])
        loads.add_metric(["accepted"], m.config_loads_accepted)
        loads.add_metric(["rejected"], m.config_loads_rejected)
        yield loads
        info = GaugeMetricFamily(
            "meshpy_server_info", "Always 1; labels carry the build and the live config version.",
            labels=["version", "config_version"],
        )  # fmt: skip
        info.add_metric([meshpy.__version__, m.config_version], 1)
        yield info

    def _side(self, side: str, key: str, stats: list[ListenerStats] | list[ClusterStats]) -> Iterator[Metric]:
        what = "Downstream" if side == "downstream" else "Upstream"
        rq = CounterMetricFamily(
            f"meshpy_{side}_rq", f"{what} requests completed, by response code.",
            labels=[key, "response_code", "response_code_class"],
        )  # fmt: skip
        rq_active = GaugeMetricFamily(f"meshpy_{side}_rq_active", f"{what} requests in flight.", labels=[key])
        cx = CounterMetricFamily(f"meshpy_{side}_cx", f"{what} connections opened.", labels=[key])
        cx_active = GaugeMetricFamily(f"meshpy_{side}_cx_active", f"{what} connections open.", labels=[key])
        dur = HistogramMetricFamily(
            f"meshpy_{side}_rq_duration_seconds", f"{what} request duration.", labels=[key]
        )
        for s in stats:
            for code, n in sorted(s.rq_by_code.items()):
                rq.add_metric([s.name, str(code), _code_class(code)], n)
            rq_active.add_metric([s.name], s.rq_active)
            cx.add_metric([s.name], s.cx_total)
            cx_active.add_metric([s.name], s.cx_active)
            buckets, total = _histogram_buckets(s.duration, self._le_labels(s.duration.bounds))
            dur.add_metric([s.name], buckets, total)
        yield from (rq, rq_active, cx, cx_active, dur)


class Metrics:
    """All of meshpy's metrics, in one registry of its own. One per process (one per worker)."""

    def __init__(
        self, *, buckets: tuple[float, ...] = LATENCY_BUCKETS, process_collector: bool = False
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.buckets = buckets
        self._listeners: dict[str, ListenerStats] = {}
        self._clusters: dict[str, ClusterStats] = {}
        self.config_loads_accepted = 0
        self.config_loads_rejected = 0
        self.config_version = ""
        self.registry.register(_StatsCollector(self))
        if process_collector:
            # CPU seconds, RSS, open fds from /proc, read at scrape time; registered here, not globally.
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=self.registry)

    def listener(self, name: str) -> ListenerStats:
        """The stats of listener `name`, created on first use; the same object across reloads."""
        stats = self._listeners.get(name)
        if stats is None:
            stats = self._listeners[name] = ListenerStats(name, self.buckets)
        return stats

    def cluster(self, name: str) -> ClusterStats:
        stats = self._clusters.get(name)
        if stats is None:
            stats = self._clusters[name] = ClusterStats(name, self.buckets)
        return stats

    def forget_listener(self, name: str) -> None:
        """Stop exporting a listener removed from the config. Requests still in flight on the old
        Snapshot keep their (now unexported) object; if the name comes back it starts from zero,
        which Prometheus reads as a counter reset."""
        self._listeners.pop(name, None)

    def forget_cluster(self, name: str) -> None:
        self._clusters.pop(name, None)

    def listener_names(self) -> list[str]:
        return list(self._listeners)

    def cluster_names(self) -> list[str]:
        return list(self._clusters)

    def config_load(self, ok: bool, version: str | None = None) -> None:
        """Record a config load (file reload or xDS update). `version` is what is live afterwards."""
        if ok:
            self.config_loads_accepted += 1
            if version is not None:
                self.config_version = version
        else:
            self.config_loads_rejected += 1

    def add_collector(self, collector: Collector) -> None:
        """Add another scrape-time source (e.g. stats gathered from other worker processes)."""
        self.registry.register(collector)

    def add_callback_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add a plain function that yields metric families at scrape time."""
        self.registry.register(_CallbackCollector(collect))

    def render(self) -> tuple[bytes, str]:
        """Prometheus text exposition of everything, and the Content-Type to send it with."""
        return generate_latest(self.registry), CONTENT_TYPE


class _CallbackCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()
