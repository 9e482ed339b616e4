"""What nghttp2 calls back into, for every session at once.

nghttp2 calls back only from inside `nghttp2_session_mem_recv` and `nghttp2_session_mem_send`, and
meshpy is single-threaded, so the session being driven is put in `state.cur` for the length of the
call (meshpy.codec.nghttp2.session). That is cheaper than a handle in `user_data` (ffi.from_handle on
every callback) and than callbacks made per connection (an executable trampoline each).

Two sets, one behaviour:
- ABI mode: nghttp2's own callbacks, one per header field (`_begin_headers`, `_header`), the frame
  read through cffi's view of `nghttp2_frame`;
- the compiled binding (`extern "Python"`, registered in `register_native`): C gathers a header block
  and its size, and hands over a frame's few numbers rather than the frame.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from typing import TYPE_CHECKING, Any

import _cffi_backend  # type: ignore[import-untyped]  # cffi's C core: unpack and memmove without a wrapper

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
    Fields,
)
from meshpy.codec.nghttp2 import _abi

if TYPE_CHECKING:
    from meshpy.codec.nghttp2.session import Nghttp2Session

_unpack = _cffi_backend.unpack
_memmove = _cffi_backend.memmove
_from_iterable = chain.from_iterable
# DATA frames at least this large go out without a copy into nghttp2 (compiled binding only): below
# it, the copy costs less than splicing the body back into the output.
NO_COPY_MIN = 4096


class Out:
    """What a stream has handed over to send and nghttp2 has not read yet."""

    __slots__ = ("chunks", "deferred", "eof", "queued", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()  # (memoryviews: the rest of a piece kept aside)
        self.queued = 0
        self.eof = False
        self.trailers: Fields | None = None
        self.deferred = False  # the data provider said DEFERRED: resume it when data comes


class _State:
    __slots__ = ("cur",)

    def __init__(self) -> None:
        self.cur: Nghttp2Session | Any = None


state = _State()


def nv_array(ffi: Any, fields: Fields) -> tuple[Any, Any]:
    """ABI mode: an nghttp2_nv[] for `fields` and the one buffer it points into (kept alive by the
    caller until the submit call returns: nghttp2 copies the fields). One joined buffer with pointers
    into it costs less than half of a cffi object per name and per value (~5 against ~12 us, 13 fields)."""
    base = ffi.from_buffer(b"".join(_from_iterable(fields)))
    init = []
    off = 0
    for name, value in fields:
        ln = len(name)
        p = base + off
        init.append((p, p + ln, ln, len(value), 0))
        off += ln + len(value)
    return ffi.new("nghttp2_nv[]", init), base


# -- what both sets share ----------------------------------------------------------------------------
def _headers(cur: Nghttp2Session, sid: int, cat: int, flags: int, fields: Fields) -> int:
    if cat == _abi.HCAT_REQUEST:
        what = REQUEST
    elif cat == _abi.HCAT_RESPONSE or (cur._client and fields and fields[0][0] == b":status"):
        what = RESPONSE  # (after a 1xx, nghttp2 files the final response as HCAT_HEADERS)
    else:
        what = TRAILERS
    ended = flags & 1
    events = cur._events
    events.append((what, sid, fields, bool(ended)))
    if ended:
        events.append((END, sid, None, None))
    return 0


def _frame(cur: Nghttp2Session, kind: int, flags: int, sid: int, a: int, b: int) -> int:
    """A frame other than HEADERS; a and b: RST_STREAM's code, GOAWAY's code and last stream id,
    SETTINGS' MAX_CONCURRENT_STREAMS."""
    if kind == 0:  # DATA
        if flags & 1:
            cur._events.append((END, sid, None, None))
    elif kind == 8:  # WINDOW_UPDATE
        cur._events.append((WINDOW, sid, None, None))
    elif kind == 3:  # RST_STREAM
        cur._drop(sid)
        cur._peer_reset = sid  # (its close, which follows at once, is not reported again)
        cur._events.append((RESET, sid, a, None))
    elif kind == 4:  # SETTINGS
        if not flags & 1:
            cur._events.append((SETTINGS, 0, a, None))
    elif kind == 6:  # PING
        cur._events.append((PING_ACK if flags & 1 else PING, 0, None, None))
    elif kind == 7:  # GOAWAY
        for out_sid in [s for s in cur._outgoing if s > b]:
            cur._drop(out_sid)
        cur._events.append((GOAWAY, 0, a, b))
    return 0


