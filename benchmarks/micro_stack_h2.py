"""A proxied gRPC unary call (or h2 GET) through meshpy's HTTP/2 stack in process, with fake transports.

The HTTP/2 sibling of micro_stack.py: one long-lived downstream connection (Http2Downstream) and
pooled upstream connections (UpstreamHttp2 for gRPC, UpstreamHttp1 for the GET) on fake transports,
no sockets, so the CPU of one call is stable enough for before/after figures and for the profiler.

    python benchmarks/micro_stack_h2.py [--calls 20000] [--scenario grpc-unary|h2-get]
                                        [--codec nghttp2|h2] [--peer-codec nghttp2|h2]
                                        [--loop uvloop|asyncio] [--concurrency 1] [--profile]

The client (an HTTP/2 client codec) and the origin (an HTTP/2 server codec, or canned HTTP/1.1 bytes)
run in process too; what they cost is timed apart (perf_counter around their calls) and printed beside
the total, as `proxy only = total - peers`. The harness's own loop turns (`await asyncio.sleep(0)` until
meshpy's call_soon flushes ran) stay in the proxy figure. Each call is checked end to end (status,
body, grpc-status trailers, END_STREAM) so that a broken exchange cannot be timed. The upstream
connections are made here and handed to the pool (as micro_stack.py seeds its HostPool), so the
connector is never asked to open one.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from typing import Any, cast

from meshpy.codec import h2session
from meshpy.codec.h2session import DATA, END, REQUEST, RESPONSE, TRAILERS, Session
from meshpy.codec.http2 import client_settings, local_settings
from meshpy.model.load import load_text
from meshpy.model.types import AccessLog, H2CodecName, Http2Options
from meshpy.routing.compile import ListenerSlot, compile_snapshot
from meshpy.stack.deadlines import Deadlines
from meshpy.telemetry.accesslog import AccessLogger
from meshpy.telemetry.metrics import Metrics
from meshpy.transport.downstream_http2 import Http2Downstream
from meshpy.transport.upstream_http1 import UpstreamHttp1
from meshpy.transport.upstream_http2 import UpstreamHttp2
from meshpy.upstream.cluster import ClusterManager
from meshpy.upstream.pool import HostPool
from meshpy.upstream.pool_h2 import Http2HostPool

CONFIG = """
listeners:
  - name: web
    address: 127.0.0.1:1
    protocol: http2
    http2: {{codec: {codec}}}
    routes:
      - match: /bench.Echo/
        cluster: grpc
        timeout: 0s
      - match: /
        cluster: origin
clusters:
  - name: grpc
    protocol: http2
    http2: {{codec: {codec}}}
    endpoints: [127.0.0.1:2]
  - name: origin
    endpoints: [127.0.0.1:3]
"""

Fields = list[tuple[bytes, bytes]]
GRPC_REQUEST: Fields = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/bench.Echo/Unary"),
    (b":authority", b"service.local"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.60"),
]  # fmt: skip
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"  # 10 bytes each way
GRPC_RESPONSE: Fields = [(b":status", b"200"), (b"content-type", b"application/grpc")]
GRPC_TRAILERS: Fields = [(b"grpc-status", b"0")]
GET_REQUEST: Fields = [
    (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/hello"), (b":authority", b"service.local"),
    (b"user-agent", b"h2load"), (b"accept", b"*/*"),
]  # fmt: skip
# micro_stack.py's nginx answer.
H1_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
               b"Content-Type: text/plain\r\nContent-Length: 100\r\n"
               b"Last-Modified: Tue, 01 Jan 2030 00:00:00 GMT\r\nConnection: keep-alive\r\n"
               b'ETag: "6b0dfb38-64"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 100)
MAX_SPINS = 50  # loop turns one batch of calls may take before it counts as stuck


class FakeTransport:
    """Enough of asyncio.Transport for the protocols; keeps what they write until taken."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.out.extend(parts)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 1)}.get(name, default)


def no_access_log(a: AccessLog) -> AccessLogger:
    raise AssertionError("the benchmark's config has no access log")


