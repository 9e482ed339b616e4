"""The control plane's admin listener over a real socket: readiness before and after config, unknown
paths, and a request that is not HTTP."""

from __future__ import annotations

import asyncio

from control.admin import MAX_HEAD, ControlAdmin
from control.ads import AdsServer
from control.cache import SnapshotCache, make_snapshot


async def ask(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return out


async def test_ready_metrics_nodes_and_errors() -> None:
    cache = SnapshotCache()
    loads = {"rejected": 2}
    admin = ControlAdmin(AdsServer(cache), cache, loads)
    server = await asyncio.start_server(admin.handle, "127.0.0.1", 0, limit=MAX_HEAD)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await ask(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
        cache.set(make_snapshot({}))
        ready = await ask(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ready.startswith(b"HTTP/1.1 200 OK\r\n") and ready.endswith(b"\r\n\r\nLIVE\n")
        metrics = await ask(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert b"meshpy_control_connected_nodes 0.0" in metrics
        assert b'meshpy_control_source_loads_total{result="rejected"} 2.0' in metrics
        assert (await ask(port, b"GET /nodes HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\n[]\n")
        assert (await ask(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        assert (await ask(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert await ask(port, b"GET /" + b"x" * (MAX_HEAD + 10)) == b""  # over the limit: closed
    finally:
        server.close()
        await server.wait_closed()
