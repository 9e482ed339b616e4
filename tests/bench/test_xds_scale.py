"""The control plane's scale benchmark end to end, at a size that takes seconds: real processes (the
control plane and one client worker), a real change, the JSON written. The figures are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ten_clients_connect_and_ack_a_change(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "xds_scale.py"), "--nodes", "10", "--workers", "1",
         "--changes", "1", "--no-pin", "--connect-timeout", "15", "--converge-timeout", "10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = tmp_path.glob("xds-scale-*.json")
    results = json.loads(path.read_text())
    assert results["stopped"] is None
    [size] = results["sizes"]
    assert size["nodes"] == 10 and size["connected"] == 10 and size["configured"] == 10
    assert size["rss_connected_kb"] > 0 and size["connect_s"] > 0
    [change] = size["changes"]
    assert change["not_converged"] == 0 and len(change["latency_ms"]) == 10
    assert 0 < change["latency_ms"][0] <= change["latency_ms"][-1] < 10_000
    # An endpoint change re-sends EDS alone (a version per type): one push and one ACK per node.
    assert size["metrics_delta"]["pushes_total"] == size["metrics_delta"]["acks_total"] == 10
    assert "| 10 |" in proc.stdout
