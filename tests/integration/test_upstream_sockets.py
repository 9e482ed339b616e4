"""Every kind of upstream connection the running proxy makes gets its own cluster's socket options: the
pooled HTTP/1.1 connection, the TCP proxy's and a CONNECT tunnel's have SO_KEEPALIVE with their
cluster's timings, a cluster without tcp_keepalive leaves it off, and all have TCP_NODELAY (which both
event loops also turn on by themselves; the Connector does not rely on that).

The proxy runs in this process (meshpy.app.App, on uvloop and on asyncio's loop), so the socket it
connected with is among the test's own file descriptors: the one whose local address is the peer
address the upstream saw."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable

import pytest
import uvloop
from kit import free_port

from meshpy.app import App
from meshpy.model.load import load_text

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def _config(admin: int, web: int, tcp: int, upstream: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{web}
    upgrades: [connect]
    routes:
      - {{match: {{connect: true}}, cluster: tunnel}}
      - {{match: /bare, cluster: bare}}
      - {{match: /, cluster: pooled}}
  - name: raw
    address: 127.0.0.1:{tcp}
    protocol: tcp
    cluster: plain
clusters:
  - name: pooled
    endpoints: [127.0.0.1:{upstream}]
    tcp_keepalive: {{probes: 4, time: 45s, interval: 7s}}
  - name: plain
    endpoints: [127.0.0.1:{upstream}]
    tcp_keepalive: {{probes: 2, interval: 3s}}
  - name: tunnel
    endpoints: [127.0.0.1:{upstream}]
    tcp_keepalive: {{time: 60}}
  - name: bare
    endpoints: [127.0.0.1:{upstream}]
"""


def options_of_local(address: tuple[str, int]) -> tuple[int, int, int, int, int]:
    """(TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL) of this process's socket
    bound to `address`."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.type == socket.SOCK_STREAM and sock.getsockname() == address:
                    return (int(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))),
                            int(bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))),
                            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL))
    raise AssertionError(f"no socket of this process is bound to {address}")


async def _exchange(port: int, path: str, first: bytes) -> asyncio.StreamWriter:
    """A GET through the proxy (after `first`, a CONNECT, when given), answered; the client stays open
    so the proxy's upstream connection does too."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first:
        writer.write(first)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.write(b"GET %s HTTP/1.1\r\nhost: a\r\n\r\n" % path.encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(2) == b"ok"
    return writer


async def _run() -> list[tuple[int, int, int, int, int]]:
    peers: list[tuple[str, int]] = []
    handlers: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[:2])
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
        writer.close()
        await writer.wait_closed()

    upstream = await asyncio.start_server(serve, "127.0.0.1", 0)
    admin, web, tcp = free_port(), free_port(), free_port()
    app = App(asyncio.get_running_loop(), drain_time=0.0, grace_time=0.5)
    await app.apply(load_text(_config(admin, web, tcp, upstream.sockets[0].getsockname()[1])))
    clients = []
    found = []
    # One at a time, so the n-th connection the upstream accepted is the n-th kind.
    connect = b"CONNECT a.example:80 HTTP/1.1\r\nhost: a\r\n\r\n"
    for port, path, first in ((web, "/", b""), (tcp, "/", b""), (web, "/", connect), (web, "/bare", b"")):
        clients.append(await _exchange(port, path, first))
        found.append(options_of_local(peers[-1]))
    for w in clients:
        w.close()
    app.shutdown(drain=False)
    await app.wait_stopped()
    upstream.close()
    await upstream.wait_closed()
    await asyncio.gather(*handlers)
    return found


@pytest.mark.parametrize("loop_kind", sorted(LOOPS))
def test_every_upstream_connection_gets_the_cluster_options(loop_kind: str) -> None:
    with socket.socket() as fresh:
        kernel_probes = fresh.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        kernel_interval = fresh.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
    loop = LOOPS[loop_kind]()
    try:
        pooled, proxied, tunnel, bare = loop.run_until_complete(asyncio.wait_for(_run(), 20))
    finally:
        loop.close()
    # (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL); unset timings: the kernel's
    assert pooled == (1, 1, 4, 45, 7)
    assert proxied[:3] == (1, 1, 2) and proxied[4] == 3
    assert tunnel == (1, 1, kernel_probes, 60, kernel_interval)
    assert bare[:2] == (1, 0)
