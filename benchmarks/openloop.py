"""Open-loop HTTP/1.1 load generator free of coordinated omission, as wrk2 does it.

    python benchmarks/openloop.py --host 127.0.0.1 --port P --path /hello --rate 1000 \
        --connections 16 --duration 10 [--warmup 1] [--json]
    python benchmarks/openloop.py --serve-trivial --port P     # a trivial server, to calibrate

Why it is free of coordinated omission: a closed-loop client (wrk, ab) sends the next request only
when the previous one has returned, so while the server stalls it stops sending, and the requests it
*would* have sent never exist; one 200 ms stall becomes one slow sample among thousands and vanishes
from the p99. Here every request has an intended send time fixed in advance (`rate` in total, each of
the `connections` keep-alive connections owning every `connections`-th slot, phases staggered by
1/rate). A connection that is still waiting for a response when its next slot comes sends that
request as soon as the response arrives, and its latency runs from the *intended* time, not from the
actual send. So a stall is charged to every request that should have gone out during it (200 ms,
190 ms, 180 ms... at 100 req/s per connection), which is what a user arriving at a steady rate sees.
Requests still owed when the duration ends are sent late too (a drain phase); any that cannot finish
within `drain` seconds count as errors rather than disappearing.

Timers: uvloop's timers have 1 ms granularity and fire up to ~0.5 ms either side of the target. The
timer is therefore set ~1 ms early and a request may go out slightly before its slot; its latency
then runs from the actual send (latency = end - min(intended, sent)), so timer jitter neither
inflates nor flatters the figures. Timestamps are time.perf_counter_ns().

Non-2xx/3xx responses, connection failures and parse errors count as errors and are left out of the
latencies (a fast 503 would otherwise look like good latency). A lost connection is re-opened for
the next slot; the slots that pass while reconnecting are late, as they should be.

Measurement floor (client overhead): against a trivial uvloop server in another process
(`--serve-trivial`), client and server pinned to different CPUs of a 2-CPU VM, 1000 req/s over
16 connections for 10 s: p50 ~70 us, p90 ~90 us, p99 ~150 us, p99.9 ~0.5 ms (Python 3.11,
uvloop 0.23, httptools 0.9). Latencies below that are not resolvable; compare a proxy's figures
with the direct-to-upstream figures from the same tool, not with absolute zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import httptools

# Timers are set this much before the slot, so that uvloop's +-0.5 ms rounding never makes them late.
_TIMER_EARLY_NS = 1_000_000
# Below this much waiting, a timer costs more than it saves: send now.
_SEND_NOW_NS = 1_000_000
_CONNECT_TIMEOUT = 2.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Wire(asyncio.Protocol):
    """One TCP connection of a _Slot. A new one per connect, so a late connection_lost of a closed
    connection cannot be mistaken for the current one."""

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, hence a cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.slot.failed(self)

    def on_message_complete(self) -> None:
        self.slot.completed(self, self.parser.get_status_code(), self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.slot.failed(self)


class _Slot:
    """One client connection and its share of the schedule: slot k is at start + phase + k * step."""

    def __init__(self, gen: _Generator, phase_ns: int) -> None:
        self.gen = gen
        self.intended = gen.start_ns + phase_ns  # of the current request
        self.sent_at = 0
        self.wire: _Wire | None = None
        self.busy = False  # a request is in flight, or a connect is under way
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    async def connect(self) -> bool:
        gen = self.gen
        try:
            _, wire = await asyncio.wait_for(
                gen.loop.create_connection(lambda: _Wire(self), gen.host, gen.port), _CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        self.wire = wire
        return True

    def fire(self) -> None:
        """The current request's slot has come (or is about to): send it, connecting first if needed."""
        self.timer = None
        if self.intended >= self.gen.end_ns:
            self.finish()
            return
        wire = self.wire
        if wire is None or wire.transport is None or wire.transport.is_closing():
            self.busy = True
            self.gen.spawn(self._connect_then_send())
            return
        self.busy = True
        self.sent_at = time.perf_counter_ns()
        if self.intended >= self.gen.warm_ns:
            self.gen.sent += 1
        wire.transport.write(self.gen.request)

    async def _connect_then_send(self) -> None:
        # A connection that is already gone counts as a failure too, or fire() would reconnect in a loop.
        if await self.connect() and self.wire is not None and self.wire.transport is not None:
            self.fire()
        else:
            self.sent_at = time.perf_counter_ns()
            if self.intended >= self.gen.warm_ns:
                self.gen.sent += 1
            self.advance(ok=False, end=self.sent_at)

    def completed(self, wire: _Wire, status: int, keep_alive: bool) -> None:
        end = time.perf_counter_ns()
        if wire is not self.wire or not self.busy:
            return
        if not keep_alive:
            self.drop_wire()
        self.advance(ok=200 <= status < 400, end=end)

    def failed(self, wire: _Wire) -> None:
        if wire is not self.wire:
            return
        self.drop_wire()
        if self.busy:
            self.advance(ok=False, end=time.perf_counter_ns())

    def drop_wire(self) -> None:
        wire, self.wire = self.wire, None
        if wire is not None and wire.transport is not None:
            wire.transport.close()

    def advance(self, ok: bool, end: int) -> None:
        """Record the current request, then move to the next slot: send now if it is already due
        (the lateness is part of its latency), else set a timer."""
        gen = self.gen
        self.busy = False
        if self.intended >= gen.warm_ns:
            if ok:
                gen.completed += 1
                gen.latencies_ns.append(end - min(self.intended, self.sent_at))
            else:
                gen.errors += 1
        self.intended += gen.step_ns
        self.schedule()

    def schedule(self) -> None:
        wait = self.intended - time.perf_counter_ns()
        if wait <= _SEND_NOW_NS:
            self.fire()
        else:
            self.timer = self.gen.loop.call_later((wait - _TIMER_EARLY_NS) / 1e9, self.fire)

    def owed(self) -> int:
        """Measured requests not finished yet: the one in flight and those whose slot has passed."""
        gen = self.gen
        if self.done:
            return 0
        first = max(self.intended, gen.warm_ns)
        return max(0, -(-(gen.end_ns - first) // gen.step_ns))

    def finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.drop_wire()
        self.gen.slot_done()


class _Generator:
    def __init__(self, host: str, port: int, path: str, rate: float, connections: int,
                 duration: float, warmup: float, host_header: str | None) -> None:
        if rate <= 0 or connections <= 0 or duration <= 0 or warmup < 0:
            raise ValueError("rate, connections and duration must be > 0, warmup >= 0")
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        authority = host_header or (f"{host}:{port}" if port != 80 else host)
        # Built once: the hot path only writes these bytes.
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: meshpy-openloop\r\n"
                        f"Accept: */*\r\n\r\n").encode("latin-1")
        self.connections = connections
        self.interval_ns = round(1e9 / rate)
        self.step_ns = self.interval_ns * connections
        self.warmup, self.duration = warmup, duration
        self.start_ns = self.warm_ns = self.end_ns = 0
        self.sent = self.completed = self.errors = 0
        self.latencies_ns: list[int] = []
        self.pending = connections
        self.all_done: asyncio.Future[None] = self.loop.create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Held here so that the loop cannot collect it, and so that run() can cancel it at the end.
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def slot_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.all_done.done():
            self.all_done.set_result(None)

    async def run(self, drain: float) -> dict[str, Any]:
        # Connections are opened before the clock starts, so connect time is not in the first latencies.
        self.start_ns = time.perf_counter_ns() + 10_000_000
        self.warm_ns = self.start_ns + round(self.warmup * 1e9)
        self.end_ns = self.warm_ns + round(self.duration * 1e9)
        slots = [_Slot(self, i * self.interval_ns) for i in range(self.connections)]
        await asyncio.gather(*(s.connect() for s in slots))
        self.start_ns = time.perf_counter_ns()
        self.warm_ns = self.start_ns + round(self.warmup * 1e9)
        self.end_ns = self.warm_ns + round(self.duration * 1e9)
        for i, s in enumerate(slots):
            s.intended = self.start_ns + i * self.interval_ns
            s.schedule()
        await asyncio.wait([self.all_done], timeout=self.warmup + self.duration + drain + 0.05)
        timeouts = sum(s.owed() for s in slots)
        for s in slots:
            if not s.done:
                s.finish()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # lets the closed transports deliver connection_lost before we return
        return self.result(timeouts)

    def result(self, timeouts: int) -> dict[str, Any]:
        lat_us = [ns / 1000.0 for ns in self.latencies_ns]
        ordered = sorted(lat_us)
        return {
            "sent": self.sent, "completed": self.completed, "errors": self.errors + timeouts,
            "timeouts": timeouts,
            "p50_us": percentile(ordered, 50), "p90_us": percentile(ordered, 90),
            "p99_us": percentile(ordered, 99), "p999_us": percentile(ordered, 99.9),
            "max_us": ordered[-1] if ordered else 0.0,
            "mean_us": sum(ordered) / len(ordered) if ordered else 0.0,
            "latencies_us": lat_us,
            "achieved_rate": self.completed / self.duration,
            "target_rate": 1e9 / self.interval_ns, "connections": self.connections,
            "duration": self.duration, "warmup": self.warmup,
        }


async def openloop_async(host: str, port: int, path: str, rate: float, connections: int,
                         duration: float, warmup: float = 1.0, *, drain: float = 5.0,
                         host_header: str | None = None) -> dict[str, Any]:
    """Run the generator on the running loop (in process; tests use this). `drain` bounds the time
    after the end given to requests still owed; `host_header` overrides the Host header."""
    return await _Generator(host, port, path, rate, connections, duration, warmup, host_header).run(drain)


def run_openloop(host: str, port: int, path: str, rate: float, connections: int, duration: float,
                 warmup: float = 1.0, cpu: int | None = None, drain: float = 5.0,
                 host_header: str | None = None) -> dict[str, Any]:
    """Run the generator in its own process (on uvloop, pinned with `taskset -c cpu` if given) and
    return its JSON result. The separate process keeps the caller's own work off the client's loop."""
    cmd = [sys.executable, __file__, "--host", host, "--port", str(port), "--path", path,
           "--rate", str(rate), "--connections", str(connections), "--duration", str(duration),
           "--warmup", str(warmup), "--drain", str(drain), "--json"]
    if host_header is not None:
        cmd += ["--host-header", host_header]
    cmd = _pinned(cmd, cpu)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + duration + drain + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"openloop failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None:
        return cmd
    taskset = shutil.which("taskset")
    if taskset is None:
        raise RuntimeError("cpu pinning asked for, but taskset is not installed")
    return [taskset, "-c", str(cpu), *cmd]


class _TrivialHttp(asyncio.Protocol):
    """Answers every request with a fixed 200: the floor against which the client is calibrated."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(self.RESPONSE)


async def serve_trivial(port: int, host: str = "127.0.0.1") -> None:
    server = await asyncio.get_running_loop().create_server(_TrivialHttp, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def _run_on_uvloop(factory: Callable[[], Any]) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(factory())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second, in total")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds, after the warm-up")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--drain", type=float, default=5.0)
    ap.add_argument("--host-header")
    ap.add_argument("--json", action="store_true", help="print the full result, latencies included")
    ap.add_argument("--serve-trivial", action="store_true", help="run the trivial calibration server")
    args = ap.parse_args(argv)
    if args.serve_trivial:
        with contextlib.suppress(KeyboardInterrupt):
            _run_on_uvloop(lambda: serve_trivial(args.port, args.host))
        return 0
    # Nothing allocated in the run is cyclic garbage; a collection would only add client-side pauses.
    gc.collect()
    gc.freeze()
    gc.disable()
    result = _run_on_uvloop(lambda: openloop_async(
        args.host, args.port, args.path, args.rate, args.connections, args.duration, args.warmup,
        drain=args.drain, host_header=args.host_header))
    if args.json:
        # Rounded to 0.1 us: the client cannot resolve finer, and the JSON stays small.
        result["latencies_us"] = [round(v, 1) for v in result["latencies_us"]]
        print(json.dumps(result))
    else:
        del result["latencies_us"]
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
