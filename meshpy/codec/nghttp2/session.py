"""meshpy's default HTTP/2 codec: one libnghttp2 session per connection, behind the codec seam
(meshpy.codec.h2session).

How it is bound, and why (docs/http2-codec.md has the measurements):
- **One set of C callbacks for every session.** nghttp2 calls back only from inside
  `nghttp2_session_mem_recv` and `nghttp2_session_mem_send`, and meshpy is single-threaded, so the
  session being driven is put in a module global (`_cur`) for the length of the call. That is cheaper
  than a handle in `user_data` (ffi.from_handle on every callback) and than cffi callbacks made per
  connection (an executable trampoline each).
- **Fields go to the header block opened last**: nghttp2 never interleaves header blocks (CONTINUATION
  frames cannot be), so no per-field lookup of the stream.
- **Flow control stays with the transports**, as with h2: meshpy acknowledges received DATA only as it
  passes it on (`NO_AUTO_WINDOW_UPDATE` and `nghttp2_session_consume`), and sends no more than
  `send_window` allows. Bytes handed over wait here until nghttp2's data provider reads them during
  `mem_send`; `send_window` counts them as already spent.
- **nghttp2 checks what RFC 9113 requires** (frame syntax, stream states, flow control, HPACK, HTTP
  messaging: pseudo-headers, connection-specific and upper-case fields, content-length) and resets a
  malformed stream or ends the connection with the right code itself; meshpy hears of a reset stream
  through `on_invalid_frame_recv` (a STREAM_ERROR event). Its own limits (CONTINUATION frames per block,
  a stream reset rate, queued SETTINGS and PING answers) stay on at their defaults, and one of meshpy's
  is added: the decoded size of a header block (an HPACK bomb), counted field by field.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from meshpy.codec.h2session import (
    DATA,
    END,
    GOAWAY,
    PING,
    PING_ACK,
    REQUEST,
    RESET,
    RESPONSE,
    SETTINGS,
    STREAM_ERROR,
    TRAILERS,
    WINDOW,
    ErrorCode,
    Event,
    Fields,
    SessionError,
    StreamGone,
)
from meshpy.codec.nghttp2 import _abi
from meshpy.codec.nghttp2._abi import ffi

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options

_NV_ARRAY = ffi.typeof("nghttp2_nv[]")
_SETTINGS_ARRAY = ffi.typeof("nghttp2_settings_entry[]")
_unpack = ffi.unpack
_buffer = ffi.buffer
_memmove = ffi.memmove
_NULL = ffi.NULL


class _Out:
    """What a stream has handed over to send and nghttp2 has not read yet."""

    __slots__ = ("chunks", "deferred", "eof", "queued", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.eof = False
        self.trailers: Fields | None = None
        self.deferred = False  # the data provider said DEFERRED: resume it when data comes


def _nv_array(fields: Fields) -> tuple[Any, Any]:
    """An nghttp2_nv[] for `fields` and the one buffer it points into (kept alive by the caller until
    the submit call returns: nghttp2 copies the fields). One joined buffer with pointers into it costs
    less than half of a cffi object per name and per value (~5 against ~12 us for 13 fields)."""
    base = ffi.from_buffer(b"".join([b for field in fields for b in field]))
    init = []
    off = 0
    for name, value in fields:
        ln = len(name)
        p = base + off
        init.append((p, p + ln, ln, len(value), 0))
        off += ln + len(value)
    return ffi.new(_NV_ARRAY, init), base


_cur: Any = None  # the Nghttp2Session being driven by mem_recv or mem_send


def _begin_headers(_s: Any, frame: Any, _u: Any) -> int:
    cur = _cur
    cur._block = []
    cur._block_sid = frame.hd.stream_id
    cur._block_size = 0
    return 0


def _header(_s: Any, _frame: Any, name: Any, namelen: int, value: Any, valuelen: int, _f: int,
            _u: Any) -> int:
    cur = _cur
    # Counted as HPACK counts a header list (RFC 7541 4.1): a block that decodes past the limit is an
    # HPACK bomb or a CONTINUATION flood, and ends the connection (see receive).
    size = cur._block_size + namelen + valuelen + 32
    if size > cur._max_block:
        cur._overflow = True
        return _abi.ERR_CALLBACK_FAILURE
    cur._block_size = size
    cur._block.append((_unpack(name, namelen), _unpack(value, valuelen)))
    return 0


def _frame_recv(_s: Any, frame: Any, _u: Any) -> int:
    cur = _cur
    hd = frame.hd
    kind = hd.type
    if kind == 0:  # DATA
        if hd.flags & 1:
            cur._events.append((END, hd.stream_id, None, None))
    elif kind == 1:  # HEADERS
        sid = hd.stream_id
        fields = cur._block
        cur._block = None
        cat = frame.headers.cat
        if cat == _abi.HCAT_REQUEST:
            what = REQUEST
        elif cat == _abi.HCAT_RESPONSE or (cur._client and fields and fields[0][0] == b":status"):
            what = RESPONSE  # (after a 1xx, nghttp2 files the final response as HCAT_HEADERS)
        else:
            what = TRAILERS
        ended = hd.flags & 1
        cur._events.append((what, sid, fields, bool(ended)))
        if ended:
            cur._events.append((END, sid, None, None))
    elif kind == 8:  # WINDOW_UPDATE
        cur._events.append((WINDOW, hd.stream_id, None, None))
    elif kind == 3:  # RST_STREAM
        sid = hd.stream_id
        cur._drop(sid)
        cur._peer_reset = sid  # (its close, which follows at once, is not reported again)
        cur._events.append((RESET, sid, frame.rst_stream.error_code, None))
    elif kind == 4:  # SETTINGS
        if not hd.flags & 1:
            mcs = cur._lib.nghttp2_session_get_remote_settings(
                cur._session, _abi.SETTINGS_MAX_CONCURRENT_STREAMS)
            cur._events.append((SETTINGS, 0, mcs, None))
    elif kind == 6:  # PING
        cur._events.append((PING_ACK if hd.flags & 1 else PING, 0, None, None))
    elif kind == 7:  # GOAWAY
        last = frame.goaway.last_stream_id
        for sid in [sid for sid in cur._outgoing if sid > last]:
            cur._drop(sid)
        cur._events.append((GOAWAY, 0, frame.goaway.error_code, last))
    return 0


def _data_chunk(_s: Any, _f: int, stream_id: int, data: Any, length: int, _u: Any) -> int:
    _cur._events.append((DATA, stream_id, _unpack(data, length), length))
    return 0


def _stream_close(_s: Any, sid: int, code: int, _u: Any) -> int:
    """A stream closed. Reported (STREAM_ERROR) only when nghttp2 reset it itself, for a violation it
    found (a flow-control or content-length one, say): that happens while `receive` sends what the
    frames it read call for. Closes while meshpy's own frames go out (`_sending`: its resets, its
    ends) and closes by the peer's RST_STREAM (already a RESET event) are not news."""
    cur = _cur
    out = cur._outgoing.pop(sid, None)
    if out is not None:
        cur._queued -= out.queued
    if cur._block is not None and cur._block_sid == sid:
        cur._block = None
    if code and not cur._sending:
        if sid == cur._peer_reset:
            cur._peer_reset = 0
        elif sid != cur._reported:
            cur._events.append((STREAM_ERROR, sid, code, False))
    return 0


