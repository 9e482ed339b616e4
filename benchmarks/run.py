"""The benchmark suite: every contender against the same origin, interleaved over rounds, in one run.

    python benchmarks/run.py             # the full suite (make bench), about 15 minutes
    python benchmarks/run.py --quick     # direct, meshpy and Envoy, two scenarios (make bench-quick), < 2 min
    python benchmarks/run.py --smoke     # direct and meshpy, every scenario for 1 s (the test suite's check)

Placement: each proxy runs alone on the proxy CPU (default 1); the origin, the TCP source and the load
generators share the load CPU (default 0). Contenders run interleaved (A B C D, A B C D, ...) so that
the machine's drift over the run hits them alike, and each one is started afresh every round, which also
gives its time to /ready and its idle RSS once per round.

The full suite then measures connection capacity (benchmarks/conn_bench.py): each proxy's RSS per idle
downstream connection and the new connections per second it accepts while a keep-alive client is served,
interleaved over the same number of rounds, each proxy started afresh again (--no-conns leaves it out).
And it measures HTTPS through meshpy and Envoy (benchmarks/tls_bench.py's suite: keep-alive, full and resumed
handshakes, HTTP/2 over TLS, 3 s per run, about 2 minutes), into results["tls"] and
tls-<date>-<commit>-suite.json and .md beside the suite's results (--no-tls leaves it out).

Writes benchmarks/results/<date>-<commit>.json (machine, versions, every raw run) and, through report.py,
the Markdown table and PNG chart beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conn_bench
import openloop
import tcp_bench
import tls_bench
from contenders import Contender, Origin, all_contenders, nginx_build_options, start_origin, start_tcp_source
from tools import (
    ROOT,
    Procs,
    RssSampler,
    WrkParseError,
    cpu_seconds,
    envoy_binary,
    git_commit,
    log_histogram,
    machine_info,
    missing_tools,
    parse_wrk,
    run_tool,
    sigterm_as_exit,
    tool_versions,
    wrk_argv,
)

RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # wrk | openloop | tcp
    title: str
    size: str = "small"  # which origin path (small ~100 B, large 64 KiB); unused by tcp
    connections: int = 50
    duration: float = 10.0
    rate: float = 0.0  # openloop only

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "title": self.title,
                               "connections": self.connections, "duration_s": self.duration}
        if self.kind == "openloop":
            out["rate"] = self.rate
        return out


def scenarios(mode: str, duration: float | None) -> list[Scenario]:
    """The scenarios of a mode; `duration` overrides every scenario's length."""
    if mode == "quick":
        chosen = [Scenario("http1-100B-c50", "wrk", "HTTP/1.1 GET ~100 B, 50 connections", duration=3),
                  Scenario("http1-100B-c1", "wrk", "HTTP/1.1 GET ~100 B, 1 connection (latency)",
                           connections=1, duration=3)]
    else:
        smoke = mode == "smoke"
        chosen = [
            Scenario("http1-100B-c50", "wrk", "HTTP/1.1 GET ~100 B, 50 connections", duration=8),
            Scenario("http1-64KiB-c50", "wrk", "HTTP/1.1 GET 64 KiB, 50 connections", size="large",
                     duration=8),
            Scenario("http1-100B-c1", "wrk", "HTTP/1.1 GET ~100 B, 1 connection (latency)",
                     connections=1, duration=8),
            Scenario("http1-100B-open1000", "openloop",
                     "HTTP/1.1 GET ~100 B, 1,000 req/s open loop over 16 connections",
                     connections=16, duration=10, rate=200 if smoke else 1000),
            Scenario("tcp-1MiB", "tcp", "TCP proxy, 1 MiB transfers, 8 connections", connections=8,
                     duration=5),
        ]
        if smoke:
            duration = duration or 1.0
    if duration is not None:
        chosen = [Scenario(s.name, s.kind, s.title, s.size, s.connections, duration, s.rate) for s in chosen]
    return chosen


# --- one measurement ----------------------------------------------------------------------------------

