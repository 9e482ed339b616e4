"""An upstream that records every byte it receives (for RawUpstream): it parses requests with
httptools and answers each complete one with 200 `ok`, so tests can tell which request boundaries an
upstream saw behind the proxy."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import httptools

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class RecordedConn:
    data: bytearray = field(default_factory=bytearray)
    urls: list[bytes] = field(default_factory=list)  # request targets, as each head completes
    completed: int = 0  # requests received in full (and answered)
    closed: threading.Event = field(default_factory=threading.Event)


class Recorder:
    """An upstream that keeps every byte it receives, parses requests with httptools and answers each
    complete one with 200 `ok`."""

    def __init__(self) -> None:
        self.conns: list[RecordedConn] = []
        self.lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        rec = RecordedConn()
        with self.lock:
            self.conns.append(rec)
        sink = _RequestSink(rec, conn)
        parser = httptools.HttpRequestParser(sink)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                rec.data += data
                parser.feed_data(data)
        except (OSError, httptools.HttpParserError):
            pass
        finally:
            rec.closed.set()

    def everything(self) -> bytes:
        with self.lock:
            return b"".join(bytes(c.data) for c in self.conns)

    def all_urls(self) -> list[bytes]:
        with self.lock:
            return [u for c in self.conns for u in c.urls]

    def conns_containing(self, marker: bytes) -> list[RecordedConn]:
        with self.lock:
            return [c for c in self.conns if marker in c.data]


class _RequestSink:
    def __init__(self, rec: RecordedConn, conn: socket.socket) -> None:
        self.rec = rec
        self.conn = conn
        self.url = b""

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.rec.urls.append(self.url)

    def on_message_complete(self) -> None:
        self.rec.completed += 1
        self.conn.sendall(OK)
