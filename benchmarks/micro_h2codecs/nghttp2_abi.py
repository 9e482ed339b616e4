"""libnghttp2 through cffi in ABI mode: a minimal sans-I/O HTTP/2 connection for the codec benchmark.

No compiler and no headers: the declarations are meshpy's (meshpy.codec.nghttp2._abi), for the library
Debian ships as libnghttp2-14 (1.52). The prototype measured before meshpy's codec was written (which
is meshpy.codec.nghttp2): no GOAWAY, RST_STREAM or settings handling beyond nghttp2's own defaults.

Every call from C into Python (a header, a frame, a chunk of data, a stream closing, a read of the body
to send) crosses cffi's callback trampoline, which is where the binding spends most of its time; the
`header_callback` argument picks between the two ways nghttp2 hands over a header field.
"""

from __future__ import annotations

from typing import Any

import cffi  # type: ignore[import-untyped]  # no stubs

from meshpy.codec.nghttp2 import _abi

# meshpy's own declarations (meshpy.codec.nghttp2._abi), plus what only this prototype calls: the
# reference-counted header callback it measured against the plain one.
CDEF = _abi.CDEF + """
typedef struct nghttp2_rcbuf nghttp2_rcbuf;
typedef struct { uint8_t *base; size_t len; } nghttp2_vec;
typedef int (*nghttp2_on_header_callback2)(nghttp2_session *, const nghttp2_frame *, nghttp2_rcbuf *name,
    nghttp2_rcbuf *value, uint8_t flags, void *);
void nghttp2_session_callbacks_set_on_header_callback2(nghttp2_session_callbacks *,
    nghttp2_on_header_callback2);
nghttp2_vec nghttp2_rcbuf_get_buf(nghttp2_rcbuf *rcbuf);
"""

LIBRARY = "libnghttp2.so.14"

# From nghttp2.h.
FRAME_DATA, FRAME_HEADERS = 0, 1
FLAG_END_STREAM = 0x01
DATA_FLAG_EOF, DATA_FLAG_NO_END_STREAM = 0x01, 0x02

# The events receive() returns, as (kind, stream id, payload) tuples: cheap to build, cheap to match.
HEADERS, DATA, END = 0, 1, 2

Fields = list[tuple[bytes, bytes]]
Event = tuple[int, int, Any]

ffi = cffi.FFI()
ffi.cdef(CDEF)
_NV_ARRAY = ffi.typeof("nghttp2_nv[]")
_lib: Any = None


def load() -> Any:
    """The library, opened once; raises OSError when libnghttp2 is not installed."""
    global _lib
    if _lib is None:
        _lib = ffi.dlopen(LIBRARY)
    return _lib


def version() -> str:
    info = load().nghttp2_version(0)
    return str(ffi.string(info.version_str).decode())


class Nghttp2Error(RuntimeError):
    pass


def _check(rv: int) -> int:
    if rv < 0:
        raise Nghttp2Error(ffi.string(load().nghttp2_strerror(rv)).decode())
    return rv


def _nv_array(fields: Fields) -> tuple[Any, Any]:
    """An nghttp2_nv[] for `fields` and the one buffer it points into, to be kept alive by the caller
    until the submit call returns: nghttp2 copies the fields there, as the NO_COPY flags are not set.

    All names and values go into one joined buffer with pointers into it, because a cffi object per
    name and per value (from_buffer, cast) cost 2.5 times as much: ~12 us for 13 fields against ~5."""
    base = ffi.from_buffer("uint8_t[]", b"".join([b for field in fields for b in field]))
    init = []
    off = 0
    for name, value in fields:
        ln = len(name)
        lv = len(value)
        p = base + off
        init.append((p, p + ln, ln, lv, 0))
        off += ln + lv
    return ffi.new(_NV_ARRAY, init), base