class Bench:
    """The client, the proxy's connections and the origin, wired by hand; `calls` runs the exchanges."""

    def __init__(self, loop: asyncio.AbstractEventLoop, grpc: bool, codec: str, peer_codec: str,
                 concurrency: int) -> None:
        self.grpc, self.n = grpc, concurrency
        self.peers = 0.0  # seconds spent in the client and the origin (perf_counter)
        config = load_text(CONFIG.format(codec=codec))
        metrics = Metrics()
        clusters = ClusterManager(metrics, loop).reconcile(config.clusters)
        snap = compile_snapshot(config, clusters, metrics, no_access_log, "bench")
        opts = Http2Options(codec=cast(H2CodecName, peer_codec))
        self.client: Session = h2session.client(opts, client_settings(opts))
        slot = ListenerSlot(current=snap.listeners["web"], deadlines=Deadlines(loop))
        self.down = Http2Downstream(slot, loop)
        self.down_t = FakeTransport()
        self.down.connection_made(self.down_t)  # type: ignore[arg-type]
        self.origin: Session = h2session.server(opts, local_settings(opts, 8192), 1 << 20)
        self.answered = 0
        self.h1: list[tuple[UpstreamHttp1, FakeTransport]] = []
        self.up: UpstreamHttp2 | None = None
        self.up_t = FakeTransport()
        if grpc:
            pool2 = clusters["grpc"].hosts[0].pool
            assert isinstance(pool2, Http2HostPool)
            self.up = up = UpstreamHttp2(pool2, pool2.opts)
            up.connection_made(self.up_t)  # type: ignore[arg-type]
            for _ in range(2):  # prefaces and SETTINGS both ways, then their ACKs
                self.origin.receive(self.up_t.take())
                up.data_received(self.origin.data_to_send())
            assert up.settled, "the upstream connection did not take the origin's SETTINGS"
            pool2.adopt(up)  # one connection, which every call's stream goes on
        else:
            pool1 = clusters["origin"].hosts[0].pool
            assert isinstance(pool1, HostPool)
            for _ in range(concurrency):  # one HTTP/1.1 connection per call in flight
                up1, t = UpstreamHttp1(pool1), FakeTransport()
                up1.connection_made(t)  # type: ignore[arg-type]
                pool1.busy += 1
                pool1.limits.busy += 1  # as checkout would have counted it
                pool1.release(up1)
                self.h1.append((up1, t))
        for _ in range(2):  # the downstream handshake
            self.down.data_received(self.client.data_to_send())
            self.client.receive(self.down_t.take())

    def _origin(self) -> None:
        """The origin reads what the proxy wrote upstream and answers every request that has ended."""
        if self.up is not None:
            if not self.up_t.out:
                return
            data = self.up_t.take()
            t0 = time.perf_counter()
            origin = self.origin
            for kind, sid, a, b in origin.receive(data):
                if kind == DATA:
                    if a and a != GRPC_MESSAGE:  # (an END_STREAM of its own: empty)
                        raise RuntimeError(f"origin: unexpected request body {a!r}")
                    if b:
                        origin.acknowledge(sid, b)
                elif kind == REQUEST and (b":path", b"/bench.Echo/Unary") not in a:
                    raise RuntimeError(f"origin: unexpected request head {a!r}")
                elif kind == END:
                    origin.send_headers(sid, GRPC_RESPONSE, False)
                    origin.send_data(sid, b"\x00\x00\x00\x00\x05hello", False)
                    origin.send_headers(sid, GRPC_TRAILERS, True)
                    self.answered += 1
            out = origin.data_to_send()
            self.peers += time.perf_counter() - t0
            if out:
                self.up.data_received(out)
            return
        for up1, t in self.h1:
            if t.out:
                t0 = time.perf_counter()
                data = t.take()
                ok = data.startswith(b"GET /hello HTTP/1.1\r\n") and data.endswith(b"\r\n\r\n")
                self.peers += time.perf_counter() - t0
                if not ok:
                    raise RuntimeError(f"origin: unexpected HTTP/1.1 request {data!r}")
                self.answered += 1
                up1.data_received(H1_RESPONSE)

    def _client(self, state: dict[int, list[int]]) -> int:
        """The client reads the proxy's answers; how many of its streams have ended."""
        data = self.down_t.take()
        t0 = time.perf_counter()
        client = self.client
        ended = 0
        for kind, sid, a, b in client.receive(data):
            s = state[sid]
            if kind == DATA:
                s[1] += len(a)
                if b:
                    client.acknowledge(sid, b)  # (its WINDOW_UPDATE goes out with the next request)
            elif kind == RESPONSE:
                s[0] = a[0] == (b":status", b"200")
            elif kind == TRAILERS:
                s[2] = a == GRPC_TRAILERS
            elif kind == END:
                s[3] = 1
                ended += 1
        self.peers += time.perf_counter() - t0
        return ended

    async def calls(self, rounds: int) -> None:
        """`rounds` times: `n` calls opened at once, run until each is answered, and checked."""
        client, down, n, grpc = self.client, self.down, self.n, self.grpc
        body = 10 if grpc else 100
        for _ in range(rounds):
            t0 = time.perf_counter()
            state: dict[int, list[int]] = {}
            for _ in range(n):
                if grpc:
                    sid = client.open_stream(GRPC_REQUEST, False)
                    client.send_data(sid, GRPC_MESSAGE, True)
                else:
                    sid = client.open_stream(GET_REQUEST, True)
                state[sid] = [0, 0, 0, 0]  # status 200, body bytes, grpc-status 0, ended
            data = client.data_to_send()
            self.peers += time.perf_counter() - t0
            down.data_received(data)
            ended = 0
            for _ in range(MAX_SPINS):
                await asyncio.sleep(0)  # meshpy's call_soon flushes
                self._origin()
                if self.down_t.out:
                    ended += self._client(state)
                    if ended == n:
                        break
            bad = {sid: s for sid, s in state.items() if s != [1, body, int(grpc), 1]}
            if bad:
                raise RuntimeError(f"calls not answered in full (status ok, body bytes, trailers ok, "
                                   f"ended): {bad}; origin answered {self.answered}")
        if self.down.streams or (self.up is not None and self.up.streams):
            raise RuntimeError("streams left open in the proxy after their calls")


