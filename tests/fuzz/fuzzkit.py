"""The fuzzing engine shared by every harness: targets, the committed corpus, a byte mutator, per-input
time and memory bounds, findings on disk, and a wall-clock-bounded mutation loop.

A harness module defines `TARGET = Target(...)`: `run(data)` executes one input and returns normally
when every property held; it raises `Finding` when a property did not, and any other exception is a
crash (an error type the code under test does not document). The same `Target` is driven three ways:
by pytest (`test_fuzz_*.py`: the committed corpus, then a short mutation budget), by `fuzz_run.py`
with atheris (coverage-guided, `make fuzz`), and by `fuzz_run.py --engine random` where atheris is
missing. Nothing here imports meshpy: atheris must import the code under test itself, inside its
instrumentation context, for coverage to be seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from known import known

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
ROOT = HERE.parent.parent
# Not committed (.gitignore): what long runs found, and the corpus atheris grows across runs.
WORK = ROOT / ".fuzz"
FINDINGS = WORK / "findings"

# The short run's budget in `make test`, per target, in seconds; FUZZ_SEED replays one run exactly.
SHORT_SECONDS = float(os.environ.get("FUZZ_SHORT_SECONDS", "3.5"))
# Growth of the process's peak RSS over a run that counts as unbounded memory.
RSS_GROWTH_MB = int(os.environ.get("FUZZ_RSS_GROWTH_MB", "768"))


class Finding(AssertionError):
    """A property that did not hold for one input (no crash: a wrong answer, a hang, a leak)."""


class Hang(Finding):
    """An input ran past its time bound."""


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    # Structured mutation (frames, protos, YAML trees); None: the byte mutator alone.
    mutate: Callable[[bytes, random.Random], bytes] | None = None
    # Words the byte mutator inserts (header names, frame bytes, YAML keys...).
    dictionary: tuple[bytes, ...] = ()
    max_len: int = 4096
    time_limit: float = 5.0  # per input, seconds
    # Entered once around a run (an in-process proxy and its upstreams for the end-to-end targets).
    context: Callable[[], contextlib.AbstractContextManager[object]] | None = None
    # The committed corpus to start from, when shared with another target (same input format).
    corpus: str = ""

    @property
    def corpus_name(self) -> str:
        return self.corpus or self.name


# -- corpus ------------------------------------------------------------------------------------------
def corpus_dir(target: str) -> Path:
    return CORPUS / target


def corpus(target: str) -> list[tuple[str, bytes]]:
    """The committed inputs of `target`, sorted by file name (regression inputs start `regress-`)."""
    d = corpus_dir(target)
    return [(p.name, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file()] if d.is_dir() else []


def input_name(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


# -- findings ----------------------------------------------------------------------------------------
def signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in meshpy (else the innermost frame): one finding per
    distinct bug, however many inputs reach it."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/meshpy/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    kind = type(exc).__name__
    if isinstance(exc, Finding):
        kind += ":" + str(exc).split(":", 1)[0][:60]
    return f"{kind}@{where}"


def record(target: str, data: bytes, exc: BaseException, seen: set[str] | None = None,
           root: Path = FINDINGS) -> Path | None:
    """Write a crashing input and its traceback under .fuzz/findings/<target>/; None if this
    signature was already recorded in this run."""
    sig = signature(exc)
    if seen is not None:
        if sig in seen:
            return None
        seen.add(sig)
    out = root / target
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"crash-{input_name(data)}"
    path.write_bytes(data)
    text = "".join(traceback.format_exception(exc))
    path.with_name(path.name + ".txt").write_text(f"{sig}\n\n{text}")
    return path


# -- bounds ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Hang after `seconds` (SIGALRM: a pure-Python loop is interrupted). pytest-timeout arms SIGALRM
    as well, so its handler and remaining time are put back afterwards. Not used under atheris, whose
    libFuzzer owns SIGALRM (-timeout bounds each input there)."""

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"hang: input ran longer than {seconds:.1f}s")

    started = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, expired)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


# -- mutation ----------------------------------------------------------------------------------------
INTERESTING_BYTES = b"\x00\x09\x0a\x0b\x0c\x0d\x20\x22\x2c\x2f\x3a\x3b\x3d\x3f\x40\x5c\x7f\x80\xa0\xff"
INTERESTING_NUMBERS = (b"0", b"1", b"-1", b"+1", b"00", b"0x10", b"1_0", b"255", b"65535", b"65536",
                       b"2147483647", b"2147483648", b"4294967296", b"9223372036854775808",
                       b"18446744073709551616", b"1e3", b"99999999999999999999999999")