class Connection:
    """One side of an HTTP/2 connection: bytes in through receive(), bytes out through data_to_send().

    header_callback "rcbuf" uses on_header_callback2 (the name and value as nghttp2_rcbuf, read with
    nghttp2_rcbuf_get_buf: one more C call per half-field), "plain" uses on_header_callback (pointers and
    lengths handed straight over). Window updates are left to the caller (consume()), as a proxy sends them
    when it has forwarded the bytes, not when it has received them.
    """

    def __init__(self, client_side: bool, header_callback: str = "plain") -> None:
        lib = self._lib = load()
        self._events: list[Event] = []
        self._fields: dict[int, Fields] = {}
        # stream id -> (body still to send, trailers or None): what the data provider reads from.
        self._outgoing: dict[int, tuple[memoryview, Fields | None]] = {}
        self._callbacks = self._make_callbacks(header_callback)  # kept: C holds pointers to them
        self._read = self._callbacks.pop("read")
        cbs = ffi.new("nghttp2_session_callbacks **")
        _check(lib.nghttp2_session_callbacks_new(cbs))
        opt = ffi.new("nghttp2_option **")
        _check(lib.nghttp2_option_new(opt))
        try:
            lib.nghttp2_option_set_no_auto_window_update(opt[0], 1)
            for setter, cb in self._callbacks.items():
                getattr(lib, "nghttp2_session_callbacks_set_" + setter)(cbs[0], cb)
            session = ffi.new("nghttp2_session **")
            new = lib.nghttp2_session_client_new2 if client_side else lib.nghttp2_session_server_new2
            _check(new(session, cbs[0], ffi.NULL, opt[0]))
        finally:
            lib.nghttp2_session_callbacks_del(cbs[0])
            lib.nghttp2_option_del(opt[0])
        self._session = ffi.gc(session[0], lib.nghttp2_session_del)
        self._out = ffi.new("const uint8_t **")
        self._provider = ffi.new("nghttp2_data_provider *")
        self._provider.read_callback = self._read
        _check(lib.nghttp2_submit_settings(self._session, 0, ffi.NULL, 0))

    def _make_callbacks(self, header_callback: str) -> dict[str, Any]:
        # Closures over this connection rather than one set of callbacks with a handle in user_data:
        # ffi.from_handle() on every call would cost more than the closure cell lookups do.
        events = self._events
        fields = self._fields
        outgoing = self._outgoing
        unpack = ffi.unpack
        buffer = ffi.buffer
        memmove = ffi.memmove
        lib = load()

        # nghttp2 hands over a header block's fields one by one between its begin_headers and frame_recv
        # callbacks, never interleaved with another block (CONTINUATION frames cannot be), so the fields
        # go to the block begun last: reading frame.hd.stream_id per field would cost two cffi struct
        # accesses each (~0.2 us) for an answer known already.
        current: Fields = []

        def begin_headers(_s: Any, frame: Any, _u: Any) -> int:
            nonlocal current
            current = fields[frame.hd.stream_id] = []
            return 0

        def on_header(_s: Any, _frame: Any, name: Any, namelen: int, value: Any, valuelen: int, _f: int,
                      _u: Any) -> int:
            current.append((unpack(name, namelen), unpack(value, valuelen)))
            return 0

        def on_header2(_s: Any, _frame: Any, name: Any, value: Any, _f: int, _u: Any) -> int:
            n = lib.nghttp2_rcbuf_get_buf(name)
            v = lib.nghttp2_rcbuf_get_buf(value)
            current.append((buffer(n.base, n.len)[:], buffer(v.base, v.len)[:]))
            return 0

        def frame_recv(_s: Any, frame: Any, _u: Any) -> int:
            hd = frame.hd
            if hd.type == FRAME_HEADERS:
                events.append((HEADERS, hd.stream_id, fields.pop(hd.stream_id)))
            elif hd.type != FRAME_DATA:
                return 0
            if hd.flags & FLAG_END_STREAM:
                events.append((END, hd.stream_id, None))
            return 0

        def data_chunk(_s: Any, _f: int, stream_id: int, data: Any, length: int, _u: Any) -> int:
            events.append((DATA, stream_id, unpack(data, length)))
            return 0

        def stream_close(_s: Any, _stream_id: int, _code: int, _u: Any) -> int:
            # Registered although it has nothing to do here: a proxy needs it (resets), so it is paid for.
            return 0

        def read(_s: Any, stream_id: int, buf: Any, length: int, flags: Any, _src: Any, _u: Any) -> int:
            body, trailers = outgoing[stream_id]
            n = min(length, len(body))
            memmove(buf, body[:n], n)
            rest = body[n:]
            if rest:
                outgoing[stream_id] = (rest, trailers)
                return n
            del outgoing[stream_id]
            if trailers is None:
                flags[0] = DATA_FLAG_EOF
            else:
                # nghttp2 sends trailers only when they are submitted from inside this callback.
                flags[0] = DATA_FLAG_EOF | DATA_FLAG_NO_END_STREAM
                nva, _keep = _nv_array(trailers)
                _check(lib.nghttp2_submit_trailer(self._session, stream_id, nva, len(trailers)))
            return n

        header = (("on_header_callback", ffi.callback("nghttp2_on_header_callback", on_header, -1))
                  if header_callback == "plain" else
                  ("on_header_callback2", ffi.callback("nghttp2_on_header_callback2", on_header2, -1)))
        return {
            "on_begin_headers_callback": ffi.callback("nghttp2_on_begin_headers_callback", begin_headers, -1),
            header[0]: header[1],
            "on_frame_recv_callback": ffi.callback("nghttp2_on_frame_recv_callback", frame_recv, -1),
            "on_data_chunk_recv_callback":
                ffi.callback("nghttp2_on_data_chunk_recv_callback", data_chunk, -1),
            "on_stream_close_callback": ffi.callback("nghttp2_on_stream_close_callback", stream_close, -1),
            "read": ffi.callback("nghttp2_data_source_read_callback", read, -1),
        }

    def _provider_for(self, stream_id: int, body: bytes, trailers: Fields | None) -> Any:
        if not body and trailers is None:
            return ffi.NULL
        self._outgoing[stream_id] = (memoryview(body), trailers)
        return self._provider

    def send_request(self, headers: Fields, body: bytes = b"", trailers: Fields | None = None) -> int:
        """Submit a request (its body and trailers too) and return its stream id."""
        nva, _keep = _nv_array(headers)
        provider = self._provider if body or trailers is not None else ffi.NULL
        sid: int = _check(self._lib.nghttp2_submit_request(self._session, ffi.NULL, nva, len(headers),
                                                            provider, ffi.NULL))
        if provider is not ffi.NULL:
            # The provider is only read from mem_send(), so registering the body after the submit is safe.
            self._outgoing[sid] = (memoryview(body), trailers)
        return sid

    def send_response(self, stream_id: int, headers: Fields, body: bytes = b"",
                      trailers: Fields | None = None) -> None:
        nva, _keep = _nv_array(headers)
        provider = self._provider_for(stream_id, body, trailers)
        _check(self._lib.nghttp2_submit_response(self._session, stream_id, nva, len(headers), provider))

    def consume(self, stream_id: int, length: int) -> None:
        """Give `length` flow-controlled bytes back to the peer (connection and stream windows)."""
        _check(self._lib.nghttp2_session_consume(self._session, stream_id, length))

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; the events they completed, in order."""
        _check(self._lib.nghttp2_session_mem_recv(self._session, data, len(data)))
        events = self._events[:]
        self._events.clear()
        return events

    def data_to_send(self) -> bytes:
        chunks: list[bytes] = []
        mem_send = self._lib.nghttp2_session_mem_send
        buffer = ffi.buffer
        while True:
            n = _check(mem_send(self._session, self._out))
            if n == 0:
                return b"".join(chunks)
            chunks.append(buffer(self._out[0], n)[:])
