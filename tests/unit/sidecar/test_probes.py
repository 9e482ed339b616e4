"""The sidecar's probe port (meshpy/sidecar/probes.py) in front of real apps on real sockets: an HTTP app
(plaintext and HTTPS), a TCP listener and a grpcio health server, each up, down and too slow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc_echo
import pytest
from kit import free_port
from pki import make_ca

from meshpy.model.types import Address
from meshpy.sidecar.probes import AppProbe, ProbeServer, check, parse_probes


class HttpApp:
    """A tiny HTTP/1.1 app: /status/N answers N, /slow answers after 5 s; it keeps each request head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, tls: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            path = head.split(b" ")[1]
            if path == b"/slow":
                await asyncio.sleep(5)
            status = int(path.rsplit(b"/", 1)[1]) if path.startswith(b"/status/") else 200
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        """Stop listening, and end the connections still open (a /slow one)."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.sleep(0)


@pytest.fixture
async def app() -> AsyncIterator[HttpApp]:
    running = HttpApp()
    yield running
    await running.close()


@contextlib.asynccontextmanager
async def probe_port(probes: dict[str, AppProbe]) -> AsyncIterator[int]:
    server = ProbeServer(probes, Address(host="127.0.0.1", port=0))
    await server.start()
    try:
        yield server.port
    finally:
        await server.close()


async def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """What the kubelet sees: the status and body of one request to the probe port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 10.0.0.1:15021\r\nUser-Agent: kube-probe/1.31\r\n"
                 "Accept: */*\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_an_http_probe_passes_the_apps_status_on(app: HttpApp) -> None:
    port = await app.start()
    probes = {f"/app-health/web/{name}": AppProbe("httpGet", port, 1, path)
              for name, path in (("livez", "/"), ("readyz", "/status/500"), ("startupz", "/status/301"),
                                 ("nocontent", "/status/204"))}
    async with probe_port(probes) as probe:
        assert (await get(probe, "/app-health/web/livez"))[0] == 200
        assert (await get(probe, "/app-health/web/readyz"))[0] == 500
        # A redirect counts as success for the kubelet, as the app's own would have.
        assert (await get(probe, "/app-health/web/startupz"))[0] == 301
        assert await get(probe, "/app-health/web/nocontent") == (204, b"")
        await app.close()
        status, body = await get(probe, "/app-health/web/livez")
        assert status == 503 and b"refused" in body.lower(), body


async def test_the_probes_headers_and_path_reach_the_app_as_the_kubelet_sends_them(app: HttpApp) -> None:
    port = await app.start()
    headers = [{"name": "Host", "value": "web.shop"}, {"name": "X-Probe", "value": "live"}]
    probes = parse_probes(json.dumps({"/app-health/web/livez": {"httpGet": {
        "path": "/health check?deep=1", "port": port, "httpHeaders": headers}}}))
    async with probe_port(probes) as probe:
        assert (await get(probe, "/app-health/web/livez"))[0] == 200
    (head,) = app.heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /health%20check?deep=1 HTTP/1.1"
    assert {"Host: web.shop", "X-Probe: live", "Connection: close", "Accept: */*"} <= set(lines)
    assert sum(line.lower().startswith("host:") for line in lines) == 1
    assert any(line.startswith("User-Agent: kube-probe/") for line in lines)


async def test_an_https_probe_checks_no_certificate(app: HttpApp, tmp_path: Path) -> None:
    issued = make_ca(tmp_path).issue("web.shop", dns=("web.shop",))  # not 127.0.0.1's, not trusted anyway
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(issued.cert, issued.key)
    port = await app.start(tls)
    https = AppProbe("httpGet", port, 2, "/status/200", https=True)
    async with probe_port({"/app-health/web/livez": https}) as probe:
        assert (await get(probe, "/app-health/web/livez"))[0] == 200
    assert app.heads  # it went through TLS to the app, not refused at the handshake


async def test_the_probes_timeout_is_kept(app: HttpApp) -> None:
    port = await app.start()
    async with probe_port({"/app-health/web/livez": AppProbe("httpGet", port, 1, "/slow")}) as probe:
        started = time.monotonic()
        status, body = await get(probe, "/app-health/web/livez")
        took = time.monotonic() - started
    assert status == 503 and b"no answer within 1 s" in body, body
    assert 0.9 < took < 2.5, took


