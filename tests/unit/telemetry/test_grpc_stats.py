"""gRPC call counts by service, method and status, and their bound on label values."""

from __future__ import annotations

from meshpy.telemetry.grpc_stats import MAX_METHODS
from meshpy.telemetry.metrics import Metrics


def test_calls_are_counted_by_service_method_and_status() -> None:
    m = Metrics()
    stats = m.listener("web").grpc
    stats.record("/pkg.Svc/Get", 0, 0.002)
    stats.record("/pkg.Svc/Get", 0, 0.004)
    stats.record("/pkg.Svc/Get", 5, 0.001)
    value = m.registry.get_sample_value
    labels = {"listener": "web", "grpc_service": "pkg.Svc", "grpc_method": "Get"}
    assert value("meshpy_grpc_requests_total", labels | {"grpc_status": "0"}) == 2
    assert value("meshpy_grpc_requests_total", labels | {"grpc_status": "5"}) == 1
    assert value("meshpy_grpc_request_duration_seconds_count", labels) == 3
    assert value("meshpy_grpc_request_duration_seconds_bucket", labels | {"le": "0.0025"}) == 2
    text = m.render()[0]
    series = b'meshpy_grpc_requests_total{grpc_method="Get",grpc_service="pkg.Svc",grpc_status="0",'
    assert series + b'listener="web"} 2.0' in text


def test_label_values_are_bounded() -> None:
    m = Metrics()
    stats = m.listener("web").grpc
    for i in range(MAX_METHODS + 50):
        stats.record(f"/s/m{i}", 0, 0.001)
    assert len(stats.calls) == MAX_METHODS + 1  # the cap, and "other"
    value = m.registry.get_sample_value("meshpy_grpc_requests_total", {
        "listener": "web", "grpc_service": "other", "grpc_method": "other", "grpc_status": "0"})
    assert value == 50  # every call past the cap