def measure(scn: Scenario, contender: Contender, origin: Origin, load_cpu: int | None) -> dict[str, Any]:
    """Runs one scenario against one started contender; the proxy's CPU and RSS are read from /proc."""
    port = contender.tcp_port if scn.kind == "tcp" else contender.http_port
    if port is None:
        return {"ok": False, "error": "no TCP listener for this contender (TCP source or nginx stream "
                                      "module missing)"}
    cpu0 = cpu_seconds(contender.pids)
    with RssSampler(contender.pids) as rss:
        try:
            out = _drive(scn, port, origin, load_cpu)
        except (RuntimeError, WrkParseError, OSError, ValueError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if contender.is_proxy:
        cpu = cpu_seconds(contender.pids) - cpu0
        out["cpu_s"] = round(cpu, 3)
        out["cpu_us_per_req"] = round(cpu * 1e6 / out["requests"], 2) if out["requests"] else None
        out["rss_load_kb"] = rss.max_kb
    out["ok"] = out["requests"] > 0 and out["errors"] <= out["requests"] // 1000
    out["error"] = None if out["ok"] else \
        f"{out['errors']} errors (socket errors or non-2xx/3xx answers) in {out['requests']} requests"
    return out


def _drive(scn: Scenario, port: int, origin: Origin, load_cpu: int | None) -> dict[str, Any]:
    if scn.kind == "wrk":
        url = f"http://127.0.0.1:{port}{origin.paths[scn.size]}"
        argv = wrk_argv(url, scn.connections, max(1, round(scn.duration)), latency=scn.connections == 1)
        rc, text = run_tool(argv, timeout=scn.duration + 30, cpu=load_cpu)
        if rc != 0:
            raise RuntimeError(f"wrk exited {rc}: {text.strip()[-300:]}")
        w = parse_wrk(text)
        out: dict[str, Any] = {k: w[k] for k in ("rps", "requests", "duration_s") if k in w}
        out["errors"] = w["errors"] + w["non_2xx"]
        out.update({k: w[k] for k in ("p50_us", "p90_us", "p99_us") if k in w})
        out["raw"] = text
        return out
    if scn.kind == "openloop":
        r = openloop.run_openloop("127.0.0.1", port, origin.paths["small"], scn.rate, scn.connections,
                                  scn.duration, warmup=1.0, cpu=load_cpu)
        r["latencies_us"] = log_histogram(r["latencies_us"])
        return {"rps": r["achieved_rate"], "requests": r["completed"], "errors": r["errors"],
                "duration_s": r["duration"], "p50_us": r["p50_us"], "p90_us": r["p90_us"],
                "p99_us": r["p99_us"], "p999_us": r["p999_us"], "raw": r}
    t = tcp_bench.run_tcp("127.0.0.1", port, scn.connections, scn.duration, warmup=0.5, cpu=load_cpu)
    return {"rps": t["transfers_per_s"], "requests": t["transfers"], "errors": t["errors"],
            "duration_s": t["duration_s"], "mib_per_s": t["mib_per_s"], "raw": t}


def origin_capacity(origin: Origin, chosen: list[Scenario], load_cpu: int | None,
                    proxy_cpu: int | None) -> dict[str, Any]:
    """The origin alone on the load CPU, driven by wrk from the proxy CPU: what a proxy could get at most.
    The origin must beat every proxy here, or the suite would measure the origin instead."""
    out: dict[str, Any] = {}
    for scn in chosen:
        if scn.kind != "wrk" or scn.connections == 1:
            continue
        url = f"http://127.0.0.1:{origin.port}{origin.paths[scn.size]}"
        _, text = run_tool(wrk_argv(url, scn.connections, max(1, min(3, round(scn.duration)))),
                            timeout=40, cpu=proxy_cpu)
        try:
            out[scn.name] = {"rps": parse_wrk(text)["rps"]}
        except WrkParseError as exc:
            out[scn.name] = {"error": str(exc)}
        print(f"  origin capacity, {scn.title}: {out[scn.name].get('rps', 0):,.0f} req/s", flush=True)
    return out


# --- the run -----------------------------------------------------------------------------------------

def prerequisites(mode: str, allow_missing: bool) -> tuple[str | None, str | None]:
    """(envoy binary, nginx build options); exits with what to install when something is missing."""
    envoy = envoy_binary()
    needed = ["wrk"] if mode == "smoke" else ["wrk", "envoy", "nginx", "matplotlib"]
    missing = missing_tools(needed, envoy)
    if missing and not allow_missing:
        sys.exit("benchmarks: missing " + "; ".join(missing) + ".\n`make bench` installs them "
                 "(apt-get and pip, as root), or pass --allow-missing to run without them.")
    for item in missing:
        print(f"benchmarks: leaving out what needs {item}", flush=True)
    nginx = None if missing_tools(["nginx"], envoy) else nginx_build_options()
    return envoy, nginx


def run(args: argparse.Namespace) -> Path:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    rounds = args.rounds or (1 if mode == "smoke" else 3)
    proxy_cpu, load_cpu = (None, None) if args.no_pin else (args.proxy_cpu, args.load_cpu)
    envoy, nginx_build = prerequisites(mode, args.allow_missing)
    contenders = all_contenders(envoy, nginx_build, smoke=mode == "smoke")
    if mode == "quick":
        contenders = [c for c in contenders if c.name in ("direct", "meshpy-uvloop", "envoy")]
    if args.only:
        contenders = [c for c in contenders if c.name == "direct" or c.name in args.only.split(",")]
    chosen = scenarios(mode, args.duration)
    commit, dirty = git_commit()
    now = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "schema": 1, "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "date": now.strftime("%Y-%m-%d"),
        "commit": commit, "dirty": dirty, "mode": mode, "rounds": rounds, "machine": machine_info(),
        "versions": tool_versions(envoy), "cpus": {"proxy": proxy_cpu, "load": load_cpu},
        "contenders": [{"name": c.name, "label": c.label, "is_proxy": c.is_proxy} for c in contenders],
        "scenarios": [s.describe() for s in chosen], "startup": [], "runs": [],
    }
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results['date']}-{commit}{'-' + mode if mode != 'full' else ''}.json"
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="meshpy-bench-") as tmp, sigterm_as_exit():
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's worker runs as nobody and must reach the files served from here
        try:
            origin = start_origin(procs, workdir, load_cpu, nginx_build is not None and mode != "smoke",
                                  nginx_build or "")
            tcp_source = start_tcp_source(procs, workdir, load_cpu)
            print(f"benchmarks: {mode}, {rounds} round(s), origin {origin.kind} on CPU {load_cpu}, "
                  f"proxies on CPU {proxy_cpu}", flush=True)
            results["origin"] = {"kind": origin.kind, "capacity": origin_capacity(origin, chosen, load_cpu,
                                                                                  proxy_cpu)}
            for rnd in range(1, rounds + 1):
                for contender in contenders:
                    one_contender(results, rnd, contender, procs, workdir, origin, tcp_source, chosen,
                                  proxy_cpu, load_cpu)
                    path.write_text(json.dumps(results, indent=1))  # a crash later keeps what was measured
            if mode == "full" and not args.no_conns:
                connections(results, path, args, contenders, procs, workdir, origin, rounds, proxy_cpu,
                            load_cpu)
            if mode == "full" and not args.no_tls:
                tls(results, path, out_dir, args, contenders, procs, workdir, origin, rounds, proxy_cpu,
                    load_cpu)
        finally:
            procs.stop_all()
    path.write_text(json.dumps(results, indent=1))
    print(f"benchmarks: results in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def connections(results: dict[str, Any], path: Path, args: argparse.Namespace, contenders: list[Contender],
                procs: Procs, workdir: Path, origin: Origin, rounds: int, proxy_cpu: int | None,
                load_cpu: int | None) -> None:
    """conn_bench.py's measurements into results["connections"]: the proxies it measures by default
    (meshpy on uvloop, Envoy, nginx), or every proxy named with --only."""
    chosen = [c for c in contenders if c.is_proxy and (args.only or c.name in conn_bench.DEFAULT_CONTENDERS)]
    if not chosen:
        return
    settings = conn_bench.Settings() if args.duration is None else conn_bench.Settings(duration=args.duration)
    print(f"benchmarks: connections, {settings.connections:,} idle ones and {settings.duration:g} s of "
          f"connection churn per proxy (benchmarks/conn_bench.py)", flush=True)

    def save(conns: dict[str, Any]) -> None:
        results["connections"] = conns
        path.write_text(json.dumps(results, indent=1))

    save(conn_bench.run_rounds(settings, chosen, procs, workdir, origin, rounds, proxy_cpu, load_cpu, save))


