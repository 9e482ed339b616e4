"""WebSocket through a real meshpy process, with the `websockets` library on both ends: the handshake
is routed like any request, then the connection is a tunnel both ways until either side closes.
Upgrade types a listener does not allow are proxied as plain requests (h2c among them)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import h2.events
import pytest
from h2peer import H2Peer
from kit import Proxy, eventually, free_port, http
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    access_log: stdout
    routes:
      - match: /ws
        cluster: ws
      - match: /
        cluster: ws
  - name: no-upgrades
    address: 127.0.0.1:{plain}
    upgrades: []
    routes:
      - match: /
        cluster: ws
clusters:
  - name: ws
    endpoints: [127.0.0.1:{upstream}]
"""


class EchoServer:
    """A websockets server in a thread of its own: echoes text upper-cased and binary as is."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _handler(self, ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message.upper() if isinstance(message, str) else message)

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port, max_size=None):
            self.ready.set()
            await self.stop_event.wait()

    def stop(self) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Proxy, int, int]]:
    upstream = free_port()
    server = EchoServer(upstream)
    port, admin, plain = free_port(), free_port(), free_port()
    p = Proxy(CONFIG.format(admin=admin, port=port, plain=plain, upstream=upstream), admin).start()
    yield p, port, plain
    p.stop()
    server.stop()


async def _talk(port: int) -> list[object]:
    got: list[object] = []
    async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send("hello")
        got.append(await ws.recv())
        big = bytes(range(256)) * 8192  # 2 MiB: many writes, the flow control on both sides
        await ws.send(big)
        got.append(await ws.recv() == big)
        for i in range(50):
            await ws.send(f"m{i}")
        got.append([await ws.recv() for _ in range(50)] == [f"M{i}" for i in range(50)])
    return got


def test_websocket_through_meshpy(env: tuple[Proxy, int, int]) -> None:
    p, port, _ = env
    assert asyncio.run(_talk(port)) == ["HELLO", True, True]
    # Logged once the tunnel closed, as a 101 with the bytes of the whole session.
    eventually(lambda: '"response_code":101' in p.logs(), "the session is logged")
    line = [x for x in p.logs().splitlines() if '"response_code":101' in x][-1]
    assert '"path":"/ws"' in line and '"bytes_sent":0' not in line
    eventually(lambda: p.metric("meshpy_upstream_cx_active", cluster="ws") == 0, "the upstream side closes")
    assert p.metric("meshpy_downstream_rq_active", listener="web") == 0


def test_many_sessions_at_once(env: tuple[Proxy, int, int]) -> None:
    async def all_of_them() -> list[list[object]]:
        return await asyncio.gather(*(_talk(env[1]) for _ in range(10)))

    assert asyncio.run(all_of_them()) == [["HELLO", True, True]] * 10
    # Plain requests are still routed on the same listener (the WebSocket server refuses them).
    assert http(env[1], path="/plain").status in (400, 426)


def test_listener_without_upgrades_refuses_the_tunnel(env: tuple[Proxy, int, int]) -> None:
    async def attempt() -> None:
        async with connect(f"ws://127.0.0.1:{env[2]}/ws"):
            pass

    # The Upgrade header is dropped as hop-by-hop: the upstream sees a plain GET and refuses it.
    with pytest.raises(InvalidStatus):
        asyncio.run(attempt())


def test_h2c_upgrade_is_answered_as_http1(env: tuple[Proxy, int, int]) -> None:
    port = env[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 ") and not head.startswith(b"HTTP/1.1 101")


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (RFC 6455 5.2): FIN, the opcode, masked (clients must mask), payload < 126."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_websocket_over_http2_extended_connect(env: tuple[Proxy, int, int]) -> None:
    """RFC 8441: CONNECT with :protocol websocket on an HTTP/2 stream, to the HTTP/1.1 upstream."""
    p, port, _ = env
    peer = H2Peer(port)
    try:
        assert peer.wait(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
        sid = peer.request([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                            (b":path", b"/ws"), (b":authority", b"127.0.0.1:%d" % port),
                            (b"sec-websocket-version", b"13")], end=False)
        assert peer.wait(lambda events: any(isinstance(e, h2.events.ResponseReceived) for e in events))
        [head] = [e for e in peer.events if isinstance(e, h2.events.ResponseReceived)]
        assert dict(head.headers)[b":status"] == b"200"
        peer.conn.send_data(sid, _frame(0x1, b"hello"))
        peer.flush()

        def echoed(events: list[object]) -> bool:
            return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) \
                .startswith(b"\x81\x05HELLO")

        assert peer.wait(echoed)
        peer.conn.send_data(sid, _frame(0x8, b"\x03\xe8"), end_stream=True)  # close, 1000
        peer.flush()
        assert peer.wait(lambda events: any(isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
                                            for e in events))
    finally:
        peer.close()
    eventually(lambda: '"protocol":"HTTP/2"' in p.logs(), "the session is logged")
    line = [x for x in p.logs().splitlines() if '"protocol":"HTTP/2"' in x][-1]
    assert '"method":"GET"' in line and '"response_code":200' in line
