"""The control plane at scale: N simulated state-of-the-world ADS clients, and the time from a config
change to the last ACK.

    python benchmarks/xds_scale.py [--nodes 100,1000,5000] [--workers 4] [--clusters 20] [--changes 3]
                                   [--out DIR] [--no-pin]

For each N, `meshpy control` runs alone on CPU 1, polling a resource directory (a Listener with RDS
"local", that RouteConfiguration, --clusters EDS Clusters and their assignments) every 50 ms. --workers
processes on CPU 0 open N/workers ADS streams, each on its own channel and TCP connection as real clients
have: CDS and LDS wildcard, then EDS for the clusters received and RDS "local", every response ACKed at once.
A change rewrites one ClusterLoadAssignment; a stream's latency runs from just before the write to its ACK
of the last response that brings its config to the new state (EDS alone: the control plane versions
each type on its own), so it includes the wait for the next poll (25 ms on average) and
the clients' own CPU, all on one core. Writes benchmarks/results/xds-scale-<date>-<commit>.json and a
Markdown table; stops at the first N that does not connect or converge within the bounds, saying why.
"""

from __future__ import annotations

import os

os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"  # before grpc loads: this process spawns the others

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import tools
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE

RESULTS = tools.ROOT / "benchmarks" / "results"
CP_CPU, CLIENT_CPU = 1, 0
POLL = 0.05


# --- the simulated clients (worker processes) -------------------------------------------------------

def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")  # worker() flushes in batches


async def client(channel: grpc.aio.Channel, node_id: str, clusters_of: dict[str, list[str]]) -> None:
    """Reconnects as Envoy does, after a jittered backoff doubling from 0.5 s to 30 s: a server that
    sheds part of a connection storm then sees the retries, not clients gone for good."""
    backoff = 0.5
    while True:
        emit({"n": node_id, "err": await one_stream(channel, node_id, clusters_of)})
        await asyncio.sleep(random.uniform(0, backoff))
        backoff = min(2 * backoff, 30.0)


async def one_stream(channel: grpc.aio.Channel, node_id: str, clusters_of: dict[str, list[str]]) -> str:
    """One ADS stream: emits a record each time its config (the versions it has ACKed for all four types;
    the control plane versions each type on its own) becomes a new one; returns why the stream ended."""
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    subscribed: dict[str, list[str]] = {CLUSTER: [], LISTENER: []}  # empty: wildcard
    acked: dict[str, str] = {}
    first = 0.0  # when the first response since the last record was ACKed
    done = ""  # the config last recorded: a repeated answer at it is no new convergence
    try:
        await call.write(DiscoveryRequest(node=base_pb2.Node(id=node_id, cluster="sim"), type_url=CLUSTER))
        await call.write(DiscoveryRequest(type_url=LISTENER))
        # The only reader of this stream: cancelling a grpc.aio read would cancel the call itself.
        while (resp := await call.read()) is not grpc.aio.EOF:
            ver, type_url = resp.version_info, resp.type_url
            follow = None
            if type_url == CLUSTER:
                # Every client gets the same clusters at a version: parse them once per worker.
                if (names := clusters_of.get(ver)) is None:
                    names = clusters_of[ver] = sorted(cluster_pb2.Cluster.FromString(a.value).name
                                                      for a in resp.resources)
                if names != subscribed.get(ENDPOINT):
                    subscribed[ENDPOINT] = names
                    follow = DiscoveryRequest(type_url=ENDPOINT, resource_names=names)
            elif type_url == LISTENER and ROUTE not in subscribed:
                subscribed[ROUTE] = ["local"]
                follow = DiscoveryRequest(type_url=ROUTE, resource_names=["local"])
            now = time.time()
            # The ACK repeats the subscription: other names would be a new request, answered again.
            await call.write(DiscoveryRequest(type_url=type_url, version_info=ver, response_nonce=resp.nonce,
                                              resource_names=subscribed.get(type_url, [])))
            if follow is not None:
                await call.write(follow)
            acked[type_url] = ver
            first = first or now
            config = "/".join(acked[t] for t in sorted(acked))
            if len(acked) == 4 and config != done:
                emit({"n": node_id, "v": config, "first": first, "last": now})
                done = config
                first = 0.0
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    except asyncio.InvalidStateError:
        return "write after the call ended"
    return "the server ended the stream"


