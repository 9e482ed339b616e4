"""A soak under chaos: mixed traffic at a fixed rate through one meshpy proxy for a long time, while its
upstreams restart, its config file reloads, its control plane pushes and restarts, and clients reset
requests mid-way. It checks what must hold however long a proxy runs:

- zero lost idempotent requests (per protocol: HTTP/1.1, HTTP/2, gRPC, WebSocket, TCP), retries on;
- RSS growth under 5% after the warm-up;
- open file descriptors back to their baseline once the traffic stops and the pools idle out;
and that the proxy stays up and follows both config sources to their last version.

    python benchmarks/soak.py                      # 30 minutes (make soak)
    python benchmarks/soak.py --duration 120       # the CI version (tests/bench/test_soak.py)

A live line every 10 s; at the end benchmarks/results/soak-<date>-<commit>.{json,md} (or --out DIR) and
exit code 0 when every requirement holds, 1 when one fails, 2 when the soak could not run. The pieces:
soak_world.py (processes, configs), soak_origin.py (the origins), soak_clients.py, soak_h1.py and
soak_h2.py (traffic), soak_chaos.py (chaos), soak_tally.py (counting), soak_report.py (measures and
verdicts), soak_memprobe.py (--object-counts, --tracemalloc: what grows). See docs/soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from soak_chaos import KINDS, Chaos, Schedule
from soak_clients import MIX, Traffic, describe_mix
from soak_h1 import H1Pool
from soak_report import (
    delta,
    fd_count,
    fd_table,
    gauges,
    live_line,
    log_errors,
    markdown,
    rss_kb,
    rss_verdict,
    scrape,
)
from soak_tally import Clock, Stats
from soak_world import POOL_IDLE_S, World
from tools import ROOT, cpu_seconds, git_commit, machine_info, sigterm_as_exit, tool_versions

RESULTS = ROOT / "benchmarks" / "results"
LIVE_EVERY_S = 10.0
FD_WAIT_S = POOL_IDLE_S + 25.0  # after the traffic: pools idle out, then closes settle


async def _sampler(world: World, stats: Stats, samples: list[dict[str, float]], died: asyncio.Future[int],
                   quiet: bool) -> None:
    assert world.proxy is not None
    pid = world.proxy.pid
    next_live = LIVE_EVERY_S
    while True:
        if not world.proxy.alive():
            if not died.done():
                died.set_result(world.proxy.popen.returncode if world.proxy.popen else -1)
            return
        rss, fds = rss_kb(pid), fd_count(pid)
        samples.append({"t": round(stats.clock.now(), 2), "rss_kb": rss, "fds": fds,
                        "cpu_s": round(cpu_seconds([pid]), 2)})
        if stats.clock.now() >= next_live:
            next_live += LIVE_EVERY_S
            retries = None
            with contextlib.suppress(OSError, ValueError):
                retries = (await asyncio.to_thread(scrape, world.ports.admin)).get(
                    "meshpy_upstream_rq_retry_total")
            if not quiet:
                print(live_line(stats, rss, fds, retries), flush=True)
        await asyncio.sleep(1.0)


async def _object_counts(world: World, stats: Stats, warmup: float, end: float) -> dict[str, Any] | None:
    """With --object-counts: the proxy's live objects by type after the warm-up and at the end of the
    traffic (soak_memprobe.py), and the types that grew most in between."""
    if world.probe is None or world.proxy is None:
        return None
    dumps = []
    for n, at in enumerate((warmup, end), 1):
        await asyncio.sleep(max(0.0, at - stats.clock.now()))
        path = world.probe.with_name(f"{world.probe.name}.{n}.json")
        if world.proxy.popen is not None:
            world.proxy.popen.send_signal(signal.SIGUSR2)
        for _ in range(600):
            await asyncio.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):
                dumps.append(json.loads(path.read_text()))
                break
    if len(dumps) < 2:
        return {"error": "no object counts from the proxy"}
    a, b = (d["by_type"] for d in dumps)
    growth = sorted(((k, b.get(k, 0) - a.get(k, 0)) for k in set(a) | set(b)), key=lambda kv: -kv[1])
    return {"objects": [d["objects"] for d in dumps],
            "allocated_blocks": [d["allocated_blocks"] for d in dumps],
            "grew": [{"type": k, "by": v, "end": b.get(k, 0)} for k, v in growth[:25] if v > 0],
            "largest_containers": dumps[1]["largest"],
            "tracemalloc_growth": dumps[1].get("tracemalloc_growth")}


async def _probe_origins(world: World, stats: Stats) -> None:
    """Once a second, a bare connect to each port of every origin that is up: a failure there is the
    machine's (a full accept queue, a firewall rule, a stalled process), not the proxy's, and the report
    shows when it happened, beside the losses it may explain."""
    clock = stats.clock
    while True:
        await asyncio.sleep(1.0)
        for origin in world.origins:
            if origin.proc is None or not origin.proc.alive() or not stats.settled(origin.name, clock.now()):
                continue
            for kind, port in zip(("http", "tcp", "grpc"), origin.ports(), strict=True):
                t0 = clock.now()
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
                    writer.close()
                except (OSError, TimeoutError) as exc:
                    if not stats.origin_cut(origin.name, t0, clock.now()):
                        stats.unreachable.append({"t": round(t0, 1), "origin": origin.name, "port": kind,
                                                  "error": type(exc).__name__})


async def _final_versions(world: World, stats: Stats) -> dict[str, Any]:
    """Both config sources' last versions reach the clients (polled for up to 20 s after the chaos)."""
    want = {"x-soak-file": (world.ports.file_http, str(world.file_version)),
            "x-soak-xds": (world.ports.xds_http, str(world.xds_version))}
    got: dict[str, str | None] = dict.fromkeys(want)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline and any(got[h] != v for h, (_, v) in want.items()):
        for header, (port, _) in want.items():
            pool = H1Pool(port)
            with contextlib.suppress(Exception):
                r = await asyncio.wait_for(pool.request("GET", "/hello"), 5)
                got[header] = r.headers.get(header)
            pool.close()
        await asyncio.sleep(0.5)
    ok = all(got[h] == v for h, (_, v) in want.items())
    seen = {h: len(stats.versions[h]) for h in want}
    detail = (f"file v{world.file_version} (clients saw {seen['x-soak-file']} versions), "
              f"xDS v{world.xds_version} (saw {seen['x-soak-xds']}); last ones served: "
              f"{'yes' if ok else got}")
    return {"ok": ok, "detail": detail, "final_served": got, "versions_seen": seen,
            "file_written": world.file_version, "xds_written": world.xds_version}


