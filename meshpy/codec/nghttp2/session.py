"""meshpy's default HTTP/2 codec: one libnghttp2 session per connection, behind the codec seam
(meshpy.codec.h2session).

How it is bound, and why (docs/http2-codec.md has the measurements):
- **Compiled where it can be** (meshpy.codec.nghttp2.binding): cffi's API mode with a little C that
  gathers header blocks, else ABI mode; one set of callbacks for every session
  (meshpy.codec.nghttp2.callbacks).
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
from itertools import chain
from typing import TYPE_CHECKING, Any

from meshpy.codec.h2session import ErrorCode, Event, Fields, SessionError, StreamGone, send_message_in_parts
from meshpy.codec.nghttp2 import _abi, callbacks
from meshpy.codec.nghttp2.binding import Binding, load
from meshpy.codec.nghttp2.callbacks import Out, _unpack, nv_array, state

if TYPE_CHECKING:
    from meshpy.model.types import Http2Options

_ready: dict[bool, tuple[dict[str, Any], Any, Any]] = {}  # per binding: callbacks, read callback, provider


_join = b"\0".join
_chain = chain.from_iterable


def _callbacks(b: Binding) -> tuple[dict[str, Any], Any, Any]:
    """The binding's callbacks and the one data provider every stream shares, made once."""
    made = _ready.get(b.native)
    if made is None:
        if b.native:
            callbacks.register_native(b.ffi)
            cbs: dict[str, Any] = {}
            read = b.lib.meshpy_py_read
        else:
            cbs, read = callbacks.abi_callbacks(b.ffi)
        provider = b.ffi.new("nghttp2_data_provider *")
        provider.read_callback = read
        made = _ready[b.native] = (cbs, read, provider)
    return made


