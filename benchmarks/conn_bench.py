"""Connection capacity: what an idle downstream connection costs a proxy in memory, and how many new
connections a second it accepts while a normal keep-alive client stays served.

    python benchmarks/conn_bench.py [--connections 5000] [--duration 10] [--rounds 3] [--only LIST]
                                    [--no-pin] [--out DIR]        # make bench-conns

benchmarks/run.py runs the same measurements in the full suite (`make bench`) and report.py puts them in
the "Connections" table. Contenders as in the suite (contenders.py): meshpy on uvloop, Envoy with
--concurrency 1 and nginx with one worker, each alone on the proxy CPU and started afresh per round, in
front of the same origin (nginx when installed, else meshpy's demo upstream) on the load CPU.

1. Idle connection memory. After a short warm-up (a few requests on one connection, so that the upstream
   pool and everything allocated lazily exist), the proxy's RSS is taken once it is steady. Then N
   HTTP/1.1 connections are opened (in batches, each batch waited for until the proxy holds it: its
   open file descriptors are counted in /proc, so a connection still in the kernel's accept queue is not
   taken for one the proxy has accepted) and left idle: RSS again. Then one ~100 B GET is sent on each of
   them in turn (one at a time, so the proxy needs a single upstream connection) and they are left idle
   again: RSS a third time. Reported per contender, in KiB per connection: (RSS after - RSS before) / N,
   for the connection that served a request (the realistic idle one, a keep-alive client between
   requests) and for the one that never sent a byte. Socket buffers are kernel memory, not RSS; what is
   counted is what the proxy itself allocates for a connection. nginx's config allows 4,096 connections
   per worker and nginx starts closing idle ones past 15/16 of that, so nginx is measured with at most
   NGINX_MAX_IDLE (3,500) of them.
2. Connection rate. `wrk -t1 -cC -H 'Connection: close'` (C = 16 by default) on the load CPU for
   D + 2 seconds: every request asks the proxy to close the connection after its answer, and wrk then
   opens a new connection for the next request, so each completed request is one new connection the
   proxy accepted, served (one ~100 B GET through the proxy to the origin) and closed. (Checked: in
   this mode meshpy's meshpy_downstream_cx_total grew by 48,739 over 48,722 wrk requests, Envoy's
   downstream_cx_total by 68,053 over 68,036, the difference being the connections wrk had open when it
   stopped; tests/bench/test_conn_bench.py holds wrk to it against a server that counts its
   connections.) The proxies keep their upstream connections pooled, so the origin sees no new
   connections. Meanwhile benchmarks/openloop.py, a normal keep-alive client, sends R req/s (200 by
   default) over 4 connections, also from the load CPU, for D seconds after a 1 s warm-up, and measures
   its latency (from each request's intended send time) and its errors. Reported: new connections/s
   (wrk's requests/s), wrk's errors, the proxy's CPU per new connection (its CPU time over wrk's run,
   the normal client's requests included, over wrk's requests) and how busy its CPU was, and the normal
   client's p50/p99 and errors. A proxy CPU well short of 100% busy means the load CPU (wrk, the
   kernel's half of every connect and close, the origin) set the rate rather than the proxy; the CPU
   per new connection is the proxy's own figure either way. The load CPU also runs the normal client,
   so its latencies carry some of wrk's contention for that CPU: compare contenders with each other,
   not with the open-loop figures of the main suite.

Writes benchmarks/results/conns-<date>-<commit>.json and prints the Markdown table report.py renders.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import openloop
from contenders import Contender, Nginx, Origin, all_contenders, nginx_build_options, start_origin
from tools import (
    ROOT,
    Procs,
    WrkParseError,
    cpu_seconds,
    envoy_binary,
    git_commit,
    log_histogram,
    machine_info,
    missing_tools,
    parse_wrk,
    rss_kb,
    run_tool,
    sigterm_as_exit,
    tool_versions,
    wrk_argv,
)

RESULTS = ROOT / "benchmarks" / "results"
# The contenders measured unless told otherwise (run.py's --only, this script's --only).
DEFAULT_CONTENDERS = ("meshpy-uvloop", "envoy", "nginx")
# contenders.py gives nginx `worker_connections 4096`, and once fewer than 1/16 of them are free nginx
# closes idle keep-alive connections to make room (ngx_drain_connections): it holds about 3,800 at most.
NGINX_MAX_IDLE = 3500
BATCH = 250  # connections opened before waiting for the proxy to accept them: well inside a 1,024 backlog
FD_HEADROOM = 512  # descriptors beyond N for everything else of this process and of the proxies
CHURN = "one ~100 B GET per new connection (wrk, Connection: close)"


@dataclass(frozen=True)
class Settings:
    connections: int = 5000  # idle connections held at once
    duration: float = 10.0  # seconds of the connection-rate run (wrk runs 2 s longer, around it)
    churn_connections: int = 16  # wrk -c: connections being opened, served and closed at any time
    normal_rate: float = 200.0  # the keep-alive client's req/s...
    normal_connections: int = 4  # ...over this many connections
    warmup: float = 1.0  # the keep-alive client's warm-up, inside wrk's run

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "churn": CHURN, "nginx_max_idle": NGINX_MAX_IDLE}


# --- /proc and the file descriptor limit ----------------------------------------------------------

def open_fds(pids: Sequence[int]) -> int:
    """Open file descriptors of the processes, from /proc/PID/fd; a vanished PID counts as 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (the proxies started afterwards inherit
    it); returns the soft limit now in force, which the hard limit may keep below `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft if soft != resource.RLIM_INFINITY else wanted


def wait_for(probe: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def steady_rss(pids: Sequence[int], timeout: float = 8.0, window: int = 5, interval: float = 0.2,
               tolerance_kb: int = 64) -> tuple[int, bool]:
    """(RSS in KiB, settled): RSS once `window` samples `interval` apart lie within `tolerance_kb`; the
    last sample and False when that does not happen within `timeout`."""
    samples = [rss_kb(pids)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        samples.append(rss_kb(pids))
        last = samples[-window:]
        if len(last) == window and max(last) - min(last) <= tolerance_kb:
            return last[-1], True
    return samples[-1], False


def steady_fds(pids: Sequence[int], timeout: float = 3.0) -> int:
    """The processes' open descriptors once they have not changed for 0.3 s (or after `timeout`)."""
    samples = [open_fds(pids)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (len(samples) < 7 or len(set(samples[-7:])) > 1):
        time.sleep(0.05)
        samples.append(open_fds(pids))
    return samples[-1]


# Kernel TCP counters kept beside the rate: accept queues that overflowed and SYNs sent again would
# each stall a connection for a second, and show that something else than the CPUs set the rate.
KERNEL_COUNTERS = ("TcpExt:ListenOverflows", "TcpExt:ListenDrops", "TcpExt:TCPSynRetrans",
                   "TcpExt:TWRecycled", "Tcp:AttemptFails")


def tcp_counters() -> dict[str, int]:
    """The network namespace's TCP counters (/proc/net/snmp and netstat: "Tcp:ActiveOpens" ...); they
    count every process of the namespace, not the benchmark's alone."""
    out: dict[str, int] = {}
    for name in ("/proc/net/snmp", "/proc/net/netstat"):
        with contextlib.suppress(OSError):
            lines = Path(name).read_text().splitlines()
            for head, values in zip(lines[::2], lines[1::2], strict=False):
                keys, numbers = head.split(), values.split()
                if keys and numbers and keys[0] == numbers[0]:
                    out.update({keys[0] + k: int(v) for k, v in zip(keys[1:], numbers[1:], strict=False)
                                if v.lstrip("-").isdigit()})
    return out


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """This thread on `cpu` for a while (the idle-connection client runs in the orchestrator itself)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# --- 1. idle connection memory -----------------------------------------------------------------------

def get(sock: socket.socket, path: str) -> None:
    """One keep-alive GET on `sock`, its answer read whole; raises unless it is a 200 that keeps the
    connection open."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: conn-bench\r\nUser-Agent: meshpy-conn-bench\r\n\r\n"
                 .encode("latin-1"))
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        resp.read()
        if resp.status != 200 or resp.will_close:
            raise RuntimeError(f"answer {resp.status}{' closing the connection' if resp.will_close else ''}")
    finally:
        resp.close()  # closes the file object over the socket, not the socket


def still_open(sock: socket.socket) -> bool:
    """False once the peer has closed the connection (or reset it)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def idle_memory(port: int, path: str, n: int, pids: Sequence[int], cpu: int | None) -> dict[str, Any]:
    """Open `n` connections, then one GET on each, with the proxy's RSS before, after opening and after
    the requests (see the module docstring)."""
    out: dict[str, Any] = {"connections": n}
    with pinned(cpu):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as warm:
            for _ in range(20):
                get(warm, path)
        fds0 = steady_fds(pids)  # the warm-up connection closed, the upstream one left open
        out["rss_before_kb"], settled = steady_rss(pids)
        socks: list[socket.socket] = []
        try:
            started = time.perf_counter()
            accepted = True
            while len(socks) < n and accepted:
                for _ in range(min(BATCH, n - len(socks))):
                    socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                accepted = wait_for(lambda: open_fds(pids) >= fds0 + len(socks), 10.0)
            out["open_s"] = round(time.perf_counter() - started, 3)
            out["opened"] = len(socks)
            out["held_open"] = open_fds(pids) - fds0  # what the proxy accepted and holds
            if not accepted:
                raise RuntimeError(f"the proxy took only {out['held_open']} of {len(socks)} connections "
                                   f"(of {n} to open) within 10 s")
            out["rss_open_kb"], settled_open = steady_rss(pids)
            started = time.perf_counter()
            served = 0
            for sock in socks:
                get(sock, path)
                served += 1
            out["served"] = served
            out["serve_s"] = round(time.perf_counter() - started, 3)
            out["rss_served_kb"], settled_served = steady_rss(pids)
            out["held_served"] = open_fds(pids) - fds0
            out["alive"] = sum(still_open(s) for s in socks)
            out["settled"] = settled and settled_open and settled_served
        finally:
            for sock in socks:
                sock.close()
    # The proxy lets them go before anything else is measured on it.
    out["released"] = wait_for(lambda: open_fds(pids) <= fds0, 15.0, interval=0.05)
    for key, rss in (("bare", out["rss_open_kb"]), ("served", out["rss_served_kb"])):
        out[f"kib_per_conn_{key}"] = round((rss - out["rss_before_kb"]) / n, 2)
    return out


# --- 2. connection rate ------------------------------------------------------------------------------

def churn_argv(url: str, settings: Settings) -> list[str]:
    """wrk opening a new connection per request: it reconnects whenever an answer closes the connection,
    and `Connection: close` makes every answer do so."""
    *head, _ = wrk_argv(url, settings.churn_connections, round(settings.duration) + 2)
    return [*head, "-H", "Connection: close", url]


def churn(port: int, path: str, settings: Settings, cpu: int | None) -> dict[str, Any]:
    """wrk's figures for a connection-churn run (no normal client, no proxy CPU: see conn_rate)."""
    argv = churn_argv(f"http://127.0.0.1:{port}{path}", settings)
    rc, text = run_tool(argv, timeout=settings.duration + 40, cpu=cpu)
    if rc != 0:
        raise RuntimeError(f"wrk exited {rc}: {text.strip()[-300:]}")
    w = parse_wrk(text)
    return {"conn_per_s": w["rps"], "connections": w["requests"], "duration_s": w["duration_s"],
            "errors": w["errors"] + w["non_2xx"], "argv": " ".join(argv[:-1]), "raw": text}


def conn_rate(port: int, path: str, pids: Sequence[int], settings: Settings,
              cpu: int | None) -> dict[str, Any]:
    """wrk's connection churn with the normal keep-alive client running inside it, and the proxy's CPU."""
    with ThreadPoolExecutor(1) as pool:
        normal = pool.submit(openloop.run_openloop, "127.0.0.1", port, path, settings.normal_rate,
                             settings.normal_connections, settings.duration, warmup=settings.warmup,
                             cpu=cpu, drain=2.0)
        cpu0, tcp0 = cpu_seconds(pids), tcp_counters()
        try:
            out = churn(port, path, settings, cpu)
        finally:
            cpu_s = cpu_seconds(pids) - cpu0
            tcp1 = tcp_counters()
            result = normal.result()
    out["kernel"] = {k.split(":")[1]: tcp1[k] - tcp0[k] for k in KERNEL_COUNTERS if k in tcp0 and k in tcp1}
    out["cpu_s"] = round(cpu_s, 3)
    out["cpu_busy"] = round(cpu_s / out["duration_s"], 3) if out["duration_s"] else None
    out["cpu_us_per_conn"] = round(cpu_s * 1e6 / out["connections"], 1) if out["connections"] else None
    result["latencies_us"] = log_histogram(result["latencies_us"])
    out["normal"] = result
    return out


# --- one contender, the rounds ---------------------------------------------------------------------

def idle_count(contender: Contender, settings: Settings) -> int:
    return min(settings.connections, NGINX_MAX_IDLE) if isinstance(contender, Nginx) else settings.connections


def measure(contender: Contender, origin: Origin, settings: Settings, load_cpu: int | None) -> dict[str, Any]:
    """Both measurements on one started contender; the flat figures are what report.py summarizes."""
    path = origin.paths["small"]
    out: dict[str, Any] = {}
    try:
        idle = idle_memory(contender.http_port, path, idle_count(contender, settings), contender.pids,
                           load_cpu)
        out["idle"] = idle
        out.update(idle_connections=idle["connections"], kib_per_conn_served=idle["kib_per_conn_served"],
                   kib_per_conn_bare=idle["kib_per_conn_bare"])
        time.sleep(0.2)
        rate = conn_rate(contender.http_port, path, contender.pids, settings, load_cpu)
    except (RuntimeError, WrkParseError, OSError, ValueError, http.client.HTTPException,
            subprocess.SubprocessError) as exc:
        return {**out, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    normal = rate["normal"]
    out["rate"] = rate
    out.update(conn_per_s=rate["conn_per_s"], churn_errors=rate["errors"],
               cpu_us_per_conn=rate["cpu_us_per_conn"], cpu_busy=rate["cpu_busy"],
               normal_requests=normal["completed"], normal_errors=normal["errors"],
               normal_p50_us=normal["p50_us"], normal_p99_us=normal["p99_us"])
    problems = []
    n = idle["connections"]
    if min(idle["held_open"], idle["held_served"], idle["alive"]) < n:
        problems.append(f"held {idle['held_open']} of {n} idle connections after opening, "
                        f"{idle['held_served']} after the requests, {idle['alive']} still open at the end")
    if rate["connections"] == 0:
        problems.append("no connection served by the churn client")
    if normal["completed"] == 0:
        problems.append("the normal client got no answer")
    out["ok"] = not problems
    out["error"] = "; ".join(problems) or None
    return out


def run_rounds(settings: Settings, contenders: Sequence[Contender], procs: Procs, workdir: Path,
               origin: Origin, rounds: int, proxy_cpu: int | None, load_cpu: int | None,
               save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The measurements for every contender, interleaved over rounds, each started afresh (pinned to
    proxy_cpu) and stopped after. Returns {"config": ..., "runs": [...]}, run.py's results["connections"].
    `save` gets that dict after each run, so a crash later keeps what was measured."""
    limit = raise_nofile(settings.connections + FD_HEADROOM)
    if limit < settings.connections + FD_HEADROOM:
        print(f"  connections: RLIMIT_NOFILE's hard limit allows {limit} descriptors, so "
              f"{limit - FD_HEADROOM} idle connections instead of {settings.connections}", flush=True)
        settings = replace(settings, connections=max(1, limit - FD_HEADROOM))
    out: dict[str, Any] = {"config": {**settings.describe(), "rlimit_nofile": limit}, "runs": []}
    for rnd in range(1, rounds + 1):
        for contender in contenders:
            try:
                contender.start(procs, workdir, origin, None, proxy_cpu)
            except (RuntimeError, TimeoutError, OSError) as exc:
                run: dict[str, Any] = {"ok": False, "error": f"did not start: {exc}"}
            else:
                try:
                    run = measure(contender, origin, settings, load_cpu)
                finally:
                    contender.stop(procs)
            out["runs"].append({"round": rnd, "contender": contender.name, **run})
            print(f"  connections, round {rnd} {contender.name:15} {line(run)}", flush=True)
            if save is not None:
                save(out)
    return out


def line(run: dict[str, Any]) -> str:
    if not run.get("ok"):
        return f"FAILED: {run.get('error')}"
    return (f"{run['kib_per_conn_served']:.2f} KiB/idle conn "
            f"({run['kib_per_conn_bare']:.2f} with no request), "
            f"{run['conn_per_s']:,.0f} new conn/s ({run['cpu_us_per_conn']:.0f} us CPU/conn, "
            f"CPU {run['cpu_busy']:.0%} busy), normal client p50 {run['normal_p50_us']:,.0f} us, "
            f"p99 {run['normal_p99_us']:,.0f} us, {run['normal_errors']} errors")


# --- standalone ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Path:
    envoy = envoy_binary()
    needed = ["wrk"] + ([] if args.only else ["envoy"])
    missing = missing_tools(needed, envoy)
    if missing and not args.allow_missing:
        sys.exit("conn_bench: missing " + "; ".join(missing) + ".\n`make bench-conns` installs them "
                 "(apt-get and pip, as root), or pass --allow-missing to run without them.")
    nginx_build = None if missing_tools(["nginx"], envoy) else nginx_build_options()
    wanted = args.only.split(",") if args.only else list(DEFAULT_CONTENDERS)
    contenders = [c for c in all_contenders(envoy, nginx_build, smoke=False) if c.name in wanted]
    if not contenders:
        sys.exit(f"conn_bench: none of {', '.join(wanted)} can run here")
    proxy_cpu, load_cpu = (None, None) if args.no_pin else (args.proxy_cpu, args.load_cpu)
    settings = Settings(connections=args.connections, duration=args.duration,
                        churn_connections=args.churn_connections, normal_rate=args.normal_rate)
    commit, dirty = git_commit()
    now = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "schema": 1, "mode": "connections", "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "date": now.strftime("%Y-%m-%d"), "commit": commit, "dirty": dirty, "rounds": args.rounds,
        "machine": machine_info(), "versions": tool_versions(envoy),
        "cpus": {"proxy": proxy_cpu, "load": load_cpu},
        "contenders": [{"name": c.name, "label": c.label, "is_proxy": c.is_proxy} for c in contenders],
    }
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"conns-{results['date']}-{commit}.json"

    def save(conns: dict[str, Any]) -> None:
        results["connections"] = conns
        path.write_text(json.dumps(results, indent=1))

    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="meshpy-conns-") as tmp, sigterm_as_exit():
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's worker runs as nobody and must reach the files served from here
        try:
            origin = start_origin(procs, workdir, load_cpu, nginx_build is not None, nginx_build or "")
            print(f"conn_bench: {args.rounds} round(s), {settings.connections:,} idle connections, "
                  f"{settings.duration:g} s of connection churn; origin {origin.kind} on CPU {load_cpu}, "
                  f"proxies on CPU {proxy_cpu}", flush=True)
            save(run_rounds(settings, contenders, procs, workdir, origin, args.rounds, proxy_cpu,
                            load_cpu, save))
        finally:
            procs.stop_all()
    print(f"conn_bench: results in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    ap.add_argument("--connections", type=int, default=defaults.connections, help="idle connections held")
    ap.add_argument("--duration", type=float, default=defaults.duration,
                    help="seconds of connection churn (the normal client's measured time)")
    ap.add_argument("--churn-connections", type=int, default=defaults.churn_connections,
                    help="wrk -c of the churn client")
    ap.add_argument("--normal-rate", type=float, default=defaults.normal_rate,
                    help="req/s of the normal keep-alive client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help=f"comma-separated contenders (default {','.join(DEFAULT_CONTENDERS)}; "
                                   "also meshpy-asyncio)")
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="no taskset (machines with one CPU)")
    ap.add_argument("--allow-missing", action="store_true", help="leave out contenders whose tool is missing")
    ap.add_argument("--out", help=f"directory for the results (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    path = run(args)
    import report

    print(report.render_connections(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
