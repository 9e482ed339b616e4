"""What one request costs in metrics (meshpy's plain ints against prometheus_client), and a scrape."""

from __future__ import annotations

import pytest
from micro_metrics import populated, prom_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pytest_benchmark.fixture import BenchmarkFixture

from meshpy.telemetry.metrics import LATENCY_BUCKETS, ClusterStats, ListenerStats, Metrics

SECONDS = 0.004  # a typical in-cluster request: lands in the 0.005 bucket


def _nothing() -> None:
    pass


@pytest.mark.benchmark(group="metrics")
def bench_baseline_empty_call(benchmark: BenchmarkFixture) -> None:
    """The floor every row below includes: pytest-benchmark's loop calling a no-op function."""
    assert benchmark(_nothing) is None


def _assert_counted(stats: ListenerStats | ClusterStats) -> None:
    n = stats.rq_by_code[200]
    assert n > 0 and stats.rq_active == -n  # request_done ran n times, and only request_done
    assert sum(stats.duration.counts) == n
    assert stats.duration.counts[LATENCY_BUCKETS.index(0.005)] == n
    assert stats.duration.sum == pytest.approx(n * SECONDS)


@pytest.mark.benchmark(group="metrics")
def bench_listener_request_done(benchmark: BenchmarkFixture) -> None:
    ls = Metrics().listener("ingress")
    benchmark(ls.request_done, 200, SECONDS)
    _assert_counted(ls)


@pytest.mark.benchmark(group="metrics")
def bench_listener_and_cluster_request_done(benchmark: BenchmarkFixture) -> None:
    """One proxied request's completion, as Exchange._complete does it."""
    m = Metrics()
    ls, cs = m.listener("ingress"), m.cluster("backend")
    ls_done, cs_done = ls.request_done, cs.request_done

    def done() -> None:
        ls_done(200, SECONDS)
        cs_done(200, SECONDS)

    benchmark(done)
    _assert_counted(ls)
    _assert_counted(cs)


@pytest.mark.benchmark(group="metrics")
def bench_prometheus_client_bound_children(benchmark: BenchmarkFixture) -> None:
    """The same bookkeeping with prometheus_client's types, children bound ahead (its best case: no
    .labels() per request): per side, rq_active.dec(), the response-code counter, the histogram."""
    reg = CollectorRegistry()
    rq, active, hist = prom_metrics(reg)
    sides = ("ingress", "backend")  # listener and cluster as two label values: the same work per call
    children: list[tuple[Counter, Gauge, Histogram]] = [
        (rq.labels(s, "200", "2xx"), active.labels(s), hist.labels(s)) for s in sides
    ]
    (rq_l, active_l, hist_l), (rq_c, active_c, hist_c) = children

    def done() -> None:
        active_l.dec()
        rq_l.inc()
        hist_l.observe(SECONDS)
        active_c.dec()
        rq_c.inc()
        hist_c.observe(SECONDS)

    benchmark(done)
    for s in sides:
        labels = {"listener": s, "response_code": "200", "response_code_class": "2xx"}
        n = reg.get_sample_value("rq_total", labels)
        assert n is not None and n > 0
        assert reg.get_sample_value("rq_active", {"listener": s}) == -n
        assert reg.get_sample_value("rq_duration_seconds_bucket", {"listener": s, "le": "0.0025"}) == 0
        assert reg.get_sample_value("rq_duration_seconds_bucket", {"listener": s, "le": "0.005"}) == n


# A mid-sized mesh node: what one Prometheus scrape of /stats/prometheus has to render.
SCRAPE_LISTENERS, SCRAPE_CLUSTERS = 20, 100


@pytest.mark.benchmark(group="metrics-scrape")
def bench_scrape_render(benchmark: BenchmarkFixture) -> None:
    m = populated(SCRAPE_LISTENERS, SCRAPE_CLUSTERS)
    body, content_type = benchmark(m.render)
    assert content_type.startswith("text/plain; version=0.0.4")
    # The fast path is only worth having if it says what the generic exposition says: same samples.
    assert _samples(body) == _samples(generate_latest(m.registry))
    assert body.count(b"meshpy_upstream_rq_total{") == SCRAPE_CLUSTERS * 2


def _samples(text: bytes) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


@pytest.mark.benchmark(group="metrics-scrape")
def bench_scrape_generate_latest(benchmark: BenchmarkFixture) -> None:
    """For contrast: prometheus_client's generic exposition over the same series (Metrics.registry)."""
    m = populated(SCRAPE_LISTENERS, SCRAPE_CLUSTERS)
    text = benchmark(generate_latest, m.registry)
    assert text.count(b"meshpy_upstream_rq_total{") == SCRAPE_CLUSTERS * 2