def tls(results: dict[str, Any], path: Path, out_dir: Path, args: argparse.Namespace,
        contenders: list[Contender], procs: Procs, workdir: Path, origin: Origin, rounds: int,
        proxy_cpu: int | None, load_cpu: int | None) -> None:
    """tls_bench.py's suite into results["tls"], and its own JSON and Markdown beside the results: meshpy
    on uvloop, and Envoy when it is one of the contenders."""
    names = [c.name for c in contenders]
    if "meshpy-uvloop" not in names:
        return
    envoy = envoy_binary() if "envoy" in names else None
    print("benchmarks: TLS, meshpy and Envoy over HTTPS (benchmarks/tls_bench.py)", flush=True)

    def save(part: dict[str, Any]) -> None:
        results["tls"] = part
        path.write_text(json.dumps(results, indent=1))

    save(tls_bench.suite(procs, workdir, origin, envoy, proxy_cpu, load_cpu, rounds, args.duration, save))
    keys = ("started", "date", "commit", "dirty", "machine", "versions", "cpus", "tls")
    own = {"benchmark": "tls", "schema": 1, **{k: results[k] for k in keys}}
    _, md = tls_bench.write_outputs(own, out_dir, suffix="-suite")
    print(md.read_text(), flush=True)


def one_contender(results: dict[str, Any], rnd: int, contender: Contender, procs: Procs, workdir: Path,
                  origin: Origin, tcp_source: int | None, chosen: list[Scenario], proxy_cpu: int | None,
                  load_cpu: int | None) -> None:
    try:
        startup = contender.start(procs, workdir, origin, tcp_source, proxy_cpu)
    except (RuntimeError, TimeoutError, OSError) as exc:
        for scn in chosen:
            results["runs"].append({"round": rnd, "contender": contender.name, "scenario": scn.name,
                                    "ok": False, "error": f"did not start: {exc}"})
        print(f"  round {rnd} {contender.name}: did not start: {exc}", flush=True)
        return
    try:
        if contender.is_proxy:
            results["startup"].append({"round": rnd, "contender": contender.name, **startup})
        for scn in chosen:
            time.sleep(0.2)  # lets the previous run's connections close before the next one starts
            out = measure(scn, contender, origin, load_cpu)
            results["runs"].append({"round": rnd, "contender": contender.name, "scenario": scn.name, **out})
            print(f"  round {rnd} {contender.name:15} {scn.name:20} {_line(out)}", flush=True)
    finally:
        contender.stop(procs)