def run(bench: Bench, calls: int, loop: asyncio.AbstractEventLoop) -> tuple[float, float]:
    """(CPU seconds per call in all, perf_counter seconds per call in the client and origin)."""
    rounds = max(1, calls // bench.n)
    bench.peers = 0.0
    t0 = time.process_time()
    loop.run_until_complete(bench.calls(rounds))
    total = time.process_time() - t0
    return total / (rounds * bench.n), bench.peers / (rounds * bench.n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--scenario", choices=("grpc-unary", "h2-get"), default="grpc-unary")
    ap.add_argument("--codec", choices=("nghttp2", "h2"), default="nghttp2", help="the proxy's")
    ap.add_argument("--peer-codec", choices=("nghttp2", "h2"), default="nghttp2",
                    help="the in-process client's and origin's (timed apart)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--concurrency", type=int, default=1, help="calls in flight at once (at most 100)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 100:
        ap.error("--concurrency: 1 to 100 (the streams one connection takes)")
    loop: asyncio.AbstractEventLoop
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def make() -> Bench:  # (the protocols want a running loop)
        return Bench(loop, args.scenario == "grpc-unary", args.codec, args.peer_codec, args.concurrency)

    bench = loop.run_until_complete(make())
    run(bench, 2000, loop)  # warm up
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(bench, args.calls // 4, loop)
        prof.disable()
        # ($SORT and $TOP: the order and length of the listing)
        stats = pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime"))
        stats.print_stats(int(os.environ.get("TOP", "40")))
        return
    total, peers = min((run(bench, args.calls // 5, loop) for _ in range(5)), key=lambda r: r[0])
    print(f"{args.scenario} through meshpy's HTTP/2 stack (proxy codec {args.codec}, peers "
          f"{args.peer_codec}, {args.loop}, {args.concurrency} in flight): {total * 1e6:.2f} us CPU per "
          f"call; client and origin {peers * 1e6:.2f} us; proxy only {(total - peers) * 1e6:.2f} us")


if __name__ == "__main__":
    main()
