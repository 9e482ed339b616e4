"""A recording origin server with a strict RFC 9112 request parser (raw sockets, one reader and one
writer thread per connection).

Why strict: a desync (request smuggling) shows up at the origin as a request boundary the proxy did
not mean, or as bytes that are not a well-formed request at all. A lenient origin would guess and hide
that; this one refuses every framing ambiguity, answers 400, closes the connection and records the
reason in `errors`, so that a test can tell exactly what a proxy put on the wire.

Each request is answered `200` with the body `<METHOD> <target>` (so that a client can see which
request its answer belongs to; the same text is in the `x-origin-request` header, for a proxy that drops
the body), keep-alive, in order per connection (pipelining works). A refused request is answered 400
with `x-origin-error: 1`. A query
parameter `sleep=<seconds>` delays that answer (and, because answers go in order, the ones after it).
"""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

MAX_LINE = 16 * 1024  # a request line or a field line
MAX_HEAD = 64 * 1024  # the whole header section
MAX_CHUNK_LINE = 256  # a chunk-size line, extensions included
MAX_SLEEP = 5.0

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The request target: visible ASCII only, and no '#' (a fragment is never part of a request-target).
TARGET = re.compile(rb"[\x21\x22\x24-\x7e]+")
ORIGIN_FORM = re.compile(rb"/[^?]*(\?.*)?")
ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*([/?].*)?")
AUTHORITY_FORM = re.compile(rb"[^/?@]+:[0-9]+")
VERSION = re.compile(rb"HTTP/1\.[01]")
# A field value once its leading/trailing OWS is gone: VCHAR / obs-text, with SP / HTAB inside only.
FIELD_VALUE = re.compile(rb"([\x21-\x7e\x80-\xff]([\x20\x09\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
# RFC 3986 host [ ":" port ]: IP-literal or reg-name (IPv4 is a reg-name here).
HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|([A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(:[0-9]*)?")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})((;[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                        rb"(=([!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"[^\"\\\r\n]*\"))?)*)")
SLEEP = re.compile(r"[?&]sleep=([0-9]+(\.[0-9]+)?)")
# Framing and routing fields that must never appear in a trailer section (RFC 9110 6.5.1).
NOT_IN_TRAILERS = frozenset({"content-length", "transfer-encoding", "host", "connection", "trailer"})


@dataclass
class OriginRequest:
    conn_id: int  # connection number at the origin (1, 2, ...)
    index: int  # request number on that connection (0, 1, ...)
    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: list[tuple[str, str]]  # as received, order and case kept (values without OWS)
    body: bytes  # the decoded body (chunked framing removed)
    raw: bytes  # the raw bytes of the whole request: head, body framing, trailers

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


class _Bad(Exception):
    """A framing or parse error: answer 400 and close."""


class _Eof(Exception):
    """The peer closed (or the origin stops) in the middle of a read."""


class _Conn:
    """One accepted connection: the reader parses and records, the writer answers in order."""

    def __init__(self, origin: StrictOrigin, sock: socket.socket, conn_id: int) -> None:
        self.origin = origin
        self.sock = sock
        self.conn_id = conn_id
        self.buf = bytearray()
        self.pos = 0
        self.out: queue.Queue[tuple[bytes, float, bool]] = queue.Queue()
        self.writer = threading.Thread(target=self._write, daemon=True)

    # -- reading ---------------------------------------------------------------------------------
    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError as err:
            raise _Eof from err
        if not data:
            raise _Eof
        self.buf += data
        self.origin._record_bytes(self.conn_id, data)

    def _line(self, limit: int, what: str) -> bytes:
        start = self.pos
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                break
            start = len(self.buf)
            if len(self.buf) - self.pos > limit:
                raise _Bad(f"{what} longer than {limit} bytes")
            self._fill()
        if i - self.pos > limit:
            raise _Bad(f"{what} longer than {limit} bytes")
        if i == self.pos or self.buf[i - 1] != 0x0D:
            raise _Bad(f"bare LF in {what}")
        line = bytes(self.buf[self.pos:i - 1])
        self.pos = i + 1
        if b"\r" in line:
            raise _Bad(f"bare CR in {what}")
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data

    def _fields(self, what: str, budget: int) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = self._line(MAX_LINE, what)
            budget -= len(line) + 2
            if budget < 0:
                raise _Bad(f"{what} section larger than {MAX_HEAD} bytes")
            if not line:
                return fields
            if line[:1] in (b" ", b"\t"):
                raise _Bad(f"obs-fold in {what}")
            name, colon, value = line.partition(b":")
            if not colon:
                raise _Bad(f"{what} line without a colon")
            if not TOKEN.fullmatch(name):
                raise _Bad(f"bad {what} name {name!r} (whitespace before the colon?)")
            value = value.strip(b" \t")
            if not FIELD_VALUE.fullmatch(value):
                raise _Bad(f"bad {what} value for {name.decode()}: {value!r}")
            fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def _request(self, index: int) -> tuple[OriginRequest, bool, bool]:
        """Parse one request. Returns it, whether to close after answering, and whether it asked for
        100-continue."""
        line = self._line(MAX_LINE, "request line")
        parts = line.split(b" ")
        if len(parts) != 3:
            raise _Bad(f"request line is not 'method SP target SP version': {line!r}")
        method, target, version = parts
        if not TOKEN.fullmatch(method):
            raise _Bad(f"bad method {method!r}")
        if not VERSION.fullmatch(version):
            raise _Bad(f"bad version {version!r}")
        if not TARGET.fullmatch(target):
            raise _Bad(f"bad target {target!r}")
        if method == b"CONNECT":
            form_ok = AUTHORITY_FORM.fullmatch(target) is not None
        elif target == b"*":
            form_ok = method == b"OPTIONS"
        else:
            form_ok = bool(ORIGIN_FORM.fullmatch(target) or ABSOLUTE_FORM.fullmatch(target))
        if not form_ok:
            raise _Bad(f"target {target!r} is in no form allowed for {method.decode()}")
        headers = self._fields("header", MAX_HEAD)
        by_name: dict[str, list[str]] = {}
        for n, v in headers:
            by_name.setdefault(n.lower(), []).append(v)
        v11 = version == b"HTTP/1.1"
        hosts = by_name.get("host", [])
        if len(hosts) > 1:
            raise _Bad(f"{len(hosts)} Host fields")
        if v11 and not hosts:
            raise _Bad("HTTP/1.1 request without Host")
        if hosts and not HOST.fullmatch(hosts[0]):
            raise _Bad(f"Host is not an authority: {hosts[0]!r}")
        cls = by_name.get("content-length", [])
        tes = by_name.get("transfer-encoding", [])
        if cls and tes:
            raise _Bad("both Content-Length and Transfer-Encoding")
        if tes and not v11:
            raise _Bad("Transfer-Encoding in an HTTP/1.0 request")
        if tes and tes != ["chunked"]:
            raise _Bad(f"Transfer-Encoding other than exactly 'chunked': {tes!r}")
        length = 0
        if cls:
            values = {v.strip(" \t") for cl in cls for v in cl.split(",")}
            if len(values) != 1:
                raise _Bad(f"differing Content-Length values {cls!r}")
            value = values.pop()
            if not value.isascii() or not value.isdigit() or len(value) > 18:
                raise _Bad(f"bad Content-Length {value!r}")
            length = int(value)
        tokens = {t.strip(" \t").lower() for c in by_name.get("connection", []) for t in c.split(",")}
        close = "close" in tokens or (not v11 and "keep-alive" not in tokens)
        expect = any(e.lower() == "100-continue" for e in by_name.get("expect", []))
        # The head is complete: ask for the body now if the client waits for it.
        if expect and (tes or length):
            self.out.put((b"HTTP/1.1 100 Continue\r\n\r\n", 0.0, False))
        body = self._chunked() if tes else self._take(length)
        raw = bytes(self.buf[:self.pos])
        req = OriginRequest(self.conn_id, index, method.decode(), target.decode(), version.decode()[5:],
                            headers, body, raw)
        return req, close, expect

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self._line(MAX_CHUNK_LINE, "chunk-size line")
            m = CHUNK_SIZE.fullmatch(line)
            if not m:
                raise _Bad(f"bad chunk-size line {line!r}")
            size = int(m.group(1), 16)
            if size == 0:
                break
            body += self._take(size)
            if self._take(2) != b"\r\n":
                raise _Bad("chunk data not followed by CRLF")
        trailers = self._fields("trailer", MAX_HEAD)
        for n, _ in trailers:
            if n.lower() in NOT_IN_TRAILERS:
                raise _Bad(f"{n} in a trailer section")
        return bytes(body)

    def run(self) -> None:
        self.writer.start()
        index = 0
        try:
            while True:
                try:
                    req, close, _ = self._request(index)
                except _Eof:
                    if self.pos or len(self.buf):
                        self.origin._truncated(self.conn_id, index, bytes(self.buf))
                    break
                except _Bad as err:
                    where = f"[conn {self.conn_id} request {index}]"
                    self.origin._error(f"{err} {where} {bytes(self.buf)[:300]!r}")
                    body = f"{err}\n".encode()
                    head = (b"HTTP/1.1 400 Bad Request\r\nx-origin-error: 1\r\nconnection: close\r\n"
                            b"content-length: %d\r\n\r\n" % len(body))
                    self.out.put((head + body, 0.0, True))
                    self._linger()
                    break
                del self.buf[:self.pos]
                self.pos = 0
                self.origin._add(req)
                self.out.put(self._answer(req, close))
                index += 1
                if close:
                    self._linger(after_close=True)
                    break
        finally:
            self.out.put((b"", 0.0, True))  # stops the writer if nothing did
            self.writer.join(MAX_SLEEP + 2)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _linger(self, after_close: bool = False) -> None:
        """After the last answer: let the writer finish, then read what still comes (recorded, and for
        a connection closed by the request, bytes that follow are an error: they are a request the
        proxy sent after one that ends the connection)."""
        self.writer.join(MAX_SLEEP + 2)
        extra = bytes(self.buf[self.pos:])
        deadline = time.monotonic() + 0.5
        with contextlib.suppress(OSError, _Eof):
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                before = len(self.buf)
                self._fill()
                extra += bytes(self.buf[before:])
        if after_close and extra:
            self.origin._error(f"bytes after a request that closes the connection "
                               f"[conn {self.conn_id}] {extra[:300]!r}")

    @staticmethod
    def _answer(req: OriginRequest, close: bool) -> tuple[bytes, float, bool]:
        body = f"{req.method} {req.target}".encode("latin-1")
        head = (f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                f"x-origin-conn: {req.conn_id}\r\nx-origin-index: {req.index}\r\n"
                f"x-origin-request: {req.method} {req.target}\r\n"
                f"connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode()
        m = SLEEP.search(req.target)
        delay = min(float(m.group(1)), MAX_SLEEP) if m else 0.0
        return head + (b"" if req.method == "HEAD" else body), delay, close

    # -- writing ---------------------------------------------------------------------------------
    def _write(self) -> None:
        while True:
            data, delay, last = self.out.get()
            if delay:
                time.sleep(delay)
            try:
                if data:
                    self.sock.sendall(data)
                if last:
                    self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            if last:
                return


class StrictOrigin:
    """See the module docstring. `requests` and `errors` are appended from the connection threads;
    read them after the exchange (or use `wait_requests`)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[OriginRequest] = []
        self.errors: list[str] = []
        # Connections closed in the middle of a request (a proxy gave up on it): not framing errors.
        self.truncated: list[str] = []
        self.streams: dict[int, bytearray] = {}  # every byte received, per connection
        self.connections = 0
        # Called (from a connection thread) with each request as it is parsed, before it is answered.
        self.on_request: Callable[[OriginRequest], None] | None = None
        self.lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> StrictOrigin:
        self.sock.listen(1024)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> StrictOrigin:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.errors.clear()
            self.truncated.clear()
            self.streams.clear()

    def wait_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Whether at least `count` requests arrived within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return True
            time.sleep(0.01)
        return len(self.requests) >= count

    # -- from the connection threads ---------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                conn_id = self.connections
                self._socks.append(sock)
            threading.Thread(target=self._run, args=(sock, conn_id), daemon=True).start()

    def _run(self, sock: socket.socket, conn_id: int) -> None:
        try:
            _Conn(self, sock, conn_id).run()
        finally:
            with self.lock, contextlib.suppress(ValueError):
                self._socks.remove(sock)

    def _record_bytes(self, conn_id: int, data: bytes) -> None:
        with self.lock:
            self.streams.setdefault(conn_id, bytearray()).extend(data)

    def _add(self, req: OriginRequest) -> None:
        with self.lock:
            self.requests.append(req)
        if self.on_request is not None:
            self.on_request(req)

    def _error(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)

    def _truncated(self, conn_id: int, index: int, data: bytes) -> None:
        with self.lock:
            self.truncated.append(f"closed mid-request [conn {conn_id} request {index}] {data[:300]!r}")
