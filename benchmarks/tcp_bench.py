"""TCP throughput through an L4 proxy: a source server and a closed-loop client, on uvloop.

    python benchmarks/tcp_bench.py serve --port P [--host 127.0.0.1] [--size 1048576]
    python benchmarks/tcp_bench.py run --port P [--host 127.0.0.1] --connections 8 --duration 10 \
        [--warmup 1] [--size 1048576] [--timeout 10] [--json]

Protocol: the client connects, sends one request line (b"GET\\n"); the source answers with exactly
`size` bytes, then shuts down its write side, so the client sees EOF. One transfer per connection: an
L4 proxy carries a fresh connection for every such transfer in practice, so connection setup (accept,
upstream connect, teardown in the proxy) is part of what is measured, not only byte copying. The
client checks that it received exactly `size` bytes; anything else is an error, never a transfer.

Counting: N workers each loop connect / request / read to EOF until `warmup + duration` has passed.
A transfer is counted when it *ends* inside the measured window [warmup, warmup + duration], so the
rate is completions over a fixed window (what wrk does), with no bias from the transfers in flight
at either edge. Those still in flight at the end are finished (bounded by --timeout) but not counted,
except that a failure is always counted once the warm-up is over, so that errors cannot vanish.
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
from collections.abc import Callable
from typing import Any, cast

REQUEST = b"GET\n"
DEFAULT_SIZE = 1 << 20
# Per write: big enough to keep the call count low, small enough that backpressure can act within a transfer.
_CHUNK = 256 * 1024
# Client receive buffer; the data is only counted, so one buffer per worker is reused for every read.
_RECV_BUF = 256 * 1024
# After a failed transfer: against a refused port a worker would otherwise spin a CPU the proxy needs.
_ERROR_PAUSE_S = 0.01


class _Source(asyncio.Protocol):
    """Server side of one connection: waits for the request line, then sends `payload` once."""

    def __init__(self, payload: memoryview) -> None:
        self.payload = payload
        self.offset = -1  # -1 until the request line has arrived
        self.paused = False
        self.request = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, hence a cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.offset >= 0:
            return  # anything after the request line is ignored
        self.request += data
        if b"\n" in self.request:
            self.offset = 0
            self._send()
        elif len(self.request) > 4096 and self.transport is not None:
            self.transport.close()  # not our client

    def _send(self) -> None:
        t = self.transport
        # write() calls pause_writing() itself once the buffer passes the high-water mark: stop there.
        while t is not None and not self.paused and self.offset < len(self.payload):
            end = min(self.offset + _CHUNK, len(self.payload))
            t.write(self.payload[self.offset:end])
            self.offset = end
        if t is not None and not t.is_closing() and self.offset == len(self.payload):
            # Sent after the buffered data; the client then closes and eof_received() closes our side.
            # The offset moves past the end so that a later resume_writing() does not send it twice.
            t.write_eof()
            self.offset += 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._send()

    def eof_received(self) -> bool:
        return False  # close the transport once the client is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, host: str = "127.0.0.1", size: int = DEFAULT_SIZE) -> None:
    # One preallocated payload for all connections: the source must cost as little CPU as possible.
    payload = memoryview(b"\x5a" * size)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Source(payload), host, port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


class _Sink(asyncio.BufferedProtocol):
    """Client side of one transfer. A BufferedProtocol rather than a Protocol: reads land in a reused
    buffer instead of a new bytes object each time, which keeps the client's own cost out of the figure."""

    def __init__(self, buf: bytearray, done: asyncio.Future[int]) -> None:
        self.buf = buf
        self.done = done
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(REQUEST)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(self.received)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError("closed without EOF"))


