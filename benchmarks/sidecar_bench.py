"""What a pair of sidecars costs a call between two pods: direct, through two meshpy sidecars and
through two Envoy sidecars, each pair in plaintext and with mutual TLS, with the same interception
rules, the same config and the same certificates.

    python benchmarks/sidecar_bench.py [--duration 5] [--rounds 3] [--connections 32] \
        [--rate 1000] [--latency-duration 5] [--setups direct meshpy ...] [--out DIR]

Two network namespaces joined by a veth pair stand for two pods (needs root, ip and iptables); see
sidecar_world.py. The server pod runs the origin (nginx when installed, else meshpy's demo upstream);
the client pod runs the load against the server's plain address. For the sidecar runs `meshpy
iptables` is applied in both pods and each gets a sidecar, both on one core: the client's outbound
listener finds the listener for the server's address by the original destination; the server's inbound
listener hands the call on to the port it was made to. In the mTLS setups the client sidecar calls the
server sidecar over mutual TLS and checks its SPIFFE ID, and the server sidecar requires the client's
certificate and checks its ID. Envoy runs the very same config, written as an Envoy bootstrap by the
control plane's export.

Each round runs every setup in turn (the order rotates between rounds), each with sidecars started
afresh, and measures twice:
- open loop (benchmarks/openloop.py, free of coordinated omission): a fixed 1,000 req/s over 16
  keep-alive connections, giving p50/p90/p99 and what each pair adds to direct's p90 in the same round
  (Istio publishes +2.65 ms at p90 for two sidecars with mTLS at 1,000 req/s);
- closed loop (wrk -t1 -c32): req/s, and the sidecars' CPU per request.
Reported: the median over rounds, as JSON and as a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tools
from contenders import nginx_build_options, nginx_origin_conf, nginx_proc, python_env
from sidecar_world import (
    CLIENT,
    LOAD_CPU,
    PORT,
    SERVER,
    SERVER_IP,
    SETUPS,
    Identities,
    Setup,
    build_network,
    in_ns,
    make_identities,
    remove_network,
    server_tls,
    start_sidecars,
    stop_sidecars,
)
from tools import Proc, Procs

OPENLOOP = Path(__file__).resolve().parent / "openloop.py"
ISTIO_ADDED_P90_US = 2650.0  # two sidecars with mTLS at 1,000 req/s (performance-anchors.md)


def closed_loop(args: argparse.Namespace, path: str, pids: list[int]) -> dict[str, Any]:
    """wrk at full speed: req/s and the sidecars' CPU per request, in all and each (client, server)."""
    url = f"http://{SERVER_IP}:{PORT}{path}"
    argv = in_ns(CLIENT, tools.wrk_argv(url, args.connections, args.duration, latency=True))
    cpu0 = [tools.cpu_seconds([pid]) for pid in pids]
    code, out = tools.run_tool(argv, args.duration + 30, LOAD_CPU)
    each = [tools.cpu_seconds([pid]) - c0 for pid, c0 in zip(pids, cpu0, strict=True)]
    if code != 0:
        raise RuntimeError(f"wrk failed: {out}")
    parsed = tools.parse_wrk(out)
    if parsed["non_2xx"] or parsed["errors"]:
        raise RuntimeError(f"errors under load: {out}")
    parsed["sidecar_cpu_us_per_rq"] = round(sum(each) * 1e6 / parsed["requests"], 1)
    parsed["each_sidecar_cpu_us_per_rq"] = [round(c * 1e6 / parsed["requests"], 1) for c in each]
    return parsed


def open_loop(args: argparse.Namespace, path: str, pids: list[int]) -> dict[str, Any]:
    """openloop.py in the client pod at a fixed rate: latency percentiles, and the sidecars' CPU in
    vCPU (their CPU seconds over the warm-up and measured seconds)."""
    argv = [sys.executable, str(OPENLOOP), "--host", SERVER_IP, "--port", str(PORT), "--path", path,
            "--rate", str(args.rate), "--connections", str(args.latency_connections),
            "--duration", str(args.latency_duration), "--warmup", str(args.warmup), "--drain", "3", "--json"]
    cpu0 = tools.cpu_seconds(pids)
    done = subprocess.run(in_ns(CLIENT, tools.pin(argv, LOAD_CPU)), capture_output=True, text=True,
                          timeout=args.warmup + args.latency_duration + 60, check=False, env=python_env())
    cpu = tools.cpu_seconds(pids) - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"openloop failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if result["errors"]:
        raise RuntimeError(f"openloop: {result['errors']} errors of {result['sent']} requests")
    latencies = result.pop("latencies_us")
    result["histogram_us"] = tools.log_histogram(latencies)
    result["sidecar_vcpu"] = round(cpu / (args.warmup + args.latency_duration), 3) if pids else 0.0
    return result


