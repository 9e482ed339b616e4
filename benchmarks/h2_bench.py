"""HTTP/2 and gRPC through meshpy (on each of its HTTP/2 codecs) and through Envoy, with h2load.

    python benchmarks/h2_bench.py [--requests 20000] [--rounds 3] [--codecs nghttp2 h2] [--no-pin]
                                  [--out DIR]

Scenarios (h2load, 4 connections x 10 streams each, cleartext HTTP/2 with prior knowledge):
- h2-get: GET /hello, HTTP/2 in, HTTP/1.1 out to nginx (the usual sidecar-in-front-of-an-app case);
- grpc-unary: a gRPC-shaped unary call (POST, application/grpc, te: trailers, 10-byte message, an
  answer with grpc-status in trailers), HTTP/2 both sides, to nginx speaking HTTP/2 (a static answer
  with add_trailer: the origin costs next to nothing, so the proxies are what is measured);
- grpc-stream: server streaming, ~34 MB of 1 KiB gRPC messages per call (a file nginx sends, so it
  arrives in nginx's chunks, not one write per message), one call at a time: MB/s;
- upload: 100 MiB request bodies to nginx over HTTP/2, which reads each whole before answering: MB/s.
Each proxy runs alone on the proxy CPU (1), one worker each; the origin and h2load share CPU 0. Rounds
interleave the contenders. Reported per scenario and contender: median req/s (MB/s when streaming), CPU
microseconds per request or per MB (its CPU time over the run) and, for meshpy, the ratio to Envoy;
against issue 16's targets (TARGETS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

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
      - match: /upload
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
              - match: {{prefix: /upload}}
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
        # Server streaming: a file of 1 KiB gRPC messages, with grpc-status in trailers.
        location = /bench.Echo/Stream {{
            default_type application/grpc;
            add_trailer grpc-status 0;
            alias {work}/stream.bin;
        }}
        # The upload: nginx reads the whole body before proxying (proxy_request_buffering), then
        # passes the request on without it; the sink answers.
        location = /upload {{
            client_max_body_size 0;
            client_body_buffer_size 1m;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:{sink}/;
        }}
    }}
    server {{
        listen 127.0.0.1:{sink};
        location / {{ return 200 'stored'; }}
    }}
}}
"""

GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"
STREAM_MESSAGE = b"\x00" + (1024).to_bytes(4, "big") + b"m" * 1024  # one 1 KiB message, framed
STREAM_BYTES = 32768 * len(STREAM_MESSAGE)  # ~34 MB per server-streaming call
UPLOAD_BYTES = 100 << 20
# Streaming calls per h2load run, one at a time on one connection; 16 MiB windows on the client, so
# that its flow control is not what is measured. About a second per run: runs of a tenth of a second
# (6 and 3 calls) mostly measured how fast each proxy got going.
STREAMING = {"grpc-stream": ("/bench.Echo/Stream", 30, STREAM_BYTES),
             "upload": ("/upload", 10, UPLOAD_BYTES)}
_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s|us),")
# Issue 16's targets per scenario: (meshpy/Envoy req/s at least, meshpy CPU per request at most).
TARGETS: dict[str, tuple[float, float | None]] = {"grpc-unary": (0.5, 70.0), "h2-get": (0.6, None),
                                                  "grpc-stream": (0.8, None), "upload": (0.8, None)}
_DONE = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored")
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_RPS = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")


