"""One origin endpoint of the soak (benchmarks/soak.py): HTTP/1.1 with WebSocket, a TCP echo and gRPC in
one process, each on its own port, so that killing the process takes one endpoint out of every cluster.

    python benchmarks/soak_origin.py --name o1 --http P1 --tcp P2 --grpc P3

HTTP/1.1 (httptools, keep-alive): `GET /hello` answers `hello from NAME`; `GET /slow/MS` answers after
MS milliseconds (for the clients that reset mid-request); `POST /echo` echoes the body; `GET /ws` with
`Upgrade: websocket` is a WebSocket whose first message is `origin NAME`, then an echo of every text and
binary message (ping answered, close echoed). Every HTTP answer carries `x-origin: NAME`.
TCP: on accept `NAME\\n`, then an echo of every byte; the client's EOF is passed back as ours.
gRPC (grpcio, raw bytes): `/soak.Echo/Unary` echoes the request; `/soak.Echo/Slow` sleeps the
milliseconds the request names, then answers `slept` (for cancellations mid-call).

SIGTERM is a graceful stop, as a Kubernetes pod gets: the listeners close at once, keep-alive answers
say `connection: close`, idle connections close, gRPC sends GOAWAY, and the process exits within 1 s.
SIGKILL (the other way the soak restarts origins) leaves every connection to be reset by the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import signal
import struct
import sys
import time
from concurrent import futures
from typing import Any, cast

import grpc
import httptools

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
GRACE_S = 1.0


class State:
    def __init__(self, name: str) -> None:
        self.name = name
        self.draining = False
        self.conns: set[Http] = set()


class Http(asyncio.Protocol):
    """One HTTP/1.1 connection; after a WebSocket handshake, the WebSocket on the same transport."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.busy = False  # a request is being answered
        self.ws: bytearray | None = None  # the WebSocket's unparsed bytes, once upgraded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.state.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.state.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws += data
            self._ws_frames()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._upgrade(data[offset:])
        except httptools.HttpParserError:
            self._close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, bytearray()
        self.busy = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # answered in _upgrade, once feed_data has raised
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if path.startswith(b"/slow/"):
            try:
                ms = int(path[6:])
            except ValueError:
                ms = 0
            self.loop.call_later(ms / 1000, self._answer, 200, b"slow\n")
        elif method == b"POST":
            self._answer(200, bytes(self.body))
        elif path == b"/hello":
            self._answer(200, b"hello from %s\n" % self.state.name.encode())
        else:
            self._answer(404, b"no such path\n")

    def _answer(self, status: int, body: bytes) -> None:
        t = self.transport
        self.busy = False
        if t is None or t.is_closing():
            return
        keep = self.parser.should_keep_alive() and not self.state.draining
        t.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-origin: %s\r\n%s\r\n%s" % (
            status, len(body), self.state.name.encode(), b"" if keep else b"connection: close\r\n", body))
        if not keep:
            t.close()

    def idle_close(self) -> None:
        if not self.busy and self.ws is None:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- WebSocket (RFC 6455, the server side of what the soak's client sends) ---

    def _upgrade(self, rest: bytes) -> None:
        key = self.headers.get(b"sec-websocket-key", b"")
        if self.headers.get(b"upgrade", b"").lower() != b"websocket" or not key or self.transport is None:
            self._answer(400, b"not a websocket handshake\n")
            self._close()
            return
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                             b"connection: Upgrade\r\nsec-websocket-accept: %s\r\nx-origin: %s\r\n\r\n"
                             % (accept, self.state.name.encode()))
        self.busy = False
        self.ws = bytearray(rest)
        self._ws_send(0x1, b"origin %s" % self.state.name.encode())
        self._ws_frames()

    def _ws_send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        if self.transport is not None:
            self.transport.write(head + payload)

    def _ws_frames(self) -> None:
        buf = self.ws
        while buf is not None and len(buf) >= 2:
            opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            masked = bool(buf[1] & 0x80)
            end = at + (4 if masked else 0) + n
            if len(buf) < end:
                return
            mask = bytes(buf[at:at + 4]) if masked else b"\0\0\0\0"
            start = at + (4 if masked else 0)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[start:end]))
            del buf[:end]
            if opcode in (0x1, 0x2):
                self._ws_send(opcode, payload)
            elif opcode == 0x9:
                self._ws_send(0xA, payload)
            elif opcode == 0x8:
                self._ws_send(0x8, payload[:2])
                self._close()
                return


class TcpEcho(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.name.encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # the transport closes once what was written is sent: EOF back to the client


def grpc_server(name: str, port: int) -> Any:
    def unary(request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("x-origin", name),))
        return request

    def slow(request: bytes, context: Any) -> bytes:
        deadline = time.monotonic() + int(request or b"0") / 1000
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.01)
        return b"slept"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("soak.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"soak_origin {name}: cannot listen for gRPC on {port}")
    server.start()
    return server


async def serve(name: str, http_port: int, tcp_port: int, grpc_port: int) -> None:
    loop = asyncio.get_running_loop()
    state = State(name)
    http = await loop.create_server(lambda: Http(state), "127.0.0.1", http_port, reuse_address=True,
                                    backlog=1024)
    tcp = await loop.create_server(lambda: TcpEcho(name), "127.0.0.1", tcp_port, reuse_address=True,
                                   backlog=1024)
    rpc = grpc_server(name, grpc_port)
    stop: asyncio.Future[None] = loop.create_future()

    def stopping() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, stopping)
    loop.add_signal_handler(signal.SIGINT, stopping)
    print(f"soak_origin {name}: http {http_port}, tcp {tcp_port}, grpc {grpc_port}", flush=True)
    await stop
    # Graceful: stop accepting, let answers in flight go out with `connection: close`, then leave.
    state.draining = True
    http.close()
    tcp.close()
    rpc_stopped = rpc.stop(GRACE_S)
    for conn in list(state.conns):
        conn.idle_close()
    deadline = loop.time() + GRACE_S
    while state.conns and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await loop.run_in_executor(None, rpc_stopped.wait, GRACE_S)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--tcp", type=int, required=True)
    ap.add_argument("--grpc", type=int, required=True)
    args = ap.parse_args(argv)
    import uvloop

    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(serve(args.name, args.http, args.tcp, args.grpc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
