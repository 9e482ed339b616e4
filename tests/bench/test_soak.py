"""The soak under chaos (benchmarks/soak.py, `make soak` for 30 minutes) in its 2-minute version: real
processes (three origins, `meshpy control`, one `meshpy run` on a file and xDS), mixed traffic at
200 req/s while origins restart, the file reloads, the control plane pushes and restarts and clients reset
requests. One run per module; each requirement is a test of its own, read from the run's JSON report.
See docs/soak.md."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DURATION = 120
# The soak's own bounds after the traffic: final versions (20 s), pools idling out (30 s), stops.
RUN_TIMEOUT = DURATION + 150

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 30)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("soak")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--duration", str(DURATION), "--out", str(out),
         "--quiet"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)
    found = list(out.glob("soak-*.json"))
    assert proc.returncode in (0, 1) and len(found) == 1, \
        f"the soak did not run (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(found[0].read_text())
    data["_stdout"] = proc.stdout
    data["_rc"] = proc.returncode
    yield data


def _why(report: dict[str, Any]) -> str:
    return f"{report['_stdout'][-4000:]}\nfirst failures: {report['failure_examples'][:10]}"


def test_the_chaos_happened_and_every_protocol_carried_traffic(report: dict[str, Any]) -> None:
    counts = report["chaos"]["counts"]
    assert counts.get("origin-restart", 0) >= 8 and counts.get("xds-push", 0) >= 20, counts
    assert counts.get("file-reload", 0) >= 12 and counts.get("control-restart", 0) >= 2, counts
    assert report["chaos"]["errors"] == []
    for name, t in report["protocols"].items():
        assert t["ok"] > 0.9 * t["sent"] > 0, (name, t)
    assert report["proxy_counters"]["meshpy_upstream_rq_retry_total"] > 0  # the retries had work to do


def test_no_idempotent_request_is_lost(report: dict[str, Any]) -> None:
    lost = report["requirements"]["lost"]
    assert lost["ok"] and lost["lost"] == 0, f"lost per protocol {lost['per_protocol']}\n{_why(report)}"


def test_rss_grows_less_than_5_percent_after_the_warm_up(report: dict[str, Any]) -> None:
    rss = report["requirements"]["rss"]
    assert rss["ok"], f"RSS {rss}"


def test_file_descriptors_come_back_to_the_baseline(report: dict[str, Any]) -> None:
    fds = report["requirements"]["fds"]
    assert fds["ok"], f"fds {fds['baseline']} -> {fds['end']}: {fds['leftover']}"


def test_the_proxy_survives_and_follows_both_config_sources(report: dict[str, Any]) -> None:
    assert report["proxy_exit"] is None, _why(report)
    assert report["requirements"]["configs"]["ok"], report["requirements"]["configs"]
    assert report["_rc"] == (0 if report["ok"] else 1)


def test_active_request_and_connection_gauges_come_back_to_zero(report: dict[str, Any]) -> None:
    assert not any(report["gauges_idle"].values()), report["gauges_idle"]


def test_the_proxy_logs_no_error(report: dict[str, Any]) -> None:
    assert report["proxy_log_errors"] == []
