"""Process-wide bootstrap settings, run by real Envoy and by meshpy: the format of the proxy's own log
lines (application_log_config) and the outlier detection event log (cluster_manager.outlier_detection
.event_log_path), whose lines must parse as Envoy's OutlierDetectionEvent and say the same."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.data.cluster.v3 import outlier_detection_event_pb2
from google.protobuf import json_format
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, envoy_http_bootstrap, eventually, free_port, http

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="needs envoy")


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoUpstream]:
    d = DemoUpstream(free_port()).start()
    yield d
    d.stop()


def _with(config: str, extra: str) -> str:
    return extra + config


def test_outlier_events_as_envoy(demo: DemoUpstream, tmp_path: Path) -> None:
    events = []
    for envoy in (True, False):
        log = tmp_path / f"events-{envoy}.log"
        admin, port = free_port(), free_port()
        config = _with(envoy_http_bootstrap(admin, port, demo.port, cluster=(
            "outlier_detection: { consecutive_5xx: 2, interval: 10s, base_ejection_time: 30s, "
            "max_ejection_percent: 100 }")),
            f"cluster_manager: {{ outlier_detection: {{ event_log_path: {log} }} }}\n")
        proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
        try:
            for _ in range(2):
                assert http(port, path="/status/503").status == 503
            eventually(lambda: log.exists() and log.read_text().strip(), "the ejection is logged")  # noqa: B023
        finally:
            proc.stop()
        lines = log.read_text().splitlines()
        parsed = [json_format.Parse(line, outlier_detection_event_pb2.OutlierDetectionEvent())
                  for line in lines]
        events.append([(json_format.MessageToDict(e, preserving_proto_field_name=True,
                                                  always_print_fields_with_no_presence=True),
                        list(json.loads(line))) for e, line in zip(parsed, lines, strict=True)])
    theirs, ours = events
    assert len(ours) == len(theirs) == 1
    (envoy_event, envoy_keys), (event, keys) = theirs[0], ours[0]
    assert keys == envoy_keys  # the same fields written, in the same order
    for volatile in ("timestamp", "upstream_url"):
        envoy_event.pop(volatile)
        event.pop(volatile)
    assert event == envoy_event
    assert event["type"] == "CONSECUTIVE_5XX" and event["action"] == "EJECT" and event["enforced"] is True


ISTIO = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t"
ISTIO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\t(info|warning|error|debug)\t"
                        r"envoy \S+ \S+:\d+\t.+\tthread=\d+$")


def test_application_log_format_as_envoy(demo: DemoUpstream) -> None:
    """Istio's pattern: the lines of both proxies have its shape (the messages are each proxy's own)."""
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        config = _with(envoy_http_bootstrap(admin, port, demo.port),
                       f"application_log_config: {{ log_format: {{ text_format: {json.dumps(ISTIO)} }} }}\n")
        proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
        try:
            assert http(port, path="/").status == 200
            text = proc.logs()
        finally:
            proc.stop()
        logged = [line for line in text.splitlines() if line.strip()]
        assert logged, "nothing logged"
        shaped = [line for line in logged if ISTIO_LINE.match(line)]
        # Envoy's first lines come before the bootstrap is read; every later one has the shape.
        assert shaped and logged[-1] in shaped, logged[-5:]


def test_json_application_log_format(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    config = _with(envoy_http_bootstrap(admin, port, demo.port), "application_log_config: { log_format: "
                   "{ json_format: { level: '%l', logger: '%n', message: '%v', at: '%Y-%m-%d' } } }\n")
    proc = Proxy(config, admin).start()
    proc.stop()
    lines = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    assert lines and all(set(x) == {"level", "logger", "message", "at"} for x in lines)
    assert any(x["level"] == "info" and "live" in x["message"] for x in lines)


def test_bad_patterns_are_config_errors(tmp_path: Path) -> None:
    import subprocess
    import sys
    path = tmp_path / "bad.yaml"
    path.write_text("application_log_config: { log_format: { text_format: '%Q %v' } }\n" +
                    envoy_http_bootstrap(free_port(), free_port(), 9))
    done = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0
    assert "application_log_config.log_format.text_format: %Q is not a log pattern flag" in \
        done.stdout + done.stderr