async def _wait_fds(pid: int, baseline: int) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    fds = fd_count(pid)
    while fds > baseline and loop.time() - start < FD_WAIT_S:
        await asyncio.sleep(0.5)
        fds = fd_count(pid)
    return fds, round(loop.time() - start, 1)


async def soak(world: World, args: argparse.Namespace, out: dict[str, Any]) -> None:
    assert world.proxy is not None
    pid, admin = world.proxy.pid, world.ports.admin
    await asyncio.sleep(2.0)  # the xDS stream and the listeners settle
    fd_base, fd_base_table = fd_count(pid), fd_table(pid)
    counters0 = await asyncio.to_thread(scrape, admin)
    clock = Clock()
    stats = Stats(clock, world.workdir / "failures.jsonl")
    samples: list[dict[str, float]] = []
    died: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    sampler = asyncio.ensure_future(_sampler(world, stats, samples, died, args.quiet))
    traffic = Traffic(stats, {"file": world.ports.file_http, "xds": world.ports.xds_http},
                      {"file": world.ports.file_tcp, "xds": world.ports.xds_tcp}, args.rate, args.traffic)
    chaos = Chaos(world, stats, Schedule(control_s=args.control_every), args.chaos)
    probes = asyncio.ensure_future(_object_counts(world, stats, args.warmup, args.duration))
    prober = asyncio.ensure_future(_probe_origins(world, stats))
    work: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(traffic.run(args.duration), chaos.run(args.duration)))
    await asyncio.wait([work, died], return_when=asyncio.FIRST_COMPLETED)
    traffic_end = min(clock.now(), float(args.duration))
    if died.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
    else:
        await work
    await traffic.close()
    objects = await probes if world.probe is not None and not died.done() else None
    probes.cancel()
    configs: dict[str, Any] = {"ok": False, "detail": "proxy died"}
    if not died.done():
        configs = await _final_versions(world, stats)
    fd_end, waited = await _wait_fds(pid, fd_base) if not died.done() else (0, 0.0)
    counters1 = await asyncio.to_thread(scrape, admin) if not died.done() else counters0
    for task in (sampler, prober):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    protocols = {name: t.summary() for name, t in stats.tallies.items()}
    sent, ok, lost = stats.totals()
    idem = [t for t in stats.tallies.values() if t.idempotent]
    rss = rss_verdict(samples, args.warmup, args.window, traffic_end)
    leftover = sorted(set(fd_table(pid)) - set(fd_base_table)) if fd_end > fd_base else []
    out.update({
        "duration_s": traffic_end, "rate": args.rate, "origins": len(world.origins),
        "mix_per_s": describe_mix(args.rate, args.traffic), "schedule": chaos.schedule.describe(),
        "requirements": {
            "lost": {"ok": lost == 0 and all(t.ok > 0 for t in idem), "sent": sent, "answered": ok,
                     "lost": lost, "per_protocol": {t.name: t.lost for t in idem}},
            "rss": rss,
            "fds": {"ok": fd_end <= fd_base and not died.done(), "baseline": fd_base, "end": fd_end,
                    "waited_s": waited, "leftover": leftover},
            "configs": configs},
        "protocols": protocols,
        "chaos": {"counts": dict(stats.chaos), "events": stats.events, "errors": stats.chaos_errors},
        "proxy_counters": delta(counters0, counters1), "gauges_idle": gauges(counters1),
        "proxy_exit": died.result() if died.done() else None,
        "object_growth": objects, "chaos_kinds": list(args.chaos),
        "failure_examples": stats.examples, "failures_total": stats.failures_total,
        "origins_unreachable": stats.unreachable,
        "samples": samples,
    })
    req = out["requirements"]
    out["ok"] = all(req[k]["ok"] for k in ("lost", "rss", "fds", "configs")) and out["proxy_exit"] is None


