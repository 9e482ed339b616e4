"""A fault-injecting upstream fleet for the resilience tests: N HTTP/1.1 hosts in one process, each on
its own port with its own behaviour, changed at run time.

Per host: an error rate (answered with `error_status`, default 503) or a fixed pattern of failures
(`FFFSSSSSSS`: 3 in every 10, never more than 3 in a row), added latency, resets in the middle
of a response (part of the body, then an RST), a black hole (accepts, reads, never answers), and a
`Retry-After` on errors. A refused connection needs no host: a port nothing listens on.

Control, on any host's port: `POST /__fleet?error_rate=0.3&latency_ms=50` changes that host;
`GET /__fleet` returns its counters as JSON (requests seen, errors, resets, and the attempt numbers
that came in `x-envoy-attempt-count`). Every normal answer is 200 with `x-upstream: host-<i>` and
echoes the request's attempt count as `x-seen-attempt`.

    python tests/fleet.py --ports 9001,9002 [--error-rate 0.3] [--latency-ms 10] [--mode blackhole]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httptools

BEHAVIOUR = ("error_rate", "error_status", "latency_ms", "reset_rate", "mode", "retry_after", "pattern")


class Host:
    def __init__(self, index: int, **behaviour: Any) -> None:
        self.index = index
        self.error_rate = 0.0
        self.error_status = 503
        self.latency_ms = 0.0
        self.reset_rate = 0.0
        self.mode = "normal"  # or "blackhole"
        self.retry_after = ""
        self.pattern = ""  # e.g. "FFFSSSSSSS": request k fails when pattern[k % len] is F (overrides rate)
        self.requests = 0
        self.errors = 0
        self.resets = 0
        self.attempts: dict[str, int] = {}
        self.set(behaviour)

    def set(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in BEHAVIOUR:
                raise ValueError(f"unknown behaviour {key!r}")
            kind = type(getattr(self, key))
            setattr(self, key, kind(value))

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "resets": self.resets,
                "attempts": self.attempts, **{k: getattr(self, k) for k in BEHAVIOUR}}


class Conn(asyncio.Protocol):
    def __init__(self, host: Host) -> None:
        self.host = host
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.queue: asyncio.Queue[tuple[bytes, bytes, dict[bytes, bytes]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.queue.put_nowait((method, self.url, self.headers))
        self.url, self.headers = b"", {}

    async def serve(self) -> None:
        while True:
            method, url, headers = await self.queue.get()
            if url.startswith(b"/__fleet"):
                self.answer(method, url)
            else:
                await self.request(headers)

    def answer(self, method: bytes, url: bytes) -> None:
        if method == b"POST":
            self.host.set(dict(parse_qsl(urlsplit(url.decode()).query)))
        body = json.dumps(self.host.stats()).encode()
        self.write(200, body, [(b"content-type", b"application/json")])

    async def request(self, headers: dict[bytes, bytes]) -> None:
        host = self.host
        if host.mode == "blackhole":
            return  # accepted and read: never answered
        host.requests += 1
        attempt = headers.get(b"x-envoy-attempt-count", b"").decode()
        host.attempts[attempt] = host.attempts.get(attempt, 0) + 1
        if host.latency_ms:
            await asyncio.sleep(host.latency_ms / 1000)
        extra = [(b"x-seen-attempt", attempt.encode())]
        if random.random() < host.reset_rate:
            host.resets += 1
            self.reset_mid_response()
            return
        fails = (host.pattern[(host.requests - 1) % len(host.pattern)] == "F" if host.pattern
                 else random.random() < host.error_rate)
        if fails:
            host.errors += 1
            if host.retry_after:
                extra.append((b"retry-after", host.retry_after.encode()))
            self.write(host.error_status, b"injected error\n", extra)
            return
        self.write(200, f"host-{host.index}\n".encode(), extra)

    def write(self, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [f"HTTP/1.1 {status} X\r\n".encode(), f"x-upstream: host-{self.host.index}\r\n".encode(),
                f"content-length: {len(body)}\r\n".encode()]
        head += [n + b": " + v + b"\r\n" for n, v in extra]
        self.transport.write(b"".join(head) + b"\r\n" + body)

    def reset_mid_response(self) -> None:
        """Promise 1,000 bytes, send 10, then reset the connection (SO_LINGER 0: an RST, not a FIN)."""
        assert self.transport is not None
        self.transport.write(f"HTTP/1.1 200 OK\r\nx-upstream: host-{self.host.index}\r\n"
                             f"content-length: 1000\r\n\r\n".encode() + b"0123456789")
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


async def main(ports: list[int], behaviour: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for i, port in enumerate(ports):
        host = Host(i, **behaviour)
        servers.append(await loop.create_server(lambda h=host: Conn(h), "127.0.0.1", port, backlog=1024))
    print("ready", flush=True)
    await asyncio.Event().wait()


class Fleet:
    """The fleet as a subprocess, driven from a test: `Fleet(3, error_rate=0.3).start()`."""

    def __init__(self, n: int, **behaviour: Any) -> None:
        from kit import free_port

        self.ports = [free_port() for _ in range(n)]
        self.behaviour = behaviour
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Fleet:
        args = [sys.executable, str(Path(__file__)), "--ports", ",".join(map(str, self.ports))]
        for key, value in self.behaviour.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the fleet did not start")
        return self

    def set(self, i: int, **behaviour: Any) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in behaviour.items())
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[i]}/__fleet?{query}", method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def stats(self, i: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[i]}/__fleet", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def requests(self) -> list[int]:
        return [int(self.stats(i)["requests"]) for i in range(len(self.ports))]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--reset-rate", type=float, default=0.0)
    parser.add_argument("--mode", default="normal", choices=("normal", "blackhole"))
    parser.add_argument("--retry-after", default="")
    parser.add_argument("--pattern", default="")
    a = parser.parse_args()
    given = {k: getattr(a, k) for k in BEHAVIOUR}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main([int(p) for p in a.ports.split(",")], given))
