"""A TCP relay in front of the interop server that reads the HTTP/2 frames the proxy sends it.

grpcio hands a server handler the decoded message only: not the request's grpc-encoding nor the
message's compressed flag, which the CompressedRequest feature of the interop server needs (and not a
stream's RST_STREAM either). The tap relays bytes unchanged both ways and, on the way to the server,
parses the frames (HPACK included) into one `StreamRecord` per stream, so the server and the tests can
see what came over the wire. A record is complete before its bytes are passed on to the server.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, CONTINUATION = 0x0, 0x1, 0x3, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


@dataclass
class StreamRecord:
    connection: int  # the relayed connection's number, from 1
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)  # the request's (later values win)
    flags: list[int] = field(default_factory=list)  # each gRPC message's compressed flag
    messages: list[bytes] = field(default_factory=list)  # each message, uncompressed
    ended: bool = False  # END_STREAM seen
    reset: int | None = None  # RST_STREAM's error code
    claimed: bool = False  # matched to a server call by WireTap.claim

    @property
    def path(self) -> str:
        return self.headers.get(":path", "")


class _Reader:
    """The frames of one client-to-server byte stream."""

    def __init__(self, tap: WireTap, number: int) -> None:
        self.tap = tap
        self.number = number
        self.buf = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=1 << 20)
        self.decoder.max_allowed_table_size = 1 << 16
        self.block: bytearray | None = None  # a header block waiting for CONTINUATION
        self.block_end = False
        self.pending: dict[int, bytearray] = {}  # gRPC message bytes not yet complete, by stream

    def feed(self, data: bytes) -> None:
        self.buf += data
        if not self.preface:
            if len(self.buf) < len(PREFACE):
                return
            assert bytes(self.buf[:len(PREFACE)]) == PREFACE, "not HTTP/2 with prior knowledge"
            del self.buf[:len(PREFACE)]
            self.preface = True
        while len(self.buf) >= 9 and len(self.buf) >= 9 + (length := int.from_bytes(self.buf[:3], "big")):
            kind, flags = self.buf[3], self.buf[4]
            sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
            payload = bytes(self.buf[9:9 + length])
            del self.buf[:9 + length]
            self._frame(kind, flags, sid, payload)
        self.tap.changed()

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind in (DATA, HEADERS) and flags & PADDED:
            payload = payload[1:len(payload) - payload[0]]
        if kind == HEADERS:
            if flags & PRIORITY:
                payload = payload[5:]
            self.block = bytearray(payload)
            self.block_end = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                self._headers(sid)
        elif kind == CONTINUATION and self.block is not None:
            self.block += payload
            if flags & END_HEADERS:
                self._headers(sid)
        elif kind == DATA:
            self._data(sid, payload, bool(flags & END_STREAM))
        elif kind == RST_STREAM:
            self.tap.record(self.number, sid).reset = int.from_bytes(payload[:4], "big")

    def _headers(self, sid: int) -> None:
        assert self.block is not None
        fields = self.decoder.decode(bytes(self.block), raw=True)
        self.block = None
        rec = self.tap.record(self.number, sid)
        for name, value in fields:
            rec.headers[bytes(name).decode("latin-1")] = bytes(value).decode("latin-1")
        rec.ended = rec.ended or self.block_end

    def _data(self, sid: int, payload: bytes, end: bool) -> None:
        rec = self.tap.record(self.number, sid)
        buf = self.pending.setdefault(sid, bytearray())
        buf += payload
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + size:
                break
            flag, message = buf[0], bytes(buf[5:5 + size])
            del buf[:5 + size]
            if flag and rec.headers.get("grpc-encoding") == "gzip":
                message = gzip.decompress(message)
            rec.flags.append(flag)
            rec.messages.append(message)
        rec.ended = rec.ended or end


class WireTap:
    """Listens on 127.0.0.1:`port` and relays each connection to 127.0.0.1:`target`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.streams: list[StreamRecord] = []
        self.errors: list[str] = []  # frames the tap could not read (a test should see none)
        self.lock = threading.Condition()
        self._by_id: dict[tuple[int, int], StreamRecord] = {}
        self._socks: list[socket.socket] = []
        self._connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="wire-tap").start()

    def record(self, number: int, sid: int) -> StreamRecord:
        with self.lock:
            rec = self._by_id.get((number, sid))
            if rec is None:
                rec = self._by_id[number, sid] = StreamRecord(number, sid)
                self.streams.append(rec)
            return rec

    def changed(self) -> None:
        """Wakes the waiters: records changed (called before the bytes that changed them go on)."""
        with self.lock:
            self.lock.notify_all()

    def claim(self, path: str, first_message: bytes) -> StreamRecord | None:
        """The earliest record not claimed yet of a call to `path` whose first message is
        `first_message`: how a server handler finds its own call on the wire."""
        with self.lock:
            for rec in self.streams:
                if not rec.claimed and rec.path == path and rec.messages[:1] == [first_message]:
                    rec.claimed = True
                    return rec
        return None

    def with_header(self, name: str, value: str) -> list[StreamRecord]:
        with self.lock:
            return [r for r in self.streams if r.headers.get(name) == value]

    def wait(self, check: Callable[[], object], timeout: float = 10.0) -> bool:
        """Wait until `check()` is true (records change under the lock)."""
        with self.lock:
            return self.lock.wait_for(check, timeout)

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self.lock:
                self._connections += 1
                number = self._connections
                self._socks += [down, up]
            reader = _Reader(self, number)
            threading.Thread(target=self._pump, args=(down, up, reader), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, reader: _Reader | None) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if reader is not None:
                    try:
                        reader.feed(data)
                    except Exception as err:  # reported by the tests, never silently
                        with self.lock:
                            self.errors.append(repr(err))
                        reader = None
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
