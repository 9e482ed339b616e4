"""Raw HTTP/2 frames for tests that must send what no HTTP/2 library would: header names and values of any
bytes, pseudo-headers in any order, header blocks that never end, DATA that does not match
content-length. Header blocks are HPACK literals without indexing (RFC 7541 6.2.2), so what a test
writes is byte for byte what goes on the wire; answers are parsed with hyperframe and hpack.

`RawH2` is a blocking client over one socket that records what the server did: responses, RST_STREAM
codes, GOAWAY, and whether (and when) the connection was closed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Fields = list[tuple[bytes, bytes]]

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, RST_STREAM, SETTINGS, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4

ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
               8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
               12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"0x{code:x}")


# -- HPACK -------------------------------------------------------------------------------------------
def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: `value` with an N-bit prefix; `first` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """One field as a literal without indexing, new name, no Huffman coding: exactly these bytes."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def block(fields: Fields) -> bytes:
    return b"".join(literal(n, v) for n, v in fields)


def request(authority: bytes = b"example.com", path: bytes = b"/", method: bytes = b"GET",
            extra: Fields | None = None, scheme: bytes = b"http") -> Fields:
    return [(b":method", method), (b":scheme", scheme), (b":path", path), (b":authority", authority),
            *(extra or [])]


# -- frames ------------------------------------------------------------------------------------------
def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + (sid & 0x7FFFFFFF).to_bytes(4, "big")
    return head + payload


def settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in (values or {}).items())
    return frame(SETTINGS, 0x1 if ack else 0, 0, payload)


def headers(sid: int, fragment: bytes, *, end_stream: bool = False, end_headers: bool = True) -> bytes:
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    return frame(HEADERS, flags, sid, fragment)


def continuation(sid: int, fragment: bytes, *, end_headers: bool = True) -> bytes:
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, sid, fragment)


def data(sid: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, sid, payload)


def rst_stream(sid: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, sid, code.to_bytes(4, "big"))


# -- a client that records what the server did -------------------------------------------------------
@dataclass
class Stream:
    status: int | None = None
    headers: Fields = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


class RawH2:
    """Preface and an empty SETTINGS on connect; then the test writes frames with `send` and reads
    what comes back with `read_until`. The server's SETTINGS are acknowledged and its PINGs answered,
    so that a silent client is silent only where the test wants it to be."""

    def __init__(self, port: int, *, preface: bool = True, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened = time.monotonic()
        self.buf = bytearray()
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id)
        self.goaway_at: float | None = None
        self.closed_at: float | None = None
        self.send_failed = False
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self._fragments: tuple[int, bytearray] | None = None
        if preface:
            self.send(PREFACE + settings())

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def send(self, payload: bytes) -> bool:
        """Write `payload`; False (and the connection counted as closed) when the server had gone."""
        try:
            self.sock.sendall(payload)
            return True
        except OSError:
            self.send_failed = True
            self._closed()
            return False

    def _closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def read_once(self, timeout: float) -> bool:
        """One read (at most `timeout` seconds); False when nothing came or the connection closed."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self._closed()
            return False
        self.buf += chunk
        self._parse()
        return True

    def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read until `done()` is true, the connection closes or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return done()
            self.read_once(min(left, 0.25))
        return True

    def _parse(self) -> None:
        while len(self.buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            f.parse_body(memoryview(bytes(self.buf[9:9 + length])))
            del self.buf[:9 + length]
            self._frame(f)

    def _frame(self, f: Frame) -> None:
        if isinstance(f, SettingsFrame):
            if "ACK" not in f.flags:
                self.send(settings(ack=True))
        elif isinstance(f, PingFrame):
            if "ACK" not in f.flags:
                self.send(frame(0x6, 0x1, 0, f.opaque_data))
        elif isinstance(f, GoAwayFrame):
            if self.goaway is None:
                self.goaway = (f.error_code, f.last_stream_id)
                self.goaway_at = time.monotonic()
        elif isinstance(f, RstStreamFrame):
            self.streams.setdefault(f.stream_id, Stream()).reset = f.error_code
        elif isinstance(f, (HeadersFrame, ContinuationFrame)):
            if isinstance(f, HeadersFrame):
                self._fragments = (f.stream_id, bytearray(f.data))
            elif self._fragments is not None:
                self._fragments[1].extend(f.data)
            if "END_HEADERS" in f.flags and self._fragments is not None:
                sid, frag = self._fragments
                self._fragments = None
                s = self.streams.setdefault(sid, Stream())
                fields = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(bytes(frag), raw=True)]
                if s.status is None:
                    s.headers = fields
                    with contextlib.suppress(KeyError, ValueError):
                        s.status = int(dict(fields)[b":status"])
            if "END_STREAM" in f.flags:
                self.streams.setdefault(f.stream_id, Stream()).ended = True
        elif isinstance(f, DataFrame):
            s = self.streams.setdefault(f.stream_id, Stream())
            s.body += f.data
            if f.flow_controlled_length:  # give the window back: answers must never stall on it
                n = f.flow_controlled_length.to_bytes(4, "big")
                stream = b"" if "END_STREAM" in f.flags else frame(0x8, 0, f.stream_id, n)
                self.send(frame(0x8, 0, 0, n) + stream)
            if "END_STREAM" in f.flags:
                s.ended = True
        elif isinstance(f, WindowUpdateFrame):
            pass

    def stream(self, sid: int) -> Stream:
        return self.streams.setdefault(sid, Stream())

    def finished(self, sid: int) -> bool:
        """Stream `sid` has its outcome: answered in full, reset, or the connection is gone."""
        s = self.streams.get(sid)
        gone = self.goaway is not None and (self.goaway[0] != 0 or self.goaway[1] < sid)
        return gone or self.closed or (s is not None and (s.ended or s.reset is not None))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
