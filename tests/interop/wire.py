"""gRPC calls over one raw HTTP/2 connection (tests/h2peer.py's H2Peer): for what grpcio does not let a
client see or do, the compressed flag of each response message, or many calls on one connection with
a `grpc-timeout` chosen to the microsecond, each HEADERS and its DATA in one write."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.events
from h2peer import H2Peer

WINDOW = 1 << 24


def frame(message: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message (gzip'd when `compressed`)."""
    body = gzip.compress(message) if compressed else message
    return bytes([1 if compressed else 0]) + len(body).to_bytes(4, "big") + body


def unframe(data: bytes, encoding: str = "identity") -> list[tuple[int, bytes]]:
    """The (compressed flag, uncompressed message) of each message in a body."""
    out = []
    while data:
        assert len(data) >= 5, f"a cut message prefix: {data!r}"
        flag, size = data[0], int.from_bytes(data[1:5], "big")
        assert len(data) >= 5 + size, "a cut message"
        message = data[5:5 + size]
        if flag:
            assert encoding == "gzip", f"a compressed message with grpc-encoding {encoding}"
            message = gzip.decompress(message)
        out.append((flag, message))
        data = data[5 + size:]
    return out


@dataclass
class Call:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def over(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int | None:
        """grpc-status, from the trailers or from a trailers-only answer's one HEADERS."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    def complete(self) -> int:
        """How many whole messages came so far."""
        n, at, data = 0, 0, self.data
        while len(data) >= at + 5 and len(data) >= at + 5 + int.from_bytes(data[at + 1:at + 5], "big"):
            at += 5 + int.from_bytes(data[at + 1:at + 5], "big")
            n += 1
        return n

    def messages(self) -> list[tuple[int, bytes]]:
        return unframe(bytes(self.data), self.headers.get("grpc-encoding", "identity"))


class GrpcWire:
    def __init__(self, port: int) -> None:
        self.port = port
        self.peer = H2Peer(port, window=WINDOW)
        self.peer.conn.increment_flow_control_window(WINDOW)
        self.peer.flush()
        self.calls: dict[int, Call] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None

    @property
    def closed(self) -> bool:
        return self.peer.closed

    def start(self, path: str, message: bytes | None = None, *, end: bool = True, timeout: str | None = None,
              compressed: bool = False) -> int:
        """A call's HEADERS and, when given, its first message, in one write."""
        extra = [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                 (b"grpc-accept-encoding", b"identity,gzip")]
        if timeout is not None:
            extra.append((b"grpc-timeout", timeout.encode()))
        if compressed:
            extra.append((b"grpc-encoding", b"gzip"))
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                   (b":authority", b"127.0.0.1:%d" % self.port), *extra]
        body = frame(message, compressed) if message is not None else None
        sid = self.peer.request(headers, body, end=end)
        self.calls[sid] = Call(sid)
        return sid

    def send(self, sid: int, message: bytes, end: bool = False) -> None:
        self.peer.conn.send_data(sid, frame(message), end_stream=end)
        self.peer.flush()

    def end(self, sid: int) -> None:
        self.peer.conn.end_stream(sid)
        self.peer.flush()

    def pump(self, timeout: float) -> None:
        """Read once (up to `timeout`) and file what came by stream, giving the windows back."""
        for e in self.peer.read_once(timeout):
            call = self.calls.get(getattr(e, "stream_id", 0) or 0)
            if isinstance(e, h2.events.ConnectionTerminated):
                self.goaway = e
            if call is None:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                call.headers.update({bytes(n).decode(): bytes(v).decode() for n, v in e.headers})
            elif isinstance(e, h2.events.TrailersReceived):
                call.trailers.update({bytes(n).decode(): bytes(v).decode() for n, v in e.headers})
            elif isinstance(e, h2.events.DataReceived):
                call.data += e.data
                if e.flow_controlled_length:
                    self.peer.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                call.ended = True
            elif isinstance(e, h2.events.StreamReset):
                call.reset = int(e.error_code)
        self.peer.flush()

    def wait(self, check: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Read until `check()`, the connection closes or time runs out; returns `check()`."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.closed or time.monotonic() > deadline:
                return check()
            self.pump(min(0.5, max(0.01, deadline - time.monotonic())))
        return True

    def close(self) -> None:
        self.peer.close()

