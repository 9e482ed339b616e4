"""benchmarks/conn_bench.py: the churn client really opens a connection per request, a small real run
(meshpy, 200 idle connections, 2 s of churn) writes its figures, and report.py renders them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import conn_bench
import pytest
import report

ROOT = Path(__file__).resolve().parents[2]

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian package wrk)")


class _Counting(asyncio.Protocol):
    """Answers each request with a 200 and, as the proxies do for `Connection: close`, closes after it."""

    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).accepted += 1
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            close = b"connection: close" in self.buffer.lower()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
            self.buffer = b""
            if close:
                self.transport.close()


@pytest.fixture
def counting_server() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Counting, "127.0.0.1", 0, backlog=1024))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


@needs_wrk
def test_the_churn_client_opens_a_new_connection_for_every_request(counting_server: int) -> None:
    _Counting.accepted = 0
    settings = conn_bench.Settings(duration=0.4, churn_connections=4)  # wrk runs 2 s
    out = conn_bench.churn(counting_server, "/", settings, cpu=None)
    assert "Connection: close" in out["argv"]
    # More requests than wrk's connections (a busy machine may allow few), so wrk had to reconnect...
    assert out["connections"] > 2 * settings.churn_connections
    # ...and every completed request had its own connection: at most the last few (and any that failed)
    # were opened and not answered.
    answered = out["connections"]
    assert answered <= _Counting.accepted <= answered + out["errors"] + settings.churn_connections + 1


@needs_wrk
def test_small_run_writes_results_and_the_connections_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "conn_bench.py"), "--connections", "200",
         "--duration", "2", "--rounds", "1", "--only", "meshpy-uvloop", "--no-pin", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [path] = tmp_path.glob("conns-*.json")
    results = json.loads(path.read_text())
    assert results["mode"] == "connections" and results["connections"]["config"]["connections"] == 200
    [run] = results["connections"]["runs"]
    assert run["contender"] == "meshpy-uvloop" and run["ok"], run.get("error")
    idle = run["idle"]
    # The proxy itself held every connection (its descriptors), before and after each served a request.
    assert idle["held_open"] == idle["held_served"] == idle["alive"] == idle["served"] == 200
    assert idle["released"] and 0 < idle["rss_before_kb"] <= idle["rss_served_kb"]
    assert isinstance(run["kib_per_conn_served"], float) and isinstance(run["kib_per_conn_bare"], float)
    assert run["conn_per_s"] > 0 and run["cpu_us_per_conn"] > 0
    assert set(run["rate"]["kernel"]) >= {"ListenOverflows", "TCPSynRetrans"}
    assert run["normal_requests"] > 0 and 0 < run["normal_p50_us"] <= run["normal_p99_us"]
    assert "## Connections" in proc.stdout and "| meshpy, uvloop |" in proc.stdout


def test_the_descriptor_limit_is_raised_for_the_proxies_to_inherit() -> None:
    code = ("import resource, conn_bench\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "want = 5512 if hard == resource.RLIM_INFINITY else min(5512, hard)\n"
            "assert conn_bench.raise_nofile(5512) == want\n"
            "assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- report.py on synthetic figures -----------------------------------------------------------------

def _conn_run(rnd: int, name: str, rate: float, ok: bool = True) -> dict[str, Any]:
    return {"round": rnd, "contender": name, "ok": ok, "error": None if ok else "did not start: boom",
            "idle_connections": 5000, "kib_per_conn_served": 3.0 + rnd / 10, "kib_per_conn_bare": 1.6,
            "conn_per_s": rate, "churn_errors": rnd - 1, "cpu_us_per_conn": 80.0, "cpu_busy": 0.9,
            "normal_requests": 2000, "normal_errors": 1 if rnd == 3 else 0, "normal_p50_us": 400.0,
            "normal_p99_us": 5000.0}  # fmt: skip


def _results() -> dict[str, Any]:
    return {
        "schema": 1, "date": "2026-12-07", "commit": "abc1234", "dirty": False, "mode": "full", "rounds": 3,
        "contenders": [{"name": "meshpy-uvloop", "label": "meshpy, uvloop", "is_proxy": True},
                       {"name": "envoy", "label": "Envoy, --concurrency 1", "is_proxy": True}],
        "scenarios": [], "runs": [], "startup": [],
        "connections": {
            "config": {**conn_bench.Settings().describe(), "rlimit_nofile": 20000},
            "runs": [_conn_run(1, "meshpy-uvloop", 4000.0), _conn_run(1, "envoy", 0.0, ok=False),
                     _conn_run(2, "meshpy-uvloop", 4500.0), _conn_run(2, "envoy", 3000.0),
                     _conn_run(3, "meshpy-uvloop", 4280.0), _conn_run(3, "envoy", 3200.0)],
        },
    }  # fmt: skip


def test_connections_are_medians_of_ok_rounds_with_errors_summed() -> None:
    s = report.summarize_connections(_results())
    assert s is not None
    me, envoy = s["cells"]["meshpy-uvloop"], s["cells"]["envoy"]
    assert (me["rounds"], me["conn_per_s"]) == (3, 4280)
    assert (me["conn_per_s_min"], me["conn_per_s_max"]) == (4000, 4500)
    assert me["kib_per_conn_served"] == pytest.approx(3.2)
    assert (me["normal_errors"], me["normal_requests"], me["churn_errors"]) == (1, 6000, 3)
    assert (envoy["rounds"], envoy["conn_per_s"]) == (2, 3100)
    assert s["failed"] == [{"round": 1, "contender": "envoy", "error": "did not start: boom"}]


def test_connections_table_in_the_report_and_readme_block(tmp_path: Path) -> None:
    md = report.render_markdown(_results())
    section = md.split("## Connections\n")[1]
    assert "5,000 idle HTTP/1.1 connections" in section and "Connection: close" in section
    row = "| meshpy, uvloop | 3.2 | 1.6 | 4,280 (4.0k\u20134.5k) | 80 | 90% | 400 | 5,000 | 1 of 6,000 | 3 |"
    assert row in section
    assert "- envoy, round 1: did not start: boom" in section
    assert md.index("## Connections") < md.index("## Targets")
    json_path = tmp_path / "2026-12-07-abc1234.json"
    json_path.write_text(json.dumps(_results()), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BEGIN}\n{report.END}\n", encoding="utf-8")
    report.write_report(json_path, latest=False, readme=readme)
    assert "### Connections" in readme.read_text(encoding="utf-8")


def test_results_without_connections_render_no_such_table() -> None:
    results = _results()
    del results["connections"]
    assert report.summarize_connections(results) is None
    assert "Connections" not in report.render_markdown(results)