class Nghttp2Session:
    """meshpy.codec.h2session.Session over libnghttp2."""

    __slots__ = ("_block", "_block_sid", "_block_size", "_bodies", "_buffer", "_client", "_events", "_lib",
                 "_m", "_max_block", "_null", "_out_ptr", "_outgoing", "_overflow", "_peer_reset",
                 "_provider", "_queued", "_reported", "_sending", "_sent", "_session")
    checks_messages = True  # nghttp2's HTTP messaging checks are on
    packs_frames = True  # its data provider fills each frame from whatever was handed over

    def __init__(self, client_side: bool, opts: Http2Options, settings: dict[int, int],
                 max_header_list: int, binding: Binding | None = None) -> None:
        b = binding or load()
        ffi = b.ffi
        lib = self._lib = b.lib
        cbs_by_name, _read, self._provider = _callbacks(b)
        self._null = ffi.NULL
        self._buffer = ffi.buffer
        self._client = client_side
        self._events: list[Event] = []
        self._block: Fields | None = None  # (ABI mode) the header block being received
        self._block_sid = 0
        self._block_size = 0
        self._max_block = max_header_list
        self._overflow = False
        self._outgoing: dict[int, Out] = {}
        self._queued = 0  # bytes handed over and not read by nghttp2 yet, all streams
        self._peer_reset = 0
        self._reported = 0
        self._sending = False
        self._sent: list[bytes | memoryview] = []  # frames made while receiving, not sent yet
        self._bodies: deque[tuple[int, int, list[Any]]] = deque()  # DATA bodies sent without a copy
        self._out_ptr = ffi.new("const uint8_t **")
        cbs = ffi.new("nghttp2_session_callbacks **")
        opt = ffi.new("nghttp2_option **")
        session = ffi.new("nghttp2_session **")
        if lib.nghttp2_session_callbacks_new(cbs) or lib.nghttp2_option_new(opt):
            raise MemoryError("nghttp2: out of memory")
        m = self._m = lib.meshpy_h2_new(max_header_list) if b.native else None
        try:
            lib.nghttp2_option_set_no_auto_window_update(opt[0], 1)
            # Closed streams are kept only for RFC 7540 priorities, which meshpy does not act on:
            # without them a closed stream is gone at once (find_stream says so) and costs no memory.
            lib.nghttp2_option_set_no_closed_streams(opt[0], 1)
            if m is not None:
                lib.meshpy_h2_callbacks(cbs[0])
            for name, cb in cbs_by_name.items():
                getattr(lib, "nghttp2_session_callbacks_set_" + name)(cbs[0], cb)
            new = lib.nghttp2_session_client_new2 if client_side else lib.nghttp2_session_server_new2
            if new(session, cbs[0], m if m is not None else ffi.NULL, opt[0]):
                raise MemoryError("nghttp2: out of memory")
        finally:
            lib.nghttp2_session_callbacks_del(cbs[0])
            lib.nghttp2_option_del(opt[0])
        if m is not None:
            free = lib.meshpy_h2_free
            self._session = ffi.gc(session[0], lambda p: free(p, m))
        else:
            self._session = ffi.gc(session[0], lib.nghttp2_session_del)
        entries = ffi.new("nghttp2_settings_entry[]", list(settings.items()))
        self._check(lib.nghttp2_submit_settings(self._session, 0, entries, len(settings)))
        if opts.initial_connection_window_size > 65535:
            self._check(lib.nghttp2_session_set_local_window_size(
                self._session, 0, 0, opts.initial_connection_window_size))

    def _submit(self, kind: int, sid: int, fields: Fields, provider: Any) -> int:
        """Headers out: 0 a request (its stream id back), 1 a response, 2 a 1xx, 3 trailers."""
        lib = self._lib
        prd = provider if provider is not None else self._null
        if self._m is not None:
            # (names and values joined by NUL; C refuses a list with a NUL in a field)
            joined = _join(_chain(fields))
            return self._check(
                lib.meshpy_h2_submit(self._session, kind, sid, joined, len(joined), len(fields), prd))
        nva, _keep = nv_array(_abi.ffi, fields)
        n = len(fields)
        if kind == 0:
            return self._check(lib.nghttp2_submit_request(self._session, self._null, nva, n, prd, self._null))
        if kind == 1:
            return self._check(lib.nghttp2_submit_response(self._session, sid, nva, n, prd))
        if kind == 2:
            return self._check(lib.nghttp2_submit_headers(self._session, 0, sid, self._null, nva, n,
                                                          self._null))
        return self._check(lib.nghttp2_submit_trailer(self._session, sid, nva, n))

    def _end_block(self, sid: int) -> bool:
        """Whether a header block of `sid` was open (never delivered); it is closed now."""
        m = self._m
        if m is not None:
            if m.pending and m.block_sid == sid:
                m.pending = 0
                return True
            return False
        if self._block is not None and self._block_sid == sid:
            self._block = None
            return True
        return False

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
        state.cur = self
        m = self._m
        if m is not None:  # (the compiled binding hands each stream's DATA over once per read)
            rv = self._lib.meshpy_h2_recv(self._session, m, data, len(data))
        else:
            rv = self._lib.nghttp2_session_mem_recv(self._session, data, len(data))
        if rv >= 0:
            # What the frames call for (RST_STREAMs nghttp2 decided on, SETTINGS and PING answers)
            # is made now, so that the streams it resets close, and are reported, with these events.
            self._send_into(self._sent)
        state.cur = None
        if rv < 0:
            # A fatal error (a flood, a bad preface, our header list limit): nghttp2 sends no GOAWAY
            # of its own for these, so one is queued here before the connection closes.
            overflow = self._overflow or (self._m is not None and self._m.overflow)
            code = ErrorCode.ENHANCE_YOUR_CALM if overflow or rv in (-904, -905) else \
                ErrorCode.PROTOCOL_ERROR
            self._lib.nghttp2_session_terminate_session(self._session, code)
            raise SessionError(_abi.strerror(rv), code)
        events = self._events
        if events:
            self._events = []
        return events

    def _send_into(self, chunks: list[bytes | memoryview]) -> None:
        m = self._m
        if m is not None:  # the compiled binding gathers every frame in C, in one call
            n = self._lib.meshpy_h2_send_all(self._session, m)
            if n > 0:
                if m.nmarks:
                    self._splice(chunks, n, m)
                else:
                    chunks.append(_unpack(m.out, n))
            return
        mem_send = self._lib.nghttp2_session_mem_send
        session = self._session
        ptr = self._out_ptr
        n = mem_send(session, ptr)
        buffer = self._buffer
        while n > 0:
            chunks.append(buffer(ptr[0], n)[:])
            n = mem_send(session, ptr)

    def _splice(self, chunks: list[Any], n: int, m: Any) -> None:
        """The frames gathered in C, with each large DATA body put back where its mark says (the
        pieces _read kept aside, in the order nghttp2 sent them)."""
        out = m.out
        marks = m.marks
        bodies = self._bodies
        prev = 0
        for i in range(m.nmarks):
            mark = marks[i]
            at = mark.at
            if at > prev:
                chunks.append(_unpack(out + prev, at - prev))
            prev = at
            while bodies:
                sid, length, pieces = bodies.popleft()
                if sid == mark.sid and length == mark.len:
                    chunks.extend(pieces)
                    break
            else:  # (a body nghttp2 never sent would be left behind: never seen, but not a crash)
                raise SessionError("nghttp2: a DATA body went missing", ErrorCode.INTERNAL_ERROR)
        if n > prev:
            chunks.append(_unpack(out + prev, n - prev))

    def chunks_to_send(self) -> list[bytes | memoryview]:
        state.cur = self
        self._sending = True
        chunks = self._sent
        self._sent = []
        self._send_into(chunks)
        self._sending = False
        state.cur = None
        return chunks

    def data_to_send(self) -> bytes:
        chunks = self.chunks_to_send()
        if not chunks:
            return b""
        return b"".join(chunks)

    def finished(self) -> bool:
        lib = self._lib
        return not lib.nghttp2_session_want_read(self._session) and \
            not lib.nghttp2_session_want_write(self._session)

    # -- streams -------------------------------------------------------------------------------------
    def open_stream(self, headers: Fields, end: bool) -> int:
        sid = self._submit(0, 0, headers, None if end else self._provider)
        if not end:
            self._outgoing[sid] = Out()
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
        if lib.nghttp2_session_find_stream(self._session, sid) == self._null:
            raise StreamGone(f"stream {sid} is closed")
        if headers[0][1][:1] == b"1":  # a 1xx: more heads follow
            self._submit(2, sid, headers, None)
        elif end:
            self._submit(1, sid, headers, None)
        else:
            self._submit(1, sid, headers, self._provider)
            self._outgoing[sid] = Out()

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

    def send_message(self, sid: int, headers: Fields, body: bytes, trailers: Fields | None) -> int:
        m = self._m
        if m is None or not body:
            return send_message_in_parts(self, sid, headers, body, trailers)
        if sid and self._lib.nghttp2_session_find_stream(self._session, sid) == self._null:
            raise StreamGone(f"stream {sid} is closed")
        # (the compiled binding: body and trailers go out from C, with no data provider in Python)
        head = _join(_chain(headers))
        tail = _join(_chain(trailers)) if trailers else b""
        return self._check(self._lib.meshpy_h2_submit_whole(
            self._session, m, sid, head, len(head), len(headers), body, len(body), tail, len(tail),
            len(trailers) if trailers else 0))

    def end_stream(self, sid: int) -> None:
        out = self._outgoing.get(sid)
        if out is None:
            raise StreamGone(f"stream {sid} takes no data")
        self._finish(out, sid)

    def _finish(self, out: Out, sid: int) -> None:
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
            state.cur = self
            self._sending = True
            self._send_into(self._sent)
            self._sending = False
            state.cur = None
        self._drop(sid)
        self._check(self._lib.nghttp2_submit_rst_stream(self._session, 0, sid, code))

    def acknowledge(self, sid: int, n: int) -> None:
        self._lib.nghttp2_session_consume(self._session, sid, n)

    # -- the connection ------------------------------------------------------------------------------
    def ping(self, opaque: bytes) -> None:
        self._check(self._lib.nghttp2_submit_ping(self._session, 0, opaque[:8].ljust(8, b"\0")))

    def graceful_goaway(self, last_sid: int) -> None:
        self._lib.nghttp2_submit_goaway(self._session, 0, last_sid, 0, self._null, 0)

    def terminate(self, code: int) -> None:
        self._lib.nghttp2_session_terminate_session(self._session, code)

    def highest_inbound(self) -> int:
        return int(self._lib.nghttp2_session_get_last_proc_stream_id(self._session))

    def header_block_state(self) -> int:
        m = self._m
        if m is not None:
            return (2 if m.overflow else 1) if m.pending else 0
        if self._block is None:
            return 0
        return 2 if self._overflow else 1