def _stream_close(_s: Any, sid: int, code: int, _u: Any) -> int:
    """A stream closed. Reported (STREAM_ERROR) only when nghttp2 reset it itself, for a violation it
    found (a flow-control or content-length one, say): that happens while `receive` sends what the
    frames it read call for. Closes while meshpy's own frames go out (`_sending`: its resets, its
    ends) and closes by the peer's RST_STREAM (already a RESET event) are not news."""
    cur = state.cur
    out = cur._outgoing.pop(sid, None)
    if out is not None:
        cur._queued -= out.queued
    cur._end_block(sid)
    if code and not cur._sending:
        if sid == cur._peer_reset:
            cur._peer_reset = 0
        elif sid != cur._reported:
            cur._events.append((STREAM_ERROR, sid, code, False))
    return 0


def _invalid_frame(_s: Any, frame: Any, _code: int, _u: Any) -> int:
    """nghttp2 found a frame malformed: for a stream, it has reset that stream (PROTOCOL_ERROR);
    otherwise the connection is ending, which `finished` reports."""
    cur = state.cur
    sid = frame.hd.stream_id
    if sid:
        undelivered = cur._end_block(sid)
        cur._drop(sid)
        cur._reported = sid  # (its close, which follows, is not reported again)
        cur._events.append((STREAM_ERROR, sid, int(ErrorCode.PROTOCOL_ERROR), undelivered))
    return 0


def _read(_s: Any, sid: int, buf: Any, length: int, flags: Any, _src: Any, _u: Any) -> int:
    """The data provider: copies what the stream handed over (`send_data`) into nghttp2's frame; with
    the compiled binding, a large frame's body is not copied but kept aside (NO_COPY: the C
    send_data callback marks its place, and the session puts it there)."""
    cur = state.cur
    out = cur._outgoing.get(sid)
    if out is None:
        flags[0] = _abi.DATA_FLAG_EOF
        return 0
    chunks = out.chunks
    keep = cur._m is not None and length >= NO_COPY_MIN and out.queued >= NO_COPY_MIN
    pieces: list[Any] = []
    n = 0
    while chunks and n < length:
        chunk: bytes | memoryview = chunks[0]
        take = length - n
        if len(chunk) <= take:
            chunks.popleft()
            take = len(chunk)
        elif keep:
            view = memoryview(chunk)
            chunks[0] = view[take:]
            chunk = view[:take]
        else:
            chunks[0] = chunk[take:]
            chunk = chunk[:take]
        if keep:
            pieces.append(chunk)
        else:
            _memmove(buf + n, chunk, take)
        n += take
    out.queued -= n
    cur._queued -= n
    mode = 0
    if keep and n:
        mode = _abi.DATA_FLAG_NO_COPY
        cur._bodies.append((sid, n, pieces))
    if chunks:
        flags[0] = mode
        return n
    if not out.eof:
        if n:
            flags[0] = mode
            return n
        out.deferred = True
        return _abi.ERR_DEFERRED
    del cur._outgoing[sid]
    trailers = out.trailers
    if trailers is None:
        flags[0] = mode | _abi.DATA_FLAG_EOF
    else:
        # nghttp2 sends trailers submitted from inside this callback, after the last DATA.
        flags[0] = mode | _abi.DATA_FLAG_EOF | _abi.DATA_FLAG_NO_END_STREAM
        cur._submit(3, sid, trailers, None)
    return n


