"""The admin listener over real sockets, on both the default loop and uvloop, with aiohttp, raw
streams (keep-alive, pipelining, malformed input) and curl as clients.

The host is a fake: the admin server only depends on the `AdminHost` protocol.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from meshpy.admin.server import AdminServer, start_admin
from meshpy.model.types import Address
from meshpy.telemetry.metrics import Metrics


class FakeHost:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.current_state = "LIVE"
        self.drained = 0
        self.drain_flags = (False, False)
        self.quit_calls = 0
        self.fail_clusters = False
        self.admin: AdminServer | None = None

    def state(self) -> str:
        return self.current_state

    def config_dump(self) -> dict[str, Any]:
        # An Address left in the dump: the admin renders it with str() rather than failing.
        return {"listeners": [{"name": "ingress", "address": Address(host="0.0.0.0", port=8080)}]}

    def clusters_view(self) -> list[dict[str, Any]]:
        if self.fail_clusters:
            raise RuntimeError("boom")
        endpoint = {
            "address": "10.0.0.1:80",
            "health": "healthy",
            "active_requests": 2,
            "active_connections": 3,
            "idle_connections": 1,
            "hostname": "web-1.internal",
            "weight": 1,
        }
        return [{"name": "web", "endpoints": [endpoint]}]

    def certs_view(self) -> dict[str, Any]:
        return {"certificates": []}

    def drain_listeners(self, inbound_only: bool = False, graceful: bool = True) -> None:
        self.drained += 1
        self.drain_flags = (inbound_only, graceful)
        self.current_state = "DRAINING"

    def quit(self) -> None:
        # What the real app does: stop the admin listener (and everything else).
        self.quit_calls += 1
        assert self.admin is not None
        self.admin.close()


@dataclass
class Ctx:
    host: FakeHost
    admin: AdminServer
    base: str
    port: int


Scenario = Callable[[Ctx], Awaitable[None]]
LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def run(loop_name: str) -> Callable[..., None]:
    """Start an admin server for a fake host on 127.0.0.1:0 on the chosen loop (conftest's
    `loop_name`: uvloop and asyncio), and run a scenario against it."""

    def runner(scenario: Scenario, idle_timeout: float = 60.0) -> None:
        async def main() -> None:
            host = FakeHost()
            loop = asyncio.get_running_loop()
            any_port = Address(host="127.0.0.1", port=0)
            admin = await start_admin(host, any_port, loop, idle_timeout=idle_timeout)
            host.admin = admin
            port = admin.address.port
            try:
                await asyncio.wait_for(scenario(Ctx(host, admin, f"http://127.0.0.1:{port}", port)), 20)
            finally:
                admin.close()
                await admin.wait_closed()

        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as r:
            r.run(main())

    return runner


async def fetch(ctx: Ctx, method: str, path: str) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, ctx.base + path) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


Answer = tuple[int, dict[str, str], bytes]


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    body = b"" if head_only else await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def test_index_lists_paths(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        status, headers, body = await fetch(ctx, "GET", "/")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        for path in ("/ready", "/stats/prometheus", "/metrics", "/config_dump", "/clusters", "/quitquitquit"):
            assert path in body
        assert "POST /drain_listeners" in body

    run(scenario)


def test_ready_follows_host_state(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        assert (await fetch(ctx, "GET", "/ready"))[::2] == (200, "LIVE\n")
        for state in ("DRAINING", "PRE_INITIALIZING"):
            ctx.host.current_state = state
            assert (await fetch(ctx, "GET", "/ready"))[::2] == (503, f"{state}\n")

    run(scenario)


def test_prometheus_paths(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        stats = ctx.host.metrics.listener("ingress")
        stats.request_started()
        stats.request_done(200, 0.01)
        for path in ("/stats/prometheus", "/metrics"):
            status, headers, body = await fetch(ctx, "GET", path)
            assert status == 200
            assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(body)
                for s in fam.samples
            }
            key = (("listener", "ingress"), ("response_code", "200"), ("response_code_class", "2xx"))
            assert samples[("meshpy_downstream_rq_total", key)] == 1

    run(scenario)


def test_config_dump_is_pretty_json(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        status, headers, body = await fetch(ctx, "GET", "/config_dump")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert "\n  " in body
        assert json.loads(body) == {"listeners": [{"name": "ingress", "address": "0.0.0.0:8080"}]}

    run(scenario)


def test_clusters_json_and_text(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        status, _, body = await fetch(ctx, "GET", "/clusters")
        assert status == 200
        assert json.loads(body) == {"clusters": ctx.host.clusters_view()}
        assert json.loads((await fetch(ctx, "GET", "/clusters?format=json"))[2]) == json.loads(body)

        status, headers, body = await fetch(ctx, "GET", "/clusters?format=text")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert body.splitlines() == [
            "web::10.0.0.1:80::cx_active::3",
            "web::10.0.0.1:80::rq_active::2",
            "web::10.0.0.1:80::cx_idle::1",
            "web::10.0.0.1:80::hostname::web-1.internal",
            "web::10.0.0.1:80::weight::1",
            "web::10.0.0.1:80::health_flags::healthy",
        ]
        assert (await fetch(ctx, "GET", "/clusters?format=yaml"))[0] == 400

    run(scenario)


def test_drain_listeners_is_post_only(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        status, headers, _ = await fetch(ctx, "GET", "/drain_listeners")
        assert status == 405
        assert headers["Allow"] == "POST"
        assert ctx.host.drained == 0
        assert (await fetch(ctx, "POST", "/drain_listeners"))[::2] == (200, "OK\n")
        assert ctx.host.drained == 1
        assert ctx.host.drain_flags == (False, False)  # Envoy's defaults: every listener, at once
        assert (await fetch(ctx, "GET", "/ready"))[::2] == (503, "DRAINING\n")
        assert (await fetch(ctx, "POST", "/drain_listeners?inboundonly&graceful"))[::2] == (200, "OK\n")
        assert ctx.host.drain_flags == (True, True)

    run(scenario)


def test_read_paths_reject_post(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        for path in ("/ready", "/config_dump", "/stats/prometheus", "/clusters", "/"):
            status, headers, _ = await fetch(ctx, "POST", path)
            assert status == 405, path
            assert headers["Allow"] == "GET, HEAD"

    run(scenario)


def test_unknown_path_is_404(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        for path in ("/nope", "/stats", "/ready/extra"):
            assert (await fetch(ctx, "GET", path))[0] == 404
        assert (await fetch(ctx, "GET", "/ready/"))[0] == 200  # a trailing slash is forgiven

    run(scenario)


def test_quitquitquit_answers_then_quits(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        status, _, _ = await fetch(ctx, "GET", "/quitquitquit")
        assert status == 405
        assert ctx.host.quit_calls == 0

        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.write(b"POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        status, headers, body = await read_response(reader)
        # quit() closes the admin listener, yet the answer arrived whole, and the connection ends.
        assert (status, body) == (200, b"OK\n")
        assert headers["connection"] == "close"
        assert await reader.read() == b""
        assert ctx.host.quit_calls == 1
        assert not ctx.admin.is_serving()
        writer.close()
        await writer.wait_closed()

    run(scenario)


def test_keep_alive_and_pipelining(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        for _ in range(3):  # one request after the other on one connection
            writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"LIVE\n")
            assert "connection" not in headers

        # Three requests in one segment come back in order.
        writer.write(
            b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /drain_listeners HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
        )
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 404
        status, headers, _ = await read_response(reader, head_only=True)
        assert (status, headers["content-length"]) == (200, "5")  # HEAD: the GET's length, no body
        assert (await read_response(reader))[::2] == (200, b"OK\n")

        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], body) == (503, "close", b"DRAINING\n")
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    run(scenario)


def test_http10_closes_unless_keep_alive(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.write(b"GET /ready HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "keep-alive")
        writer.write(b"GET /ready HTTP/1.0\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    run(scenario)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"POST /drain_listeners HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 1_100_000, 413),
    ],
)
def test_bad_requests_answer_and_close(run: Callable[..., None], request_bytes: bytes, status: int) -> None:
    async def scenario(ctx: Ctx) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.write(request_bytes)
        got, headers, _ = await read_response(reader)
        assert (got, headers["connection"]) == (status, "close")
        assert await reader.read() == b""
        assert ctx.host.drained == 0
        writer.close()
        await writer.wait_closed()

    run(scenario)


def test_view_error_is_500_and_connection_survives(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        ctx.host.fail_clusters = True
        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.write(b"GET /clusters HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 500
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()
        await writer.wait_closed()

    run(scenario)


def test_idle_connections_time_out(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server after 0.2 s idle
        writer.close()
        await writer.wait_closed()

    run(scenario, idle_timeout=0.2)


def test_close_ends_idle_keep_alive_connections(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        ctx.admin.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.wait_for(ctx.admin.wait_closed(), 5)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", ctx.port)
        writer.close()
        await writer.wait_closed()

    run(scenario)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl(run: Callable[..., None]) -> None:
    async def scenario(ctx: Ctx) -> None:
        async def curl(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sS", "-i", "--max-time", "5", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode == 0, err
            return out.decode()

        out = await curl(f"{ctx.base}/ready")
        assert out.startswith("HTTP/1.1 200 OK\r\n")
        assert out.endswith("\r\n\r\nLIVE\n")
        out = await curl("-X", "POST", f"{ctx.base}/drain_listeners")
        assert out.startswith("HTTP/1.1 200 OK\r\n")
        assert ctx.host.drained == 1

    run(scenario)


async def test_bind_failure_raises_oserror() -> None:
    host = FakeHost()
    loop = asyncio.get_running_loop()
    first = await start_admin(host, Address(host="127.0.0.1", port=0), loop)
    try:
        with pytest.raises(OSError):
            # Another listener on the same port: SO_REUSEADDR does not allow two listening sockets.
            await start_admin(host, first.address, loop)
    finally:
        first.close()
        await first.wait_closed()