def streaming(port: int, scenario: str, work: Path, cpu: int | None) -> tuple[float, int, int]:
    """(MB/s, calls, bytes) of one h2load run of `scenario`'s streaming calls."""
    path, calls, size = STREAMING[scenario]
    argv = ["h2load", "-c", "1", "-m", "1", "-t", "1", "-n", str(calls), "-w", "24", "-W", "24",
            "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if scenario == "upload":
        argv += ["-d", str(work / "upload.bin")]
    code, out = tools.run_tool([*argv, f"http://127.0.0.1:{port}{path}"], 600, cpu)
    done, took = _DONE.search(out), _FINISHED.search(out)
    if code != 0 or done is None or took is None or int(done.group(3)) != calls:
        raise RuntimeError(f"h2load failed or saw errors:\n{out}")
    seconds = float(took.group(1)) / {"s": 1, "ms": 1e3, "us": 1e6}[took.group(2)]
    return calls * size / seconds / 1e6, calls, calls * size


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
            (work / "grpc-origin.conf").write_text(GRPC_ORIGIN.format(work=work, port=grpc_port,
                                                                      sink=free_port()))
            work.chmod(0o755)  # nginx's worker (nobody, when started as root) reads stream.bin
            (work / "stream.bin").write_bytes(STREAM_MESSAGE * (STREAM_BYTES // len(STREAM_MESSAGE)))
            with (work / "upload.bin").open("wb") as f:
                f.truncate(UPLOAD_BYTES)
            argv = ["nginx", "-c", str(work / "grpc-origin.conf"), "-p", str(work)]
            grpc_origin = procs.start(Proc("grpc-origin", argv, work / "grpc-origin.log", cpu=load_cpu))
            grpc_origin.wait_until(lambda: _listening(grpc_port))
            ports = {"origin": origin.port, "grpc": grpc_port}
            # One meshpy per codec, all started up front and idle while another runs.
            contenders = [(f"meshpy-{codec}", _start_meshpy(procs, work, ports, proxy_cpu, codec))
                          for codec in args.codecs]
            if envoy is not None:
                contenders.append(("envoy", _start_envoy(procs, work, ports, proxy_cpu, envoy)))
            for scenario in args.scenarios:
                per: dict[str, list[float]] = {}
                for _ in range(args.rounds):  # rounds interleave the contenders
                    for name, (port, proc) in contenders:
                        cpu0 = tools.cpu_seconds(proc.pids)
                        if scenario in STREAMING:  # MB/s, and CPU per MB
                            rate, _calls, size = streaming(port, scenario, work, load_cpu)
                            per.setdefault(f"{name}_rps", []).append(rate)
                            per.setdefault(f"{name}_cpu_us", []).append(
                                (tools.cpu_seconds(proc.pids) - cpu0) / size * 1e12)
                            continue
                        rps, done = h2load(port, scenario, args.requests, work, load_cpu)
                        per.setdefault(f"{name}_rps", []).append(rps)
                        per.setdefault(f"{name}_cpu_us", []).append(
                            (tools.cpu_seconds(proc.pids) - cpu0) / done * 1e6)
                results[scenario] = per
        finally:
            procs.stop_all()
    commit, dirty = tools.git_commit()
    summary: dict[str, Any] = {}
    for scenario, per in results.items():
        s: dict[str, Any] = {}
        envoy_rps = statistics.median(per["envoy_rps"]) if "envoy_rps" in per else None
        for name in [k[:-4] for k in per if k.endswith("_rps")]:
            rps = statistics.median(per[f"{name}_rps"])
            s[name] = {"rps": rps, "cpu_us": round(statistics.median(per[f"{name}_cpu_us"]), 1)}
            if envoy_rps is not None and name != "envoy":
                s[name]["over_envoy"] = round(rps / envoy_rps, 3)
        summary[scenario] = s
    return {"benchmark": "http2", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), "commit": commit,
            "dirty": dirty, "requests": args.requests, "rounds": results, "summary": summary,
            "targets": TARGETS}


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _start_meshpy(procs: Procs, work: Path, ports: dict[str, int], cpu: int | None,
                  codec: str) -> tuple[int, Proc]:
    admin, port = free_port(), free_port()
    conf = work / f"meshpy-{codec}.yaml"
    conf.write_text(MESHPY.format(admin=admin, port=port, **ports))
    argv = [sys.executable, "-m", "meshpy", "run", "-c", str(conf), "--log-level", "warning",
            "--http2-codec", codec]
    proc = procs.start(Proc(f"meshpy-{codec}", argv, work / f"meshpy-{codec}.log", cpu=cpu, env=python_env()))
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
    names = ["h2-get", "grpc-unary", "grpc-stream", "upload"]
    p.add_argument("--scenarios", nargs="+", default=names, choices=names)
    p.add_argument("--no-envoy", action="store_true", help="meshpy alone (for before/after comparisons)")
    p.add_argument("--codecs", nargs="+", default=["nghttp2", "h2"], choices=["nghttp2", "h2"],
                   help="meshpy's HTTP/2 codecs to run (one meshpy each)")
    p.add_argument("--out", default=None, help="directory for the JSON result (default benchmarks/results)")
    args = p.parse_args()
    result = run(args)
    out = Path(args.out) if args.out else tools.ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"http2-{result['date']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1))
    for scenario, s in result["summary"].items():
        envoy = s.get("envoy")
        line = [f"{scenario}:"]
        rate, cpu_unit = ("MB/s", "us CPU per MB") if scenario in STREAMING else ("req/s", "us CPU each")
        if envoy is not None:
            line.append(f"Envoy {envoy['rps']:,.0f} {rate} ({envoy['cpu_us']} {cpu_unit});")
        for name, m in s.items():
            if name == "envoy":
                continue
            ratio = f", {m['over_envoy']:.2f}x Envoy" if "over_envoy" in m else ""
            line.append(f"{name} {m['rps']:,.0f} {rate}{ratio}, {m['cpu_us']} {cpu_unit};")
        target = TARGETS.get(scenario)
        if target is not None:
            cpu = f", <= {target[1]} us" if target[1] else ""
            line.append(f"(targets: >= {target[0]}x Envoy{cpu})")
        print(" ".join(line))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
