"""The benchmark suite's own tools, against real processes and sockets on 127.0.0.1: wrk's report
parser, the /proc readers, the histogram, the open-loop generator and the TCP throughput tool."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openloop
import pytest
import tcp_bench
import tools

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextlib.contextmanager
def spawn(argv: list[str], port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process, wait until `port` accepts, and stop it by its PID afterwards."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while port is not None and not tools.port_open(port):
            assert proc.poll() is None, f"{argv} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{argv} does not listen on {port}"
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def demo_port() -> Iterator[int]:
    port = tools.free_port()
    with spawn([sys.executable, "-m", "meshpy", "demo-upstream", "--listen", f"127.0.0.1:{port}"], port):
        yield port


# --- wrk -----------------------------------------------------------------------------------------------

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@needs_wrk
@pytest.mark.parametrize(("path", "all_non_2xx"), [("/hello", False), ("/status/503", True)])
def test_parse_wrk_live_run(demo_port: int, path: str, all_non_2xx: bool) -> None:
    rc, out = tools.run_tool(tools.wrk_argv(f"http://127.0.0.1:{demo_port}{path}", 2, 1, latency=True),
                             timeout=30)
    assert rc == 0, out
    r = tools.parse_wrk(out)
    assert r["requests"] > 0
    assert r["rps"] > 0
    assert 0.9 <= r["duration_s"] <= 1.5
    # wrk's own rate is requests over its measured time, so the two must agree.
    assert r["rps"] == pytest.approx(r["requests"] / r["duration_s"], rel=0.1)
    assert 0 < r["p50_us"] <= r["p75_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"]
    assert r["errors"] == 0
    assert r["non_2xx"] == (r["requests"] if all_non_2xx else 0)
    assert r["bytes_read"] > r["requests"] * (20 if all_non_2xx else 100)


# Recorded from wrk 4.1.0 against `meshpy demo-upstream`.
WRK_US = """\
Running 1s test @ http://127.0.0.1:33965/hello
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    75.00us  359.83us   7.19ms   98.89%
    Req/Sec    88.97k    11.27k   98.86k    81.82%
  Latency Distribution
     50%   39.00us
     75%   44.00us
     90%   61.00us
     99%  618.00us
  96884 requests in 1.10s, 17.00MB read
Requests/sec:  88127.72
Transfer/sec:     15.46MB
"""

WRK_NON_2XX = """\
Running 1s test @ http://127.0.0.1:33965/status/503
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    64.18us   47.30us   1.81ms   98.20%
    Req/Sec    28.83k     4.13k   34.17k    63.64%
  Latency Distribution
     50%   61.00us
     75%   74.00us
     90%   87.00us
     99%  119.00us
  31485 requests in 1.10s, 2.97MB read
  Non-2xx or 3xx responses: 31485
Requests/sec:  28642.67
Transfer/sec:      2.70MB
"""

WRK_MS = """\
Running 1s test @ http://127.0.0.1:50705/delay/5
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.28ms  162.18us   5.68ms   91.92%
    Req/Sec   757.45     15.17   767.00     81.82%
  Latency Distribution
     50%    5.30ms
     75%    5.35ms
     90%    5.40ms
     99%    5.56ms
  829 requests in 1.10s, 72.86KB read
Requests/sec:    753.75
Transfer/sec:     66.25KB
"""

# wrk pads values in seconds with a trailing space.
WRK_S = """\
Running 2s test @ http://127.0.0.1:50705/delay/1100
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10s     9.90us   1.10s   100.00%
    Req/Sec     1.00      0.00     1.00    100.00%
  Latency Distribution
     50%    1.10s \n     75%    1.10s \n     90%    1.10s \n     99%    1.10s \n\
  2 requests in 2.00s, 180.00B read
Requests/sec:      1.00
Transfer/sec:      89.82B
"""

WRK_TIMEOUTS = """\
Running 2s test @ http://127.0.0.1:33965/delay/1500
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     2.00      0.00     2.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  4 requests in 2.00s, 360.00B read
  Socket errors: connect 0, read 0, write 0, timeout 4