# -- ABI mode ----------------------------------------------------------------------------------------
def _begin_headers(_s: Any, frame: Any, _u: Any) -> int:
    cur = state.cur
    cur._block = []
    cur._block_sid = frame.hd.stream_id
    cur._block_size = 0
    return 0


def _header(_s: Any, _frame: Any, name: Any, namelen: int, value: Any, valuelen: int, _f: int,
            _u: Any) -> int:
    cur: Any = state.cur
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
    cur: Any = state.cur
    hd = frame.hd
    kind = hd.type
    if kind == 1:  # HEADERS
        fields = cur._block
        cur._block = None
        return _headers(cur, hd.stream_id, frame.headers.cat, hd.flags, fields)
    if kind == 3:
        return _frame(cur, 3, hd.flags, hd.stream_id, frame.rst_stream.error_code, 0)
    if kind == 7:
        return _frame(cur, 7, hd.flags, 0, frame.goaway.error_code, frame.goaway.last_stream_id)
    if kind == 4:
        mcs = 0 if hd.flags & 1 else cur._lib.nghttp2_session_get_remote_settings(
            cur._session, _abi.SETTINGS_MAX_CONCURRENT_STREAMS)
        return _frame(cur, 4, hd.flags, 0, mcs, 0)
    return _frame(cur, kind, hd.flags, hd.stream_id, 0, 0)


def _data_chunk(_s: Any, _f: int, stream_id: int, data: Any, length: int, _u: Any) -> int:
    state.cur._events.append((DATA, stream_id, _unpack(data, length), length))
    return 0


def abi_callbacks(ffi: Any) -> tuple[dict[str, Any], Any]:
    """The ABI-mode callbacks by nghttp2's setter name, and the data provider's read callback."""
    callbacks = {
        "on_begin_headers_callback": ffi.callback("nghttp2_on_begin_headers_callback", _begin_headers, -1),
        "on_header_callback": ffi.callback("nghttp2_on_header_callback", _header, -1),
        "on_frame_recv_callback": ffi.callback("nghttp2_on_frame_recv_callback", _frame_recv, -1),
        "on_data_chunk_recv_callback": ffi.callback("nghttp2_on_data_chunk_recv_callback", _data_chunk, -1),
        "on_stream_close_callback": ffi.callback("nghttp2_on_stream_close_callback", _stream_close, -1),
        "on_invalid_frame_recv_callback":
            ffi.callback("nghttp2_on_invalid_frame_recv_callback", _invalid_frame, -1),
    }
    return callbacks, ffi.callback("nghttp2_data_source_read_callback", _read, _abi.ERR_CALLBACK_FAILURE)


# -- the compiled binding ----------------------------------------------------------------------------
def _native_headers(sid: int, cat: int, flags: int, block: Any, length: int) -> int:
    if not length:
        return _headers(state.cur, sid, cat, flags, [])
    parts = _unpack(block, length).split(b"\0")
    if len(parts) & 1:  # (nghttp2 refuses a field holding NUL before it gets here)
        return -1
    it = iter(parts)
    return _headers(state.cur, sid, cat, flags, list(zip(it, it, strict=False)))


def _native_frame(kind: int, flags: int, sid: int, a: int, b: int) -> int:
    return _frame(state.cur, kind, flags, sid, a, b)


def _native_data(sid: int, data: Any, length: int) -> int:
    state.cur._events.append((DATA, sid, _unpack(data, length), length))
    return 0


def register_native(ffi: Any) -> None:
    """Bind the compiled module's `extern "Python"` declarations to the functions above (once)."""
    ffi.def_extern(name="meshpy_py_headers", error=-1)(_native_headers)
    ffi.def_extern(name="meshpy_py_frame", error=-1)(_native_frame)
    ffi.def_extern(name="meshpy_py_data", error=-1)(_native_data)
    ffi.def_extern(name="meshpy_py_close", error=-1)(_stream_close)
    ffi.def_extern(name="meshpy_py_invalid", error=-1)(_invalid_frame)
    ffi.def_extern(name="meshpy_py_read", error=_abi.ERR_CALLBACK_FAILURE)(_read)