def _invalid_frame(_s: Any, frame: Any, _code: int, _u: Any) -> int:
    """nghttp2 found a frame malformed: for a stream, it has reset that stream (PROTOCOL_ERROR);
    otherwise the connection is ending, which `finished` reports."""
    cur = _cur
    sid = frame.hd.stream_id
    if sid:
        undelivered = cur._block is not None and cur._block_sid == sid
        if undelivered:
            cur._block = None
        cur._drop(sid)
        cur._reported = sid  # (its close, which follows, is not reported again)
        cur._events.append((STREAM_ERROR, sid, int(ErrorCode.PROTOCOL_ERROR), undelivered))
    return 0


def _read(_s: Any, sid: int, buf: Any, length: int, flags: Any, _src: Any, _u: Any) -> int:
    cur = _cur
    out = cur._outgoing.get(sid)
    if out is None:
        flags[0] = _abi.DATA_FLAG_EOF
        return 0
    chunks = out.chunks
    n = 0
    while chunks and n < length:
        chunk = chunks[0]
        take = length - n
        if len(chunk) <= take:
            chunks.popleft()
            take = len(chunk)
        else:
            chunks[0] = chunk[take:]
            chunk = chunk[:take]
        _memmove(buf + n, chunk, take)
        n += take
    out.queued -= n
    cur._queued -= n
    if chunks:
        return n
    if not out.eof:
        if n:
            return n
        out.deferred = True
        return _abi.ERR_DEFERRED
    del cur._outgoing[sid]
    trailers = out.trailers
    if trailers is None:
        flags[0] = _abi.DATA_FLAG_EOF
    else:
        # nghttp2 sends trailers submitted from inside this callback, after the last DATA.
        flags[0] = _abi.DATA_FLAG_EOF | _abi.DATA_FLAG_NO_END_STREAM
        nva, _keep = _nv_array(trailers)
        cur._lib.nghttp2_submit_trailer(cur._session, sid, nva, len(trailers))
    return n