Requests/sec:      2.00
Transfer/sec:     179.61B
"""


def test_parse_wrk_recorded_microseconds() -> None:
    r = tools.parse_wrk(WRK_US)
    assert r["requests"] == 96884
    assert r["duration_s"] == pytest.approx(1.10)
    assert r["rps"] == pytest.approx(88127.72)
    assert r["bytes_read"] == int(17.00 * (1 << 20))
    assert r["avg_us"] == pytest.approx(75.0)
    assert r["stdev_us"] == pytest.approx(359.83)
    assert r["max_us"] == pytest.approx(7190.0)
    assert (r["p50_us"], r["p75_us"], r["p90_us"], r["p99_us"]) == pytest.approx((39.0, 44.0, 61.0, 618.0))
    assert r["errors"] == 0 and r["non_2xx"] == 0
    assert "socket_errors" not in r


def test_parse_wrk_recorded_non_2xx() -> None:
    r = tools.parse_wrk(WRK_NON_2XX)
    assert r["requests"] == 31485
    assert r["non_2xx"] == 31485
    assert r["errors"] == 0
    assert r["max_us"] == pytest.approx(1810.0)
    assert r["bytes_read"] == int(2.97 * (1 << 20))


def test_parse_wrk_recorded_milliseconds_and_seconds() -> None:
    ms = tools.parse_wrk(WRK_MS)
    assert ms["requests"] == 829
    assert ms["avg_us"] == pytest.approx(5280.0)
    assert ms["stdev_us"] == pytest.approx(162.18)
    assert (ms["p50_us"], ms["p99_us"]) == pytest.approx((5300.0, 5560.0))
    assert ms["bytes_read"] == int(72.86 * 1024)
    s = tools.parse_wrk(WRK_S)
    assert s["requests"] == 2
    assert s["duration_s"] == pytest.approx(2.0)
    assert s["rps"] == pytest.approx(1.0)
    assert s["avg_us"] == pytest.approx(1.10e6)
    assert s["stdev_us"] == pytest.approx(9.90)
    assert (s["p50_us"], s["p75_us"], s["p90_us"], s["p99_us"]) == pytest.approx((1.1e6,) * 4)
    assert s["bytes_read"] == 180


def test_parse_wrk_recorded_socket_errors() -> None:
    r = tools.parse_wrk(WRK_TIMEOUTS)
    assert r["requests"] == 4
    assert r["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 4}
    assert r["errors"] == 4
    assert r["p99_us"] == 0.0


@pytest.mark.parametrize("text", [
    "unable to connect to 127.0.0.1:1 Connection refused\n",
    "",
    WRK_US.split("  96884 requests")[0],  # a run cut short before its summary
])
def test_parse_wrk_rejects_non_reports(text: str) -> None:
    with pytest.raises(tools.WrkParseError):
        tools.parse_wrk(text)


# --- /proc, histogram, percentile -------------------------------------------------------------------------

def test_cpu_seconds_of_own_process_tracks_work() -> None:
    me = os.getpid()
    before = tools.cpu_seconds([me])
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = tools.cpu_seconds([me])
    assert after - before >= 0.15
    t = os.times()
    assert after == pytest.approx(t.user + t.system, abs=0.05)


def test_rss_kb_of_own_process_sees_an_allocation() -> None:
    me = os.getpid()
    before = tools.rss_kb([me])
    block = b"\x01" * (32 << 20)  # written, so its pages are resident
    after = tools.rss_kb([me])
    assert len(block) == 32 << 20
    assert before > 1000
    assert after - before >= 30 * 1024


def test_proc_readers_on_a_child_process() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in tools.children(os.getpid())
        assert tools.children(child.pid) == []
        assert tools.cpu_seconds([child.pid]) < 0.1
        assert 0 < tools.rss_kb([child.pid]) < 50_000
        me = os.getpid()
        assert tools.rss_kb([me, child.pid]) >= tools.rss_kb([me])
    finally:
        child.terminate()
        child.wait(5)
    # Reaped: its /proc entry is gone, and a vanished PID counts as nothing.
    assert child.pid not in tools.children(os.getpid())
    assert tools.cpu_seconds([child.pid]) == 0.0
    assert tools.rss_kb([child.pid]) == 0


def test_log_histogram_counts_and_order() -> None:
    values = [1.0 * 1.013**i for i in range(800)] + [250.0] * 7 + [0.2, 3e6]
    hist = tools.log_histogram(values)
    assert sum(n for _, n in hist) == len(values)
    bounds = [b for b, _ in hist]
    assert bounds == sorted(set(bounds))  # strictly ascending
    assert tools.log_histogram([]) == []


@pytest.mark.parametrize("value", [1.0, 1.05, 7.3, 19.99, 99.9, 100.0, 250.0, 1234.5, 987_654.0])
def test_log_histogram_bucket_of_a_value(value: float) -> None:
    [[bound, count]] = tools.log_histogram([value])
    assert count == 1
    # The bucket's lower bound is at or below the value, and the bucket is ~5% wide.
    assert bound <= value < bound * 10 ** (1 / 50) + 1


def test_log_histogram_clamps_below_one_microsecond() -> None:
    assert tools.log_histogram([0.0, 0.3, 0.99]) == [[1, 3]]


def test_percentile_nearest_rank() -> None:
    hundred = [float(i) for i in range(1, 101)]
    assert openloop.percentile(hundred, 50) == 50.0
    assert openloop.percentile(hundred, 99) == 99.0
    assert openloop.percentile(hundred, 99.9) == 100.0
    assert openloop.percentile(hundred, 100) == 100.0
    assert openloop.percentile(hundred, 0) == 1.0
    four = [1.0, 2.0, 3.0, 4.0]
    assert [openloop.percentile(four, q) for q in (25, 50, 75, 76)] == [1.0, 2.0, 3.0, 4.0]
    assert openloop.percentile([7.0], 99) == 7.0
    assert openloop.percentile([], 50) == 0.0


# --- openloop end to end -------------------------------------------------------------------------------

def test_openloop_against_trivial_server() -> None:
    port = tools.free_port()
    with spawn([sys.executable, str(BENCH / "openloop.py"), "--serve-trivial", "--port", str(port)], port):
        r = openloop.run_openloop("127.0.0.1", port, "/", rate=200, connections=4, duration=1, warmup=0.2)
    assert r["errors"] == 0 and r["timeouts"] == 0
    assert 170 <= r["completed"] <= 230
    assert r["completed"] == r["sent"] == len(r["latencies_us"])
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]


def test_openloop_against_closed_port_counts_every_slot_as_error() -> None:
    start = time.monotonic()
    r = openloop.run_openloop("127.0.0.1", tools.free_port(), "/", rate=100, connections=2,
                              duration=0.5, warmup=0)
    assert time.monotonic() - start < 10
    assert r["completed"] == 0
    assert r["errors"] == r["sent"] == 50  # one per scheduled request: failures do not vanish
    assert r["latencies_us"] == []


# --- tcp_bench end to end ------------------------------------------------------------------------------

KEYS = {"transfers", "bytes", "duration_s", "transfers_per_s", "mib_per_s", "errors", "p50_ms", "p99_ms",
        "size", "connections"}


@pytest.fixture(scope="module")
def tcp_source() -> Iterator[int]:
    port = tools.free_port()
    with spawn([sys.executable, str(BENCH / "tcp_bench.py"), "serve", "--port", str(port),
                "--size", "65536"], port):
        yield port


def test_tcp_bench_transfers(tcp_source: int) -> None:
    r = tcp_bench.run_tcp("127.0.0.1", tcp_source, connections=2, duration=1, warmup=0.2, size=65536)
    assert r.keys() >= KEYS
    assert r["errors"] == 0
    assert r["transfers"] > 10
    assert r["bytes"] == r["transfers"] * 65536
    assert r["size"] == 65536 and r["connections"] == 2 and r["duration_s"] == 1
    assert r["transfers_per_s"] == pytest.approx(r["transfers"])
    assert r["mib_per_s"] == pytest.approx(r["transfers"] / 16)
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_tcp_bench_wrong_size_is_an_error(tcp_source: int) -> None:
    r = tcp_bench.run_tcp("127.0.0.1", tcp_source, connections=1, duration=0.3, warmup=0, size=1 << 20)
    assert r["transfers"] == 0 and r["bytes"] == 0
    assert r["errors"] > 0
    assert r["error_kinds"] == {"size": r["errors"]}


def test_tcp_bench_server_closing_early_counts_errors() -> None:
    """A server that accepts, reads the request and closes without sending anything."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted = 0

    def serve() -> None:
        nonlocal accepted
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted += 1
            with conn, contextlib.suppress(OSError):
                conn.settimeout(1)
                conn.recv(64)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        r = tcp_bench.run_tcp("127.0.0.1", port, connections=2, duration=0.5, warmup=0, size=65536)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert r["transfers"] == 0 and r["bytes"] == 0
    assert r["errors"] > 0
    assert accepted >= r["errors"]
    assert math.isclose(r["mib_per_s"], 0.0)


def test_tcp_bench_refused_port_counts_errors_without_hanging() -> None:
    start = time.monotonic()
    r = tcp_bench.run_tcp("127.0.0.1", tools.free_port(), connections=2, duration=0.3, warmup=0, size=1024)
    assert time.monotonic() - start < 10
    assert r["transfers"] == 0
    assert r["errors"] > 0
    assert set(r["error_kinds"]) == {"ConnectionRefusedError"}
