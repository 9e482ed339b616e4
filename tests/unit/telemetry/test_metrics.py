from __future__ import annotations

from collections.abc import Iterable

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from meshpy.telemetry.metrics import CONTENT_TYPE, LATENCY_BUCKETS, Histogram, Metrics


def scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape as {(sample name, sorted labels): value}, parsed by prometheus_client."""
    body, content_type = m.render()
    assert content_type == CONTENT_TYPE
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def families(m: Metrics) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(m.render()[0].decode())}


def test_histogram_buckets_are_le() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    # 0.1 lands in le=0.1 (less or equal), 1.0 in le=1.0, 3.0 overflows to +Inf.
    assert h.counts == [2, 2, 1]
    assert h.count == 5
    assert h.sum == pytest.approx(4.65)


def test_histogram_rejects_unsorted_bounds() -> None:
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError):
        Histogram((1.0, 1.0))


def test_empty_metrics_have_every_family() -> None:
    m = Metrics()
    assert families(m) == {
        "meshpy_downstream_rq": "counter",
        "meshpy_downstream_rq_active": "gauge",
        "meshpy_downstream_cx": "counter",
        "meshpy_downstream_cx_active": "gauge",
        "meshpy_downstream_rq_rate_limited": "counter",
        "meshpy_downstream_fault_delays": "counter",
        "meshpy_downstream_fault_aborts": "counter",
        "meshpy_downstream_cx_http2": "counter",
        "meshpy_downstream_http2_abuse": "counter",
        "meshpy_downstream_rq_filter_errors": "counter",
        "meshpy_downstream_cx_overflow": "counter",
        "meshpy_downstream_cx_source_overflow": "counter",
        "meshpy_downstream_cx_overload_rejected": "counter",
        "meshpy_downstream_cx_max_duration_reached": "counter",
        "meshpy_downstream_cx_max_requests_reached": "counter",
        "meshpy_downstream_rq_overload": "counter",
        "meshpy_downstream_rq_rejected_underscore_headers": "counter",
        "meshpy_downstream_dropped_underscore_headers": "counter",
        "meshpy_grpc_requests": "counter",
        "meshpy_grpc_request_duration_seconds": "histogram",
        "meshpy_downstream_rq_duration_seconds": "histogram",
        "meshpy_upstream_rq": "counter",
        "meshpy_upstream_rq_active": "gauge",
        "meshpy_upstream_cx": "counter",
        "meshpy_upstream_cx_active": "gauge",
        "meshpy_upstream_rq_duration_seconds": "histogram",
        "meshpy_upstream_cx_connect_fail": "counter",
        "meshpy_upstream_cx_http1": "counter",
        "meshpy_upstream_cx_http2": "counter",
        "meshpy_upstream_rq_timeout": "counter",
        "meshpy_upstream_rq_retry": "counter",
        "meshpy_upstream_rq_retry_success": "counter",
        "meshpy_upstream_rq_retry_overflow": "counter",
        "meshpy_upstream_rq_retry_limit_exceeded": "counter",
        "meshpy_upstream_cx_pool_idle": "gauge",
        "meshpy_upstream_cx_overflow": "counter",
        "meshpy_upstream_rq_pending_overflow": "counter",
        "meshpy_config_loads": "counter",
        "meshpy_server_info": "gauge",
    }
    text = m.render()[0].decode()
    assert "# TYPE meshpy_downstream_rq_total counter" in text
    assert "# TYPE meshpy_upstream_cx_connect_fail_total counter" in text


def test_listener_counts_and_labels() -> None:
    m = Metrics()
    stats = m.listener("ingress")
    stats.connection_opened()
    stats.connection_opened()
    stats.connection_closed()
    for status, seconds in ((200, 0.0004), (200, 0.02), (404, 0.003), (503, 2.0), (0, 0.1)):
        stats.request_started()
        stats.request_done(status, seconds)
    stats.request_started()  # still in flight

    s = scrape(m)
    lbl = (("listener", "ingress"),)
    assert s[("meshpy_downstream_cx_total", lbl)] == 2
    assert s[("meshpy_downstream_cx_active", lbl)] == 1
    assert s[("meshpy_downstream_rq_active", lbl)] == 1
    assert stats.rq_total == 6

    def rq(code: str, cls: str) -> float:
        key = (("listener", "ingress"), ("response_code", code), ("response_code_class", cls))
        return s[("meshpy_downstream_rq_total", key)]

    assert rq("200", "2xx") == 2
    assert rq("404", "4xx") == 1
    assert rq("503", "5xx") == 1
    assert rq("0", "none") == 1


def test_duration_histogram_is_cumulative() -> None:
    m = Metrics()
    stats = m.listener("l")
    for seconds in (0.0004, 0.0005, 0.02, 2.0, 100.0):
        stats.request_started()
        stats.request_done(200, seconds)
    s = scrape(m)

    def bucket(le: str) -> float:
        return s[("meshpy_downstream_rq_duration_seconds_bucket", (("le", le), ("listener", "l")))]

    assert bucket("0.0005") == 2  # 0.0005 itself is "less or equal"
    assert bucket("0.01") == 2
    assert bucket("0.025") == 3
    assert bucket("2.5") == 4
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5
    assert s[("meshpy_downstream_rq_duration_seconds_count", (("listener", "l"),))] == 5
    assert s[("meshpy_downstream_rq_duration_seconds_sum", (("listener", "l"),))] == pytest.approx(102.0209)
    n_buckets = sum(1 for name, _ in s if name == "meshpy_downstream_rq_duration_seconds_bucket")
    assert n_buckets == len(LATENCY_BUCKETS) + 1


def test_cluster_stats() -> None:
    m = Metrics()
    c = m.cluster("backend")
    c.connection_opened()
    c.connection_opened()
    c.connection_closed()
    c.connect_failed()
    c.request_started()
    c.request_timed_out()
    c.request_done(504, 15.0)
    c.request_started()
    c.request_retried()
    c.request_done(200, 0.01)
    c.pool_idle = 1
    s = scrape(m)
    lbl = (("cluster", "backend"),)
    assert s[("meshpy_upstream_cx_total", lbl)] == 2
    assert s[("meshpy_upstream_cx_active", lbl)] == 1
    assert s[("meshpy_upstream_cx_connect_fail_total", lbl)] == 1
    assert s[("meshpy_upstream_rq_timeout_total", lbl)] == 1
    assert s[("meshpy_upstream_rq_retry_total", lbl)] == 1
    assert s[("meshpy_upstream_rq_active", lbl)] == 0
    assert s[("meshpy_upstream_cx_pool_idle", lbl)] == 1
    key = (("cluster", "backend"), ("response_code", "504"), ("response_code_class", "5xx"))
    assert s[("meshpy_upstream_rq_total", key)] == 1
    assert s[("meshpy_upstream_rq_duration_seconds_count", lbl)] == 2


def test_same_name_same_object_and_forget() -> None:
    m = Metrics()
    a = m.listener("a")
    assert m.listener("a") is a
    assert m.cluster("c") is m.cluster("c")
    a.connection_opened()
    m.cluster("c").connect_failed()
    m.listener("b")
    assert sorted(m.listener_names()) == ["a", "b"]

    m.forget_listener("a")
    m.forget_cluster("c")
    m.forget_cluster("never-existed")
    s = scrape(m)
    assert not any(dict(labels).get("listener") == "a" for _, labels in s)
    assert not any(dict(labels).get("cluster") == "c" for _, labels in s)
    assert s[("meshpy_downstream_cx_total", (("listener", "b"),))] == 0
    # A name that comes back starts again from zero (Prometheus sees a counter reset).
    assert m.listener("a") is not a
    assert m.listener("a").cx_total == 0


def test_config_loads_and_info() -> None:
    m = Metrics()
    m.config_load(True, "v1")
    m.config_load(False, "v2")  # rejected: the live version stays v1
    m.config_load(True)
    s = scrape(m)
    assert s[("meshpy_config_loads_total", (("result", "accepted"),))] == 2
    assert s[("meshpy_config_loads_total", (("result", "rejected"),))] == 1
    info = [labels for name, labels in s if name == "meshpy_server_info"]
    assert len(info) == 1
    assert dict(info[0])["config_version"] == "v1"


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.listener('we"ird\\name\n').request_started()
    s = scrape(m)
    assert s[("meshpy_downstream_rq_active", (("listener", 'we"ird\\name\n'),))] == 1


def test_own_registry_not_global() -> None:
    m = Metrics()
    m.listener("global-check").request_started()
    assert REGISTRY.get_sample_value("meshpy_downstream_rq_active", {"listener": "global-check"}) is None
    assert m.registry.get_sample_value("meshpy_downstream_rq_active", {"listener": "global-check"}) == 1
    # Two instances in one process do not collide.
    Metrics().listener("global-check")


def test_extra_collectors() -> None:
    m = Metrics()

    def workers() -> Iterable[Metric]:
        g = GaugeMetricFamily("meshpy_workers", "Worker processes.")
        g.add_metric([], 4)
        yield g

    m.add_callback_collector(workers)
    assert scrape(m)[("meshpy_workers", ())] == 4


def test_process_collector_is_optional() -> None:
    assert "process_cpu_seconds" not in families(Metrics())
    assert "process_cpu_seconds" in families(Metrics(process_collector=True))


def test_custom_buckets() -> None:
    m = Metrics(buckets=(1.0, 2.0))
    m.cluster("c").request_started()
    m.cluster("c").request_done(200, 1.5)
    s = scrape(m)
    les = sorted(dict(lbl)["le"] for name, lbl in s if name == "meshpy_upstream_rq_duration_seconds_bucket")
    assert les == ["+Inf", "1.0", "2.0"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_fast_render_matches_registry_families() -> None:
    """render() writes text itself; it must say exactly what the registry's families say."""
    m = Metrics(process_collector=True)
    m.config_load(True, 'v"1\\')
    for i, name in enumerate(("plain", 'quo"te', "back\\slash", "new\nline", "ünï")):
        ls = m.listener(name)
        cs = m.cluster(name)
        ls.connection_opened()
        cs.connection_opened()
        cs.connect_failed()
        cs.pool_idle = i
        for code, seconds in ((200, 0.001 * i), (503, 0.3), (0, 70.0)):
            ls.request_started()
            ls.request_done(code, seconds)
            cs.request_started()
            cs.request_done(code, seconds)
        ls.request_started()

    fast = _samples(m.render()[0].decode())
    reference = _samples(generate_latest(m.registry).decode())
    # Process metrics (CPU, RSS) move between the two scrapes; compare their presence only.
    assert {k for k in fast if k[0].startswith("process_")} == {
        k for k in reference if k[0].startswith("process_")
    }
    ours = {k: v for k, v in fast.items() if not k[0].startswith("process_")}
    assert ours == {k: v for k, v in reference.items() if not k[0].startswith("process_")}
    assert len(ours) > 100

    fast_types = {f.name: f.type for f in text_string_to_metric_families(m.render()[0].decode())}
    ref_types = {f.name: f.type for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    assert fast_types == ref_types
