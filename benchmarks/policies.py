"""What resilience costs on the request path: a route with retries, a circuit breaker and outlier
detection against a plain route, in one meshpy process, in one run.

    python benchmarks/policies.py [--duration 5] [--rounds 3] [--connections 50] [--no-pin] [--out DIR]

meshpy (pinned to CPU 1) serves two listeners from one config: `plain` (round robin, nothing else)
and `guarded` (retry on 5xx with 2 retries, a per-try timeout, tight-but-not-hit circuit breakers,
outlier detection and its interval, the retry budget); both forward to the same origin (nginx when
installed, else meshpy's demo upstream) on CPU 0 with the load generator. wrk alternates between them
for `rounds` rounds; the figure is the ratio of medians. Nothing fails, so no retry happens: this is
the cost of having the policies, which is what every request pays. Target: at most 10% slower.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import tools
from contenders import nginx_build_options, python_env, start_origin
from tools import Proc, Procs, free_port, http_status

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: plain
    address: 127.0.0.1:{plain}
    routes:
      - match: /
        cluster: plain
  - name: guarded
    address: 127.0.0.1:{guarded}
    routes:
      - match: /
        cluster: guarded
        retry: {{retry_on: [5xx, reset, connect-failure], num_retries: 2, per_try_timeout: 2s}}
clusters:
  - name: plain
    endpoints: [127.0.0.1:{origin}]
  - name: guarded
    endpoints: [127.0.0.1:{origin}]
    circuit_breakers: {{max_connections: 512, max_pending_requests: 512, max_requests: 512}}
    outlier_detection: {{consecutive_5xx: 5, interval: 1s, base_ejection_time: 30s}}
"""
TARGET = 0.90


def measure(port: int, path: str, args: argparse.Namespace, cpu: int | None) -> float:
    argv = tools.wrk_argv(f"http://127.0.0.1:{port}{path}", args.connections, args.duration)
    code, out = tools.run_tool(argv, args.duration + 30, cpu)
    if code != 0:
        raise RuntimeError(f"wrk failed: {out}")
    parsed = tools.parse_wrk(out)
    if parsed["non_2xx"] or parsed["errors"]:
        raise RuntimeError(f"errors under load: {out}")
    return float(parsed["rps"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    proxy_cpu, load_cpu = (None, None) if args.no_pin else (1, 0)
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="meshpy-policies-") as tmp:
        work = Path(tmp)
        try:
            build = nginx_build_options()
            origin = start_origin(procs, work, load_cpu, bool(build), build)
            admin, plain, guarded = free_port(), free_port(), free_port()
            conf = work / "meshpy.yaml"
            conf.write_text(CONFIG.format(admin=admin, plain=plain, guarded=guarded, origin=origin.port))
            argv = [sys.executable, "-m", "meshpy", "run", "-c", str(conf), "--log-level", "warning"]
            proc = procs.start(Proc("meshpy", argv, work / "meshpy.log", cpu=proxy_cpu, env=python_env()))
            proc.wait_until(lambda: http_status(admin, "/ready") == 200)
            path = origin.paths["small"]
            results: dict[str, list[float]] = {"plain": [], "guarded": []}
            for _ in range(args.rounds):
                for name, port in (("plain", plain), ("guarded", guarded)):
                    results[name].append(measure(port, path, args, load_cpu))
        finally:
            procs.stop_all()
    plain_rps, guarded_rps = statistics.median(results["plain"]), statistics.median(results["guarded"])
    ratio = guarded_rps / plain_rps
    commit, dirty = tools.git_commit()
    return {
        "benchmark": "policies", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), "commit": commit,
        "dirty": dirty, "origin": origin.kind, "connections": args.connections, "duration_s": args.duration,
        "rounds": results, "plain_rps": plain_rps, "guarded_rps": guarded_rps, "ratio": round(ratio, 3),
        "target": TARGET, "met": ratio >= TARGET,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", default=None, help="directory for the JSON result (default benchmarks/results)")
    args = p.parse_args()
    result = run(args)
    out = Path(args.out) if args.out else tools.ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"policies-{result['date']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1))
    verdict = "met" if result["met"] else "NOT met"
    print(f"plain {result['plain_rps']:,.0f} req/s, with retries + breaker + outlier detection "
          f"{result['guarded_rps']:,.0f} req/s: {result['ratio']:.1%} of plain (target >= {TARGET:.0%}: "
          f"{verdict})\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
