"""Turn one results JSON written by run.py into a Markdown report and a PNG chart beside it.

    python benchmarks/report.py RESULTS.json [--latest] [--readme README.md]

Every figure is a median over the rounds whose run has "ok": true, so one failed or disturbed round neither
sinks nor flatters a contender; the lowest and highest round printed next to a median show how far the
rounds disagreed. Added latency is computed per round (contender minus direct in the same round) before taking
the median, because both sides drift together with whatever else the machine was doing in that round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CHART_LINK = "![benchmark chart](benchmarks/results/latest.png)"

MAIN, LATENCY = "http1-100B-c50", "http1-100B-c1"  # what the targets and the chart are about
SUBJECT, ENVOY, DIRECT = "meshpy-uvloop", "envoy", "direct"
PERCENTILES = (("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99"), ("p999_us", "p99.9"))
FIGURES = ("rps", "mib_per_s", "cpu_us_per_req", "rss_load_kb", *(key for key, _ in PERCENTILES))
# The per-run figures of benchmarks/conn_bench.py whose median over rounds the Connections table shows.
CONN_FIGURES = ("idle_connections", "kib_per_conn_served", "kib_per_conn_bare", "conn_per_s",
                "cpu_us_per_conn", "cpu_busy", "normal_p50_us", "normal_p99_us")
SIZES = {"http1-100B-c50": "~100 B", "http1-64KiB-c50": "64 KiB"}
COLOURS = {
    DIRECT: "#9e9e9e",
    SUBJECT: "#1f77b4",
    "meshpy-asyncio": "#6baed6",
    ENVOY: "#d62728",
    "nginx": "#2ca02c",
}
DASH = "—"
TIMES, EN_DASH = "\N{MULTIPLICATION SIGN}", "\N{EN DASH}"  # spelled out: ruff flags them as look-alikes

Results = dict[str, Any]


class MarkerError(ValueError):
    """The README lacks the bench:begin/bench:end pair the report is written between."""


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _contenders(results: Results) -> list[str]:
    listed = [c["name"] for c in results.get("contenders", [])]
    return list(dict.fromkeys(listed + [r["contender"] for r in results.get("runs", [])]))


def _proxies(results: Results) -> list[str]:
    flags = {c["name"]: c.get("is_proxy", c["name"] != DIRECT) for c in results.get("contenders", [])}
    return [n for n in _contenders(results) if flags.get(n, n != DIRECT)]


def _is_latency(scenario: dict[str, Any]) -> bool:
    kind = scenario.get("kind")
    return kind == "openloop" or (kind == "wrk" and scenario.get("connections") == 1)


def summarize(results: Results) -> dict[str, Any]:
    """Medians over ok runs. The returned dict:

    - "contenders": names in the order of results["contenders"]; "labels": name -> label
    - "scenarios": scenario -> contender -> cell, only for pairs with at least one ok run. A cell holds
      "rounds" (ok runs), the medians of FIGURES (rps, mib_per_s, cpu_us_per_req, rss_load_kb, p50_us,
      p90_us, p99_us, p999_us; None where no run reported it), "rps_min"/"rps_max" over rounds,
      "vs_direct"/"vs_envoy" (ratio of median rps) and, except for direct, "added": percentile key ->
      median over rounds of (contender minus direct in the same round)
    - "startup": proxy -> {"ready_ms", "rss_idle_kb"} medians
    - "origin": {"kind", "faster" (bool, None if nothing to compare), "scenarios": scenario ->
      {"capacity_rps", "best_proxy", "best_proxy_rps", "faster"}}
    - "failed": [{"round", "contender", "scenario", "error"}] for runs without ok: true
    """
    ok: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for run in results.get("runs", []):
        if run.get("ok") is True:
            ok.setdefault((run["scenario"], run["contender"]), {})[run["round"]] = run
    names = _contenders(results)
    scenarios: dict[str, dict[str, dict[str, Any]]] = {}
    for sc in [s["name"] for s in results.get("scenarios", [])]:
        direct = ok.get((sc, DIRECT), {})
        cells: dict[str, dict[str, Any]] = {}
        for name in names:
            rounds = ok.get((sc, name))
            if not rounds:
                continue
            cell: dict[str, Any] = {"rounds": len(rounds)}
            cell.update({key: _median(r.get(key) for r in rounds.values()) for key in FIGURES})
            rps = [r["rps"] for r in rounds.values() if r.get("rps") is not None]
            cell["rps_min"], cell["rps_max"] = (min(rps), max(rps)) if rps else (None, None)
            if name != DIRECT:
                cell["added"] = {
                    key: _median(_diff(r.get(key), direct.get(n, {}).get(key)) for n, r in rounds.items())
                    for key, _ in PERCENTILES
                }
            cells[name] = cell
        for cell in cells.values():
            cell["vs_direct"] = _ratio(cell["rps"], cells.get(DIRECT, {}).get("rps"))
            cell["vs_envoy"] = _ratio(cell["rps"], cells.get(ENVOY, {}).get("rps"))
        scenarios[sc] = cells
    startup = {}
    for name in names:
        rows = [s for s in results.get("startup", []) if s.get("contender") == name]
        if rows:
            startup[name] = {key: _median(s.get(key) for s in rows) for key in ("ready_ms", "rss_idle_kb")}
    origin = results.get("origin") or {}
    proxies, capacities = _proxies(results), {}
    for sc, cap in (origin.get("capacity") or {}).items():
        cells = scenarios.get(sc, {})
        measured = [(cells[n]["rps"], n) for n in proxies if n in cells and cells[n]["rps"] is not None]
        best_rps, best = max(measured) if measured else (None, None)
        rps = cap.get("rps")
        faster = None if rps is None or best_rps is None else rps > best_rps
        capacities[sc] = {
            "capacity_rps": rps,
            "best_proxy": best,
            "best_proxy_rps": best_rps,
            "faster": faster,
        }
    verdicts = [c["faster"] for c in capacities.values() if c["faster"] is not None]
    failed = [
        {k: run.get(k) for k in ("round", "contender", "scenario", "error")}
        for run in results.get("runs", [])
        if run.get("ok") is not True
    ]
    return {
        "contenders": names,
        "labels": {c["name"]: c.get("label", c["name"]) for c in results.get("contenders", [])},
        "scenarios": scenarios,
        "startup": startup,
        "origin": {
            "kind": origin.get("kind"),
            "faster": all(verdicts) if verdicts else None,
            "scenarios": capacities,
        },
        "failed": failed,
    }


def _target(name: str, description: str, met: bool | None, measured: str) -> dict[str, Any]:
    return {"name": name, "description": description, "met": met, "measured": measured}


def targets(results: Results) -> list[dict[str, Any]]:
    """The three goals meshpy is held to; met is None when a figure it needs was not measured."""
    s = summarize(results)
    main, lat = s["scenarios"].get(MAIN, {}), s["scenarios"].get(LATENCY, {})
    me_rps, envoy_rps = main.get(SUBJECT, {}).get("rps"), main.get(ENVOY, {}).get("rps")
    cpu = main.get(SUBJECT, {}).get("cpu_us_per_req")
    me_add, envoy_add = lat.get(SUBJECT, {}).get("added", {}), lat.get(ENVOY, {}).get("added", {})
    keys = ("p50_us", "p99_us")
    out = []
    description = f"{SUBJECT} median req/s on {MAIN} ≥ 1.3 {TIMES} Envoy's"
    if me_rps is None or not envoy_rps:
        out.append(_target("T1", description, None, f"not measured (needs {SUBJECT} and {ENVOY} on {MAIN})"))
    else:
        ratio = me_rps / envoy_rps
        measured = f"{_n(me_rps)} vs {_n(envoy_rps)} req/s = {ratio:.3f}{TIMES}"
        out.append(_target("T1", description, ratio >= 1.3, measured))
    description = f"{SUBJECT} CPU per request on {MAIN} ≤ 30 µs"
    if cpu is None:
        out.append(_target("T2", description, None, f"not measured (needs {SUBJECT} CPU on {MAIN})"))
    else:
        # one decimal here, or 30.4 would read "30 µs/req" beside "NOT met"
        out.append(_target("T2", description, cpu <= 30, f"{cpu:,.1f} µs/req"))
    description = f"{SUBJECT} added p50 and p99 on {LATENCY} ≤ Envoy's"
    if any(me_add.get(k) is None or envoy_add.get(k) is None for k in keys):
        needs = f"{SUBJECT}, {ENVOY} and {DIRECT} on {LATENCY}"
        out.append(_target("T3", description, None, f"not measured (needs {needs})"))
    else:
        met = all(me_add[k] <= envoy_add[k] for k in keys)
        measured = "{} vs Envoy {} µs (p50 / p99)".format(
            " / ".join(_signed(me_add[k]) for k in keys), " / ".join(_signed(envoy_add[k]) for k in keys)
        )
        out.append(_target("T3", description, met, measured))
    return out


def summarize_connections(results: Results) -> dict[str, Any] | None:
    """results["connections"] (benchmarks/conn_bench.py) as medians over ok runs; None when it is absent.

    - "config": what conn_bench.py ran with (idle connections, churn, the normal client's rate...)
    - "cells": contender -> "rounds" (ok runs), the medians of CONN_FIGURES, "conn_per_s_min"/"_max",
      and the sums over those rounds of "churn_errors", "normal_errors" and "normal_requests"
    - "failed": [{"round", "contender", "error"}] for runs without ok: true
    """
    conns = results.get("connections")
    if not conns:
        return None
    ok: dict[str, list[dict[str, Any]]] = {}
    for run in conns.get("runs", []):
        if run.get("ok") is True:
            ok.setdefault(run["contender"], []).append(run)
    cells: dict[str, dict[str, Any]] = {}
    listed = _contenders(results)
    for name in [n for n in listed if n in ok] + [n for n in ok if n not in listed]:
        runs = ok[name]
        cell: dict[str, Any] = {"rounds": len(runs)}
        cell.update({key: _median(r.get(key) for r in runs) for key in CONN_FIGURES})
        rates = [r["conn_per_s"] for r in runs if r.get("conn_per_s") is not None]
        cell["conn_per_s_min"], cell["conn_per_s_max"] = (min(rates), max(rates)) if rates else (None, None)
        for key in ("churn_errors", "normal_errors", "normal_requests"):
            cell[key] = sum(int(r.get(key) or 0) for r in runs)
        cells[name] = cell
    failed = [{k: run.get(k) for k in ("round", "contender", "error")}
              for run in conns.get("runs", []) if run.get("ok") is not True]
    return {"config": conns.get("config", {}), "cells": cells, "failed": failed}


def _connections_section(results: Results, labels: dict[str, str], h: str) -> list[str]:
    """The "Connections" table (benchmarks/conn_bench.py); nothing when the results have no such runs."""
    s = summarize_connections(results)
    if s is None:
        return []
    cfg, cells = s["config"], s["cells"]
    n = cfg.get("connections")
    nginx = f" (nginx at most {_n(cfg['nginx_max_idle'])})" if "nginx" in cells and cfg.get(
        "nginx_max_idle") and n and n > cfg["nginx_max_idle"] else ""
    caption = (
        f"{_n(n)} idle HTTP/1.1 connections held open at once{nginx}: the proxy's RSS added per connection "
        f"once each has served one ~100 B GET (a keep-alive client between requests) and, before that, "
        f"while none has sent a byte. New connections/s: {cfg.get('churn', 'a churn client')}, "
        f"{_n(cfg.get('churn_connections'))} at a time "
        f"for {cfg.get('duration', 0):g} s from the load CPU, while a keep-alive client sends "
        f"{_n(cfg.get('normal_rate'))} req/s over {_n(cfg.get('normal_connections'))} connections "
        f"(`benchmarks/openloop.py`) and measures its latency and errors (`benchmarks/conn_bench.py`). "
        f"A proxy CPU well short of 100% busy means the load CPU set the rate, not the proxy."
    )
    head = [
        "proxy",
        "KiB per idle connection",
        "KiB, no request yet",
        f"new connections/s (min{EN_DASH}max)",
        "CPU µs per new connection",
        "proxy CPU busy",
        "keep-alive client p50 µs",
        "p99 µs",
        "errors",
        "churn errors",
    ]
    rows = [
        [
            labels.get(name, name),
            _kib(c["kib_per_conn_served"]),
            _kib(c["kib_per_conn_bare"]),
            _spread({"rps": c["conn_per_s"], "rps_min": c["conn_per_s_min"], "rps_max": c["conn_per_s_max"]}),
            _n(c["cpu_us_per_conn"]),
            DASH if c["cpu_busy"] is None else f"{c['cpu_busy']:.0%}",
            _n(c["normal_p50_us"]),
            _n(c["normal_p99_us"]),
            f"{c['normal_errors']:,} of {c['normal_requests']:,}",
            f"{c['churn_errors']:,}",
        ]
        for name, c in cells.items()
    ]
    out = [f"{h} Connections", "", caption, ""]
    out += _table(head, rows) if rows else ["No connection run succeeded.", ""]
    if s["failed"]:
        out += ["Failed connection runs, left out of every median:", ""]
        out += [
            f"- {f['contender']}, round {f['round']}: "
            f"{' '.join(str(f['error'] or 'no error given').split())[:160]}"
            for f in s["failed"]
        ]
        out.append("")
    return out


def render_connections(results: Results) -> str:
    """The Markdown report of a results JSON written by benchmarks/conn_bench.py on its own."""
    labels = {c["name"]: c.get("label", c["name"]) for c in results.get("contenders", [])}
    lines = [f"# meshpy connection benchmarks, {results.get('date', '?')}", "", _header(results), ""]
    lines += _connections_section(results, labels, "##")
    return "\n".join(lines).rstrip() + "\n"


def _n(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}"


def _kib(v: float | None) -> str:
    return DASH if v is None else f"{v:,.1f}"


def _signed(v: float | None) -> str:
    return DASH if v is None else f"{v:+,.0f}"


def _k(v: float) -> str:
    return f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:,.0f}"


def _x(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f}{TIMES}"


def _mib(kb: float | None) -> str:
    return DASH if kb is None else f"{kb / 1024:,.1f}"


def _spread(cell: dict[str, Any]) -> str:
    lo, hi = cell["rps_min"], cell["rps_max"]
    if cell["rps"] is None or lo is None or lo == hi:
        return _n(cell["rps"])
    return f"{_n(cell['rps'])} ({_k(lo)}{EN_DASH}{_k(hi)})"


def _table(head: list[str], rows: list[list[str]], numbers: bool = True) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|---|" + ("--:|" if numbers else "---|") * (len(head) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def _header(results: Results) -> str:
    m, v = results.get("machine", {}), dict(results.get("versions", {}))
    v.setdefault("python", m.get("python"))
    commit = str(results.get("commit", "?")) + (" (+dirty)" if results.get("dirty") else "")
    tools = ", ".join(f"{k} {v[k]}" for k in ("envoy", "nginx", "wrk", "python", "uvloop") if v.get(k))
    cpus = results.get("cpus") or {}
    pinning = ""
    if {"proxy", "load"} <= set(cpus):
        pinning = f", proxy on CPU {cpus['proxy']}, load on CPU {cpus['load']}"
    machine = f"{m.get('cpu_model', '?')}, {m.get('nproc', '?')} CPUs{pinning}"
    rounds = results.get("rounds", "?")
    return (
        f"{results.get('date', '?')} · commit {commit} · mode {results.get('mode', '?')} · "
        f"{rounds} round{'' if rounds == 1 else 's'} · {machine} · {tools}"
    )


def _intro(results: Results, s: dict[str, Any]) -> list[str]:
    origin = s["origin"]
    parts = [
        f"{_n(c['capacity_rps'])} req/s {SIZES.get(sc, sc)}"
        + (f" (best proxy {_n(c['best_proxy_rps'])})" if c["best_proxy"] else "")
        for sc, c in origin["scenarios"].items()
    ]
    verdict = {True: "yes", False: "no", None: "unknown"}[origin["faster"]]
    capacity = ", ".join(parts) if parts else "not measured"
    origin_line = f"origin: {origin['kind'] or '?'}, capacity {capacity} — faster than every proxy: {verdict}"
    return [_header(results), "", origin_line, ""]


def _latency_table(cells: dict[str, dict[str, Any]], present: list[str], labels: dict[str, str]) -> list[str]:
    pcts = [(k, lbl) for k, lbl in PERCENTILES if any(c.get(k) is not None for c in cells.values())]
    head = ["contender", *(f"{lbl} µs" for _, lbl in pcts), *(f"added {lbl} µs" for _, lbl in pcts)]
    rows = [
        [
            labels.get(n, n),
            *(_n(cells[n][k]) for k, _ in pcts),
            *(_signed(cells[n]["added"][k]) if n != DIRECT else DASH for k, _ in pcts),
        ]
        for n in present
    ]
    return _table(head, rows)


def _throughput_table(
    cells: dict[str, dict[str, Any]], present: list[str], labels: dict[str, str], tcp: bool, envoy: bool
) -> list[str]:
    unit = "transfer" if tcp else "req"
    head = [
        "contender",
        f"{'transfers' if tcp else 'req'}/s (min{EN_DASH}max)",
        *(["MiB/s"] if tcp else []),
        f"{TIMES} direct",
        *([f"{TIMES} Envoy"] if envoy else []),
        f"CPU µs/{unit}",
        "RSS under load (MiB)",
    ]
    rows = [
        [
            labels.get(n, n),
            _spread(c),
            *([_n(c["mib_per_s"])] if tcp else []),
            _x(c["vs_direct"]),
            *([_x(c["vs_envoy"])] if envoy else []),
            _n(c["cpu_us_per_req"]),
            _mib(c["rss_load_kb"]),
        ]
        for n in present
        for c in [cells[n]]
    ]
    return _table(head, rows)


def _tables(results: Results, s: dict[str, Any], h: str) -> list[str]:
    names, labels, out = s["contenders"], s["labels"], []
    for latency in (False, True):
        out += [f"{h} {'Latency' if latency else 'Throughput'}", ""]
        for sc in [sc for sc in results.get("scenarios", []) if _is_latency(sc) == latency]:
            cells = s["scenarios"].get(sc["name"])
            if not cells:
                continue
            present = [n for n in names if n in cells]
            out += [f"{h}# {sc.get('title', sc['name'])} (`{sc['name']}`)", ""]
            if latency:
                out += _latency_table(cells, present, labels)
            else:
                out += _throughput_table(cells, present, labels, sc.get("kind") == "tcp", ENVOY in names)
    if s["startup"]:
        rows = [
            [labels.get(n, n), _n(v["ready_ms"]), _mib(v["rss_idle_kb"])] for n, v in s["startup"].items()
        ]
        out += [f"{h} Startup", "", *_table(["proxy", "ready (ms)", "idle RSS (MiB)"], rows)]
    out += _connections_section(results, labels, h)
    verdicts = {True: "met", False: "NOT met", None: "not measured"}
    rows = [[f"{t['name']}: {t['description']}", verdicts[t["met"]], t["measured"]] for t in targets(results)]
    out += [f"{h} Targets", "", *_table(["target", "result", "measured"], rows, numbers=False)]
    if s["failed"]:
        out += ["Failed runs, left out of every median:", ""]
        out += [
            f"- {f['contender']} on {f['scenario']}, round {f['round']}: "
            f"{' '.join(str(f['error'] or 'no error given').split())[:120]}"
            for f in s["failed"]
        ]
        out.append("")
    return out


def render_markdown(results: Results) -> str:
    s = summarize(results)
    lines = [
        f"# meshpy benchmarks, {results.get('date', '?')}",
        "",
        *_intro(results, s),
        *_tables(results, s, "##"),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _readme_block(results: Results, json_path: Path, readme: Path) -> str:
    s = summarize(results)
    try:
        shown = json_path.resolve().relative_to(readme.resolve().parent).as_posix()
    except ValueError:
        shown = json_path.name
    return "\n".join(
        [*_intro(results, s), *_tables(results, s, "###"), CHART_LINK, "", f"Results: `{shown}`"]
    )


def replace_block(text: str, block: str) -> str:
    """text with the lines between the BEGIN and END marker lines replaced by block."""
    lines = text.splitlines(keepends=True)
    stripped = [line.strip() for line in lines]
    if stripped.count(BEGIN) != 1 or stripped.count(END) != 1 or stripped.index(BEGIN) > stripped.index(END):
        raise MarkerError(f"needs exactly one line {BEGIN!r} followed later by one line {END!r}")
    begin, end = stripped.index(BEGIN), stripped.index(END)
    return "".join(lines[: begin + 1]) + "\n" + block.strip("\n") + "\n\n" + "".join(lines[end:])


def _bar_text(ax: Axes, x: float, y: float, text: str) -> None:
    ax.annotate(
        text,
        (x, y),
        xytext=(0, 3 if y >= 0 else -3),
        textcoords="offset points",
        ha="center",
        va="bottom" if y >= 0 else "top",
        fontsize=8,
    )


def _throughput_panel(ax: Axes, s: dict[str, Any]) -> None:
    cells = s["scenarios"].get(MAIN, {})
    names = [n for n in s["contenders"] if cells.get(n, {}).get("rps") is not None]
    ax.set_title(f"Throughput, {MAIN}\n(median of rounds, bars span min{EN_DASH}max)", fontsize=10)
    ax.set_ylabel("requests/s")
    ax.yaxis.set_major_formatter("{x:,.0f}")
    if not names:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        return
    med = [cells[n]["rps"] for n in names]
    err = [
        [m - cells[n]["rps_min"] for m, n in zip(med, names, strict=True)],
        [cells[n]["rps_max"] - m for m, n in zip(med, names, strict=True)],
    ]
    ax.bar(range(len(names)), med, yerr=err, capsize=4, color=[COLOURS.get(n, "#7f7f7f") for n in names])
    for i, n in enumerate(names):
        _bar_text(ax, i, cells[n]["rps_max"], _n(cells[n]["rps"]))
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.margins(y=0.12)


def _latency_panel(ax: Axes, results: Results, s: dict[str, Any]) -> None:
    cells = s["scenarios"].get(LATENCY, {})
    names = [n for n in _proxies(results) if n in cells]
    ax.set_title(f"Added latency over direct, {LATENCY}\n(median of per-round differences)", fontsize=10)
    ax.set_ylabel("latency added over direct (µs)")
    if not names or DIRECT not in cells:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        return
    width = 0.38
    series = ((-width / 2, PERCENTILES[0], "#4c72b0"), (width / 2, PERCENTILES[2], "#dd8452"))
    for offset, (key, label), colour in series:
        values = [cells[n]["added"][key] for n in names]
        xs = [i + offset for i, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        ax.bar(xs, ys, width, label=label, color=colour)
        for x, y in zip(xs, ys, strict=True):
            _bar_text(ax, x, y, _signed(y))
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.legend()
    ax.margins(y=0.15)


def render_png(results: Results, path: Path) -> Path | None:
    """Draw the chart to path; None (and a notice) when matplotlib is missing, so a report still comes out."""
    try:
        import matplotlib
    except ImportError:
        print("report: matplotlib is not installed, no chart written", file=sys.stderr)
        return None
    matplotlib.use("Agg")  # no display on a benchmark host, and no GUI toolkit wanted
    import matplotlib.pyplot as plt

    s = summarize(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    try:
        _throughput_panel(left, s)
        _latency_panel(right, results, s)
        commit = str(results.get("commit", "?")) + (" (+dirty)" if results.get("dirty") else "")
        fig.suptitle(f"meshpy benchmarks, {results.get('date', '?')}, commit {commit}")
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def write_report(json_path: Path, latest: bool, readme: Path | None) -> tuple[Path, Path | None]:
    """Write <stem>.md and <stem>.png beside json_path; raises MarkerError before writing anything if the
    README lacks its markers. The README links benchmarks/results/latest.png, so use readme with latest."""
    results = json.loads(json_path.read_text(encoding="utf-8"))
    new_readme = None
    if readme is not None:
        try:
            new_readme = replace_block(
                readme.read_text(encoding="utf-8"), _readme_block(results, json_path, readme)
            )
        except MarkerError as e:
            raise MarkerError(f"{readme}: {e}; README left unchanged") from None
    md = json_path.with_suffix(".md")
    md.write_text(render_markdown(results), encoding="utf-8")
    png = render_png(results, json_path.with_suffix(".png"))
    if latest:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(md, RESULTS_DIR / "latest.md")
        if png is not None:
            shutil.copyfile(png, RESULTS_DIR / "latest.png")
        else:  # an older chart beside newer numbers would mislead more than a missing one
            (RESULTS_DIR / "latest.png").unlink(missing_ok=True)
    if readme is not None and new_readme is not None:
        readme.write_text(new_readme, encoding="utf-8")
    return md, png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Markdown report and PNG chart of a results JSON.")
    parser.add_argument("results", type=Path, help="results JSON written by benchmarks/run.py")
    parser.add_argument("--latest", action="store_true", help="also copy them to benchmarks/results/latest.*")
    parser.add_argument("--readme", type=Path, help=f"replace what is between {BEGIN} and {END} here")
    args = parser.parse_args(argv)
    try:
        md, png = write_report(args.results, args.latest, args.readme)
    except (MarkerError, OSError, json.JSONDecodeError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    print(md)
    if png is not None:
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
