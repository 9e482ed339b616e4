"""The HTTP/2 codec seam: what meshpy's HTTP/2 transports ask of a codec, and which codec they get.

Two codecs sit behind it (docs/http2-codec.md says why and what each costs):
- `nghttp2`: libnghttp2, the C library behind curl, nghttpx and Node.js, through cffi
  (meshpy.codec.nghttp2); the default wherever the library loads;
- `h2`: the pure-Python h2 library (meshpy.codec.h2_pure), the portable fallback.

A codec is sans-I/O: bytes in through `receive`, which returns events, and bytes out through
`data_to_send`. Events are plain tuples `(kind, stream id, a, b)`, cheap to build and to match:

| kind | a | b |
|---|---|---|
| REQUEST (server) | header list | the HEADERS frame ended the stream |
| RESPONSE (client; 1xx too) | header list | the HEADERS frame ended the stream |
| TRAILERS | header list | (END follows) |
| DATA | the bytes | flow-controlled length (to acknowledge) |
| END | the peer ended the stream | |
| RESET | the peer reset the stream: error code | |
| STREAM_ERROR | the codec reset the stream (malformed): error code | its request head was never delivered |
| WINDOW | the send window of the stream (0: the connection's) grew | |
| SETTINGS | the peer's SETTINGS: its MAX_CONCURRENT_STREAMS, or None | |
| PING | a PING from the peer (the codec answers it) | |
| PING_ACK | the answer to our PING | |
| GOAWAY | error code | last stream id |
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options

Fields = list[tuple[bytes, bytes]]
Event = tuple[int, int, Any, Any]

REQUEST, RESPONSE, TRAILERS, DATA, END, RESET, STREAM_ERROR, WINDOW, SETTINGS, PING, PING_ACK, GOAWAY = \
    range(12)

CODECS = ("auto", "nghttp2", "h2")
ENV = "MESHPY_HTTP2_CODEC"  # the process default, as `meshpy run --http2-codec` sets it


class ErrorCode(enum.IntEnum):
    """RFC 9113 7."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    SETTINGS_TIMEOUT = 4
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    CONNECT_ERROR = 10
    ENHANCE_YOUR_CALM = 11
    INADEQUATE_SECURITY = 12
    HTTP_1_1_REQUIRED = 13


class SessionError(Exception):
    """The connection is over (a connection error, ours or the peer's): whatever GOAWAY the codec
    queued is in `data_to_send`; send it, then close. `code`: the GOAWAY's; ENHANCE_YOUR_CALM is
    abuse (a flood, a header block past every limit)."""

    def __init__(self, reason: str, code: int = 1) -> None:
        super().__init__(reason)
        self.code = code


class StreamGone(Exception):
    """A send on a stream the codec has closed already (reset, or ended both ways)."""


class Session(Protocol):
    """One side of one HTTP/2 connection."""

    # The codec enforces RFC 9113 8.2 and 8.3 on requests itself (meshpy.codec.http2.read_checked_request
    # then does the rest); otherwise meshpy checks everything (read_request).
    checks_messages: bool
    # The codec packs DATA into frames itself (send_data pieces of any size cost no frame each).
    packs_frames: bool

    def receive(self, data: bytes) -> list[Event]: ...
    def data_to_send(self) -> bytes: ...
    def chunks_to_send(self) -> list[bytes | memoryview]:
        """`data_to_send` unjoined, for `transport.writelines`: large DATA bodies as they were handed
        over, never copied on their way out."""
    def finished(self) -> bool:
        """The codec wants no more I/O (it sent a GOAWAY that ends the connection): close."""
    def open_stream(self, headers: Fields, end: bool) -> int:
        """Client side: a new request stream with these headers; its id."""
    def send_headers(self, sid: int, headers: Fields, end: bool) -> None:
        """A response head (1xx included) or, with end, trailers."""
    def send_data(self, sid: int, data: bytes, end: bool) -> None:
        """At most `send_window(sid)` bytes."""
    def end_stream(self, sid: int) -> None: ...
    def send_message(self, sid: int, headers: Fields, body: bytes, trailers: Fields | None) -> int:
        """A whole message at once, ended after `body` (at most `send_window` bytes) and `trailers`:
        the response on `sid`, or with sid 0 a new request (its stream id back)."""
    def send_window(self, sid: int) -> int:
        """How many bytes of DATA the peer takes now on `sid` (the stream's and the connection's
        windows; h2 also the frame size)."""
    def reset_stream(self, sid: int, code: int) -> None: ...
    def acknowledge(self, sid: int, n: int) -> None:
        """`n` received bytes passed on: the peer may send that many more."""
    def ping(self, opaque: bytes) -> None: ...
    def graceful_goaway(self, last_sid: int) -> None:
        """GOAWAY NO_ERROR: streams up to `last_sid` finish, later ones are refused."""
    def terminate(self, code: int) -> None:
        """A connection error of ours: GOAWAY with `code`; nothing more is read."""
    def highest_inbound(self) -> int: ...
    def header_block_state(self) -> int:
        """0: no header block is waiting for its END_HEADERS; 1: one is; 2: one is, and has grown
        past what the codec accepts (a CONTINUATION flood)."""


