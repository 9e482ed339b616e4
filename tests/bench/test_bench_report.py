"""benchmarks/report.py on small synthetic results: medians, ratios, added latency, targets, README, chart."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import report

MAIN, LATENCY, OPEN = "http1-100B-c50", "http1-100B-c1", "http1-100B-open1000"
BIG = "http1-64KiB-c50"
SCENARIOS = [
    {"name": MAIN, "kind": "wrk", "title": "GET ~100 B, 50 connections", "connections": 50},
    {"name": BIG, "kind": "wrk", "title": "GET 64 KiB, 50 connections", "connections": 50},
    {"name": LATENCY, "kind": "wrk", "title": "GET ~100 B, 1 connection", "connections": 1},
    {"name": OPEN, "kind": "openloop", "title": "1,000 req/s open loop", "rate": 1000, "connections": 16},
    {"name": "tcp-1MiB", "kind": "tcp", "title": "TCP, 1 MiB transfers, 8 connections", "connections": 8},
]
RPS = {"direct": 60_000.0, "meshpy-uvloop": 27_000.0, "envoy": 20_000.0, "nginx": 30_000.0}
P50 = {"direct": 100.0, "meshpy-uvloop": 150.0, "envoy": 180.0, "nginx": 140.0}
CPU = {"meshpy-uvloop": 25.0, "envoy": 40.0, "nginx": 20.0}
SPREAD = (1.0, 0.9, 1.1)  # per-round factor, so min, median and max differ


def _run(rnd: int, name: str, scenario: dict[str, Any]) -> dict[str, Any]:
    factor = SPREAD[rnd - 1]
    p50 = P50[name] * factor
    run: dict[str, Any] = {
        "round": rnd, "contender": name, "scenario": scenario["name"], "ok": True, "error": None,
        "rps": RPS[name] * factor, "requests": int(RPS[name] * factor * 10), "errors": 0, "duration_s": 10.0,
        "p50_us": p50, "p90_us": p50 * 1.5, "p99_us": p50 * 3,
    }  # fmt: skip
    if name != "direct":
        run.update(cpu_s=5.0, cpu_us_per_req=CPU[name] * factor, rss_load_kb=40_960 * factor)
    if scenario["kind"] == "openloop":
        run["p999_us"] = p50 * 6
    if scenario["kind"] == "tcp":
        run["mib_per_s"] = RPS[name] * factor / 100
    return run


def make_results(
    contenders: tuple[str, ...] = ("direct", "meshpy-uvloop", "envoy", "nginx"),
) -> dict[str, Any]:
    return {
        "schema": 1, "date": "2026-11-30", "commit": "4074b1d", "dirty": True, "mode": "full", "rounds": 3,
        "machine": {"nproc": 2, "cpus_usable": 2, "cpu_model": "Test CPU 3000", "python": "3.11.2"},
        "versions": {"wrk": "4.2.0", "nginx": "1.22.1", "envoy": "1.31.0", "uvloop": "0.21.0"},
        "cpus": {"proxy": 1, "load": 0},
        "origin": {"kind": "nginx", "capacity": {MAIN: {"rps": 61_000.0}, BIG: {"rps": 62_000.0}}},
        "contenders": [{"name": n, "label": n, "is_proxy": n != "direct"} for n in contenders],
        "scenarios": SCENARIOS,
        "startup": [
            {"round": r, "contender": n, "ready_ms": 100.0 * r, "rss_idle_kb": 30_720}
            for r in (1, 2, 3) for n in contenders if n != "direct"
        ],
        "runs": [_run(r, n, s) for r in (1, 2, 3) for n in contenders for s in SCENARIOS],
    }  # fmt: skip


def set_figure(results: dict[str, Any], name: str, scenario: str, key: str, values: list[float]) -> None:
    """Give one contender's runs in one scenario the figure `key`, round 1, 2, 3 in order."""
    runs = sorted(
        (r for r in results["runs"] if r["contender"] == name and r["scenario"] == scenario),
        key=lambda r: r["round"],
    )
    assert len(runs) == len(values)
    for run, value in zip(runs, values, strict=True):
        run[key] = value


def met(results: dict[str, Any], name: str) -> bool | None:
    return next(t["met"] for t in report.targets(results) if t["name"] == name)