def _line(out: dict[str, Any]) -> str:
    if not out.get("ok"):
        return f"FAILED: {out.get('error')}"
    parts = [f"{out['rps']:>9,.0f}/s"]
    if out.get("p50_us") is not None:
        parts.append(f"p50 {out['p50_us']:,.0f} us, p99 {out.get('p99_us', 0):,.0f} us")
    if out.get("cpu_us_per_req") is not None:
        parts.append(f"{out['cpu_us_per_req']:.1f} us CPU/req")
    if out.get("mib_per_s") is not None:
        parts.append(f"{out['mib_per_s']:,.0f} MiB/s")
    return ", ".join(parts)


def mode_full(args: argparse.Namespace) -> bool:
    return not (args.smoke or args.quick or args.only) and args.out is None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="direct, meshpy, Envoy; 2 scenarios of 3 s")
    mode.add_argument("--smoke", action="store_true", help="direct and meshpy, every scenario for 1 s")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; smoke 1)")
    ap.add_argument("--duration", type=float, help="seconds per scenario run, overriding the defaults")
    ap.add_argument("--only", help="comma-separated contenders besides direct (meshpy-uvloop, "
                                   "meshpy-asyncio, envoy, nginx)")
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="no taskset (machines with one CPU)")
    ap.add_argument("--allow-missing", action="store_true", help="leave out contenders whose tool is missing")
    ap.add_argument("--out", help=f"directory for the results (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--no-report", action="store_true", help="write the JSON only")
    ap.add_argument("--no-conns", action="store_true",
                    help="leave out the connection capacity figures of full runs (benchmarks/conn_bench.py)")
    ap.add_argument("--no-tls", action="store_true",
                    help="leave out the HTTPS figures of full runs (benchmarks/tls_bench.py)")
    ap.add_argument("--readme", action="store_true",
                    help="put the tables and chart into README.md too (full runs only)")
    args = ap.parse_args(argv)
    path = run(args)
    if not args.no_report:
        import report  # imported late: matplotlib is only needed for the chart

        # Only a full run may stand as `latest` (and in the README): quick and smoke runs are partial.
        md, png = report.write_report(path, latest=mode_full(args),
                                      readme=ROOT / "README.md" if args.readme and mode_full(args) else None)
        print(md.read_text())
        print(f"benchmarks: report in {md}" + (f", chart in {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
