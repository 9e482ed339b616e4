"""The whole benchmark suite in its smoke mode: real processes, real wrk, every scenario for 1 s.

This is the check that `make bench` still works end to end (configs generated, contenders started and
stopped, tools parsed, results written, report rendered); the figures themselves are not judged here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian package wrk)")


def test_smoke_run_writes_results_and_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=110, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = tmp_path.glob("*-smoke.json")
    results = json.loads(path.read_text())

    assert results["schema"] == 1 and results["mode"] == "smoke"
    assert [c["name"] for c in results["contenders"]] == ["direct", "meshpy-uvloop"]
    names = [s["name"] for s in results["scenarios"]]
    assert names == ["http1-100B-c50", "http1-64KiB-c50", "http1-100B-c1", "http1-100B-open1000", "tcp-1MiB"]
    assert results["origin"]["capacity"]["http1-100B-c50"]["rps"] > 0

    runs = {(r["contender"], r["scenario"]): r for r in results["runs"]}
    assert len(runs) == 2 * len(names)
    for (contender, scenario), run in runs.items():
        assert run["ok"], (contender, scenario, run.get("error"))
        assert run["rps"] > 0 and run["requests"] > 0
        if contender == "meshpy-uvloop":
            # The proxy's own CPU and memory come from /proc; direct has no process of its own.
            assert run["cpu_s"] > 0 and run["cpu_us_per_req"] > 0 and run["rss_load_kb"] > 10_000
        else:
            assert "cpu_s" not in run
    latency = runs[("meshpy-uvloop", "http1-100B-c1")]
    assert 0 < latency["p50_us"] <= latency["p99_us"]
    openloop = runs[("meshpy-uvloop", "http1-100B-open1000")]
    assert openloop["p50_us"] <= openloop["p99_us"] <= openloop["p999_us"]
    assert sum(n for _, n in openloop["raw"]["latencies_us"]) == openloop["requests"]
    tcp = runs[("meshpy-uvloop", "tcp-1MiB")]
    assert tcp["raw"]["bytes"] == tcp["requests"] * (1 << 20)

    [startup] = results["startup"]
    assert startup["contender"] == "meshpy-uvloop" and startup["ready_ms"] > 0 and startup["rss_idle_kb"] > 0

    report = path.with_suffix(".md").read_text()
    assert "meshpy, uvloop" in report
    # Envoy is not in a smoke run, so the targets that compare with it cannot be claimed.
    assert "not measured" in report


def test_policies_benchmark_runs_and_writes_its_figure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "policies.py"), "--duration", "1", "--rounds", "1",
         "--connections", "8", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = tmp_path.glob("policies-*.json")
    result = json.loads(path.read_text())
    assert result["plain_rps"] > 0 and result["guarded_rps"] > 0
    assert result["ratio"] == round(result["guarded_rps"] / result["plain_rps"], 3)
    assert result["met"] == (result["guarded_rps"] / result["plain_rps"] >= 0.9)
    assert "of plain" in proc.stdout


def test_sidecar_benchmark_runs_through_two_sidecars(tmp_path: Path) -> None:
    """The sidecar benchmark builds its two pods, measures direct and through sidecar pairs, and cleans up
    after itself (no namespace of its own left behind)."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables-restore", "setpriv")):
        pytest.skip("needs root, ip, iptables and setpriv (network namespaces)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sidecar_bench.py"), "--duration", "1", "--rounds", "1",
         "--connections", "4", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = tmp_path.glob("sidecar-*.json")
    result = json.loads(path.read_text())
    summary = result["summary"]
    assert summary["direct"]["rps"] > 0 and summary["meshpy"]["rps"] > 0
    assert summary["meshpy"]["sidecar_cpu_us_per_rq"] > 0  # the sidecars did the work
    assert summary["direct"]["sidecar_cpu_us_per_rq"] == 0
    assert "of direct" in proc.stdout
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert not re.search(r"^mpb\d+-", namespaces, re.MULTILINE), namespaces


def test_h2_ceiling_benchmark_reports_both_sides() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "micro_h2.py"), "--requests", "500"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"server ([\d.]+) us, client ([\d.]+) us, both ([\d.]+) us", proc.stdout)
    assert found is not None, proc.stdout
    server, client, both = map(float, found.groups())
    assert server > 0 and client > 0 and both == pytest.approx(server + client, abs=0.2)


@pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("nginx") is None,
                    reason="h2load (nghttp2-client) and nginx are needed")
def test_http2_benchmark_runs_each_codec(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "h2_bench.py"), "--requests", "400", "--rounds", "1",
         "--no-envoy", "--no-pin", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = tmp_path.glob("http2-*.json")
    summary = json.loads(path.read_text())["summary"]
    for scenario in ("h2-get", "grpc-unary"):
        for codec in ("nghttp2", "h2"):
            s = summary[scenario][f"meshpy-{codec}"]
            assert s["rps"] > 0 and s["cpu_us"] > 0 and "over_envoy" not in s
    assert "grpc-unary: meshpy-nghttp2" in proc.stdout
