"""The soak's HTTP/2 client: h2's state machine on an asyncio Protocol, one connection (prior knowledge)
per listener, many streams on it, reopened when it is lost. It can also reset a stream mid-request
(RST_STREAM CANCEL), which is what the soak's client resets do on HTTP/2.

A stream the server did not process (above a GOAWAY's last stream id, or reset with REFUSED_STREAM) is
marked `unprocessed`: RFC 9113 section 8.7 says a client may send it again, and the caller does so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


class H2Failure(Exception):
    def __init__(self, kind: str, unprocessed: bool = False) -> None:
        super().__init__(kind)
        self.kind = kind
        self.unprocessed = unprocessed


@dataclass
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Stream:
    done: asyncio.Future[H2Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every event of the stream


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(cfg)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.usable = True  # no GOAWAY seen, not lost
        self.settings = asyncio.Event()  # the server's first SETTINGS arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is no subclass
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(f"h2 protocol error: {type(exc).__name__}")
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            self._event(ev)
        self.flush()
        if not self.usable and not self.streams and self.transport is not None:
            self.close()  # after a GOAWAY, once its last stream is done

    def _event(self, ev: object) -> None:
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid) if sid is not None else None
        if st is not None:
            st.progress.set()
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings.set()
        elif isinstance(ev, h2.events.ResponseReceived) and st is not None:
            st.headers = {bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in ev.headers}
            st.status = int(st.headers.get(":status", "0"))
        elif isinstance(ev, h2.events.DataReceived):
            if st is not None:
                st.body += ev.data
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded) and st is not None:
            self.streams.pop(ev.stream_id, None)
            if not st.done.done():
                st.done.set_result(H2Response(st.status, st.headers, bytes(st.body)))
        elif isinstance(ev, h2.events.StreamReset) and st is not None:
            self.streams.pop(ev.stream_id, None)
            code = ev.error_code
            refused = code == h2.errors.ErrorCodes.REFUSED_STREAM
            self._fail(st, f"stream reset by the proxy ({getattr(code, 'name', code)})", refused)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.usable = False
            last = ev.last_stream_id or 0
            for other, s in list(self.streams.items()):
                if other > last:
                    self.streams.pop(other)
                    self._fail(s, f"GOAWAY ({getattr(ev.error_code, 'name', ev.error_code)}) above its last "
                                  "stream", unprocessed=True)

    def _fail(self, st: _Stream, kind: str, unprocessed: bool = False) -> None:
        st.progress.set()
        if not st.done.done():
            st.done.set_exception(H2Failure(kind, unprocessed))

    def _fail_all(self, kind: str) -> None:
        self.usable = False
        for st in self.streams.values():
            self._fail(st, kind)
        self.streams.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all(f"connection lost ({type(exc).__name__ if exc else 'EOF'})")

    def has_room(self) -> bool:
        """Usable, and below the server's limit of concurrent streams."""
        return self.usable and self.transport is not None and \
            self.h2.open_outbound_streams < self.h2.remote_settings.max_concurrent_streams

    def open(self, headers: list[tuple[str, str]], body: bytes | None,
             end: bool = True) -> tuple[int, _Stream]:
        sid = self.h2.get_next_available_stream_id()
        st = _Stream(asyncio.get_running_loop().create_future())
        self.streams[sid] = st
        self.h2.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        self.flush()
        return sid, st

    def reset(self, sid: int) -> None:
        st = self.streams.pop(sid, None)
        if st is None:
            return  # already answered
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            self.flush()
        if not st.done.done():
            st.done.cancel()

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
                self.flush()
            self.transport.close()


