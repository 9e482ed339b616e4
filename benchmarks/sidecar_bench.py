"""What a pair of sidecars costs a call between two pods: direct, through two meshpy sidecars, and
through two Envoy sidecars, with the same interception rules and the same config.

    python benchmarks/sidecar_bench.py [--duration 5] [--rounds 3] [--connections 32] [--out DIR]

Two network namespaces joined by a veth pair stand for two pods (needs root, ip and iptables). The
server pod runs the origin (nginx when installed, else meshpy's demo upstream); the client pod runs wrk
against the server's plain address. For the sidecar runs `meshpy iptables` is applied in both pods and
each gets a sidecar on one core: the client's outbound listener finds the listener for the server's
address by the original destination; the server's inbound listener hands the call on to the port it was
made to. Envoy runs the very same listeners and clusters, written as an Envoy bootstrap by the control
plane's export. Reported: req/s and latency percentiles per setup (median round), and each setup's
sidecar CPU per request.
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
from pathlib import Path
from typing import Any

import tools
import yaml
from contenders import nginx_build_options, nginx_origin_conf, nginx_proc, python_env
from tools import Proc, Procs

TAG = f"mpb{os.getpid() % 100000}"
CLIENT, SERVER = f"{TAG}-c", f"{TAG}-s"
CLIENT_IP, SERVER_IP, PORT = "10.79.0.1", "10.79.0.2", 8080
PROXY_GID = 10001
LOAD_CPU, PROXY_CPU = 0, 1

CLIENT_SIDECAR = f"""
admin: 127.0.0.1:15000
drain_time: 0s
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    original_destination: true
    direction: outbound
    protocol: tcp
    cluster: passthrough
  - name: server_{PORT}
    address: {SERVER_IP}:{PORT}
    bind: false
    direction: outbound
    generate_request_id: false
    routes:
      - match: /
        cluster: server
clusters:
  - {{name: passthrough, type: original_dst}}
  - {{name: server, endpoints: ["{SERVER_IP}:{PORT}"]}}
"""
SERVER_SIDECAR = """
admin: 127.0.0.1:15000
drain_time: 0s
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    original_destination: true
    direction: inbound
    generate_request_id: false
    routes:
      - match: /
        cluster: inbound_app
clusters:
  - {name: inbound_app, type: original_dst}
"""


def sh(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def build_network() -> None:
    for ns in (CLIENT, SERVER):
        sh("ip", "netns", "add", ns)
    sh("ip", "-n", CLIENT, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", SERVER)
    for ns, ip in ((CLIENT, CLIENT_IP), (SERVER, SERVER_IP)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def remove_network() -> None:
    for ns in (CLIENT, SERVER):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def envoy_bootstrap(meshpy_yaml: str) -> dict[str, Any]:
    """The meshpy config as an Envoy bootstrap: the control plane's export, with each listener's routes
    inline and each cluster's endpoints in a load_assignment (no xDS server in this run)."""
    sys.path.insert(0, str(tools.ROOT))
    from control.sources.export import export
    from control.sources.export_static import static_bootstrap
    from meshpy.model.meshpy_yaml import load_meshpy

    data = yaml.safe_load(meshpy_yaml)
    host, port = data["admin"].rsplit(":", 1)
    return static_bootstrap(export(load_meshpy(data)), (host, int(port)))


def start_sidecars(procs: Procs, work: Path, kind: str) -> list[Proc]:
    """Rules in both pods, then a sidecar in each, running with the proxy's GID the rules let pass."""
    started: list[Proc] = []
    for ns, config in ((CLIENT, CLIENT_SIDECAR), (SERVER, SERVER_SIDECAR)):
        sh(*in_ns(ns, [sys.executable, "-m", "meshpy", "iptables", "--proxy-gid", str(PROXY_GID)]))
        if kind == "meshpy":
            path = work / f"{ns}.yaml"
            path.write_text(config)
            argv = [sys.executable, "-m", "meshpy", "run", "-c", str(path), "--log-level", "warning"]
        else:
            path = work / f"{ns}-envoy.json"
            path.write_text(json.dumps(envoy_bootstrap(config)))
            envoy = tools.envoy_binary()
            assert envoy is not None
            argv = [envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level",
                    "warning", "--base-id", str(os.getpid() % 50000 + len(started) + 1)]
        proc = Proc(f"{kind}-{ns}", ["setpriv", f"--regid={PROXY_GID}", "--clear-groups", *argv],
                    work / f"{kind}-{ns}.log", cpu=PROXY_CPU, env=python_env())
        proc.argv = in_ns(ns, proc.argv)
        started.append(procs.start(proc))
    for proc, ns in zip(started, (CLIENT, SERVER), strict=True):
        proc.wait_until(lambda ns=ns: _ready(ns), timeout=30)
    return started