def measure(args: argparse.Namespace, procs: Procs, work: Path, setup: Setup,
            ids: Identities, path: str) -> dict[str, Any]:
    started = start_sidecars(procs, work, setup, ids) if setup.proxy else []
    try:
        pids = [p.pid for p in started]
        run = {"open": open_loop(args, path, pids), "closed": closed_loop(args, path, pids)}
        if setup.mtls:
            run["server_tls"] = tls = server_tls(setup)
            if tls["handshakes"] == 0 or tls["failures"]:
                raise RuntimeError(f"{setup.name}: the server sidecar's TLS counters say {tls}")
    finally:
        stop_sidecars(procs, started)
    return run


def start_origin(procs: Procs, work: Path) -> tuple[str, str]:
    build = nginx_build_options()
    if build:
        prefix = work / "origin"
        conf = nginx_origin_conf(prefix, PORT, build).replace(f"127.0.0.1:{PORT}", f"0.0.0.0:{PORT}")
        origin = nginx_proc("origin", prefix, conf, LOAD_CPU)
        origin.argv = in_ns(SERVER, origin.argv)
        kind = "nginx"
    else:
        origin = Proc("origin", in_ns(SERVER, [sys.executable, "-m", "meshpy", "demo-upstream",
                                               "--listen", f"0.0.0.0:{PORT}"]),
                      work / "origin.log", cpu=LOAD_CPU, env=python_env())
        kind = "meshpy-demo-upstream"
    path = "/hello"
    procs.start(origin)
    origin.wait_until(lambda: subprocess.run(
        in_ns(CLIENT, ["curl", "-sf", "-o", "/dev/null", f"http://{SERVER_IP}:{PORT}{path}"]),
        check=False).returncode == 0)
    return kind, path


def run(args: argparse.Namespace) -> dict[str, Any]:
    setups = [SETUPS[name] for name in args.setups]
    rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in setups}
    procs = Procs()
    began = time.monotonic()
    build_network()
    try:
        with tempfile.TemporaryDirectory(prefix="meshpy-sidecar-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            ids = make_identities(work / "certs")
            kind, path = start_origin(procs, work)
            for r in range(args.rounds):
                for setup in setups[r % len(setups):] + setups[:r % len(setups)]:
                    rounds[setup.name].append(measure(args, procs, work, setup, ids, path))
                    print(f"round {r + 1}: {line(setup.name, rounds[setup.name][-1])}", file=sys.stderr)
    finally:
        procs.stop_all()
        remove_network()
    commit, dirty = tools.git_commit()
    return {"benchmark": "sidecar", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), "commit": commit,
            "dirty": dirty, "origin": kind, "connections": args.connections, "duration_s": args.duration,
            "rate": args.rate, "latency_connections": args.latency_connections,
            "latency_duration_s": args.latency_duration, "warmup_s": args.warmup, "rounds_n": args.rounds,
            "elapsed_s": round(time.monotonic() - began, 1), "machine": tools.machine_info(),
            "versions": tools.tool_versions(tools.envoy_binary()),
            "summary": summarize(rounds), "rounds": rounds}


def line(name: str, run: dict[str, Any]) -> str:
    o, c = run["open"], run["closed"]
    return (f"{name:12} {c['rps']:>9,.0f} req/s, CPU {c['sidecar_cpu_us_per_rq']:5.1f} us/rq; "
            f"at {o['target_rate']:,.0f}/s p50 {o['p50_us']:,.0f} p90 {o['p90_us']:,.0f} "
            f"p99 {o['p99_us']:,.0f} us")