def send_message_in_parts(s: Session, sid: int, headers: Fields, body: bytes, trailers: Fields | None) -> int:
    """Session.send_message for a codec with no shortcut of its own."""
    if sid:
        s.send_headers(sid, headers, not body and trailers is None)
    else:
        sid = s.open_stream(headers, not body and trailers is None)
    if body:
        s.send_data(sid, body, trailers is None)
    if trailers is not None:
        s.send_headers(sid, trailers, True)
    return sid


class CodecUnavailable(Exception):
    """The codec asked for cannot load here (no libnghttp2, no cffi)."""


_default = os.environ.get(ENV, "auto") or "auto"


def set_default(name: str) -> None:
    """The process's codec where a listener or cluster leaves `codec: auto` (`meshpy run --http2-codec`)."""
    global _default
    if name not in CODECS:
        raise ValueError(f"unknown HTTP/2 codec {name!r} (one of {', '.join(CODECS)})")
    _default = name


def nghttp2_error() -> str | None:
    """Why nghttp2 cannot be used here, or None when it can."""
    try:
        from meshpy.codec import nghttp2  # only loaded when asked for
        nghttp2.load()
    except (ImportError, OSError) as err:
        return str(err)
    return None


def resolve(name: str) -> str:
    """The codec a connection gets for an option of `name` (auto: the process default, then nghttp2 if
    it loads, else h2). CodecUnavailable when nghttp2 is named but cannot load."""
    if name == "auto":
        name = _default
    if name == "h2":
        return "h2"
    why = nghttp2_error()
    if why is None:
        return "nghttp2"
    if name == "nghttp2":
        raise CodecUnavailable(f"the nghttp2 HTTP/2 codec cannot load: {why}")
    return "h2"


def server(opts: Http2Options, settings: dict[int, int], max_header_list: int) -> Session:
    """A server-side session that has sent `settings` (SETTINGS ids to values)."""
    if resolve(opts.codec) == "nghttp2":
        from meshpy.codec.nghttp2 import Nghttp2Session
        return Nghttp2Session(False, opts, settings, max_header_list)
    from meshpy.codec.h2_pure import H2Session
    return H2Session(False, opts, settings, max_header_list)


def client(opts: Http2Options, settings: dict[int, int], max_header_list: int = 1 << 20) -> Session:
    if resolve(opts.codec) == "nghttp2":
        from meshpy.codec.nghttp2 import Nghttp2Session
        return Nghttp2Session(True, opts, settings, max_header_list)
    from meshpy.codec.h2_pure import H2Session
    return H2Session(True, opts, settings, max_header_list)


# SETTINGS identifiers (RFC 9113 6.5.2, RFC 8441 3).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE, ENABLE_CONNECT_PROTOCOL = 1, 2, 3, 4, 5, 6, 8
