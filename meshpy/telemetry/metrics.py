"""Fast metrics: plain ints on slotted objects, turned into Prometheus text only at scrape time.

Why not prometheus_client's own metric types on the hot path: `Counter.inc` takes a lock (a
`threading.Lock` around the value), `Counter.labels(...)` builds and hashes a label tuple under another
lock, and `Histogram.observe` walks the bucket bounds in a Python loop and takes two locks (sum and
bucket). A proxy that is one event loop on one thread pays for all of that and needs none of it. Here
the request path does `x.rq_active += 1`, a dict increment and a C `bisect` (benchmarks/micro_metrics.py:
~7x less per request than prometheus_client with pre-bound children), and all the cost of labels,
cumulative buckets and formatting moves to scrape time, which is rare and off the request path.

Two ways out, one table of series (`_SIDES`) behind both: a custom `Collector` in the project's own
`CollectorRegistry` (never the process-global one) yields metric families for anything that reads the
registry, and `Metrics.render()` writes the same samples straight to text, because prometheus_client's
generic `generate_latest` costs ~16x more per scrape and that time is an event-loop stall.

Stats objects are keyed by listener or cluster *name* and survive config reloads: the compiler asks
`Metrics.listener(name)` once per Snapshot build and binds the object into the compiled listener, so a
request never looks anything up by name (ARCHITECTURE.md: "metric children already bound").
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

import meshpy
from meshpy.telemetry.grpc_stats import GrpcStats
from meshpy.telemetry.grpc_stats import families as grpc_families
from meshpy.telemetry.rbac_stats import RbacCounters
from meshpy.telemetry.rbac_stats import families as rbac_families
from meshpy.telemetry.tls_stats import TlsRegistry

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "ClusterStats", "Histogram", "ListenerStats", "Metrics"]

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


class _RequestStats:
    """What downstream (listener) and upstream (cluster) stats share: connections, requests by code,
    and a duration histogram. Subclasses add their own counters."""

    __slots__ = ("cx_active", "cx_total", "duration", "name", "rq_active", "rq_by_code", "rq_total")

    def __init__(self, name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.cx_total = 0
        self.cx_active = 0
        self.rq_total = 0
        self.rq_active = 0
        self.rq_by_code: defaultdict[int, int] = defaultdict(int)  # C-level += on a hit
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
        self.rq_by_code[status] += 1
        # Histogram.observe inlined: one method call less is ~12% of this method (~205 against ~235 ns
        # measured). Safe because Histogram's layout is ours and fixed by its __slots__.
        hist = self.duration
        hist.counts[bisect_left(hist.bounds, seconds)] += 1
        hist.sum += seconds


class ListenerStats(_RequestStats):
    """Downstream stats of one listener (Envoy's `downstream_*`).

    The data path may touch the attributes directly (`stats.cx_active += 1` is the cheapest thing
    Python can do); the methods are the same thing with a name. `request_started` and `request_done`
    come in pairs: done closes what started opened (rq_active), and counts the answer by status code.
    `rq_total` counts requests started, as Envoy's `downstream_rq_total`; the exported
    `meshpy_downstream_rq_total{response_code=...}` is counted on completion, as Istio's
    `istio_requests_total`, since the code is only known then.
    """

    __slots__ = ("cx_http2_total", "cx_max_duration", "cx_max_requests", "cx_overflow",
                 "cx_overload_rejected", "cx_source_overflow", "fault_aborts", "fault_delays", "grpc",
                 "h2_abuse", "headers_dropped", "rbac", "rq_filter_errors", "rq_overload", "rq_rate_limited",
                 "rq_rejected_headers")

    def __init__(self, name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, buckets)
        self.rq_rate_limited = 0  # answered by the local rate limit (429, RL)
        self.fault_delays = 0  # held by an injected delay
        self.fault_aborts = 0  # answered by an injected abort (FI)
        self.cx_http2_total = 0  # connections that spoke HTTP/2
        self.h2_abuse = 0  # HTTP/2 connections closed for abuse (rapid reset, PING/SETTINGS flood)
        self.rq_filter_errors = 0  # a user filter's hook raised (500, FE)
        # Limits (meshpy.model.limits): connections closed at accept by the listener's max_connections,
        # by max_connections_per_source_ip, by the proxy's overload state; connections ended by
        # max_connection_duration and max_requests_per_connection; requests shed (503 OM); requests
        # refused and header fields dropped for an underscore in the name.
        self.cx_overflow = self.cx_source_overflow = self.cx_overload_rejected = 0
        self.cx_max_duration = self.cx_max_requests = 0
        self.rq_overload = self.rq_rejected_headers = self.headers_dropped = 0
        self.grpc = GrpcStats(Histogram, buckets)  # gRPC calls by service and method (exported apart)
        self.rbac: dict[str, RbacCounters] = {}  # authorization, by stat prefix (exported apart)

    def rbac_counters(self, prefix: str) -> RbacCounters:
        """The authorization counters of `prefix` here, made on first use (a filter binds them once)."""
        counters = self.rbac.get(prefix)
        if counters is None:
            counters = self.rbac[prefix] = RbacCounters()
        return counters


class ClusterStats(_RequestStats):
    """Upstream stats of one cluster (Envoy's `upstream_*`). Same conventions as ListenerStats.

    `pool_idle` is a gauge the connection pools keep current (+1 when a connection goes back to the
    pool, -1 when it is taken or closed); `cx_active` counts open upstream connections, busy or idle.
    """

    __slots__ = (
        "cx_connect_fail", "cx_http1_total", "cx_http2_total", "cx_overflow", "pool_idle",
        "rq_pending_overflow", "rq_retry", "rq_retry_limit_exceeded", "rq_retry_overflow", "rq_retry_success",
        "rq_timeout",
    )  # fmt: skip

    def __init__(self, name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, buckets)
        self.cx_overflow = 0  # a connection the max_connections breaker did not allow (the request waited)
        self.rq_pending_overflow = 0  # requests answered 503 UO by max_requests or max_pending_requests
        self.rq_timeout = 0
        self.rq_retry = 0
        self.rq_retry_success = 0  # requests that succeeded after one or more retries
        self.rq_retry_overflow = 0  # retries refused by the retry budget (or max_retries)
        self.rq_retry_limit_exceeded = 0  # requests that failed with no retries left
        self.cx_connect_fail = 0
        # Connections by the protocol they speak (Envoy's upstream_cx_http1_total and _http2_total):
        # for a cluster of protocol auto, what ALPN agreed on.
        self.cx_http1_total = self.cx_http2_total = 0
        self.pool_idle = 0

    def connect_failed(self) -> None:
        self.cx_connect_fail += 1

    def request_timed_out(self) -> None:
        self.rq_timeout += 1

    def request_retried(self) -> None:
        self.rq_retry += 1


_AnyStats = ListenerStats | ClusterStats


def _code_class(status: int) -> str:
    # Envoy's rq_1xx..rq_5xx; anything else (0: no response) has no class of its own.
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def _escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# One table drives both exports below (families for the registry, text for render), so they cannot
# drift apart; a test compares them sample by sample. (name, type, help, attribute) per series.
_Scalar = tuple[str, str, str, str]
_SIDES: tuple[tuple[str, str, str, tuple[_Scalar, ...]], ...] = (
    ("downstream", "listener", "Downstream", (
        ("meshpy_downstream_rq_active", "gauge", "Downstream requests in flight.", "rq_active"),
        ("meshpy_downstream_cx_total", "counter", "Downstream connections opened.", "cx_total"),
        ("meshpy_downstream_cx_active", "gauge", "Downstream connections open.", "cx_active"),
        ("meshpy_downstream_rq_rate_limited_total", "counter", "Requests refused by a local rate limit.",
         "rq_rate_limited"),
        ("meshpy_downstream_fault_delays_total", "counter", "Requests held by an injected delay.",
         "fault_delays"),
        ("meshpy_downstream_fault_aborts_total", "counter", "Requests answered by an injected abort.",
         "fault_aborts"),
        ("meshpy_downstream_cx_http2_total", "counter", "Downstream connections that spoke HTTP/2.",
         "cx_http2_total"),
        ("meshpy_downstream_http2_abuse_total", "counter",
         "HTTP/2 connections closed for abuse (rapid reset, PING or SETTINGS flood).", "h2_abuse"),
        ("meshpy_downstream_rq_filter_errors_total", "counter",
         "Requests on which a user HTTP filter raised (answered 500, flag FE).", "rq_filter_errors"),
        ("meshpy_downstream_cx_overflow_total", "counter",
         "Connections closed at accept: the listener's max_connections.", "cx_overflow"),
        ("meshpy_downstream_cx_source_overflow_total", "counter",
         "Connections closed at accept: max_connections_per_source_ip.", "cx_source_overflow"),
        ("meshpy_downstream_cx_overload_rejected_total", "counter",
         "Connections closed at accept: the proxy-wide limit or reject_connections.", "cx_overload_rejected"),
        ("meshpy_downstream_cx_max_duration_reached_total", "counter",
         "Connections drained at max_connection_duration.", "cx_max_duration"),
        ("meshpy_downstream_cx_max_requests_reached_total", "counter",
         "Connections drained at max_requests_per_connection.", "cx_max_requests"),
        ("meshpy_downstream_rq_overload_total", "counter",
         "Requests shed under overload (503, flag OM).", "rq_overload"),
        ("meshpy_downstream_rq_rejected_underscore_headers_total", "counter",
         "Requests refused for a header name with an underscore (400).", "rq_rejected_headers"),
        ("meshpy_downstream_dropped_underscore_headers_total", "counter",
         "Header fields dropped for an underscore in the name.", "headers_dropped"),
    )),
    ("upstream", "cluster", "Upstream", (
        ("meshpy_upstream_rq_active", "gauge", "Upstream requests in flight.", "rq_active"),
        ("meshpy_upstream_cx_total", "counter", "Upstream connections opened.", "cx_total"),
        ("meshpy_upstream_cx_active", "gauge", "Upstream connections open, busy or idle.", "cx_active"),
        ("meshpy_upstream_cx_connect_fail_total", "counter", "Failed upstream connects.", "cx_connect_fail"),
        ("meshpy_upstream_cx_http1_total", "counter", "Upstream connections that spoke HTTP/1.1.",
         "cx_http1_total"),
        ("meshpy_upstream_cx_http2_total", "counter", "Upstream connections that spoke HTTP/2.",
         "cx_http2_total"),
        ("meshpy_upstream_rq_timeout_total", "counter", "Upstream requests timed out.", "rq_timeout"),
        ("meshpy_upstream_rq_retry_total", "counter", "Upstream request retries.", "rq_retry"),
        ("meshpy_upstream_rq_retry_success_total", "counter", "Requests that succeeded after retries.",
         "rq_retry_success"),
        ("meshpy_upstream_rq_retry_overflow_total", "counter",
         "Retries refused by the retry budget (or max_retries).", "rq_retry_overflow"),
        ("meshpy_upstream_rq_retry_limit_exceeded_total", "counter",
         "Requests that failed with no retries left.", "rq_retry_limit_exceeded"),
        ("meshpy_upstream_cx_pool_idle", "gauge", "Idle pooled upstream connections.", "pool_idle"),
        ("meshpy_upstream_cx_overflow_total", "counter",
         "Connections the max_connections circuit breaker held back.", "cx_overflow"),
        ("meshpy_upstream_rq_pending_overflow_total", "counter",
         "Requests refused (503 UO) by the max_requests or max_pending_requests circuit breaker.",
         "rq_pending_overflow"),
    )),
)  # fmt: skip
_RQ_HELP = "{} requests completed, by response code."
_DURATION_HELP = "{} request duration."
_LOADS = ("meshpy_config_loads_total", "Config loads by outcome.")
_INFO = ("meshpy_server_info", "Always 1; labels carry the build and the live config version.")


class _StatsCollector(Collector):
    """The live stats objects as metric families, for anything that reads `Metrics.registry`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        for (side, key, what, scalars), stats in zip(_SIDES, m._snapshot(), strict=True):
            rq = CounterMetricFamily(
                f"meshpy_{side}_rq_total", _RQ_HELP.format(what),
                labels=[key, "response_code", "response_code_class"],
            )  # fmt: skip
            for s in stats:
                for code, n in sorted(s.rq_by_code.items()):
                    rq.add_metric([s.name, str(code), _code_class(code)], n)
            yield rq
            for name, kind, help_text, attr in scalars:
                family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                    name, help_text, labels=[key]
                )
                for s in stats:
                    family.add_metric([s.name], getattr(s, attr))
                yield family
            dur = HistogramMetricFamily(
                f"meshpy_{side}_rq_duration_seconds", _DURATION_HELP.format(what), labels=[key]
            )
            for s in stats:
                les = m._le_labels(s.duration.bounds)
                cumulative = list(accumulate(s.duration.counts))
                dur.add_metric([s.name], list(zip(les, cumulative, strict=True)), s.duration.sum)
            yield dur
        loads = CounterMetricFamily(*_LOADS, labels=["result"])
        loads.add_metric(["accepted"], m.config_loads_accepted)
        loads.add_metric(["rejected"], m.config_loads_rejected)
        yield loads
        info = GaugeMetricFamily(*_INFO, labels=["version", "config_version"])
        info.add_metric([meshpy.__version__, m.config_version], 1)
        yield info


def _render_text(m: Metrics) -> str:
    """Our own series straight to exposition text, without building families.

    Why not `generate_latest` over the families: it builds a Sample per bucket and validates and
    escapes every label of every sample in Python: ~16 ms for 20 listeners and 100 clusters on the
    shared test machine, a stall of the event loop (and of every request in flight) on each scrape.
    Written directly with labels escaped once per series, the same samples take ~1 ms
    (benchmarks/micro_metrics.py prints both; a unit test checks the two agree sample by sample).
    """
    out: list[str] = []
    add = out.append
    for (side, key, what, scalars), stats in zip(_SIDES, m._snapshot(), strict=True):
        labelled = [(s, f'{key}="{_escape(s.name)}"') for s in stats]
        name = f"meshpy_{side}_rq_total"
        add(f"# HELP {name} {_RQ_HELP.format(what)}\n# TYPE {name} counter\n")
        for s, lbl in labelled:
            for code, n in sorted(s.rq_by_code.items()):
                add(f'{name}{{{lbl},response_code="{code}",response_code_class="{_code_class(code)}"}} {n}\n')
        for name, kind, help_text, attr in scalars:
            add(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            for s, lbl in labelled:
                add(f"{name}{{{lbl}}} {getattr(s, attr)}\n")
        name = f"meshpy_{side}_rq_duration_seconds"
        add(f"# HELP {name} {_DURATION_HELP.format(what)}\n# TYPE {name} histogram\n")
        for s, lbl in labelled:
            hist = s.duration
            running = 0
            for le, n in zip(m._le_labels(hist.bounds), hist.counts, strict=True):
                running += n
                add(f'{name}_bucket{{{lbl},le="{le}"}} {running}\n')
            add(f"{name}_count{{{lbl}}} {running}\n{name}_sum{{{lbl}}} {_go_float(hist.sum)}\n")
    name, help_text = _LOADS
    add(f"# HELP {name} {help_text}\n# TYPE {name} counter\n")
    add(f'{name}{{result="accepted"}} {m.config_loads_accepted}\n')
    add(f'{name}{{result="rejected"}} {m.config_loads_rejected}\n')
    name, help_text = _INFO
    add(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
    add(f'{name}{{version="{_escape(meshpy.__version__)}",config_version="{_escape(m.config_version)}"}} 1\n')
    return "".join(out)


class Metrics:
    """All of meshpy's metrics, in one registry of its own. One per process (one per worker)."""

    def __init__(
        self, *, buckets: tuple[float, ...] = LATENCY_BUCKETS, process_collector: bool = False
    ) -> None:
        # `registry` holds everything, as families (for get_sample_value, push gateways, other
        # formats); `_extras` holds only what others added, which render() appends to its own text.
        self.registry = CollectorRegistry(auto_describe=False)
        self._extras = CollectorRegistry(auto_describe=False)
        self.buckets = buckets
        self._listeners: dict[str, ListenerStats] = {}
        self._clusters: dict[str, ClusterStats] = {}
        self._les: dict[tuple[float, ...], list[str]] = {}
        self.config_loads_accepted = 0
        self.config_loads_rejected = 0
        self.config_version = ""
        self.registry.register(_StatsCollector(self))
        self.add_callback_collector(lambda: grpc_families(self._listeners.copy().values(), self._le_labels))
        self.add_callback_collector(lambda: rbac_families(self._listeners.copy().values()))
        self.tls = TlsRegistry()  # TLS counters and certificates in use (meshpy.telemetry.tls_stats)
        self.add_callback_collector(self.tls.families)
        if process_collector:
            # CPU seconds, RSS, open fds from /proc, read at scrape time; registered here, not globally.
            from prometheus_client import ProcessCollector

            self.add_collector(ProcessCollector(registry=None))

    def _snapshot(self) -> tuple[list[_AnyStats], list[_AnyStats]]:
        # list(...) copies: a scrape never iterates a dict that a reload is changing.
        listeners: list[_AnyStats] = list(self._listeners.values())
        clusters: list[_AnyStats] = list(self._clusters.values())
        return listeners, clusters

    def _le_labels(self, bounds: tuple[float, ...]) -> list[str]:
        les = self._les.get(bounds)
        if les is None:
            les = self._les[bounds] = [_go_float(b) for b in bounds] + ["+Inf"]
        return les

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
        self._extras.register(collector)

    def add_callback_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add a plain function that yields metric families at scrape time."""
        self.add_collector(_CallbackCollector(collect))

    def render(self) -> tuple[bytes, str]:
        """Prometheus text exposition of everything, and the Content-Type to send it with.
        Same samples as `generate_latest(self.registry)`, several times faster (see _render_text)."""
        return _render_text(self).encode() + generate_latest(self._extras), CONTENT_TYPE


class _CallbackCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()