_callbacks: dict[str, Any] = {}
_provider: Any = None


def _setup() -> Any:
    """The library and the shared callbacks, made once."""
    global _provider
    lib = _abi.load()
    if not _callbacks:
        _callbacks.update({
            "on_begin_headers_callback":
                ffi.callback("nghttp2_on_begin_headers_callback", _begin_headers, -1),
            "on_header_callback": ffi.callback("nghttp2_on_header_callback", _header, -1),
            "on_frame_recv_callback": ffi.callback("nghttp2_on_frame_recv_callback", _frame_recv, -1),
            "on_data_chunk_recv_callback":
                ffi.callback("nghttp2_on_data_chunk_recv_callback", _data_chunk, -1),
            "on_stream_close_callback": ffi.callback("nghttp2_on_stream_close_callback", _stream_close, -1),
            "on_invalid_frame_recv_callback":
                ffi.callback("nghttp2_on_invalid_frame_recv_callback", _invalid_frame, -1),
        })
        read = ffi.callback("nghttp2_data_source_read_callback", _read, _abi.ERR_CALLBACK_FAILURE)
        _callbacks["read"] = read
        _provider = ffi.new("nghttp2_data_provider *")
        _provider.read_callback = read
    return lib


class Nghttp2Session:
    """meshpy.codec.h2session.Session over libnghttp2."""

    __slots__ = ("_block", "_block_sid", "_block_size", "_client", "_events", "_lib", "_max_block",
                 "_out_ptr", "_outgoing", "_overflow", "_peer_reset", "_queued", "_reported", "_sending",
                 "_sent", "_session")

    def __init__(self, client_side: bool, opts: Http2Options, settings: dict[int, int],
                 max_header_list: int) -> None:
        lib = self._lib = _setup()
        self._client = client_side
        self._events: list[Event] = []
        self._block: Fields | None = None  # the header block being received
        self._block_sid = 0
        self._block_size = 0
        self._max_block = max_header_list
        self._overflow = False
        self._outgoing: dict[int, _Out] = {}
        self._queued = 0  # bytes handed over and not read by nghttp2 yet, all streams
        self._peer_reset = 0
        self._reported = 0
        self._sending = False
        self._sent: list[bytes] = []  # frames made while receiving, waiting for data_to_send
        self._out_ptr = ffi.new("const uint8_t **")
        cbs = ffi.new("nghttp2_session_callbacks **")
        opt = ffi.new("nghttp2_option **")
        session = ffi.new("nghttp2_session **")
        if lib.nghttp2_session_callbacks_new(cbs) or lib.nghttp2_option_new(opt):
            raise MemoryError("nghttp2: out of memory")
        try:
            lib.nghttp2_option_set_no_auto_window_update(opt[0], 1)
            # Closed streams are kept only for RFC 7540 priorities, which meshpy does not act on:
            # without them a closed stream is gone at once (find_stream says so) and costs no memory.
            lib.nghttp2_option_set_no_closed_streams(opt[0], 1)
            for name, cb in _callbacks.items():
                if name != "read":
                    getattr(lib, "nghttp2_session_callbacks_set_" + name)(cbs[0], cb)
            new = lib.nghttp2_session_client_new2 if client_side else lib.nghttp2_session_server_new2
            if new(session, cbs[0], _NULL, opt[0]):
                raise MemoryError("nghttp2: out of memory")
        finally:
            lib.nghttp2_session_callbacks_del(cbs[0])
            lib.nghttp2_option_del(opt[0])
        self._session = ffi.gc(session[0], lib.nghttp2_session_del)
        entries = ffi.new(_SETTINGS_ARRAY, list(settings.items()))
        self._check(lib.nghttp2_submit_settings(self._session, 0, entries, len(settings)))
        if opts.initial_connection_window_size > 65535:
            self._check(lib.nghttp2_session_set_local_window_size(
                self._session, 0, 0, opts.initial_connection_window_size))

    @staticmethod
    def _check(rv: int) -> int:
        if rv < 0:
            raise StreamGone(_abi.strerror(rv))
        return rv

    def _drop(self, sid: int) -> None:
        """Forget what `sid` had waiting to send: nghttp2 will not read it now."""
        out = self._outgoing.pop(sid, None)
        if out is not None:
            self._queued -= out.queued

    # -- bytes in, bytes out -------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        global _cur
        _cur = self
        rv = self._lib.nghttp2_session_mem_recv(self._session, data, len(data))
        if rv >= 0:
            # What the frames call for (RST_STREAMs nghttp2 decided on, SETTINGS and PING answers)
            # is made now, so that the streams it resets close, and are reported, with these events.
            self._send_into(self._sent)
        _cur = None
        if rv < 0:
            # A fatal error (a flood, a bad preface, our header list limit): nghttp2 sends no GOAWAY
            # of its own for these, so one is queued here before the connection closes.
            code = ErrorCode.ENHANCE_YOUR_CALM if self._overflow or rv in (-904, -905) else \
                ErrorCode.PROTOCOL_ERROR
            self._lib.nghttp2_session_terminate_session(self._session, code)
            raise SessionError(_abi.strerror(rv), code)
        events = self._events
        if events:
            self._events = []
        return events

    def _send_into(self, chunks: list[bytes]) -> None:
        mem_send = self._lib.nghttp2_session_mem_send
        session = self._session
        ptr = self._out_ptr
        n = mem_send(session, ptr)
        while n > 0:
            chunks.append(_buffer(ptr[0], n)[:])
            n = mem_send(session, ptr)

    def data_to_send(self) -> bytes:
        global _cur
        _cur = self
        self._sending = True
        chunks = self._sent
        self._sent = []
        self._send_into(chunks)
        self._sending = False
        _cur = None
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def finished(self) -> bool:
        lib = self._lib
        return not lib.nghttp2_session_want_read(self._session) and \
            not lib.nghttp2_session_want_write(self._session)

    # -- streams -------------------------------------------------------------------------------------
    def open_stream(self, headers: Fields, end: bool) -> int:
        nva, _keep = _nv_array(headers)
        provider = _NULL if end else _provider
        sid: int = self._lib.nghttp2_submit_request(self._session, _NULL, nva, len(headers), provider, _NULL)
        self._check(sid)
        if not end:
            self._outgoing[sid] = _Out()
        return sid

    def send_headers(self, sid: int, headers: Fields, end: bool) -> None:
        lib = self._lib
        out = self._outgoing.get(sid)
        if out is not None:  # trailers, after a head that left the stream open
            if not end:
                raise StreamGone("a second head on a stream")
            out.trailers = headers
            self._finish(out, sid)
            return
        if lib.nghttp2_session_find_stream(self._session, sid) == _NULL:
            raise StreamGone(f"stream {sid} is closed")
        nva, _keep = _nv_array(headers)
        if headers[0][1][:1] == b"1":  # a 1xx: more heads follow
            self._check(lib.nghttp2_submit_headers(self._session, 0, sid, _NULL, nva, len(headers), _NULL))
        elif end:
            self._check(lib.nghttp2_submit_response(self._session, sid, nva, len(headers), _NULL))
        else:
            self._check(lib.nghttp2_submit_response(self._session, sid, nva, len(headers), _provider))
            self._outgoing[sid] = _Out()

    def send_data(self, sid: int, data: bytes, end: bool) -> None:
        out = self._outgoing.get(sid)
        if out is None:
            raise StreamGone(f"stream {sid} takes no data")
        out.chunks.append(data)
        n = len(data)
        out.queued += n
        self._queued += n
        if end:
            self._finish(out, sid)
        elif out.deferred:
            out.deferred = False
            self._lib.nghttp2_session_resume_data(self._session, sid)

    def end_stream(self, sid: int) -> None:
        out = self._outgoing.get(sid)
        if out is None:
            raise StreamGone(f"stream {sid} takes no data")
        self._finish(out, sid)

    def _finish(self, out: _Out, sid: int) -> None:
        out.eof = True
        if out.deferred:
            out.deferred = False
            self._lib.nghttp2_session_resume_data(self._session, sid)

    def send_window(self, sid: int) -> int:
        lib = self._lib
        session = self._session
        stream = lib.nghttp2_session_get_stream_remote_window_size(session, sid)
        out = self._outgoing.get(sid)
        if stream < 0:
            if out is None:
                raise StreamGone(f"stream {sid} is closed")
            # A request submitted but not sent yet: nghttp2 makes its stream when the HEADERS go out,
            # with the peer's initial window.
            stream = lib.nghttp2_session_get_remote_settings(session, _abi.SETTINGS_INITIAL_WINDOW_SIZE)
        if out is not None:
            stream -= out.queued
        conn: int = lib.nghttp2_session_get_remote_window_size(session) - self._queued
        return stream if stream < conn else conn

    def reset_stream(self, sid: int, code: int) -> None:
        if code == 0 and sid not in self._outgoing:
            # NO_ERROR after a complete answer (RFC 9113 8.1: stop sending the request): nghttp2 sends
            # RST_STREAM ahead of HEADERS it holds, so what is held goes out first.
            global _cur
            _cur = self
            self._sending = True
            self._send_into(self._sent)
            self._sending = False
            _cur = None
        self._drop(sid)
        self._check(self._lib.nghttp2_submit_rst_stream(self._session, 0, sid, code))

    def acknowledge(self, sid: int, n: int) -> None:
        self._lib.nghttp2_session_consume(self._session, sid, n)

    # -- the connection ------------------------------------------------------------------------------
    def ping(self, opaque: bytes) -> None:
        self._check(self._lib.nghttp2_submit_ping(self._session, 0, opaque[:8].ljust(8, b"\0")))

    def graceful_goaway(self, last_sid: int) -> None:
        self._lib.nghttp2_submit_goaway(self._session, 0, last_sid, 0, _NULL, 0)

    def terminate(self, code: int) -> None:
        self._lib.nghttp2_session_terminate_session(self._session, code)

    def highest_inbound(self) -> int:
        return int(self._lib.nghttp2_session_get_last_proc_stream_id(self._session))

    def header_block_state(self) -> int:
        if self._block is None:
            return 0
        return 2 if self._overflow else 1
