"""The authorization counters (meshpy.telemetry.rbac_stats): one object per listener and stat prefix,
kept across reloads, exported as meshpy_rbac_*_total{listener, stat_prefix} by both exports."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshpy.telemetry.metrics import Metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if "rbac" in s.name}


def test_counters_by_listener_and_prefix() -> None:
    m = Metrics()
    assert _samples(m.render()[0].decode()) == {}  # nothing configured: no families at all
    web = m.listener("web")
    counters = web.rbac_counters("enf_")
    assert web.rbac_counters("enf_") is counters  # bound once, the same object after
    counters.allowed += 2
    counters.denied += 1
    web.rbac_counters("").shadow_denied += 3
    assert m.listener("web").rbac_counters("enf_").allowed == 2  # the listener's stats outlive reloads
    got = _samples(m.render()[0].decode())
    assert got[("meshpy_rbac_allowed_total", (("listener", "web"), ("stat_prefix", "enf_")))] == 2
    assert got[("meshpy_rbac_denied_total", (("listener", "web"), ("stat_prefix", "enf_")))] == 1
    assert got[("meshpy_rbac_shadow_denied_total", (("listener", "web"), ("stat_prefix", "")))] == 3
    assert got[("meshpy_rbac_shadow_allowed_total", (("listener", "web"), ("stat_prefix", "")))] == 0
    assert got == _samples(generate_latest(m.registry).decode())
