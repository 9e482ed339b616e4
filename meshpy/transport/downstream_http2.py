"""The downstream side of HTTP/2: one asyncio.Protocol per connection, an HTTP/2 codec for the framing
(meshpy.codec.h2session: nghttp2, or h2), one H2Stream and one H2Exchange per request stream.

Everything a read produces goes out in one write at its end (`flush`). The defences are here too,
beside what the codec checks itself (frame syntax, stream states, flow control, HPACK, the stream
limit): a malformed request (RFC 9113 8.1.1) resets its stream with PROTOCOL_ERROR; a connection error
gets GOAWAY with the codec's code and the connection is closed; a header list over the listener's
limits gets 431 on its stream (more than twice over, the codec refuses it and the connection goes);
rapid resets, control-frame floods and header blocks that grow without end get GOAWAY
ENHANCE_YOUR_CALM (meshpy.transport.h2_abuse), and a block still incomplete after the request headers
timeout closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from meshpy.codec import h2session
from meshpy.codec.h2session import (
    DATA,
    END,
    GOAWAY,
    PING,
    REQUEST,
    RESET,
    SETTINGS,
    STREAM_ERROR,
    TRAILERS,
    WINDOW,
    ErrorCode,
    Fields,
    SessionError,
    StreamGone,
)
from meshpy.codec.http2 import Malformed, local_settings, read_checked_request, read_request, read_trailers
from meshpy.transport.accept import accepted, connection_info, released
from meshpy.transport.admission import keep_alive_allowed
from meshpy.transport.h2_abuse import H2Abuse
from meshpy.transport.h2_guards import H2ConnectionGuards
from meshpy.transport.h2_stream import H2Stream

if TYPE_CHECKING:
    from meshpy.codec.h2session import Session
    from meshpy.ports import ConnectionInfo
    from meshpy.routing.compile import ListenerSlot

log = logging.getLogger(__name__)
# An answer whose end has come with at most this much body goes out in one Session.send_message.
WHOLE_MAX = 16 * 1024


class Http2Downstream(H2ConnectionGuards, asyncio.Protocol):
    __slots__ = (
        "_abuse",
        "_block_timer",
        "_flush_due",
        "_goaway_sent",
        "_info",
        "_life",
        "_opened",
        "_stall_timer",
        "_stop_after",
        "_timer",
        "blocked",
        "born",
        "closing",
        "dirty",
        "h2",
        "idle_since",
        "loop",
        "original_dst",
        "peer",
        "slot",
        "stats",
        "streams",
        "transport",
        "write_paused",
    )

    def __init__(self, slot: ListenerSlot, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._info: ConnectionInfo | None = None
        self.h2: h2session.Session | None = None  # made in connection_made, from the listener's options
        self.streams: dict[int, H2Stream] = {}
        self.blocked: set[H2Stream] = set()  # streams with response data waiting for a window
        self.dirty: set[H2Stream] = set()  # streams with something to send at the next flush
        self._stop_after: list[H2Stream] = []  # answered, their request still coming: reset after flush
        self.peer = ""
        # Set by an intercepting listener: where the client was connecting (see transport/listen.py).
        self.original_dst: tuple[str, int] | None = None
        self.closing = False
        self.write_paused = False
        self.idle_since = 0.0
        self._goaway_sent = 0  # last stream id of a graceful GOAWAY sent (0: none)
        self._opened = 0
        self.born = 0.0
        self._life: asyncio.TimerHandle | None = None  # max_connection_duration
        self._abuse = H2Abuse()
        self._timer: asyncio.Handle | None = None
        self._stall_timer: asyncio.Handle | None = None  # streams whose answer waits for a window
        self._block_timer: asyncio.Handle | None = None  # a header block left incomplete
        self._flush_due = False

    # -- connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer, self.stats = accepted(self, self.slot, transport)
        if self.transport.is_closing():
            return  # over a limit (transport/admission.py)
        self.stats.cx_http2_total += 1
        self.idle_since = self.born = self.loop.time()
        limits = self.slot.current.http_limits
        if limits is not None and limits.max_connection_duration is not None:
            self._life = self.loop.call_later(limits.max_connection_duration, self._lived)
        cfg = self.slot.current
        opts = cfg.options.http2
        # The codec's own header list limit is twice ours, so that a list a little over the limit
        # gets a 431 on its stream rather than the connection closed.
        self.h2 = h2session.server(opts, local_settings(opts, cfg.max_header_bytes),
                                   2 * cfg.max_header_bytes + 32 * cfg.max_headers)
        self.flush()
        self._schedule_timer()

    def connection_info(self) -> ConnectionInfo:
        info = self._info
        if info is None:
            info = self._info = connection_info(self.transport, self.slot, self.original_dst)
        return info

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        released(self, self.slot, self.stats, self.peer)
        if self._life is not None:
            self._life.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        self.dirty.clear()
        for s in streams:
            if s.ex is not None:
                s.ex.downstream_lost()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.h2 is None:
            return
        try:
            events = self.h2.receive(data)
        except SessionError as err:
            # The codec has queued a GOAWAY with the error's code; send it and close.
            if err.code == ErrorCode.ENHANCE_YOUR_CALM:
                log.warning("http2: %s from %s: closing", err, self.peer)
                self.slot.current.stats.h2_abuse += 1
            else:
                log.debug("http2 connection error from %s: %s", self.peer, err)
            self.flush()
            self.close()
            return
        # A header block still waiting for its END_HEADERS: bound it as it grows, and in time.
        if self.h2.header_block_state():
            self._header_block_pending()
            if self.closing:
                return
        elif self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        streams = self.streams
        for kind, sid, a, b in events:
            if kind == DATA:
                s = streams.get(sid)
                if s is None:
                    # A stream already answered and forgotten: give the connection window back all the same.
                    if b:
                        self.h2.acknowledge(sid, b)
                else:
                    s.received(a, b)
            elif kind == REQUEST:
                self._request(sid, a, b)
            elif kind == END:
                s = streams.get(sid)
                if s is not None:
                    s.req_ended = True
                    if s.ex is not None:
                        s.ex.request_end()
            elif kind == RESET:
                self._reset_by_peer(sid)
            elif kind == WINDOW:
                self._window(sid)
            elif kind == SETTINGS:
                self._control_frame()
                self._window(0)  # a larger INITIAL_WINDOW_SIZE opens every stream's window
            elif kind == PING:
                self._control_frame()
            elif kind == TRAILERS:
                self._trailers(sid, a)
            elif kind == GOAWAY:
                self._goaway_received()
            elif kind == STREAM_ERROR:
                self._codec_reset(sid, b)
            if self.closing:
                return
        self.flush()

    def pause_writing(self) -> None:
        self.write_paused = True
        for s in self.streams.values():
            s.set_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        for s in list(self.streams.values()):
            if not s.blocked:
                s.set_write_paused(False)

    def eof_received(self) -> bool | None:
        return None

    def flush_soon(self) -> None:
        """Frames made outside this connection's own read (answers coming from upstream connections)
        go out once per loop iteration, in one write for every stream that has something, instead of
        one write per upstream read: with many streams at once that is most of the syscalls saved."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        h2c = self.h2
        if h2c is None:
            return
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            for s in dirty:
                self.pump(s)
        self._write(h2c.chunks_to_send())
        if self._stop_after:
            # Streams answered whole while their request goes on, told to stop only now: a codec that
            # queues RST_STREAM ahead of the answer's frames (nghttp2) would otherwise drop the answer.
            stop, self._stop_after = self._stop_after, []
            for s in stop:
                self.reset(s, ErrorCode.NO_ERROR)
            self._write(h2c.chunks_to_send())
        if h2c.finished():  # the codec sent the GOAWAY that ends the connection
            self.close()

    def _write(self, chunks: list[bytes | memoryview]) -> None:
        if chunks and self.transport is not None and not self.transport.is_closing():
            # (writelines: large DATA bodies go to the socket as they came, with no join)
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- streams ---------------------------------------------------------------------------------
    def _request(self, sid: int, headers: Fields, ended: bool) -> None:
        h2c = self.h2
        assert h2c is not None
        if self._goaway_sent and sid > self._goaway_sent:
            h2c.reset_stream(sid, ErrorCode.REFUSED_STREAM)  # opened after our GOAWAY
            return
        self._opened += 1
        self.idle_since = 0.0
        s = H2Stream(self, sid)
        self.streams[sid] = s
        cfg = self.slot.current
        ex = cfg.http2_exchange(s, cfg)
        s.ex = ex
        if self.slot.draining and not self._goaway_sent:
            self.start_drain()  # a connection opened while draining: this request, then go elsewhere
        elif cfg.conn_limited and not self._goaway_sent and not keep_alive_allowed(
                cfg, self.stats, self._opened, self.born, self.loop.time()):
            self.start_drain()  # this stream is the last one taken
        try:
            head = (read_checked_request if h2c.checks_messages else read_request)(headers, ended)
        except Malformed as err:
            log.debug("malformed request from %s: %s", self.peer, err)
            self._malformed_request()
            self.reset(s, ErrorCode.PROTOCOL_ERROR)
            return
        # A request without a body ends in its HEADERS frame; the codec reports that as an END event
        # right after this one, which ends the request (see data_received).
        ex.begin(head, ended)

    def _malformed_request(self) -> None:
        stats = self.slot.current.stats
        stats.request_started()
        stats.request_done(400, 0.0)

    def _trailers(self, sid: int, headers: Fields) -> None:
        s = self.streams.get(sid)
        if s is None:
            return
        try:
            trailers = read_trailers(headers)  # checked even where an HTTP/1.1 upstream drops them
        except Malformed as err:
            log.debug("malformed trailers from %s: %s", self.peer, err)
            self._malformed(sid)
            return
        if s.ex is not None:
            s.ex.request_trailers(trailers)

    def _reset_by_peer(self, sid: int) -> None:
        s = self.streams.pop(sid, None)
        if s is None:
            return
        self.blocked.discard(s)
        s.resp_ended = True
        ex = s.ex
        if ex is not None and not ex.done:
            if self._abuse.reset_by_client(self.loop.time() - s.opened, self._opened):
                self._abusive(f"rapid reset ({self._opened} streams opened)")
            ex.downstream_lost()
        self._maybe_idle()

    def _codec_reset(self, sid: int, undelivered: bool) -> None:
        """The codec found a stream malformed and reset it: a request it never delivered (counted as
        the 400 it is), or one under way (ended as `_malformed`)."""
        s = self.streams.get(sid)
        if s is None:
            if undelivered:
                log.debug("malformed request from %s (stream %d)", self.peer, sid)
                self._malformed_request()
            return
        self._malformed(sid, sent=True)

    def _malformed(self, sid: int, sent: bool = False) -> None:
        """A stream whose body or trailers are malformed (RFC 9113 8.1.1): reset, its exchange ended.
        `sent`: the codec has reset it already."""
        s = self.streams.get(sid)
        if s is None:
            return
        if sent:
            self.forget(s)
        else:
            self.reset(s, ErrorCode.PROTOCOL_ERROR)
        ex = s.ex
        if ex is not None and not ex.done:
            ex.flag = "DPE"
            ex.downstream_lost()

    def reset(self, s: H2Stream, code: int) -> None:
        if not self.closing and self.h2 is not None:
            # The stream closed both ways already, or the whole connection did (a GOAWAY with an error
            # read with the frames this reset answers): nothing to send.
            with contextlib.suppress(StreamGone):
                self.h2.reset_stream(s.sid, code)
        self.forget(s)

    def forget(self, s: H2Stream) -> None:
        self.streams.pop(s.sid, None)
        self.blocked.discard(s)
        s.resp_ended = True
        self._maybe_idle()

    def stream_finished(self, s: H2Stream) -> None:
        """The response is complete. A request still sending its body is told to stop (RFC 9113 8.1)."""
        if not s.req_ended:
            self._stop_after.append(s)  # RST_STREAM NO_ERROR once the answer is out (see flush)
            self.flush_soon()
            return
        self.streams.pop(s.sid, None)
        self._maybe_idle()

    def pump_soon(self, s: H2Stream) -> None:
        """`s` has data or its end to send: done at the next flush, so that the pieces of an answer
        that arrive in one loop iteration go out as few frames (the end folded into the last DATA)."""
        self.dirty.add(s)
        self.flush_soon()

    def pump(self, s: H2Stream) -> None:
        """Send what the client's window allows of `s`'s waiting data, then its end if it is due."""
        if self.closing or s.resp_ended:
            return
        h2c = self.h2
        assert h2c is not None
        pending = s.pending
        sid = s.sid
        if s.held is not None and self._send_head(h2c, s):
            return
        # A codec that packs DATA frames itself (nghttp2) takes the pieces as they are, as far as the
        # window goes; for one that makes a frame per call (h2), small pieces are joined first.
        packs = h2c.packs_frames
        window = 0
        try:
            while pending:
                if window <= 0 or not packs:
                    window = h2c.send_window(sid)
                    if window <= 0:
                        break
                data = pending.popleft()
                if not packs:
                    while pending and len(data) + len(pending[0]) <= window:
                        data += pending.popleft()  # small pieces of one read: one frame
                if len(data) > window:
                    pending.appendleft(data[window:])
                    data = data[:window]
                window -= len(data)
                last = not pending and s.end_wanted and not s.trailers
                h2c.send_data(sid, data, last)
                if last:
                    s.resp_ended = True
                    self.stream_finished(s)
                    return
            if pending:
                if not s.blocked:
                    s.blocked = True
                    s.blocked_since = self.loop.time()
                    self.blocked.add(s)
                    s.set_write_paused(True)
                    self._watch_stalls()
                return
            if s.blocked:
                s.blocked = False
                self.blocked.discard(s)
                if not self.write_paused:
                    s.set_write_paused(False)
            if s.end_wanted:
                if s.trailers:
                    h2c.send_headers(sid, s.trailers, True)
                else:
                    h2c.end_stream(sid)
                s.resp_ended = True
                self.stream_finished(s)
        except StreamGone:  # the stream (or the connection) closed meanwhile
            self.reset(s, ErrorCode.STREAM_CLOSED)

    def _send_head(self, h2c: Session, s: H2Stream) -> bool:
        """The response head held until now (H2Stream.held); True when that was the whole answer. An
        answer whose end has come and whose body is small goes in one call (Session.send_message):
        a gRPC unary answer, with nghttp2, then needs no Python on its way out."""
        head, s.held = s.held, None
        assert head is not None
        pending = s.pending
        try:
            if s.end_wanted and pending and not s.blocked:
                body = pending[0] if len(pending) == 1 else b"".join(pending)
                if len(body) <= WHOLE_MAX and len(body) <= h2c.send_window(s.sid):
                    pending.clear()
                    h2c.send_message(s.sid, head, body, s.trailers or None)  # (a filter may empty them)
                    s.resp_ended = True
                    self.stream_finished(s)
                    return True
            h2c.send_headers(s.sid, head, False)
        except StreamGone:
            self.reset(s, ErrorCode.STREAM_CLOSED)
            return True
        return False

    def _window(self, sid: int) -> None:
        if sid:
            s = self.streams.get(sid)
            if s is not None and s.blocked:
                self.pump(s)
            return
        for s in list(self.blocked):
            self.pump(s)