async def test_a_tcp_probe_is_a_connect() -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = int(listener.sockets[0].getsockname()[1])
    async with probe_port({"/app-health/db/readyz": AppProbe("tcpSocket", port, 1)}) as probe:
        assert (await get(probe, "/app-health/db/readyz"))[0] == 200
        listener.close()
        await listener.wait_closed()
        assert (await get(probe, "/app-health/db/readyz"))[0] == 503


@pytest.fixture
def grpc_app() -> Iterator[tuple[int, dict[str, int]]]:
    port, health = free_port(), {"": 1, "shop.Web": 1}
    server = grpc_echo.start(port, health)
    yield port, health
    server.stop(0)


async def test_a_grpc_probe_asks_the_health_service(grpc_app: tuple[int, dict[str, int]]) -> None:
    port, health = grpc_app
    probes = {"/app-health/web/livez": AppProbe("grpc", port, 2),
              "/app-health/web/readyz": AppProbe("grpc", port, 2, service="shop.Web")}
    async with probe_port(probes) as probe:
        assert (await get(probe, "/app-health/web/livez"))[0] == 200
        assert (await get(probe, "/app-health/web/readyz"))[0] == 200
        health["shop.Web"] = 2  # NOT_SERVING: the service the probe names, not the server as a whole
        assert (await get(probe, "/app-health/web/readyz"))[0] == 503
        assert (await get(probe, "/app-health/web/livez"))[0] == 200


async def test_a_grpc_probe_of_a_stopped_server_fails() -> None:
    port = free_port()
    server = grpc_echo.start(port)
    assert await check(AppProbe("grpc", port, 2)) == (200, "SERVING")
    server.stop(0).wait()
    status, _ = await check(AppProbe("grpc", port, 2))
    assert status == 503


async def test_nothing_else_is_served(app: HttpApp) -> None:
    port = await app.start()
    async with probe_port({"/app-health/web/livez": AppProbe("httpGet", port, 1)}) as probe:
        for path in ("/", "/ready", "/stats/prometheus", "/config_dump", "/app-health/web/readyz",
                     "/app-health/other/livez"):
            assert (await get(probe, path))[0] == 404, path
        assert (await get(probe, "/app-health/web/livez", "POST"))[0] == 405
        reader, writer = await asyncio.open_connection("127.0.0.1", probe)
        writer.write(b"nonsense\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        await writer.wait_closed()
    assert app.heads == []  # none of them reached the app


async def test_close_ends_idle_connections_and_frees_the_port() -> None:
    server = ProbeServer({}, Address(host="127.0.0.1", port=0))
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # says nothing
    await asyncio.sleep(0.05)
    async with asyncio.timeout(3):
        await server.close()
        assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize(("text", "reason"), [
    ("[]", "expected an object"),
    ('{"/healthz": {"tcpSocket": {"port": 80}}}', "starts with /app-health/"),
    ('{"/app-health/a/livez": {"exec": {}}}', "one of httpGet"),
    ('{"/app-health/a/livez": {"tcpSocket": {"port": "http"}}}', "not a port number"),
    ('{"/app-health/a/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": 0}}', "timeoutSeconds"),
    ('{"/app-health/a/livez": {"httpGet": {"port": 80, "scheme": "FTP"}}}', "not HTTP or HTTPS"),
    ('{"/app-health/a/livez": {"httpGet": {"port": 80, "httpHeaders": [{"name": "X", "value": "\\nB"}]}}}',
     "not a header"),
    ('{"/app-health/a/livez": {"httpGet": {"port": 80, "httpHeaders": [{"name": "X Y", "value": "a"}]}}}',
     "not a header"),
    ('{"/app-health/a/livez": {"httpGet": {"port": 80, "httpHeaders": ["X: y"]}}}', "expected a list"),
    ("{", "not JSON"),
])  # fmt: skip
def test_bad_probes_are_refused_naming_the_path(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_probes(text)
