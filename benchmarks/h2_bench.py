"""HTTP/2 and gRPC through meshpy and through Envoy, with h2load, as ratios; and meshpy's CPU per
request against h2's own cost (benchmarks/micro_h2.py), the ceiling the issue holds meshpy to.

    python benchmarks/h2_bench.py [--requests 20000] [--rounds 3] [--no-pin] [--out DIR]

Scenarios (h2load, 4 connections x 10 streams each, cleartext HTTP/2 with prior knowledge):
- h2-get: GET /hello, HTTP/2 in, HTTP/1.1 out to nginx (the usual sidecar-in-front-of-an-app case);
- grpc-unary: a gRPC-shaped unary call (POST, application/grpc, te: trailers, 10-byte message, an
  answer with grpc-status in trailers), HTTP/2 both sides, to nginx speaking HTTP/2 (a static answer
  with add_trailer: the origin costs next to nothing, so the proxies are what is measured).
meshpy and Envoy run alone on the proxy CPU (1), one worker each; the origin and h2load share CPU 0.
Rounds interleave meshpy and Envoy. Reported per scenario: median req/s of each, meshpy/Envoy, and
meshpy's CPU microseconds per request (its CPU time over the run / requests) beside h2's own cost for
the same sides (server side alone for h2-get, server + client for grpc-unary) and their quotient; the
target is at most 1.5x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import micro_h2
import tools
from contenders import nginx_build_options, python_env, start_origin
from tools import Proc, Procs, free_port, http_status

MESHPY = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /bench.Echo/
        cluster: grpc
        timeout: 0s
      - match: /
        cluster: origin
clusters:
  - name: origin
    endpoints: [127.0.0.1:{origin}]
  - name: grpc
    protocol: http2
    endpoints: [127.0.0.1:{grpc}]
"""

ENVOY = """
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: web
          codec_type: AUTO
          http2_protocol_options: {{max_concurrent_streams: 100}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /bench.Echo/}}
                route: {{cluster: grpc, timeout: 0s}}
              - match: {{prefix: /}}
                route: {{cluster: origin}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: origin
    type: STATIC
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {origin}}}}}}}
  - name: grpc
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {grpc}}}}}}}
"""

GRPC_ORIGIN = """
pid {work}/grpc-origin.pid;
error_log {work}/grpc-origin.err warn;
daemon off;
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fcgi;
    uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    access_log off;
    http2_max_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} http2;
        location /bench.Echo/ {{
            default_type application/grpc;
            add_trailer grpc-status 0;
            return 200 'hello-grpc';
        }}
    }}
}}
"""

GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"
TARGET = 1.5
_DONE = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored")
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_RPS = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")


def h2load(port: int, scenario: str, requests: int, work: Path, cpu: int | None) -> tuple[float, int]:
    """(req/s, requests done) of one h2load run of `requests` requests (a count, not a duration, so
    that the proxy's CPU time over the run divides by exactly the requests it served)."""
    url = f"http://127.0.0.1:{port}"
    argv = ["h2load", "-c", "4", "-m", "10", "-t", "1", "-n", str(requests)]
    if scenario == "grpc-unary":
        body = work / "grpc-message"
        body.write_bytes(GRPC_MESSAGE)
        argv += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                 f"{url}/bench.Echo/Unary"]
    else:
        argv.append(f"{url}/hello")
    code, out = tools.run_tool(argv, 300, cpu)
    done, rps = _DONE.search(out), _RPS.search(out)
    if code != 0 or done is None or rps is None or int(done.group(4)) or int(done.group(5)):
        raise RuntimeError(f"h2load failed or saw errors:\n{out}")
    return float(rps.group(1)), int(done.group(3))


def h2_cost(scenario: str, cpu: int | None) -> float:
    """h2's own microseconds per request for the sides meshpy plays in `scenario`, with the headers
    each side really carries (micro_h2.proxy_ceiling), on the CPU meshpy runs on."""
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        return micro_h2.proxy_ceiling(scenario, 2000) * 1e6
    finally:
        os.sched_setaffinity(0, before)


