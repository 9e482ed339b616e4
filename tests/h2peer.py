"""A raw HTTP/2 client for tests: h2's client state machine over a blocking socket, so a test can send
what a well-behaved client would not (bad headers, floods, resets) and see each frame's answer."""

from __future__ import annotations

import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from meshpy.codec.h2_pure import Connection

Headers = list[tuple[bytes, bytes]]


def request_headers(port: int, path: str = "/", method: str = "GET", extra: Headers | None = None) -> Headers:
    return [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", b"127.0.0.1:%d" % port), *(extra or [])]


class H2Peer:
    def __init__(self, port: int, *, validate: bool = False, window: int | None = None,
                 settings: dict[int, int] | None = None) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate)
        # h2 with one change: a graceful GOAWAY does not end the streams still running (RFC 9113 6.8).
        self.conn: h2.connection.H2Connection = Connection(cfg)
        initial = dict(settings or {})
        if window is not None:
            initial[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        if initial:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=initial)
        self.conn.initiate_connection()
        self.events: list[Any] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, headers: Headers, body: bytes | None = None, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def read_once(self, timeout: float = 5.0) -> list[Any]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            events = []
        self.events.extend(events)
        self.flush()
        return events

    def wait(self, check: Any, timeout: float = 10.0) -> bool:
        """Read until `check(self.events)` is true, the connection closes or time runs out."""
        deadline = time.monotonic() + timeout
        while not check(self.events):
            if self.closed or time.monotonic() > deadline:
                return bool(check(self.events))
            self.read_once(min(1.0, max(0.05, deadline - time.monotonic())))
        return True

    def response(self, sid: int, timeout: float = 10.0) -> tuple[int, Headers, bytes]:
        """(status, headers, body) of stream `sid`, acknowledging data as it comes."""
        def done(events: list[Any]) -> bool:
            return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == sid
                       for e in events)
        self.wait(done, timeout)
        status, headers, body = 0, [], bytearray()
        for e in self.events:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                headers = list(e.headers)
                status = int(dict(headers)[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
                self.conn.acknowledge_received_data(e.flow_controlled_length, sid)
        self.flush()
        return status, headers, bytes(body)

    def reset_of(self, sid: int) -> int | None:
        for e in self.events:
            if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                return int(e.error_code)
        return None

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for e in self.events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    def close(self) -> None:
        self.sock.close()