class H2Client:
    """HTTP/2 connections to `port`: one as long as it has room, another when its streams are at the
    server's limit (as browsers and gRPC do), a new one after a loss or a GOAWAY."""

    def __init__(self, port: int, connect_timeout: float = 5.0) -> None:
        self.port = port
        self.connect_timeout = connect_timeout
        self._conns: list[_Conn] = []
        self._opening: asyncio.Future[_Conn] | None = None
        self.connections = 0

    async def _connection(self) -> _Conn:
        for conn in self._conns:
            if conn.has_room():
                return conn
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done():
                self._opening = None

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(_Conn, "127.0.0.1", self.port),
                                         self.connect_timeout)
        self.connections += 1
        for old in self._conns:
            if not old.usable and not old.streams:
                old.close()
        self._conns = [c for c in self._conns if c.transport is not None and (c.usable or c.streams)]
        self._conns.append(conn)
        return conn

    def headers(self, method: str, path: str) -> list[tuple[str, str]]:
        return [(":method", method), (":scheme", "http"), (":path", path),
                (":authority", f"127.0.0.1:{self.port}")]

    async def request(self, method: str, path: str, body: bytes | None = None,
                      timeout: float = 15.0) -> H2Response:
        try:
            conn = await self._connection()
        except (OSError, TimeoutError) as exc:
            raise H2Failure(f"connect failed ({type(exc).__name__})") from exc
        sid, st = conn.open(self.headers(method, path), body)
        try:
            return await asyncio.wait_for(asyncio.shield(st.done), timeout)
        except TimeoutError:
            conn.reset(sid)
            raise H2Failure("timeout") from None

    async def reset_mid_request(self, path: str, after_s: float, body: bytes | None = None) -> None:
        """Open a stream (with half a body when `body` is given) and reset it `after_s` later."""
        with contextlib.suppress(OSError, TimeoutError):
            conn = await self._connection()
            sid, st = conn.open(self.headers("POST" if body else "GET", path), body, end=body is None)
            await asyncio.sleep(after_s)
            conn.reset(sid)
            with contextlib.suppress(H2Failure):
                if st.done.done() and not st.done.cancelled():
                    st.done.result()

    async def websocket(self, path: str, timeout: float) -> H2Tunnel:
        """A WebSocket over HTTP/2 (RFC 8441: CONNECT with `:protocol websocket`), once the proxy's 200
        has come; H2Failure otherwise."""
        try:
            conn = await self._connection()
            await asyncio.wait_for(conn.settings.wait(), timeout)
        except (OSError, TimeoutError) as exc:
            raise H2Failure(f"connect failed ({type(exc).__name__})") from exc
        headers = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", path),
                   (":authority", f"127.0.0.1:{self.port}"), ("sec-websocket-version", "13")]
        try:
            sid, st = conn.open(headers, None, end=False)
        except h2.exceptions.ProtocolError as exc:
            raise H2Failure(f"extended CONNECT refused by h2 ({type(exc).__name__})") from None
        tunnel = H2Tunnel(conn, sid, st)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while st.status == 0 and not st.done.done():
            st.progress.clear()
            try:
                await asyncio.wait_for(st.progress.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                conn.reset(sid)
                raise H2Failure("timeout") from None
        if st.done.done() and (st.done.cancelled() or st.done.exception() is not None):
            st.done.result()  # raises its H2Failure
        if st.status != 200:
            conn.reset(sid)
            raise H2Failure(f"status {st.status}")
        return tunnel

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns = []


class H2Tunnel:
    """The client side of a WebSocket on one HTTP/2 stream: masked frames out, the server's frames in."""

    def __init__(self, conn: _Conn, sid: int, st: _Stream) -> None:
        self.conn, self.sid, self.st = conn, sid, st

    def send(self, opcode: int, payload: bytes, end: bool = False) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else \
            struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            self.conn.h2.send_data(self.sid, head + mask + masked, end_stream=end)
        except h2.exceptions.ProtocolError as exc:  # the stream is gone
            raise H2Failure(f"stream closed ({type(exc).__name__})") from None
        self.conn.flush()

    async def recv(self, timeout: float) -> tuple[int, bytes]:
        """The next whole frame from the server (unmasked, at most 64 KiB) as (opcode, payload)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        st = self.st
        while True:
            buf = st.body
            if len(buf) >= 2:
                n, at = buf[1] & 0x7F, 2
                if n == 126:
                    n, at = (struct.unpack_from("!H", buf, 2)[0], 4) if len(buf) >= 4 else (-1, 4)
                elif n == 127:
                    raise H2Failure("a frame over 64 KiB")
                if n >= 0 and len(buf) >= at + n:
                    frame = (buf[0] & 0x0F, bytes(buf[at:at + n]))
                    del buf[:at + n]
                    return frame
            if st.done.done():
                if st.done.cancelled() or st.done.exception() is not None:
                    st.done.result()
                raise H2Failure("stream ended mid-session")
            st.progress.clear()
            try:
                await asyncio.wait_for(st.progress.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise H2Failure("timeout") from None

    async def close(self) -> None:
        """A close frame with END_STREAM; the stream is reset if the server does not end it in 2 s."""
        with contextlib.suppress(H2Failure):
            if not self.st.done.done():
                self.send(0x8, struct.pack("!H", 1000), end=True)
        if not self.st.done.done():
            await asyncio.wait([self.st.done], timeout=2.0)
        self.conn.reset(self.sid)