def run(args: argparse.Namespace) -> dict[str, Any]:
    proxy_cpu, load_cpu = (None, None) if args.no_pin else (1, 0)
    envoy = None if args.no_envoy else tools.envoy_binary()
    procs = Procs()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="meshpy-h2-") as tmp:
        work = Path(tmp)
        try:
            build = nginx_build_options()
            origin = start_origin(procs, work, load_cpu, bool(build), build)
            grpc_port = free_port()
            for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
                (work / d).mkdir()
            (work / "grpc-origin.conf").write_text(GRPC_ORIGIN.format(work=work, port=grpc_port))
            argv = ["nginx", "-c", str(work / "grpc-origin.conf"), "-p", str(work)]
            grpc_origin = procs.start(Proc("grpc-origin", argv, work / "grpc-origin.log", cpu=load_cpu))
            grpc_origin.wait_until(lambda: _listening(grpc_port))
            ports = {"origin": origin.port, "grpc": grpc_port}
            contenders = [("meshpy", _start_meshpy(procs, work, ports, proxy_cpu))]
            if envoy is not None:
                contenders.append(("envoy", _start_envoy(procs, work, ports, proxy_cpu, envoy)))
            for scenario in args.scenarios:
                per: dict[str, list[float]] = {f"{name}_rps": [] for name, _ in contenders}
                per["meshpy_cpu_us"] = []
                per["h2_cost_us"] = []
                for _ in range(args.rounds):
                    # h2's own cost is measured in every round, beside the load, so that both see
                    # the same machine: on a shared host absolute times drift by half within minutes.
                    per["h2_cost_us"].append(h2_cost(scenario, proxy_cpu))
                    for name, (port, proc) in contenders:
                        cpu0 = tools.cpu_seconds(proc.pids)
                        rps, done = h2load(port, scenario, args.requests, work, load_cpu)
                        per[f"{name}_rps"].append(rps)
                        if name == "meshpy":
                            per["meshpy_cpu_us"].append((tools.cpu_seconds(proc.pids) - cpu0) / done * 1e6)
                results[scenario] = per
        finally:
            procs.stop_all()
    commit, dirty = tools.git_commit()
    summary: dict[str, Any] = {}
    for scenario, per in results.items():
        m = statistics.median(per["meshpy_rps"])
        cpu = statistics.median(per["meshpy_cpu_us"])
        over = statistics.median(c / h for c, h in zip(per["meshpy_cpu_us"], per["h2_cost_us"], strict=True))
        s: dict[str, Any] = {"meshpy_rps": m, "meshpy_cpu_us": round(cpu, 1),
                             "h2_cost_us": round(statistics.median(per["h2_cost_us"]), 1),
                             "over_h2": round(over, 2)}
        if "envoy_rps" in per:
            e = statistics.median(per["envoy_rps"])
            s |= {"envoy_rps": e, "meshpy_over_envoy": round(m / e, 3)}
        summary[scenario] = s
    return {"benchmark": "http2", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), "commit": commit,
            "dirty": dirty, "requests": args.requests, "rounds": results, "summary": summary,
            "target_over_h2": TARGET}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _start_meshpy(procs: Procs, work: Path, ports: dict[str, int], cpu: int | None) -> tuple[int, Proc]:
    admin, port = free_port(), free_port()
    conf = work / "meshpy.yaml"
    conf.write_text(MESHPY.format(admin=admin, port=port, **ports))
    argv = [sys.executable, "-m", "meshpy", "run", "-c", str(conf), "--log-level", "warning"]
    proc = procs.start(Proc("meshpy", argv, work / "meshpy.log", cpu=cpu, env=python_env()))
    proc.wait_until(lambda: http_status(admin, "/ready") == 200)
    return port, proc


def _start_envoy(procs: Procs, work: Path, ports: dict[str, int], cpu: int | None,
                 binary: str) -> tuple[int, Proc]:
    admin, port = free_port(), free_port()
    conf = work / "envoy.yaml"
    conf.write_text(ENVOY.format(admin=admin, port=port, hcm=HCM, **ports))
    argv = [binary, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    proc = procs.start(Proc("envoy", argv, work / "envoy.log", cpu=cpu))
    proc.wait_until(lambda: http_status(admin, "/ready") == 200)
    return port, proc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20_000, help="per h2load run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-pin", action="store_true")
    names = ["h2-get", "grpc-unary"]
    p.add_argument("--scenarios", nargs="+", default=names, choices=names)
    p.add_argument("--no-envoy", action="store_true", help="meshpy alone (for before/after comparisons)")
    p.add_argument("--out", default=None, help="directory for the JSON result (default benchmarks/results)")
    args = p.parse_args()
    result = run(args)
    out = Path(args.out) if args.out else tools.ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"http2-{result['date']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1))
    for scenario, s in result["summary"].items():
        versus = f", Envoy {s['envoy_rps']:,.0f} req/s, meshpy/Envoy {s['meshpy_over_envoy']:.0%}" \
            if "envoy_rps" in s else ""
        verdict = "met" if s["over_h2"] <= TARGET else "NOT met"
        print(f"{scenario}: meshpy {s['meshpy_rps']:,.0f} req/s{versus}; "
              f"meshpy CPU {s['meshpy_cpu_us']} us/request, h2 alone {s['h2_cost_us']} us: "
              f"{s['over_h2']}x (target <= {TARGET}x: {verdict})")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