def test_medians_ratios_and_spread() -> None:
    results = make_results()
    set_figure(results, "meshpy-uvloop", MAIN, "rps", [28_300, 21_900, 25_000])
    set_figure(results, "direct", MAIN, "rps", [70_000, 50_000, 62_500])
    set_figure(results, "envoy", MAIN, "rps", [20_000, 21_000, 19_000])
    set_figure(results, "meshpy-uvloop", MAIN, "cpu_us_per_req", [40, 20, 31])
    cell = report.summarize(results)["scenarios"][MAIN]["meshpy-uvloop"]
    assert (cell["rps"], cell["rps_min"], cell["rps_max"]) == (25_000, 21_900, 28_300)
    assert cell["vs_direct"] == pytest.approx(0.4)
    assert cell["vs_envoy"] == pytest.approx(1.25)
    assert cell["cpu_us_per_req"] == 31
    md = report.render_markdown(results)
    assert "| meshpy-uvloop | 25,000 (21.9k\u201328.3k) | 0.40\u00d7 | 1.25\u00d7 | 31 | 40.0 |" in md
    assert "2026-11-30 · commit 4074b1d (+dirty) · mode full · 3 rounds · Test CPU 3000, 2 CPUs" in md
    assert "envoy 1.31.0, nginx 1.22.1, wrk 4.2.0, python 3.11.2, uvloop 0.21.0" in md
    startup = report.summarize(results)["startup"]["envoy"]
    assert startup == {"ready_ms": 200.0, "rss_idle_kb": 30_720}


def test_tcp_table_shows_transfers_and_mib_per_s() -> None:
    md = report.render_markdown(make_results())
    assert "| contender | transfers/s (min\u2013max) | MiB/s |" in md
    assert "| meshpy-uvloop | 27,000 (24.3k\u201329.7k) | 270 |" in md


def test_added_latency_is_the_median_of_per_round_differences() -> None:
    results = make_results()
    set_figure(results, "direct", LATENCY, "p50_us", [100, 200, 300])
    set_figure(results, "meshpy-uvloop", LATENCY, "p50_us", [400, 250, 310])
    # per round +300, +50, +10 -> median +50; the difference of the medians would be 310 - 200 = 110
    cells = report.summarize(results)["scenarios"][LATENCY]
    assert cells["meshpy-uvloop"]["added"]["p50_us"] == 50
    assert cells["meshpy-uvloop"]["p50_us"] == 310
    assert "added" not in cells["direct"]
    md = report.render_markdown(results)
    assert "| meshpy-uvloop | 310 | 225 | 450 | +50 |" in md
    assert "| direct | 200 | 150 | 300 | — | — | — |" in md


def test_open_loop_table_has_p999_and_the_c1_table_does_not() -> None:
    md = report.render_markdown(make_results())
    c1, open_loop = md.split(f"(`{LATENCY}`)")[1], md.split(f"(`{OPEN}`)")[1]
    assert "p99.9" not in c1.split("\n\n")[1]
    assert "| contender | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 µs |" in open_loop


@pytest.mark.parametrize(("meshpy_rps", "expected"), [(26_100.0, True), (25_900.0, False)])
def test_t1_flips_at_1_3_times_envoy(meshpy_rps: float, expected: bool) -> None:
    results = make_results()
    set_figure(results, "envoy", MAIN, "rps", [20_000] * 3)
    set_figure(results, "meshpy-uvloop", MAIN, "rps", [meshpy_rps] * 3)
    assert met(results, "T1") is expected
    verdict = "| met |" if expected else "| NOT met |"
    assert any(
        line.startswith("| T1:") and verdict in line for line in report.render_markdown(results).split("\n")
    )


@pytest.mark.parametrize(("cpu", "expected"), [(30.0, True), (30.5, False)])
def test_t2_flips_at_30_us_per_request(cpu: float, expected: bool) -> None:
    results = make_results()
    set_figure(results, "meshpy-uvloop", MAIN, "cpu_us_per_req", [cpu, cpu + 5, cpu - 5])
    assert met(results, "T2") is expected
    assert next(t for t in report.targets(results) if t["name"] == "T2")["measured"] == f"{cpu:.1f} µs/req"


@pytest.mark.parametrize(("p99", "expected"), [(290.0, True), (310.0, False)])
def test_t3_needs_both_added_p50_and_p99_within_envoys(p99: float, expected: bool) -> None:
    results = make_results()
    for name in ("direct", "envoy", "meshpy-uvloop"):
        set_figure(results, name, LATENCY, "p50_us", [100.0 + 50 * (name != "direct")] * 3)
    set_figure(results, "direct", LATENCY, "p99_us", [100.0] * 3)
    set_figure(results, "envoy", LATENCY, "p99_us", [300.0] * 3)  # added p99 +200
    set_figure(results, "meshpy-uvloop", LATENCY, "p99_us", [p99] * 3)  # added p99 +190 or +210
    target = next(t for t in report.targets(results) if t["name"] == "T3")
    assert target["met"] is expected
    assert target["measured"] == f"+50 / {p99 - 100:+.0f} vs Envoy +50 / +200 µs (p50 / p99)"