def mutate_bytes(data: bytes, rng: random.Random, dictionary: tuple[bytes, ...] = (),
                 others: list[bytes] | None = None, max_len: int = 4096) -> bytes:
    """One to four random edits of the kinds libFuzzer makes (bit flips, interesting bytes and
    numbers, dictionary words, range deletes and copies, splices with another input)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        op = rng.randrange(10)
        pos = rng.randint(0, n)
        if op == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
        elif op == 2:
            buf[pos:pos] = bytes([rng.choice(INTERESTING_BYTES)])
        elif op == 3 and dictionary:
            buf[pos:pos] = rng.choice(dictionary)
        elif op == 4 and n:
            end = min(n, pos + rng.randint(1, 16))
            del buf[pos:end]
        elif op == 5 and n:
            start = rng.randrange(n)
            piece = buf[start:start + rng.randint(1, 64)]
            buf[pos:pos] = piece
        elif op == 6 and others:
            other = rng.choice(others)
            if other:
                a = rng.randrange(len(other))
                buf = buf[:pos] + other[a:a + rng.randint(1, 256)] + buf[pos:]
        elif op == 7 and n:
            buf = buf[:rng.randint(0, n)]
        elif op == 8:
            digits = [i for i in range(n) if 0x30 <= buf[i] <= 0x39]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < n and 0x30 <= buf[j] <= 0x39:
                    j += 1
                buf[i:j] = rng.choice(INTERESTING_NUMBERS)
        elif op == 9 and n:
            i = rng.randrange(n)
            buf[i] = rng.randrange(256)
    return bytes(buf[:max_len])


def mutate(target: Target, data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """The target's structured mutator two times in three (when it has one), else bytes."""
    if target.mutate is not None and rng.random() < 0.67:
        with contextlib.suppress(Exception):  # a seed the structure cannot parse: mutate its bytes
            return target.mutate(data, rng)[:target.max_len]
    return mutate_bytes(data, rng, target.dictionary, others, target.max_len)


# -- the loop ----------------------------------------------------------------------------------------
@dataclass
class Report:
    target: str
    execs: int = 0
    seconds: float = 0.0
    findings: list[tuple[bytes, BaseException]] = field(default_factory=list)
    rss_growth_mb: int = 0

    def summary(self) -> str:
        rate = self.execs / self.seconds if self.seconds else 0.0
        return (f"{self.target}: {self.execs} execs in {self.seconds:.1f}s ({rate:.0f}/s), "
                f"{len(self.findings)} findings, peak RSS +{self.rss_growth_mb} MB")


def run_one(target: Target, data: bytes, bound: bool = True) -> BaseException | None:
    """The input's exception (a crash or a Finding), or None when every property held or the only
    failure is a known one (known.py). `bound`: the SIGALRM time bound (not under atheris)."""
    try:
        with time_bound(target.time_limit) if bound else contextlib.nullcontext():
            target.run(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return None if known(exc, target.name) is not None else exc
    return None


def replay(target: Target, inputs: list[tuple[str, bytes]]) -> list[tuple[str, BaseException]]:
    """Run each committed input; the failures by file name."""
    failed = []
    for name, data in inputs:
        exc = run_one(target, data)
        if exc is not None:
            failed.append((name, exc))
    return failed


def fuzz(target: Target, seconds: float, seed: int, seeds: list[bytes], record_to: Path | None = None,
         log: Callable[[str], None] | None = None) -> Report:
    """Mutate `seeds` for `seconds` of wall time; an input that fails is added to the findings (one
    per signature). Inputs that run without failing join the pool, so mutations stack up."""
    rng = random.Random(seed)
    report = Report(target.name)
    pool = [s for s in seeds if len(s) <= target.max_len] or [b""]
    seen: set[str] = set()
    rss0 = peak_rss_mb()
    started = time.monotonic()
    next_log = started + 30
    while time.monotonic() - started < seconds:
        data = mutate(target, rng.choice(pool), rng, pool)
        exc = run_one(target, data)
        report.execs += 1
        if exc is None:
            if len(pool) < 5000 and rng.random() < 0.1:
                pool.append(data)
        elif signature(exc) not in seen:
            seen.add(signature(exc))
            report.findings.append((data, exc))
            if record_to is not None:
                record(target.name, data, exc, None, record_to)
        growth = peak_rss_mb() - rss0
        if growth > RSS_GROWTH_MB:
            exc = Finding(f"memory: peak RSS grew {growth} MB over the run")
            report.findings.append((data, exc))
            if record_to is not None:
                record(target.name, data, exc, None, record_to)
            break
        if log is not None and time.monotonic() > next_log:
            next_log += 30
            report.seconds = time.monotonic() - started
            log(report.summary())
    report.seconds = time.monotonic() - started
    report.rss_growth_mb = peak_rss_mb() - rss0
    return report


def describe(findings: list[tuple[bytes, BaseException]]) -> str:
    return "\n\n".join(f"{signature(exc)}\ninput: {data!r}\n" + "".join(traceback.format_exception(exc))
                       for data, exc in findings)


def minimize(target: Target, data: bytes, budget: float = 60.0) -> bytes:
    """A smaller input failing with the same signature: chunks removed, largest first (ddmin-like),
    within `budget` seconds. For turning a finding into a readable regression input."""
    first = run_one(target, data)
    if first is None:
        return data
    sig = signature(first)
    deadline = time.monotonic() + budget
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, shrunk = 0, False
        while i < len(data) and time.monotonic() < deadline:
            candidate = data[:i] + data[i + chunk:]
            exc = run_one(target, candidate)
            if exc is not None and signature(exc) == sig:
                data, shrunk = candidate, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return data
