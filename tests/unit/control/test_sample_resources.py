"""config/control, the sample resource directory of `meshpy control`, loads and forms a publishable
snapshot."""

from __future__ import annotations

from pathlib import Path

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, check, make_snapshot
from control.sources.envoy_dir import load_envoy_dir

SAMPLE = Path(__file__).resolve().parents[3] / "config" / "control"


def test_sample_directory_is_a_consistent_snapshot() -> None:
    resources = load_envoy_dir(SAMPLE)
    assert {t: sorted(r) for t, r in resources.items()} == {
        LISTENER: ["web"], ROUTE: ["local"], CLUSTER: ["demo"], ENDPOINT: ["demo"], SECRET: []}
    assert check(make_snapshot(resources)) == []
