"""A full request through meshpy's HTTP/1.1 stack in process, with fake transports.

Measures the pure-Python cost of one proxied request (parse, route, rewrite headers, pool checkout,
upstream write, response parse, response write, metrics, timers) without sockets or syscalls, so
before/after figures of a hot-path change are stable even on a noisy machine.

    python benchmarks/micro_stack.py [--requests 200000] [--loop uvloop|asyncio] [--profile]
                                     [--policies | --filter] [--access-log json|text]

The pytest-benchmark suite in benchmarks/micro/ reuses `build` (bench_stack.py), with and without an
access log; this script stays as the quick before/after figure and the profiler entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from meshpy.model.load import load_text
from meshpy.model.types import AccessLog
from meshpy.routing.compile import HttpListenerConfig, ListenerSlot, compile_snapshot
from meshpy.stack.deadlines import Deadlines
from meshpy.telemetry.accesslog import AccessLogger, open_access_log
from meshpy.telemetry.metrics import Metrics
from meshpy.transport.downstream_http1 import Http1Downstream
from meshpy.transport.upstream_http1 import UpstreamHttp1
from meshpy.upstream.cluster import ClusterManager, ClusterRuntime
from meshpy.upstream.pool import HostPool

CONFIG = """
listeners:
  - name: web
    address: 127.0.0.1:1
    routes:
      - match: /
        cluster: up
clusters:
  up: 127.0.0.1:2
"""

# The same with what the resilience issue adds to a route and its cluster (the cost of having them).
POLICY_CONFIG = """
listeners:
  - name: web
    address: 127.0.0.1:1
    routes:
      - match: /
        cluster: up
        retry: {retry_on: [5xx, reset, connect-failure], num_retries: 2, per_try_timeout: 2s}
clusters:
  - name: up
    endpoints: [127.0.0.1:2]
    circuit_breakers: {max_connections: 512, max_pending_requests: 512, max_requests: 512}
    outlier_detection: {consecutive_5xx: 5, interval: 1s}
"""

# The same with one Python filter on the route that does nothing (the base class: on_request returns
# CONTINUE): the cost of the filter chain itself, against CONFIG's route without one.
FILTER_CONFIG = """
listeners:
  - name: web
    address: 127.0.0.1:1
    filters:
      - name: noop
        python: {class: "meshpy.filters:HttpFilter"}
    routes:
      - match: /
        cluster: up
clusters:
  up: 127.0.0.1:2
"""

REQUEST = (b"GET /hello HTTP/1.1\r\nHost: service.local\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
# What the benchmark suite's nginx origin answers: `Connection: keep-alive` on every response is
# typical of real servers, and a response without it once hid a slow path from this benchmark.
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 100\r\n"
            b"Last-Modified: Tue, 01 Jan 2030 00:00:00 GMT\r\nConnection: keep-alive\r\n"
            b'ETag: "6b0dfb38-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100)


class FakeTransport:
    """Enough of asyncio.Transport for the protocols; counts what they write."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.written += len(p)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


@dataclass(eq=False)
class Stack:
    """One downstream connection wired to one pooled upstream connection, both on fake transports."""

    down: Http1Downstream
    up: UpstreamHttp1
    down_t: FakeTransport
    up_t: FakeTransport
    listener: HttpListenerConfig
    cluster: ClusterRuntime
    loggers: list[AccessLogger] = field(default_factory=list)

    def close(self) -> None:
        """Flush and close the access logs (their files would otherwise leak a ResourceWarning)."""
        for logger in self.loggers:
            logger.flush()
            logger.close()


def build(loop: asyncio.AbstractEventLoop, config_text: str = CONFIG) -> Stack:
    """`config_text` must have a listener `web` routing to a cluster `up` with one host."""
    config = load_text(config_text)
    metrics = Metrics()
    manager = ClusterManager(metrics, loop)
    clusters = manager.reconcile(config.clusters)
    loggers: list[AccessLogger] = []

    def make_logger(a: AccessLog) -> AccessLogger:
        logger = open_access_log(a, loop)
        loggers.append(logger)  # kept so a caller can flush and close them
        return logger

    snap = compile_snapshot(config, clusters, metrics, make_logger, "bench")
    listener = snap.listeners["web"]
    slot = ListenerSlot(current=listener, deadlines=Deadlines(loop))
    down = Http1Downstream(slot, loop)
    down_t = FakeTransport()
    down.connection_made(down_t)  # type: ignore[arg-type]
    cluster = clusters["up"]
    pool = cluster.hosts[0].pool
    assert isinstance(pool, HostPool)  # an HTTP/1.1 cluster
    up = UpstreamHttp1(pool)
    up_t = FakeTransport()
    up.connection_made(up_t)  # type: ignore[arg-type]
    pool.busy += 1
    pool.limits.busy += 1  # as checkout would have counted it
    pool.release(up)  # one idle pooled connection, reused by every request
    return Stack(down, up, down_t, up_t, listener, cluster, loggers)


def run(n: int, loop: asyncio.AbstractEventLoop, config_text: str = CONFIG) -> float:
    stack = build(loop, config_text)
    down_t = stack.down_t
    feed_down, feed_up = stack.down.data_received, stack.up.data_received
    t0 = time.perf_counter()
    for _ in range(n):
        feed_down(REQUEST)
        feed_up(RESPONSE)
    elapsed = time.perf_counter() - t0
    assert down_t.written >= n * 100, "responses were not written"
    stack.close()
    return elapsed / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--policies", action="store_true", help="retries, breakers, outlier detection")
    ap.add_argument("--filter", action="store_true", help="one Python filter that does nothing")
    ap.add_argument("--access-log", choices=("json", "text"),
                    help="an access log to a file: meshpy's JSON line, or Envoy's default text line")
    args = ap.parse_args()
    config = POLICY_CONFIG if args.policies else FILTER_CONFIG if args.filter else CONFIG
    log_file = None
    if args.access_log:
        # (no loop iteration runs here, so lines are formatted and written every 1024 requests)
        log_file = tempfile.NamedTemporaryFile(prefix="micro-stack-", suffix=".log")  # noqa: SIM115
        log = log_file.name if args.access_log == "json" else f"{{path: {log_file.name}, format: text}}"
        anchor = "    address: 127.0.0.1:1\n"
        config = config.replace(anchor, f"{anchor}    access_log: {log}\n")
    loop: asyncio.AbstractEventLoop
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run(2000, loop, config)  # warm up
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.requests // 4, loop, config)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    best = min(run(args.requests // 5, loop, config) for _ in range(5))
    if args.access_log:
        print(f"(with an access log: {args.access_log})")
    what = " with retries, breakers and outlier detection" if args.policies else \
        " with a Python filter that does nothing" if args.filter else ""
    print(f"full request through the stack{what} ({args.loop}): {best * 1e6:.2f} us")


if __name__ == "__main__":
    main()