class _Client:
    def __init__(self, host: str, port: int, connections: int, duration: float, warmup: float,
                 size: int, timeout: float) -> None:
        if connections <= 0 or duration <= 0 or warmup < 0 or size < 0 or timeout <= 0:
            raise ValueError("connections, duration and timeout must be > 0; warmup, size >= 0")
        self.host, self.port, self.size, self.timeout = host, port, size, timeout
        self.connections, self.duration, self.warmup = connections, duration, warmup
        self.start = self.warm_end = self.end = 0.0
        self.times_ms: list[float] = []
        self.errors: dict[str, int] = {}

    async def transfer(self, buf: bytearray) -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(lambda: _Sink(buf, done), self.host, self.port)
                return await done
        finally:
            if transport is not None:
                transport.close()

    async def worker(self) -> None:
        buf = bytearray(_RECV_BUF)
        while (t0 := time.perf_counter()) < self.end:
            kind = None
            try:
                if await self.transfer(buf) != self.size:
                    kind = "size"
            except TimeoutError:
                kind = "timeout"
            except OSError as exc:
                kind = type(exc).__name__
            t1 = time.perf_counter()
            if kind is not None:
                if t1 >= self.warm_end:
                    self.errors[kind] = self.errors.get(kind, 0) + 1
                await asyncio.sleep(_ERROR_PAUSE_S)
            elif self.warm_end <= t1 <= self.end:
                self.times_ms.append((t1 - t0) * 1000.0)

    async def run(self) -> dict[str, Any]:
        self.start = time.perf_counter()
        self.warm_end = self.start + self.warmup
        self.end = self.warm_end + self.duration
        await asyncio.gather(*(self.worker() for _ in range(self.connections)))
        ordered = sorted(self.times_ms)
        n = len(ordered)
        return {
            "transfers": n, "bytes": n * self.size, "duration_s": self.duration,
            "transfers_per_s": n / self.duration, "mib_per_s": n * self.size / self.duration / (1 << 20),
            "errors": sum(self.errors.values()), "error_kinds": self.errors,
            "p50_ms": _percentile(ordered, 50), "p99_ms": _percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else 0.0,
            "size": self.size, "connections": self.connections, "warmup_s": self.warmup,
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, as openloop.percentile (not imported: this script stands alone)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(max(1, math.ceil(q / 100 * len(sorted_values))), len(sorted_values)) - 1]


async def tcp_async(host: str, port: int, connections: int, duration: float, warmup: float = 1.0,
                    size: int = DEFAULT_SIZE, timeout: float = 10.0) -> dict[str, Any]:
    """Run the client on the running loop (in process)."""
    return await _Client(host, port, connections, duration, warmup, size, timeout).run()


def run_tcp(host: str, port: int, connections: int, duration: float, warmup: float = 1.0,
            size: int = DEFAULT_SIZE, cpu: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Run the client in its own process (on uvloop, pinned with `taskset -c cpu` when cpu is given and
    taskset is installed) and return its JSON result; the process is killed if it overruns."""
    cmd = [sys.executable, __file__, "run", "--host", host, "--port", str(port),
           "--connections", str(connections), "--duration", str(duration), "--warmup", str(warmup),
           "--size", str(size), "--timeout", str(timeout), "--json"]
    taskset = shutil.which("taskset")
    if cpu is not None and taskset is not None:
        cmd = [taskset, "-c", str(cpu), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + duration + timeout + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"tcp_bench failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _run_on_uvloop(factory: Callable[[], Any]) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(factory())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "run"):
        p = sub.add_parser(name)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes per transfer")
    run = sub.choices["run"]
    run.add_argument("--connections", type=int, default=8)
    run.add_argument("--duration", type=float, default=10.0, help="measured seconds, after the warm-up")
    run.add_argument("--warmup", type=float, default=1.0)
    run.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per transfer")
    run.add_argument("--json", action="store_true", help="one compact line")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            _run_on_uvloop(lambda: serve(args.port, args.host, args.size))
        return 0
    # Nothing in the run is cyclic garbage; a collection would only add client-side pauses.
    gc.collect()
    gc.freeze()
    gc.disable()
    result = _run_on_uvloop(lambda: tcp_async(args.host, args.port, args.connections, args.duration,
                                              args.warmup, args.size, args.timeout))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
