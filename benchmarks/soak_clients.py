"""The soak's traffic: asyncio clients at a fixed rate (open loop: a slow answer never slows the sending),
each request going to the file half or the xDS half of the proxy in turn.

- http1: `GET /hello` over keep-alive connections (httptools); http1-post: `POST /echo` (not idempotent:
  its failures are reported, never counted as lost);
- http2: `GET /hello` as streams of one HTTP/2 connection per listener (soak_h2.py);
- grpc: unary calls (grpcio's asyncio client, its own retries off) to the origins' gRPC servers;
- websocket: a handshake (a GET: lost if it fails), the origin's greeting and three echoes (the
  `websockets` client); a session cut because its origin died is expected, any other cut is lost;
- tcp: a connection through the TCP listener, the origin's greeting, an echo to EOF; a connection the
  proxy could not connect upstream while an origin was down is expected (a TCP proxy connects once);
- resets: requests cut by the client mid-way (HTTP/1.1 RST with the request or its body half sent,
  HTTP/2 RST_STREAM, gRPC cancellation); their outcome is not judged, the proxy's cleanup is (fds, RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from soak_h1 import H1Failure, H1Pool, abort_with_rst
from soak_h2 import H2Client, H2Failure
from soak_tally import Stats, Tally
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

TIMEOUT_S = 15.0  # per request, above the route's 10 s timeout: the proxy answers first
MAX_IN_FLIGHT = 200  # per kind; beyond it a slot is skipped (counted), so a stall cannot pile up tasks
# Shares of the total rate. Resets, WebSocket and TCP sessions are several round trips each.
MIX = {"http1": 0.30, "http2": 0.25, "grpc": 0.20, "websocket": 0.03, "websocket-h2": 0.02, "tcp": 0.10,
       "http1-post": 0.04, "resets": 0.06}
IDEMPOTENT = dict.fromkeys(MIX, True) | {"http1-post": False, "resets": False}


class Traffic:
    def __init__(self, stats: Stats, http_ports: dict[str, int], tcp_ports: dict[str, int],
                 rate: float, kinds: tuple[str, ...] = tuple(MIX)) -> None:
        self.stats = stats
        self.kinds = kinds  # which kinds of MIX are sent (each at its share of `rate`)
        self.rate = rate
        self.http_ports, self.tcp_ports = http_ports, tcp_ports
        self.names = sorted(http_ports)
        self.h1 = {n: H1Pool(p) for n, p in http_ports.items()}
        self.h2 = {n: H2Client(p) for n, p in http_ports.items()}
        self.channels = {n: grpc.aio.insecure_channel(f"127.0.0.1:{p}", options=[("grpc.enable_retries", 0)])
                         for n, p in http_ports.items()}
        self.unary = {n: c.unary_unary("/soak.Echo/Unary") for n, c in self.channels.items()}
        self.slow = {n: c.unary_unary("/soak.Echo/Slow") for n, c in self.channels.items()}
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight: dict[str, int] = dict.fromkeys(MIX, 0)
        for kind in kinds:
            stats.tally(kind, IDEMPOTENT[kind])

    async def run(self, until: float) -> None:
        """Send at the fixed rate until the soak's clock says `until`, then wait for what is in flight."""
        kinds: dict[str, Callable[[Tally, str], Awaitable[None]]] = {
            "http1": self.http1, "http2": self.http2, "grpc": self.grpc_call, "websocket": self.websocket,
            "websocket-h2": self.websocket_h2, "tcp": self.tcp, "http1-post": self.http1_post,
            "resets": self.reset}
        await asyncio.gather(*(self._paced(kind, self.rate * MIX[kind], fn, until)
                               for kind, fn in kinds.items() if kind in self.kinds))
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=TIMEOUT_S + 5)

    async def _paced(self, kind: str, rate: float, fn: Callable[[Tally, str], Awaitable[None]],
                     until: float) -> None:
        tally = self.stats.tallies[kind]
        clock = self.stats.clock
        interval = 1.0 / rate
        # Phases spread over the first interval, so that the kinds do not all fire on the same tick.
        nxt = clock.now() + random.uniform(0, interval)
        n = 0
        while nxt < until:
            wait = nxt - clock.now()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -1.0:
                nxt = clock.now()  # the client itself stalled a second: do not burst to catch up
            nxt += interval
            if self.in_flight[kind] >= MAX_IN_FLIGHT:
                tally.skipped += 1
                continue
            listener = self.names[n % len(self.names)]
            n += 1
            tally.sent += 1
            self.in_flight[kind] += 1
            task = asyncio.ensure_future(self._guard(kind, tally, listener, fn(tally, listener)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _guard(self, kind: str, tally: Tally, listener: str, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:  # a bug in the soak's own client: shown as such, never hidden
            self.stats.failure(tally, f"soak client error: {type(exc).__name__}", repr(exc), listener)
        finally:
            self.in_flight[kind] -= 1

    def _elapsed_ms(self, start: float) -> float:
        return (self.stats.clock.now() - start) * 1000

    # --- HTTP/1.1 ---

    async def http1(self, tally: Tally, listener: str) -> None:
        start = self.stats.clock.now()
        try:
            r = await asyncio.wait_for(self.h1[listener].request("GET", "/hello"), TIMEOUT_S)
        except (H1Failure, OSError, TimeoutError) as exc:
            self.stats.failure(tally, _kind(exc), repr(exc), listener)
            return
        self._judge(tally, listener, start, r.status, r.headers, r.body.startswith(b"hello from o"), r.body)

    async def http1_post(self, tally: Tally, listener: str) -> None:
        start = self.stats.clock.now()
        body = os.urandom(random.randint(256, 8192))
        try:
            r = await asyncio.wait_for(self.h1[listener].request("POST", "/echo", body), TIMEOUT_S)
        except (H1Failure, OSError, TimeoutError) as exc:
            self.stats.failure(tally, _kind(exc), repr(exc), listener)
            return
        self._judge(tally, listener, start, r.status, r.headers, r.body == body, r.body)

    def _judge(self, tally: Tally, listener: str, start: float, status: int, headers: dict[str, str],
               body_ok: bool, body: bytes = b"") -> None:
        if status != 200:
            self.stats.failure(tally, f"status {status}", f"{status} {body[:100]!r} {headers}", listener)
        elif not body_ok:
            self.stats.failure(tally, "wrong body", str(headers), listener)
        else:
            tally.success(self._elapsed_ms(start))
            self.stats.saw(headers)

    # --- HTTP/2 ---

    async def http2(self, tally: Tally, listener: str) -> None:
        start = self.stats.clock.now()
        for attempt in (1, 2):
            try:
                r = await self.h2[listener].request("GET", "/hello", timeout=TIMEOUT_S)
            except H2Failure as exc:
                if exc.unprocessed and attempt == 1:
                    tally.client_retries += 1
                    continue
                self.stats.failure(tally, exc.kind, repr(exc), listener)
                return
            hello = r.body.startswith(b"hello from o")
            self._judge(tally, listener, start, r.status, r.headers, hello, r.body)
            return

    # --- gRPC ---

    async def grpc_call(self, tally: Tally, listener: str) -> None:
        start = self.stats.clock.now()
        payload = b"soak-%d" % random.getrandbits(32)
        call = self.unary[listener](payload, timeout=TIMEOUT_S - 2)
        try:
            answer = await call
            metadata = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            self.stats.failure(tally, f"grpc {exc.code().name}", str(exc.details()), listener)
            return
        headers = {str(k): str(v) for k, v in (metadata or ())}
        self._judge(tally, listener, start, 200, headers, answer == payload)

    # --- WebSocket ---

    async def websocket(self, tally: Tally, listener: str) -> None:
        clock = self.stats.clock
        start = clock.now()
        uri = f"ws://127.0.0.1:{self.http_ports[listener]}/ws"
        try:
            ws = await asyncio.wait_for(ws_connect(uri, open_timeout=TIMEOUT_S - 2, ping_interval=None,
                                                   close_timeout=2, compression=None), TIMEOUT_S)
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            self.stats.failure(tally, f"handshake: {_kind(exc)}", repr(exc), listener)
            return
        origin = ""
        try:
            greeting = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            origin = str(greeting).removeprefix("origin ")
            for k in range(3):
                message = f"m{k}-{random.getrandbits(32)}"
                await ws.send(message)
                if await asyncio.wait_for(ws.recv(), TIMEOUT_S) != message:
                    self.stats.failure(tally, "wrong echo", message, listener)
                    return
            await ws.close()
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            self._session_cut(tally, listener, origin, start, _kind(exc), exc)
            return
        finally:
            await ws.close()
        headers = {k.lower(): v for k, v in ws.response.headers.raw_items()} if ws.response else {}
        tally.success(self._elapsed_ms(start))
        self.stats.saw(headers)

    def _session_cut(self, tally: Tally, listener: str, origin: str, start: float, kind: str,
                     exc: BaseException) -> None:
        """A WebSocket session that ended early: expected when its origin was cut meanwhile."""
        expected = bool(origin) and self.stats.origin_cut(origin, start, self.stats.clock.now())
        where = "after the greeting" if origin else "before the greeting"
        self.stats.failure(tally, f"session cut {where}" + ("" if expected else f": {kind}"),
                           f"{origin or '?'}: {exc!r}", listener, expected=expected)

    async def websocket_h2(self, tally: Tally, listener: str) -> None:
        """The same session as `websocket`, over HTTP/2 (RFC 8441), which the proxy turns into an
        HTTP/1.1 Upgrade towards the origin."""
        clock = self.stats.clock
        start = clock.now()
        try:
            ws = await self.h2[listener].websocket("/ws", TIMEOUT_S)
        except H2Failure as exc:
            self.stats.failure(tally, f"handshake: {exc.kind}", repr(exc), listener)
            return
        origin = ""
        try:
            opcode, greeting = await ws.recv(TIMEOUT_S)
            origin = greeting.decode("latin-1").removeprefix("origin ")
            for k in range(3):
                message = f"m{k}-{random.getrandbits(32)}".encode()
                ws.send(0x1, message)
                opcode, echo = await ws.recv(TIMEOUT_S)
                if (opcode, echo) != (0x1, message):
                    self.stats.failure(tally, "wrong echo", f"{opcode} {echo!r}", listener)
                    return
        except H2Failure as exc:
            self._session_cut(tally, listener, origin, start, exc.kind, exc)
            return
        finally:
            await ws.close()
        tally.success(self._elapsed_ms(start))
        self.stats.saw(ws.st.headers)

    # --- TCP ---

    async def tcp(self, tally: Tally, listener: str) -> None:
        clock = self.stats.clock
        start = clock.now()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.tcp_ports[listener]), 5)
        except (OSError, TimeoutError) as exc:
            self.stats.failure(tally, f"connect to the proxy: {_kind(exc)}", repr(exc), listener)
            return
        origin = ""
        try:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
            if not line.endswith(b"\n"):
                # The proxy closed without a byte from upstream: no endpoint could be connected.
                down = self.stats.any_down(start, clock.now())
                self.stats.failure(tally, "closed before the origin's greeting",
                                   f"an origin down then: {down}", listener, expected=down is not None)
                return
            origin = line.strip().decode()
            payload = os.urandom(random.randint(512, 16384))
            writer.write(payload)
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), TIMEOUT_S)
            if echoed != payload:
                expected = self.stats.origin_cut(origin, start, clock.now())
                self.stats.failure(tally, "short echo", f"{origin}: {len(echoed)} of {len(payload)} bytes",
                                   listener, expected=expected)
                return
        except (OSError, TimeoutError) as exc:
            expected = bool(origin) and self.stats.origin_cut(origin, start, clock.now())
            self.stats.failure(tally, f"session cut: {_kind(exc)}", f"{origin or '?'}: {exc!r}", listener,
                               expected=expected)
            return
        finally:
            writer.close()
        tally.success(self._elapsed_ms(start))

    # --- client resets ---

    async def reset(self, tally: Tally, listener: str) -> None:
        """One of six ways to give up on a request mid-way; what comes back (if anything) is ignored."""
        after = random.uniform(0.005, 0.1)
        variant = random.randrange(6)
        port = self.http_ports[listener]
        if variant < 3:
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                if variant == 0:  # the whole request, then gone before the answer
                    writer.write(b"GET /slow/300 HTTP/1.1\r\nhost: soak\r\n\r\n")
                elif variant == 1:  # half a request head
                    writer.write(b"GET /slow/300 HTTP/1.1\r\nhost: soak\r\nx-half: ")
                else:  # the head and a quarter of the body
                    writer.write(b"POST /echo HTTP/1.1\r\nhost: soak\r\ncontent-length: 4096\r\n\r\n"
                                 + b"b" * 1024)
                await asyncio.sleep(after)
                abort_with_rst(writer)
        elif variant == 3:
            await self.h2[listener].reset_mid_request("/slow/300", after)
        elif variant == 4:
            await self.h2[listener].reset_mid_request("/echo", after, body=b"h" * 1024)
        else:
            call = self.slow[listener](b"300", timeout=5)
            await asyncio.sleep(after)
            call.cancel()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.code()  # CANCELLED, without raising
        tally.ok += 1  # sent and cut as planned

    async def close(self) -> None:
        for pool in self.h1.values():
            pool.close()
        for client in self.h2.values():
            client.close()
        for channel in self.channels.values():
            await channel.close()
        await asyncio.sleep(0.1)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, H1Failure):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


def describe_mix(rate: float, kinds: tuple[str, ...] = tuple(MIX)) -> dict[str, Any]:
    return {kind: round(rate * share, 2) for kind, share in MIX.items() if kind in kinds}