def _ready(ns: str) -> bool:
    done = subprocess.run(in_ns(ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "1",
                                     "http://127.0.0.1:15000/ready"]), capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() == "200"


def stop_sidecars(procs: Procs, started: list[Proc]) -> None:
    for proc in started:
        procs.stop(proc)
    for ns in (CLIENT, SERVER):
        subprocess.run(in_ns(ns, [sys.executable, "-m", "meshpy", "iptables", "--cleanup"]),
                       capture_output=True, check=False, env=python_env())


def measure(args: argparse.Namespace, path: str, pids: list[int]) -> dict[str, Any]:
    url = f"http://{SERVER_IP}:{PORT}{path}"
    argv = in_ns(CLIENT, tools.wrk_argv(url, args.connections, args.duration, latency=True))
    cpu0 = tools.cpu_seconds(pids)
    code, out = tools.run_tool(argv, args.duration + 30, LOAD_CPU)
    cpu = tools.cpu_seconds(pids) - cpu0
    if code != 0:
        raise RuntimeError(f"wrk failed: {out}")
    parsed = tools.parse_wrk(out)
    if parsed["non_2xx"] or parsed["errors"]:
        raise RuntimeError(f"errors under load: {out}")
    parsed["sidecar_cpu_us_per_rq"] = round(cpu * 1e6 / parsed["requests"], 1) if pids else 0.0
    return parsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = ["direct", "meshpy"] + (["envoy"] if tools.envoy_binary() else [])
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    procs = Procs()
    build_network()
    try:
        with tempfile.TemporaryDirectory(prefix="meshpy-sidecar-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            build = nginx_build_options()
            if build:
                prefix = work / "origin"
                conf = nginx_origin_conf(prefix, PORT, build).replace(f"127.0.0.1:{PORT}", f"0.0.0.0:{PORT}")
                origin = nginx_proc("origin", prefix, conf, LOAD_CPU)
                origin.argv = in_ns(SERVER, origin.argv)
                kind, path = "nginx", "/hello"
            else:
                origin = Proc("origin", in_ns(SERVER, [sys.executable, "-m", "meshpy", "demo-upstream",
                                                       "--listen", f"0.0.0.0:{PORT}"]),
                              work / "origin.log", cpu=LOAD_CPU, env=python_env())
                kind, path = "meshpy-demo-upstream", "/hello"
            procs.start(origin)
            origin.wait_until(lambda: subprocess.run(
                in_ns(CLIENT, ["curl", "-sf", "-o", "/dev/null", f"http://{SERVER_IP}:{PORT}{path}"]),
                check=False).returncode == 0)
            for _ in range(args.rounds):
                for k in kinds:
                    started = start_sidecars(procs, work, k) if k != "direct" else []
                    try:
                        rounds[k].append(measure(args, path, [p.pid for p in started]))
                    finally:
                        stop_sidecars(procs, started)
    finally:
        procs.stop_all()
        remove_network()
    summary = {}
    for k, runs in rounds.items():
        mid = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        summary[k] = {"rps": mid["rps"], "p50_us": mid.get("p50_us"), "p99_us": mid.get("p99_us"),
                      "sidecar_cpu_us_per_rq": statistics.median(r["sidecar_cpu_us_per_rq"] for r in runs)}
    commit, dirty = tools.git_commit()
    return {"benchmark": "sidecar", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), "commit": commit,
            "dirty": dirty, "origin": kind, "connections": args.connections, "duration_s": args.duration,
            "summary": summary, "rounds": rounds}


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables-restore", "wrk", "curl", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--out", default=None, help="directory for the JSON result (default benchmarks/results)")
    args = p.parse_args()
    reason = why_not()
    if reason is not None:
        print(f"sidecar benchmark: {reason}", file=sys.stderr)
        return 2
    result = run(args)
    out = Path(args.out) if args.out else tools.ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sidecar-{result['date']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1))
    s = result["summary"]
    for k, r in s.items():
        ratio = f" ({r['rps'] / s['direct']['rps']:.0%} of direct)" if k != "direct" else ""
        cpu = f", sidecars' CPU {r['sidecar_cpu_us_per_rq']:.1f} us per request" if k != "direct" else ""
        print(f"{k:7} {r['rps']:>9,.0f} req/s{ratio}, p50 {r['p50_us'] or 0:,.0f} us, "
              f"p99 {r['p99_us'] or 0:,.0f} us{cpu}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