def test_missing_envoy_is_not_measured_never_met() -> None:
    results = make_results(("direct", "meshpy-uvloop", "nginx"))
    assert met(results, "T1") is None
    assert met(results, "T3") is None
    assert met(results, "T2") is True
    md = report.render_markdown(results)
    assert "| \u00d7 Envoy |" not in md and "| \u00d7 Envoy |" in report.render_markdown(make_results())
    t_lines = [line for line in md.split("\n") if line.startswith(("| T1:", "| T3:"))]
    assert len(t_lines) == 2 and all("| not measured |" in line and "| met |" not in line for line in t_lines)


def test_failed_runs_are_left_out() -> None:
    results = make_results()
    set_figure(results, "meshpy-uvloop", MAIN, "rps", [1_000_000, 20_000, 30_000])
    set_figure(results, "meshpy-uvloop", MAIN, "p50_us", [1.0, 200, 300])
    failed = next(r for r in results["runs"] if r["contender"] == "meshpy-uvloop" and r["scenario"] == MAIN)
    failed.update(ok=False, error="wrk: connection refused")
    del failed["cpu_us_per_req"]  # a failed run may lack figures
    cell = report.summarize(results)["scenarios"][MAIN]["meshpy-uvloop"]
    assert (cell["rounds"], cell["rps"], cell["rps_max"], cell["p50_us"]) == (2, 25_000, 30_000, 250)
    assert report.summarize(results)["failed"] == [
        {"round": 1, "contender": "meshpy-uvloop", "scenario": MAIN, "error": "wrk: connection refused"}
    ]
    assert f"- meshpy-uvloop on {MAIN}, round 1: wrk: connection refused" in report.render_markdown(results)


def test_origin_line_compares_capacity_with_the_best_proxy() -> None:
    results = make_results()
    assert (
        "origin: nginx, capacity 61,000 req/s ~100 B (best proxy 30,000), "
        "62,000 req/s 64 KiB (best proxy 30,000) — faster than every proxy: yes"
    ) in report.render_markdown(results)
    results["origin"]["capacity"][BIG]["rps"] = 29_000.0
    assert "faster than every proxy: no" in report.render_markdown(results)


def _write(tmp_path: Path, results: dict[str, Any]) -> Path:
    path = tmp_path / "2026-11-30-4074b1d.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


def test_readme_block_is_replaced_between_the_markers(tmp_path: Path) -> None:
    json_path = _write(tmp_path, make_results())
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# meshpy\n\n## Performance\n\n{report.BEGIN}\nold figures\n{report.END}\n\nafter\n",
        encoding="utf-8",
    )
    report.write_report(json_path, latest=False, readme=readme)
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(report.BEGIN + "\n")
    block, tail = rest.split(report.END + "\n")
    assert head == "# meshpy\n\n## Performance\n\n" and tail == "\nafter\n"
    assert "old figures" not in block
    assert "### Targets" in block and "| T2:" in block
    assert "![benchmark chart](benchmarks/results/latest.png)" in block.split("\n")
    assert "Results: `2026-11-30-4074b1d.json`" in block
    report.write_report(json_path, latest=False, readme=readme)
    assert readme.read_text(encoding="utf-8") == text


def test_readme_without_markers_fails_clearly_and_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = _write(tmp_path, make_results())
    readme = tmp_path / "README.md"
    readme.write_text(f"# meshpy\n\n{report.BEGIN}\nno end marker\n", encoding="utf-8")
    with pytest.raises(report.MarkerError, match="bench:end"):
        report.write_report(json_path, latest=False, readme=readme)
    assert report.main([str(json_path), "--readme", str(readme)]) != 0
    assert "bench:begin" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == f"# meshpy\n\n{report.BEGIN}\nno end marker\n"
    assert not json_path.with_suffix(".md").exists()


def test_png_is_written_and_copied_to_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    md, png = report.write_report(_write(tmp_path, make_results()), latest=True, readme=None)
    assert png == tmp_path / "2026-11-30-4074b1d.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert md.read_text(encoding="utf-8").startswith("# meshpy benchmarks, 2026-11-30\n")
    assert (tmp_path / "results" / "latest.png").read_bytes() == png.read_bytes()
    assert (tmp_path / "results" / "latest.md").read_text(encoding="utf-8") == md.read_text(encoding="utf-8")


def test_png_copes_with_missing_contenders(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = report.render_png(make_results(("meshpy-uvloop",)), tmp_path / "lonely.png")
    assert path is not None and path.read_bytes().startswith(b"\x89PNG")


def test_without_matplotlib_the_report_comes_out_and_the_png_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    md, png = report.write_report(_write(tmp_path, make_results()), latest=False, readme=None)
    assert png is None and md.exists()
    assert not (tmp_path / "2026-11-30-4074b1d.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().err
