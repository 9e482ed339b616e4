"""What one gRPC unary call and one h2 GET cost a proxy in each candidate HTTP/2 codec, in memory.

    .venv/bin/python -m benchmarks.micro_h2codecs.bench [--requests 4000] [--runs 5] [--out DIR]
    .venv/bin/python benchmarks/micro_h2codecs/bench.py   (the same)

Codecs: h2 (meshpy's today, the baseline), libnghttp2 through cffi in ABI mode with each of its two
header callbacks, and a lean pure-Python prototype (lean_proto.py: a lower bound, never used by meshpy).
For each codec and shape: microseconds per exchange on the proxy's downstream (server) side, on its
upstream (client) side and both, the median of --runs runs. Every exchange is checked (the
server saw the request and its body, the client status 200, the body and grpc-status 0 trailers), so a
broken codec fails instead of looking fast. Issue 16, step 1; docs/http2-codec.md has the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the package importable as it is with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.micro_h2codecs"

from . import exchange, h2_baseline, lean_proto, nghttp2_abi

ROOT = Path(__file__).resolve().parents[2]


Candidate = tuple[exchange.Factory, exchange.Factory | None]  # the codec, and the peer it is timed against


def codecs() -> tuple[dict[str, Candidate], dict[str, str]]:
    """The codecs that can run here (each with its peer, None for itself), and why the others cannot."""
    found: dict[str, Candidate] = {"h2": (h2_baseline.Connection, None)}
    missing: dict[str, str] = {}
    try:
        nghttp2_abi.load()
    except OSError as e:
        missing["nghttp2-cffi"] = f"{nghttp2_abi.LIBRARY} cannot be loaded: {e}"
        lean_peer = None
    else:
        def plain(client: bool) -> exchange.Codec:
            return nghttp2_abi.Connection(client, "plain")

        found["nghttp2-cffi"] = (plain, None)
        found["nghttp2-cffi-rcbuf"] = (lambda client: nghttp2_abi.Connection(client, "rcbuf"), None)
        # The prototype's encoder writes no Huffman: against itself it would never decode any, so it is
        # timed against nghttp2, which Huffman-codes like h2load, nginx and Envoy do.
        lean_peer = plain
    found["lean-prototype"] = (lean_proto.Connection, lean_peer)
    return found, missing


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "nproc": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(), "kernel": platform.release()}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def run(requests: int, runs: int, shapes: list[str], names: list[str] | None = None) -> dict[str, Any]:
    found, missing = codecs()
    if names:
        found = {name: f for name, f in found.items() if name in names}
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {}
    for shape in shapes:
        for factory, peer in found.values():
            exchange.proxy_cost(factory, shape, min(requests, 500), peer)  # warm up
        # Interleaved runs: a slow spell of the machine hits every codec alike, not one of them.
        for _ in range(runs):
            for name, (factory, peer) in found.items():
                rounds.setdefault(shape, {}).setdefault(name, []).append(
                    exchange.proxy_cost(factory, shape, requests, peer))
    summary = {shape: {name: {key: round(statistics.median(r[key] for r in per), 1) for key in per[0]}
                       for name, per in by_codec.items()} for shape, by_codec in rounds.items()}
    return {"benchmark": "h2-codecs", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "commit": commit(), "requests": requests, "runs": runs, "machine": machine(),
            "versions": versions(found), "unavailable": missing,
            "peers": {name: "itself" if p is None else "nghttp2-cffi" for name, (_, p) in found.items()},
            "rounds": rounds, "summary": summary}


def versions(found: dict[str, Candidate]) -> dict[str, str]:
    import h2

    out = {"h2": str(h2.__version__)}
    if "nghttp2-cffi" in found:
        out["nghttp2"] = nghttp2_abi.version()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="exchanges per run and side")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shapes", nargs="+", default=list(exchange.SHAPES), choices=list(exchange.SHAPES))
    ap.add_argument("--codecs", nargs="+", default=None, help="only these codecs")
    ap.add_argument("--out", default=None, help="directory for the JSON result (default benchmarks/results)")
    args = ap.parse_args()
    result = run(args.requests, args.runs, args.shapes, args.codecs)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"h2-codecs-{result['date']}-{result['commit']}.json"
    path.write_text(json.dumps(result, indent=1))
    for name, why in result["unavailable"].items():
        print(f"{name}: skipped, {why}")
    print(f"{'shape':<11} {'codec':<19} {'downstream us':>13} {'upstream us':>11} {'proxy us':>9} "
          f"{'vs h2':>6}")
    for shape, by_codec in result["summary"].items():
        base = by_codec.get("h2", {}).get("proxy_us")
        for name, s in by_codec.items():
            ratio = f"{s['proxy_us'] / base:.2f}x" if base else "-"
            print(f"{shape:<11} {name:<19} {s['downstream_server_us']:>13.1f} "
                  f"{s['upstream_client_us']:>11.1f} {s['proxy_us']:>9.1f} {ratio:>6}")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
