"""The downstream side of HTTP/2 (cleartext, prior knowledge): one asyncio.Protocol per connection,
h2 for the framing, one H2Stream and one H2Exchange per request stream.

Everything a read produces goes out in one write at its end (`flush`). The defences are here too,
beside what h2 checks itself (frame syntax, stream states, HPACK, the stream limit): a malformed
request (RFC 9113 8.1.1) resets its stream with PROTOCOL_ERROR; a connection error gets GOAWAY with
h2's code and the connection is closed; a header list over the listener's limits gets 431 on its
stream (more than twice over, h2's HPACK decoder refuses it and the connection goes); rapid resets,
control-frame floods and header blocks that grow without end get GOAWAY ENHANCE_YOUR_CALM
(meshpy.transport.h2_abuse), and a block still incomplete after the request headers timeout closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from meshpy.codec.http2 import (
    BodyLengthMismatch,
    Connection,
    Malformed,
    config,
    goaway_frame,
    local_settings,
    read_request,
    read_trailers,
)
from meshpy.transport.accept import accepted, connection_info, released
from meshpy.transport.admission import keep_alive_allowed
from meshpy.transport.h2_abuse import H2Abuse
from meshpy.transport.h2_stream import H2Stream

if TYPE_CHECKING:
    from meshpy.ports import ConnectionInfo
    from meshpy.routing.compile import ListenerSlot

log = logging.getLogger(__name__)


class Http2Downstream(asyncio.Protocol):
    __slots__ = (
        "_abuse",
        "_block_timer",
        "_flush_due",
        "_goaway_sent",
        "_info",
        "_life",
        "_opened",
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
        self.h2 = Connection(config(client_side=False))
        self.streams: dict[int, H2Stream] = {}
        self.blocked: set[H2Stream] = set()  # streams with response data waiting for a window
        self.dirty: set[H2Stream] = set()  # streams with something to send at the next flush
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
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(
            client=False, initial_values=local_settings(opts, cfg.max_header_bytes))
        h2c.initiate_connection()
        extra = opts.initial_connection_window_size - 65535
        if extra > 0:
            h2c.increment_flow_control_window(extra)
        # h2 would apply our header list limit to its HPACK decoder; allow twice as much there so that
        # a list a little over the limit gets a 431 on its stream rather than the connection closed.
        h2c.decoder.max_header_list_size = 2 * cfg.max_header_bytes + 32 * cfg.max_headers
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
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        self.dirty.clear()
        for s in streams:
            if s.ex is not None:
                s.ex.downstream_lost()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            # h2 has queued a GOAWAY with the error's code; send it and close.
            log.debug("http2 connection error from %s: %s", self.peer, err)
            self.flush()
            self.close()
            return
        # A header block still waiting for its END_HEADERS is held whole by h2 (up to 64
        # CONTINUATION frames of 16 KiB): bound it as it grows, and in time.
        if self.h2.incoming_buffer._headers_buffer:
            self._header_block_pending()
            if self.closing:
                return
        elif self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        for ev in events:
            kind = type(ev)
            if kind is h2.events.DataReceived:
                self._data(cast(h2.events.DataReceived, ev))
            elif kind is h2.events.RequestReceived:
                self._request(cast(h2.events.RequestReceived, ev))
            elif kind is h2.events.StreamEnded:
                s = self.streams.get(cast(h2.events.StreamEnded, ev).stream_id or 0)
                if s is not None:
                    s.req_ended = True
                    if s.ex is not None:
                        s.ex.request_end()
            elif kind is h2.events.StreamReset:
                self._reset_by_peer(cast(h2.events.StreamReset, ev))
            elif kind is h2.events.WindowUpdated:
                self._window(cast(h2.events.WindowUpdated, ev).stream_id or 0)
            elif kind is h2.events.RemoteSettingsChanged:
                self._control_frame()
                self._window(0)  # a larger INITIAL_WINDOW_SIZE opens every stream's window
            elif kind is h2.events.PingReceived:
                self._control_frame()
            elif kind is h2.events.TrailersReceived:
                self._trailers(cast(h2.events.TrailersReceived, ev))
            elif kind is h2.events.ConnectionTerminated:
                self._goaway_received()
            elif kind is BodyLengthMismatch:
                self._malformed(cast(BodyLengthMismatch, ev).stream_id)
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
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            for s in dirty:
                self.pump(s)
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- streams ---------------------------------------------------------------------------------
    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id or 0
        if self._goaway_sent and sid > self._goaway_sent:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # opened after our GOAWAY
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
            head = read_request(ev.headers or [], ev.stream_ended is not None)
        except Malformed as err:
            log.debug("malformed request from %s: %s", self.peer, err)
            cfg.stats.request_started()
            cfg.stats.request_done(400, 0.0)
            self.reset(s, ErrorCodes.PROTOCOL_ERROR)
            return
        # A request without a body ends in its HEADERS frame; h2 reports that as a StreamEnded event
        # right after this one, which ends the request (see data_received).
        ex.begin(head, ev.stream_ended is not None)

    def _data(self, ev: h2.events.DataReceived) -> None:
        sid = ev.stream_id or 0
        s = self.streams.get(sid)
        n = ev.flow_controlled_length or 0
        if s is None:
            # A stream already answered and forgotten: give the connection window back all the same.
            if n:
                self.h2.acknowledge_received_data(n, sid)
            return
        s.received(ev.data or b"", n)

    def _trailers(self, ev: h2.events.TrailersReceived) -> None:
        sid = ev.stream_id or 0
        s = self.streams.get(sid)
        if s is None:
            return
        try:
            trailers = read_trailers(ev.headers or [])  # checked even where an HTTP/1.1 upstream drops them
        except Malformed as err:
            log.debug("malformed trailers from %s: %s", self.peer, err)
            self._malformed(sid)
            return
        if s.ex is not None:
            s.ex.request_trailers(trailers)

    def _reset_by_peer(self, ev: h2.events.StreamReset) -> None:
        s = self.streams.pop(ev.stream_id or 0, None)
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

    def _malformed(self, sid: int) -> None:
        """A stream whose body or trailers are malformed (RFC 9113 8.1.1): reset, its exchange ended."""
        s = self.streams.get(sid)
        if s is None:
            return
        self.reset(s, ErrorCodes.PROTOCOL_ERROR)
        ex = s.ex
        if ex is not None and not ex.done:
            ex.flag = "DPE"
            ex.downstream_lost()

    def reset(self, s: H2Stream, code: ErrorCodes) -> None:
        self.streams.pop(s.sid, None)
        self.blocked.discard(s)
        s.resp_ended = True
        if not self.closing:
            # The stream closed both ways already, or the whole connection did (a GOAWAY with an error
            # read with the frames this reset answers): nothing to send.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(s.sid, code)
        self._maybe_idle()

    def stream_finished(self, s: H2Stream) -> None:
        """The response is complete. A request still sending its body is told to stop (RFC 9113 8.1)."""
        if not s.req_ended:
            self.reset(s, ErrorCodes.NO_ERROR)
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
        pending = s.pending
        sid = s.sid
        try:
            while pending:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    break
                data = pending.popleft()
                while pending and len(data) + len(pending[0]) <= window:
                    data += pending.popleft()  # small pieces of one read: one frame
                if len(data) > window:
                    pending.appendleft(data[window:])
                    data = data[:window]
                last = not pending and s.end_wanted and not s.trailers
                h2c.send_data(sid, data, end_stream=last)
                if last:
                    s.resp_ended = True
                    self.stream_finished(s)
                    return
            if pending:
                if not s.blocked:
                    s.blocked = True
                    self.blocked.add(s)
                    s.set_write_paused(True)
                return
            if s.blocked:
                s.blocked = False
                self.blocked.discard(s)
                if not self.write_paused:
                    s.set_write_paused(False)
            if s.end_wanted:
                if s.trailers:
                    h2c.send_headers(sid, s.trailers, end_stream=True)
                else:
                    h2c.end_stream(sid)
                s.resp_ended = True
                self.stream_finished(s)
        except h2.exceptions.ProtocolError:  # the stream (or the connection) closed meanwhile
            self.reset(s, ErrorCodes.STREAM_CLOSED)

    def _window(self, sid: int) -> None:
        if sid:
            s = self.streams.get(sid)
            if s is not None and s.blocked:
                self.pump(s)
            return
        for s in list(self.blocked):
            self.pump(s)

    # -- defences, drain, timers -----------------------------------------------------------------
    def _control_frame(self) -> None:
        if self._abuse.control_frame(self.loop.time()):
            self._abusive("PING/SETTINGS flood")

    def _header_block_pending(self) -> None:
        """A header block waits for its END_HEADERS: the connection ends once the block is larger than
        the decoder would take, or when it is still incomplete after the request headers timeout."""
        if self._abuse.header_block_too_large(self.h2):
            self._abusive("header block over the limit")
            return
        timeout = self.slot.current.headers_timeout
        if self._block_timer is None and timeout is not None:
            self._block_timer = self.loop.call_later(timeout, self._block_timed_out)

    def _block_timed_out(self) -> None:
        self._block_timer = None
        if not self.closing and self.h2.incoming_buffer._headers_buffer:
            log.debug("http2: header block from %s incomplete after the headers timeout", self.peer)
            self.go_away(ErrorCodes.PROTOCOL_ERROR)

    def _abusive(self, what: str) -> None:
        log.warning("http2: %s from %s: closing", what, self.peer)
        self.slot.current.stats.h2_abuse += 1
        self.go_away(ErrorCodes.ENHANCE_YOUR_CALM)

    def go_away(self, code: ErrorCodes) -> None:
        """A connection error of our own: GOAWAY with `code`, then close; streams in flight end."""
        if self.closing:
            return
        self.h2.close_connection(error_code=code)
        self.flush()
        self.close()

    def _goaway_received(self) -> None:
        """The client will open no more streams: close once the ones it has are answered."""
        self._goaway_sent = self._goaway_sent or self.h2.highest_inbound_stream_id or 1
        self._maybe_idle()

    def idle(self) -> bool:
        return not self.streams

    def _lived(self) -> None:
        """max_connection_duration: GOAWAY; streams open finish, then the connection closes."""
        self._life = None
        if not self._goaway_sent and not self.closing:
            self.stats.cx_max_duration += 1
            self.start_drain()

    def begin_drain(self) -> None:
        """HTTP/2 says it at once: GOAWAY, while the listener still accepts (see App._begin_drain)."""
        self.start_drain()

    def start_drain(self) -> None:
        """Listener draining or shutdown: GOAWAY naming the last stream we take; streams already open
        finish; the connection closes when the last one has."""
        if self._goaway_sent or self.closing or self.transport is None:
            self._maybe_idle()
            return
        self._goaway_sent = self.h2.highest_inbound_stream_id or 1
        self.flush()  # frames h2 holds go first
        self.transport.write(goaway_frame(self.h2.highest_inbound_stream_id or 0))
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.streams:
            return
        if self._goaway_sent:
            self.flush()
            self.close()
            return
        self.idle_since = self.loop.time()

    def _schedule_timer(self) -> None:
        interval = self.slot.current.idle_timeout
        if interval is not None:
            self._timer = self.loop.call_later(interval, self._on_timer)

    def _on_timer(self) -> None:
        """A connection with no stream open for the idle timeout gets a GOAWAY and is closed."""
        self._timer = None
        if self.closing:
            return
        timeout = self.slot.current.idle_timeout
        if not self.streams and timeout is not None and self.idle_since and \
                self.loop.time() - self.idle_since >= timeout:
            self.start_drain()
            return
        self._schedule_timer()