async def worker(worker_id: int, count: int, port: int) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    parent = os.getppid()
    emit({"start": time.time()})
    clusters_of: dict[str, list[str]] = {}
    # A local subchannel pool each: gRPC would otherwise share one connection among the channels to a
    # target, and the control plane would see a few connections instead of N.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) for _ in range(count)]
    tasks = [asyncio.create_task(client(ch, f"sim-{worker_id}-{i}", clusters_of))
             for i, ch in enumerate(channels)]
    while not stop.is_set() and os.getppid() == parent:  # orphaned (orchestrator killed): go too
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
        sys.stdout.flush()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
    sys.stdout.flush()


# --- resources (JSON is YAML: written with json.dumps) ------------------------------------------------

def cla(name: str, port: int) -> dict[str, Any]:
    ep = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {"@type": ENDPOINT, "cluster_name": name, "endpoints": [{"lb_endpoints": [ep]}]}


def write_resources(where: Path, clusters: int) -> list[str]:
    """Each assignment in a file of its own, so that a change rewrites one small file."""
    names = [f"c{i:03d}" for i in range(clusters)]
    ads = {"ads": {}, "resource_api_version": "V3"}
    ext = "type.googleapis.com/envoy.extensions.filters"
    hcm = {"@type": f"{ext}.network.http_connection_manager.v3.HttpConnectionManager", "stat_prefix": "web",
           "rds": {"route_config_name": "local", "config_source": ads},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": f"{ext}.http.router.v3.Router"}}]}
    listener = {"@type": LISTENER, "name": "web",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10001}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}
    vhost = {"name": "all", "domains": ["*"],
             "routes": [{"match": {"prefix": f"/{n}/"}, "route": {"cluster": n}} for n in names]}
    cds = [{"@type": CLUSTER, "name": n, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": ads}} for n in names]
    for file, body in (("listener", listener), ("routes", {"@type": ROUTE, "name": "local",
                                                           "virtual_hosts": [vhost]}), ("clusters", cds)):
        (where / f"{file}.yaml").write_text(json.dumps(body, indent=1))
    for n in names:
        (where / f"eds-{n}.yaml").write_text(json.dumps(cla(n, 18000)))
    return names


def rewrite(where: Path, name: str, port: int) -> None:
    """Replaced whole (the temporary name is not *.yaml): the poller never reads half a file."""
    tmp = where / f"eds-{name}.tmp"
    tmp.write_text(json.dumps(cla(name, port)))
    os.replace(tmp, where / f"eds-{name}.yaml")


# --- the orchestrator ----------------------------------------------------------------------------------

class Records:
    """What the workers report, read from their logs as it comes."""

    def __init__(self, logs: list[Path]) -> None:
        self.tails = {p: (0, b"") for p in logs}
        self.acks: dict[str, dict[str, tuple[float, float]]] = {}  # version -> node -> (first, last)
        self.versions: list[str] = []  # in the order first seen
        self.errors: dict[str, int] = {}  # why a stream ended -> how often
        self.starts: list[float] = []

    def collect(self) -> None:
        for path, (pos, rest) in self.tails.items():
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
            *lines, tail = (rest + data).split(b"\n")
            self.tails[path] = (pos + len(data), tail)
            for rec in (json.loads(ln) for ln in lines if ln.startswith(b"{")):  # not gRPC's own logs
                if "start" in rec:
                    self.starts.append(rec["start"])
                elif "err" in rec:
                    self.errors[rec["err"]] = self.errors.get(rec["err"], 0) + 1
                else:
                    if rec["v"] not in self.acks:
                        self.versions.append(rec["v"])
                    self.acks.setdefault(rec["v"], {})[rec["n"]] = (rec["first"], rec["last"])

    def wait(self, index: int, n: int, timeout: float, procs: list[tools.Proc]) -> tuple[bool, list[Any]]:
        """Until n streams have ACKed the index-th version seen; also (s, streams there) each second, which
        shows a stall or a slow climb."""
        start = time.monotonic()
        timeline: list[Any] = []
        while self.count(index) < n:
            time.sleep(0.02)
            self.collect()
            if (now := time.monotonic() - start) > timeout or not all(p.alive() for p in procs):
                return False, timeline
            if now >= len(timeline) + 1:
                timeline.append((len(timeline) + 1, self.count(index)))
        return True, timeline

    def count(self, index: int) -> int:
        return len(self.acks[self.versions[index]]) if len(self.versions) > index else 0


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^meshpy_control_(\w+) (\S+)$", text, re.MULTILINE)}


def pct(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def one_size(n: int, args: argparse.Namespace, procs: tools.Procs, tmp: Path) -> dict[str, Any]:
    """Everything measured at N clients; `stopped` says why it did not finish, if it did not."""
    pin, env = not args.no_pin, {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0"}
    rdir = tmp / f"resources-{n}"
    rdir.mkdir()
    names = write_resources(rdir, args.clusters)
    port, aport = tools.free_port(), tools.free_port()
    argv = [sys.executable, "-m", "meshpy", "control", "--listen", f"127.0.0.1:{port}", "--admin",
            f"127.0.0.1:{aport}", "--envoy-dir", str(rdir), "--poll-interval", str(POLL),
            "--log-level", "warning"]
    cp = procs.start(tools.Proc("control", argv, tmp / f"control-{n}.log", CP_CPU if pin else None, env))
    out: dict[str, Any] = {"nodes": n, "stopped": None, "configured": 0}
    out["cp_ready_s"] = round(cp.wait_until(lambda: tools.http_status(aport, "/ready") == 200, 30, 0.05), 3)
    time.sleep(0.5)
    out["rss_idle_kb"] = tools.rss_kb([cp.pid])
    shares = [n // args.workers + (w < n % args.workers) for w in range(args.workers)]
    workers = [procs.start(tools.Proc(f"worker-{w}", [sys.executable, __file__, f"--worker={w}:{k}:{port}"],
                                      tmp / f"worker-{n}-{w}.log", CLIENT_CPU if pin else None, env))
               for w, k in enumerate(shares) if k > 0]
    rec, everyone = Records([w.log for w in workers]), [cp, *workers]
    ok, timeline = rec.wait(0, n, args.connect_timeout, everyone)
    connected = int(metrics(aport).get("connected_nodes", 0))
    out.update(connected=connected, configured=rec.count(0), connect_timeline=timeline,
               stream_ends=rec.errors)
    if not ok:
        dead = [p.name for p in everyone if not p.alive()]
        out["stopped"] = (f"{n:,}: only {connected:,} connected and {rec.count(0):,} configured "
                          + (f"({', '.join(dead)} exited)" if dead else f"in {args.connect_timeout:.0f} s")
                          + (f"; streams ended {sum(rec.errors.values()):,} times, mostly "
                             f"{max(rec.errors, key=rec.errors.__getitem__)!r}" if rec.errors else ""))
        return out
    out["connect_s"] = round(max(last for _, last in rec.acks[rec.versions[0]].values()) - min(rec.starts), 3)
    time.sleep(1.0)  # the connect burst over: RSS at rest
    out["rss_connected_kb"] = tools.rss_kb([cp.pid])
    out["rss_per_node_kb"] = round((out["rss_connected_kb"] - out["rss_idle_kb"]) / n, 2)
    before, out["changes"] = metrics(aport), []
    for k in range(args.changes):
        seen = len(rec.versions)
        cpu0, wcpu0 = tools.cpu_seconds([cp.pid]), tools.cpu_seconds([w.pid for w in workers])
        t0 = time.time()
        rewrite(rdir, names[k % len(names)], 20000 + k)  # a port never used before: always a new version
        converged, _ = rec.wait(seen, n, args.converge_timeout, everyone)
        acks = rec.acks[rec.versions[seen]] if len(rec.versions) > seen else {}
        lat = sorted((last - t0) * 1000 for _, last in acks.values())
        change: dict[str, Any] = {
            "version": rec.versions[seen] if acks else None, "not_converged": n - len(acks),
            "cp_cpu_s": round(tools.cpu_seconds([cp.pid]) - cpu0, 3),
            "clients_cpu_s": round(tools.cpu_seconds([w.pid for w in workers]) - wcpu0, 3),
            "first_ack_ms": round(min(f - t0 for f, _ in acks.values()) * 1000, 2) if acks else None,
            "latency_ms": [round(x, 2) for x in lat]}
        out["changes"].append(change)
        print(f"  {n:,} nodes, change {k + 1}: {len(acks):,}/{n:,} ACKed, last after "
              f"{lat[-1] if lat else math.nan:,.0f} ms, control plane {change['cp_cpu_s']} CPU s", flush=True)
        if not converged:
            out["stopped"] = (f"{n:,}: change {k + 1}: {n - len(acks):,} of {n:,} streams had not ACKed the "
                              f"new version after {args.converge_timeout:.0f} s")
            break
        time.sleep(0.3)  # the last ACKs handled before the next change is measured
    after = metrics(aport)
    out["metrics_delta"] = {k: after[k] - before.get(k, 0) for k in ("pushes_total", "acks_total",
                                                                      "nacks_total")}
    return out


def row(r: dict[str, Any]) -> str:
    """Percentiles over every stream of every change of that N."""
    ch = r.get("changes", [])
    lat = sorted(x for c in ch for x in c["latency_ms"])
    if not lat:
        connect = f"{r['connect_s']:.2f}" if "connect_s" in r else "-"
        missing = sum(c["not_converged"] for c in ch) if ch else r["nodes"] - r["configured"]
        return f"| {r['nodes']:,} | {connect} |" + " - |" * 6 + f" {missing:,} |"
    cpu = sum(c["cp_cpu_s"] for c in ch) / len(ch)
    return (f"| {r['nodes']:,} | {r['connect_s']:.2f} | {pct(lat, 0.5):,.0f} | {pct(lat, 0.99):,.0f} | "
            f"{lat[-1]:,.0f} | {cpu:.2f} | {r['rss_connected_kb'] / 1024:.0f} | {r['rss_per_node_kb']:.0f} | "
            f"{sum(c['not_converged'] for c in ch):,} |")


def run(args: argparse.Namespace) -> Path:
    commit, dirty = tools.git_commit()
    now = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "schema": 1, "benchmark": "xds-scale", "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "date": now.strftime("%Y-%m-%d"), "commit": commit, "dirty": dirty, "machine": tools.machine_info(),
        "versions": {"grpcio": grpc.__version__}, "poll_interval_s": POLL,
        "cpus": None if args.no_pin else {"control": CP_CPU, "clients": CLIENT_CPU},
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "sizes": [], "stopped": None}
    if not args.no_pin:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this process reads the logs: not on the control plane's CPU
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"xds-scale-{results['date']}-{commit}.json"
    with tempfile.TemporaryDirectory(prefix="meshpy-xds-") as tmp, tools.sigterm_as_exit():
        for n in args.nodes:
            procs = tools.Procs()
            try:
                r = one_size(n, args, procs, Path(tmp))
            except (RuntimeError, TimeoutError, OSError) as exc:
                r = {"nodes": n, "configured": 0, "stopped": f"{n:,}: {type(exc).__name__}: {exc}"}
            finally:
                for p in procs.items:  # all signalled first: thousands of streams wind down together
                    with contextlib.suppress(ProcessLookupError):
                        if p.popen is not None and p.alive():
                            p.popen.send_signal(signal.SIGTERM)
                procs.stop_all()
            results["sizes"].append(r)
            path.write_text(json.dumps(results, indent=1))  # a crash later keeps what was measured
            if r["stopped"]:
                results["stopped"] = r["stopped"]
                break
    path.write_text(json.dumps(results, indent=1))
    print(f"\nADS state of the world, {args.clusters} EDS clusters; a change rewrites one assignment. "
          f"Latency: from the write to each stream's last ACK, including the {POLL * 1000:.0f} ms poll.\n")
    print("| nodes | connect + initial config s | change→ACK p50 ms | p99 ms | max ms | "
          "control-plane CPU s/change | RSS MiB | KiB/node | not converged |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["sizes"]:
        print(row(r))
    if results["stopped"]:
        print(f"\nstopped at {results['stopped']}")
    print(f"\nresults in {path.relative_to(tools.ROOT) if path.is_relative_to(tools.ROOT) else path}")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 5000])
    ap.add_argument("--workers", type=int, default=4, help="client processes (all on CPU 0)")
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--changes", type=int, default=3)
    ap.add_argument("--connect-timeout", type=float, default=60.0, help="seconds for N to get the config")
    ap.add_argument("--converge-timeout", type=float, default=30.0, help="seconds for N to ACK a change")
    ap.add_argument("--out", help=f"directory for the results (default {RESULTS.relative_to(tools.ROOT)})")
    ap.add_argument("--no-pin", action="store_true", help="no taskset (machines with one CPU)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # ID:STREAMS:PORT: a client process, this file too
    args = ap.parse_args(argv)
    if args.worker is not None:
        asyncio.run(worker(*(int(x) for x in args.worker.split(":"))))
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