def run(args: argparse.Namespace) -> int:
    commit, dirty = git_commit()
    now = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {"schema": 1, "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "date": now.strftime("%Y-%m-%d"), "commit": commit, "dirty": dirty,
                           "machine": machine_info(), "versions": tool_versions(None), "ok": False}
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"soak-{out['date']}-{commit}"
    workdir = Path(tempfile.mkdtemp(prefix="meshpy-soak-"))
    world = World(workdir, args.origins, loop=args.loop, probe=args.object_counts,
                  tracemalloc=args.tracemalloc)
    print(f"soak: {args.duration:.0f} s at {args.rate:.0f} req/s, {args.origins} origins, warm-up "
          f"{args.warmup:.0f} s; logs in {workdir}", flush=True)
    try:
        with sigterm_as_exit():
            try:
                world.start_all()
                asyncio.run(soak(world, args, out))
            finally:
                if world.proxy is not None:
                    out["proxy_log_errors"] = log_errors(world.proxy.log)
                world.stop_all()
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2
    keep = args.keep or not out["ok"]
    out["workdir"] = str(workdir) if keep else None
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    md = markdown(out)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"soak: report in {stem}.json and .md" + (f"; logs kept in {workdir}" if keep else ""))
    return 0 if out["ok"] else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of traffic (default 1800)")
    ap.add_argument("--rate", type=float, default=200.0, help="requests (or sessions) per second in all")
    ap.add_argument("--origins", type=int, default=3, help="origin processes, each an endpoint of every "
                                                          "cluster (at least 2)")
    ap.add_argument("--warmup", type=float, help="seconds before the RSS reference window (default: a "
                                                 "quarter of the duration, 20-300 s)")
    ap.add_argument("--window", type=float, help="seconds of each RSS window (default: an eighth of the "
                                                 "duration, 10-60 s)")
    ap.add_argument("--control-every", type=float, default=40.0,
                    help="seconds between control-plane restarts (default 40)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the proxy's event loop")
    ap.add_argument("--out", help="directory for the report (default benchmarks/results)")
    ap.add_argument("--keep", action="store_true", help="keep the logs and configs (kept anyway on failure)")
    ap.add_argument("--quiet", action="store_true", help="no live line")
    ap.add_argument("--traffic", default=",".join(MIX),
                    help="which traffic, comma-separated (default all: each at its share of --rate)")
    ap.add_argument("--chaos", default=",".join(KINDS),
                    help=f"which chaos, comma-separated (default all: {','.join(KINDS)}; 'none' for none)")
    ap.add_argument("--object-counts", action="store_true",
                    help="run the proxy under soak_memprobe.py and report which object types grew")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="as --object-counts, with tracemalloc: the source lines whose allocations grew")
    args = ap.parse_args(argv)
    if args.origins < 2:
        ap.error("--origins: at least 2, so that a retry has somewhere else to go")
    args.traffic = tuple(k for k in args.traffic.split(",") if k)
    if not args.traffic or set(args.traffic) - set(MIX):
        ap.error(f"--traffic: one or more of {', '.join(MIX)}")
    args.chaos = tuple(k for k in args.chaos.split(",") if k and k != "none")
    if set(args.chaos) - set(KINDS):
        ap.error(f"--chaos: one or more of {', '.join(KINDS)}, or none")
    if args.warmup is None:
        args.warmup = min(300.0, max(20.0, args.duration / 4))
    if args.window is None:
        args.window = min(60.0, max(10.0, args.duration / 8))
    if args.warmup + 2 * args.window > args.duration:
        ap.error("--duration must leave room for the warm-up and two RSS windows")
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
