"""Every background task has an owner (meshpy.tasks.TaskOwner): after a shutdown, on both loops,
no task of the proxy is left running: not the DNS refresh, the health checks, the pool sweeper, the
connects of upstream pools and of the TCP proxy, nor the drain and shutdown tasks themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop
from kit import DemoUpstream, free_port

from meshpy.app import App
from meshpy.model.load import load_text

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def _config(admin: int, web: int, tcp: int, upstream: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{web}
    routes: [{{match: /, cluster: demo}}]
  - name: raw
    address: 127.0.0.1:{tcp}
    protocol: tcp
    cluster: named
clusters:
  - name: demo
    endpoints: [127.0.0.1:{upstream}]
    health_check: {{path: /hello, interval: 100ms, timeout: 1s}}
    outlier_detection: {{consecutive_5xx: 5, interval: 100ms}}
  - name: named
    type: strict_dns
    endpoints: [localhost:{upstream}]
    dns_refresh_rate: 100ms
"""


async def _scenario(upstream: int) -> tuple[int, list[str]]:
    async with asyncio.timeout(20):
        return await _run(upstream)


async def _run(upstream: int) -> tuple[int, list[str]]:
    loop = asyncio.get_running_loop()
    admin, web, tcp = free_port(), free_port(), free_port()
    app = App(loop, drain_time=0.0, grace_time=0.5)
    await app.apply(load_text(_config(admin, web, tcp, upstream)))
    # Traffic, so that pools and the TCP proxy have connected (and hold connections) at shutdown.
    reader, writer = await asyncio.open_connection("127.0.0.1", web)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", tcp)
    raw_writer.write(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await raw_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    owned = len(app.tasks)
    app.shutdown(drain=False)
    await app.wait_stopped()
    for w in (writer, raw_writer):
        w.close()
    await asyncio.sleep(0)
    assert len(app.tasks) == 0  # (the shutdown task itself ended last)
    left = [f"{t.get_name()}: {t.get_coro()}" for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return owned, left


@pytest.mark.parametrize("loop_kind", sorted(LOOPS))
def test_no_task_outlives_the_shutdown(demo: DemoUpstream, loop_kind: str) -> None:
    loop = LOOPS[loop_kind]()
    try:
        owned, left = loop.run_until_complete(_scenario(demo.port))
    finally:
        loop.close()
    assert owned >= 3, owned  # the DNS refresh, the health check and the pool sweeper at least
    assert left == [], left
