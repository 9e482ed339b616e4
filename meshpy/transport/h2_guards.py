"""The defences, the drain and the timers of a downstream HTTP/2 connection
(meshpy.transport.downstream_http2): a mixin of Http2Downstream, kept apart for size. See that module's
docstring for what each defence answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from meshpy.codec.h2session import ErrorCode

if TYPE_CHECKING:
    from meshpy.codec import h2session
    from meshpy.routing.compile import ListenerSlot
    from meshpy.telemetry.metrics import ListenerStats
    from meshpy.transport.h2_abuse import H2Abuse
    from meshpy.transport.h2_stream import H2Stream

log = logging.getLogger("meshpy.transport.downstream_http2")


class H2ConnectionGuards:
    if not TYPE_CHECKING:  # no slots of its own: Http2Downstream has them all
        __slots__ = ()
    if TYPE_CHECKING:
        slot: ListenerSlot
        loop: asyncio.AbstractEventLoop
        h2: h2session.Session | None
        transport: asyncio.Transport | None
        streams: dict[int, H2Stream]
        blocked: set[H2Stream]
        closing: bool
        peer: str
        stats: ListenerStats
        idle_since: float
        _abuse: H2Abuse
        _goaway_sent: int
        _life: asyncio.TimerHandle | None
        _timer: asyncio.Handle | None
        _block_timer: asyncio.Handle | None
        _stall_timer: asyncio.Handle | None

        def flush(self) -> None: ...
        def close(self) -> None: ...
        def reset(self, s: H2Stream, code: int) -> None: ...

    # -- defences, drain, timers -----------------------------------------------------------------
    def _watch_stalls(self, delay: float | None = None) -> None:
        """A zero-window stall: a stream whose answer has waited for the client's window for the
        stream idle timeout is reset, as the idle timeout would end any other stream that does
        not move (its exchange may long be over: the answer was all in, only the window lacked)."""
        timeout = self.slot.current.stream_idle_timeout
        if self._stall_timer is None and timeout is not None:
            self._stall_timer = self.loop.call_later(timeout if delay is None else delay, self._stalls)

    def _stalls(self) -> None:
        self._stall_timer = None
        timeout = self.slot.current.stream_idle_timeout
        if self.closing or timeout is None:
            return
        now = self.loop.time()
        for s in [s for s in self.blocked if now - s.blocked_since >= timeout]:
            log.debug("http2: stream %d of %s waited %.1fs for a window: reset", s.sid, self.peer, timeout)
            self.reset(s, ErrorCode.INTERNAL_ERROR)
            ex = s.ex
            if ex is not None and not ex.done:
                ex.downstream_lost()
        if self.blocked:
            first = min(s.blocked_since for s in self.blocked)
            self._watch_stalls(max(first + timeout - now, 0.01))
        self.flush()


    def _control_frame(self) -> None:
        if self._abuse.control_frame(self.loop.time()):
            self._abusive("PING/SETTINGS flood")

    def _header_block_pending(self) -> None:
        """A header block waits for its END_HEADERS: the connection ends once the block is larger than
        the decoder would take, or when it is still incomplete after the request headers timeout."""
        if self.h2 is not None and self.h2.header_block_state() == 2:
            self._abusive("header block over the limit")
            return
        timeout = self.slot.current.headers_timeout
        if self._block_timer is None and timeout is not None:
            self._block_timer = self.loop.call_later(timeout, self._block_timed_out)

    def _block_timed_out(self) -> None:
        self._block_timer = None
        if not self.closing and self.h2 is not None and self.h2.header_block_state():
            log.debug("http2: header block from %s incomplete after the headers timeout", self.peer)
            self.go_away(ErrorCode.PROTOCOL_ERROR)

    def _abusive(self, what: str) -> None:
        log.warning("http2: %s from %s: closing", what, self.peer)
        self.slot.current.stats.h2_abuse += 1
        self.go_away(ErrorCode.ENHANCE_YOUR_CALM)

    def go_away(self, code: int) -> None:
        """A connection error of our own: GOAWAY with `code`, then close; streams in flight end."""
        if self.closing or self.h2 is None:
            return
        self.h2.terminate(code)
        self.flush()
        self.close()

    def _goaway_received(self) -> None:
        """The client will open no more streams: close once the ones it has are answered."""
        self._goaway_sent = self._goaway_sent or (self.h2.highest_inbound() if self.h2 else 0) or 1
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
        if self._goaway_sent or self.closing or self.transport is None or self.h2 is None:
            self._maybe_idle()
            return
        last = self.h2.highest_inbound()
        self._goaway_sent = last or 1
        self.h2.graceful_goaway(last)
        self.flush()
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