def summarize(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds; the added latencies are each round's difference to direct's in the same
    round, so that the machine's drift between rounds cancels out."""
    summary: dict[str, Any] = {}
    base = rounds.get("direct")
    for name, runs in rounds.items():
        closed = [r["closed"] for r in runs]
        opened = [r["open"] for r in runs]
        mid = sorted(closed, key=lambda c: c["rps"])[len(closed) // 2]
        s: dict[str, Any] = {
            "rps": mid["rps"], "wrk_p50_us": mid.get("p50_us"), "wrk_p99_us": mid.get("p99_us"),
            "sidecar_cpu_us_per_rq": statistics.median(c["sidecar_cpu_us_per_rq"] for c in closed),
            "sidecar_vcpu_at_rate": statistics.median(o["sidecar_vcpu"] for o in opened),
        }
        if name != "direct":
            for i, pod in enumerate(("client", "server")):
                s[f"{pod}_cpu_us_per_rq"] = statistics.median(c["each_sidecar_cpu_us_per_rq"][i]
                                                              for c in closed)
        for q in ("p50", "p90", "p99", "p999"):
            s[f"{q}_us"] = round(statistics.median(o[f"{q}_us"] for o in opened), 1)
            if base is not None and name != "direct":
                s[f"added_{q}_us"] = round(statistics.median(
                    o[f"{q}_us"] - b["open"][f"{q}_us"] for o, b in zip(opened, base, strict=True)), 1)
        if base is not None and name != "direct":
            s["added_p90_us_rounds"] = [round(o["p90_us"] - b["open"]["p90_us"], 1)
                                        for o, b in zip(opened, base, strict=True)]
        summary[name] = s
    return summary


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    direct = s.get("direct")
    rate = f"{result['rate']:,.0f}"
    rows = [f"| setup | req/s (wrk -c{result['connections']}) | of direct | sidecars' CPU µs per request "
            "(client + server) "
            f"| p50 µs | p90 µs | p99 µs | added p90 | sidecars' CPU at {rate} req/s |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for name, r in s.items():
        direct_share = f"{r['rps'] / direct['rps']:.0%}" if direct and name != "direct" else "—"
        added = f"**+{r['added_p90_us'] / 1000:.2f} ms**" if "added_p90_us" in r else "—"
        cpu = (f"{r['sidecar_cpu_us_per_rq']:.1f} ({r['client_cpu_us_per_rq']:.1f} + "
               f"{r['server_cpu_us_per_rq']:.1f})") if name != "direct" else "—"
        vcpu = f"{r['sidecar_vcpu_at_rate']:.2f} vCPU" if name != "direct" else "—"
        rows.append(f"| {name} | {r['rps']:,.0f} | {direct_share} | {cpu} | {r['p50_us']:,.0f} "
                    f"| {r['p90_us']:,.0f} | {r['p99_us']:,.0f} | {added} | {vcpu} |")
    verdicts = []
    for name in ("meshpy-mtls", "envoy-mtls"):
        if name in s and "added_p90_us" in s[name]:
            added = s[name]["added_p90_us"]
            rounds = ", ".join(f"+{v / 1000:.2f}" for v in s[name]["added_p90_us_rounds"])
            met = "met" if added < ISTIO_ADDED_P90_US else "**not met**"
            verdicts.append(f"| {name} | +{added / 1000:.2f} ms (rounds: {rounds}) | {met} |")
    head = (f"Sidecar pairs, {result['date']} at {result['commit']}{' (dirty)' if result['dirty'] else ''}; "
            f"median of {result['rounds_n']} interleaved rounds; open loop {rate} req/s over "
            f"{result['latency_connections']} connections for {result['latency_duration_s']:g} s "
            f"(+{result['warmup_s']:g} s warm-up); wrk {result['duration_s']} s; origin {result['origin']}.")
    out = [head, "", *rows]
    if verdicts:
        out += ["", f"| target: added p90 at {rate} req/s below +2.65 ms (Istio, two sidecars, mTLS) "
                "| measured | verdict |", "|---|---|---|", *verdicts]
    return "\n".join(out) + "\n"


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables-restore", "wrk", "curl", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every = list(SETUPS) if tools.envoy_binary() else [n for n, s in SETUPS.items() if s.proxy != "envoy"]
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=every,
                   help=f"which to run (default: {' '.join(every)})")
    p.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32, help="wrk's connections")
    p.add_argument("--rate", type=float, default=1000.0, help="the open loop's requests per second")
    p.add_argument("--latency-connections", type=int, default=16, help="the open loop's connections")
    p.add_argument("--latency-duration", type=float, default=5.0, help="measured seconds of the open loop")
    p.add_argument("--warmup", type=float, default=1.0, help="the open loop's unmeasured first seconds")
    p.add_argument("--out", default=None, help="directory for the results (default benchmarks/results)")
    args = p.parse_args()
    reason = why_not()
    if reason is not None:
        print(f"sidecar benchmark: {reason}", file=sys.stderr)
        return 2
    with tools.sigterm_as_exit():
        result = run(args)
    out = Path(args.out) if args.out else tools.ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "sidecar-mtls" if any(SETUPS[n].mtls for n in args.setups) else "sidecar"
    path = out / f"{name}-{result['date']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
