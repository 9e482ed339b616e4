"""Micro-benchmark: what one request costs in metrics, meshpy's plain ints against prometheus_client.

    .venv/bin/python benchmarks/micro_metrics.py [--number N] [--repeat R]

Each figure is the best of R rounds of N calls, in ns per call, with the cost of an empty loop
iteration subtracted. The machine is shared and noisy: read the ratios, not the absolute numbers.
The cases run interleaved (round 1 of every case, then round 2, ...) so drift hits them alike.
benchmarks/micro/bench_metrics.py measures the per-request and scrape costs under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from meshpy.telemetry.metrics import LATENCY_BUCKETS, ListenerStats, Metrics


def prom_metrics(reg: CollectorRegistry) -> tuple[Counter, Gauge, Histogram]:
    """The per-request series of ListenerStats, as prometheus_client metric types in `reg`."""
    rq = Counter("rq", "", ["listener", "response_code", "response_code_class"], registry=reg)
    active = Gauge("rq_active", "", ["listener"], registry=reg)
    hist = Histogram("rq_duration_seconds", "", ["listener"], buckets=LATENCY_BUCKETS, registry=reg)
    return rq, active, hist


def cases() -> dict[str, tuple[str, dict[str, object]]]:
    m = Metrics()
    ls = m.listener("ingress")
    cs = m.cluster("backend")

    reg = CollectorRegistry()
    rq, active, hist = prom_metrics(reg)
    rq_child = rq.labels("ingress", "200", "2xx")
    active_child = active.labels("ingress")
    hist_child = hist.labels("ingress")

    def prom_request(
        rq_child: Counter = rq_child, active_child: Gauge = active_child, hist_child: Histogram = hist_child
    ) -> None:
        # The same per-request bookkeeping as ListenerStats.request_started + request_done, with
        # pre-bound children (the best case for prometheus_client: no .labels() per request).
        active_child.inc()
        active_child.dec()
        rq_child.inc()
        hist_child.observe(0.004)

    def fast_request(ls: ListenerStats = ls) -> None:
        ls.request_started()
        ls.request_done(200, 0.004)

    env = {
        "ls": ls,
        "cs": cs,
        "rq": rq,
        "rq_child": rq_child,
        "hist_child": hist_child,
        "prom_request": prom_request,
        "fast_request": fast_request,
    }
    return {
        "empty loop (subtracted)": ("pass", env),
        "ListenerStats.request_done": ("ls.request_done(200, 0.004)", env),
        "ClusterStats.request_done": ("cs.request_done(200, 0.004)", env),
        "listener + cluster request_done": ("ls.request_done(200, 0.004); cs.request_done(200, 0.004)", env),
        "stats.rq_active += 1 (attribute)": ("ls.rq_active += 1", env),
        "prom Counter.labels(...).inc()": ('rq.labels("ingress", "200", "2xx").inc()', env),
        "prom bound child .inc()": ("rq_child.inc()", env),
        "prom bound Histogram.observe()": ("hist_child.observe(0.004)", env),
        "one request, meshpy (start+done)": ("fast_request()", env),
        "one request, prom bound children": ("prom_request()", env),
    }


def measure(number: int, repeat: int) -> dict[str, float]:
    table = cases()
    timers = {name: timeit.Timer(stmt, globals=env) for name, (stmt, env) in table.items()}
    best = {name: float("inf") for name in table}
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number) / number * 1e9)
    base = best.pop("empty loop (subtracted)")
    return {name: max(ns - base, 0.0) for name, ns in best.items()}


def populated(listeners: int, clusters: int) -> Metrics:
    """Metrics with `listeners` listeners (3 codes each) and `clusters` clusters (2 codes each)."""
    m = Metrics()
    for i in range(listeners):
        s = m.listener(f"listener-{i}")
        for code in (200, 404, 503):
            s.request_started()
            s.request_done(code, 0.01)
    for i in range(clusters):
        c = m.cluster(f"cluster-{i}")
        for code in (200, 503):
            c.request_started()
            c.request_done(code, 0.01)
    return m


def scrape_cost(listeners: int, clusters: int, rounds: int = 20) -> tuple[float, float]:
    """Milliseconds per scrape: Metrics.render() against generate_latest over the same registry."""
    m = populated(listeners, clusters)

    def generic() -> bytes:
        return generate_latest(m.registry)

    fast: Callable[[], object] = m.render
    best = [float("inf"), float("inf")]
    for _ in range(rounds):  # interleaved
        for i, fn in enumerate((fast, generic)):
            best[i] = min(best[i], timeit.timeit(fn, number=1) * 1e3)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    results = measure(args.number, args.repeat)
    ref = results["ListenerStats.request_done"]
    width = max(len(k) for k in results)
    print(f"{'case':{width}}  {'ns/call':>8}  {'x ListenerStats.request_done':>28}")
    for name, ns in results.items():
        print(f"{name:{width}}  {ns:8.0f}  {ns / ref if ref else float('nan'):28.2f}")
    ratio = results["one request, prom bound children"] / results["one request, meshpy (start+done)"]
    print(f"\nper request, prometheus_client bound children / meshpy plain ints: {ratio:.1f}x")
    fast, generic = scrape_cost(20, 100)
    print(
        f"scrape of 20 listeners + 100 clusters: Metrics.render() {fast:.1f} ms, "
        f"generate_latest(registry) {generic:.1f} ms ({generic / fast:.0f}x)"
    )


if __name__ == "__main__":
    main()
