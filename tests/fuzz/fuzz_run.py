"""The long run (`make fuzz`): each target for FUZZ_SECONDS, coverage-guided with atheris where it is
installed, else with fuzzkit's mutation loop. New crashing inputs go to .fuzz/findings/<target>/ (with
their traceback beside them), the inputs atheris finds interesting to .fuzz/corpus/<target>/ (kept for
the next run); the exit status is 1 when any target has a finding.

    python tests/fuzz/fuzz_run.py                       # every target, one after another
    python tests/fuzz/fuzz_run.py http2 xds --seconds 300
    python tests/fuzz/fuzz_run.py --replay FILE... --target http2   # replay inputs, print failures

Each target runs in a process of its own: atheris must import the code under test inside its
instrumentation, and libFuzzer ends the process on a hang (-timeout) or too much memory
(-rss_limit_mb), which is then a finding too (timeout-*, oom-* files).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]

import fuzzkit  # noqa: E402

MODULES = {
    "http1_request": "fuzz_http1_request",
    "http1_response": "fuzz_http1_response",
    "http1_e2e": "fuzz_http1_e2e",
    "http1_upstream": "fuzz_http1_upstream",
    "http2": "fuzz_http2",
    "http2_e2e": "fuzz_http2_e2e",
    "meshpy_yaml": "fuzz_meshpy_yaml",
    "bootstrap": "fuzz_bootstrap",
    "xds": "fuzz_xds",
    "tls_hello": "fuzz_tls_hello",
}


def load(name: str, instrument: bool) -> fuzzkit.Target:
    if not instrument:
        return importlib.import_module(MODULES[name]).TARGET  # type: ignore[no-any-return]
    import atheris

    # Everything the target imports is instrumented, the code under test among it: imported first here.
    with atheris.instrument_imports(include=["meshpy", "h2", "hpack", "hyperframe"]):
        return importlib.import_module(MODULES[name]).TARGET  # type: ignore[no-any-return]


def run_atheris(name: str, seconds: int, findings: Path) -> int:
    import atheris

    target = load(name, instrument=True)
    work = fuzzkit.WORK / "corpus" / name
    work.mkdir(parents=True, exist_ok=True)
    out = findings / name
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()

    def one(data: bytes) -> None:
        exc = fuzzkit.run_one(target, data, bound=False)  # libFuzzer owns SIGALRM: -timeout bounds inputs
        if exc is not None and fuzzkit.record(name, data, exc, seen, findings) is not None:
            print(f"FINDING {fuzzkit.signature(exc)}", file=sys.stderr, flush=True)

    def custom(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if target.mutate is not None and rng.random() < 0.6:
            with contextlib.suppress(Exception):
                return target.mutate(data, rng)[:max_size]
        return bytes(atheris.Mutate(data, max_size))

    args = [sys.argv[0], f"-max_total_time={seconds}", f"-timeout={int(target.time_limit * 3) + 5}",
            "-rss_limit_mb=2048", f"-max_len={target.max_len}", f"-artifact_prefix={out}/",
            "-print_final_stats=1", "-print_pcs=0", str(work), str(fuzzkit.corpus_dir(target.corpus_name))]
    with target.context() if target.context else contextlib.nullcontext():
        atheris.Setup(args, one, custom_mutator=custom)
        atheris.Fuzz()  # exits the process when max_total_time is over
    return 0


def run_random(name: str, seconds: int, findings: Path, seed: int) -> int:
    target = load(name, instrument=False)
    seeds = [d for _, d in fuzzkit.corpus(target.corpus_name)]
    work = fuzzkit.WORK / "corpus" / name
    if work.is_dir():
        seeds += [p.read_bytes() for p in sorted(work.iterdir())[:2000]]
    with target.context() if target.context else contextlib.nullcontext():
        report = fuzzkit.fuzz(target, seconds, seed, seeds, record_to=findings,
                              log=lambda s: print(s, flush=True))
    print(f"#DONE {report.summary()} (seed {seed})", flush=True)
    return 1 if report.findings else 0


def replay(name: str, files: list[str], shrink: bool) -> int:
    target = load(name, instrument=False)
    failed = 0
    with target.context() if target.context else contextlib.nullcontext():
        for f in files:
            data = Path(f).read_bytes()
            exc = fuzzkit.run_one(target, data)
            print(f"{f}: {'ok' if exc is None else fuzzkit.describe([(data, exc)])}")
            failed += exc is not None
            if exc is not None and shrink:
                small = fuzzkit.minimize(target, data)
                Path(f + ".min").write_bytes(small)
                print(f"minimized to {len(small)} bytes: {f}.min: {small!r}")
    return 1 if failed else 0


def child(name: str, engine: str, seconds: int, findings: Path, seed: int) -> int:
    if engine == "atheris":
        return run_atheris(name, seconds, findings)
    return run_random(name, seconds, findings, seed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", help=f"default: all ({', '.join(MODULES)})")
    p.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "600")))
    p.add_argument("--engine", choices=("auto", "atheris", "random"),
                   default=os.environ.get("FUZZ_ENGINE", "auto"))
    p.add_argument("--findings", type=Path, default=fuzzkit.FINDINGS)
    p.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", "0")) or None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--replay", nargs="+", metavar="FILE", help="run these inputs through --target")
    p.add_argument("--target", help="the target for --replay")
    p.add_argument("--minimize", action="store_true", help="with --replay: write FILE.min, smaller")
    args = p.parse_args()
    if args.replay:
        return replay(args.target, args.replay, args.minimize)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    seed = args.seed or random.randrange(1, 2**31)
    if args.child:
        return child(args.targets[0], engine, args.seconds, args.findings, seed)
    names = args.targets or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        p.error(f"unknown targets: {', '.join(unknown)}")
    logs = fuzzkit.WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in names:
        before = _findings(args.findings / name)
        log = logs / f"{name}.log"
        print(f"fuzz {name}: {engine}, {args.seconds}s, log {log}", flush=True)
        started = time.monotonic()
        with open(log, "wb") as out:
            rc = subprocess.call([sys.executable, __file__, name, "--child", "--engine", engine,
                                  "--seconds", str(args.seconds), "--findings", str(args.findings),
                                  "--seed", str(seed)], stdout=out, stderr=subprocess.STDOUT)
        new = sorted(_findings(args.findings / name) - before)
        print(f"  {_final_stats(log)} in {time.monotonic() - started:.0f}s, exit {rc}", flush=True)
        for f in new:
            text = f.with_name(f.name + ".txt")
            # (libFuzzer's own artifacts, timeout-* and oom-*, come without a .txt)
            what = text.read_text().splitlines()[0] if text.exists() else f.name.split("-")[0]
            print(f"  FINDING {f}: {what}")
        if new or (rc not in (0, 1) and engine == "atheris"):
            status = 1
    return status


def _findings(d: Path) -> set[Path]:
    return {p for p in d.iterdir() if not p.name.endswith(".txt")} if d.is_dir() else set()


def _final_stats(log: Path) -> str:
    """libFuzzer's last status line (execs, cov, ft, corp) or the random engine's #DONE line."""
    lines = log.read_text(errors="replace").splitlines()
    keep = [ln for ln in lines
            if ln.startswith(("#DONE", "stat::number_of_executed_units", "stat::peak_rss"))]
    status = [ln for ln in lines if ln.startswith("#") and " cov: " in ln]
    return " | ".join(([status[-1]] if status else []) + keep) or "(no stats: see the log)"


if __name__ == "__main__":
    sys.exit(main())
