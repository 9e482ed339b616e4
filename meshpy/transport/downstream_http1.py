"""The downstream side of HTTP/1.1: one asyncio.Protocol per client connection, httptools parsing.

Requests are handled one at a time per connection. A pipelined request parsed while another is active
is queued and reading pauses until its turn, so answers go out in order and at most one read's worth of
bytes is held. Per-request state lives in its exchange (meshpy.stack.exchange, seen through
meshpy.ports); this class owns the connection: parsing, limits, the slowloris and keep-alive timers,
read pausing, writes and draining.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from meshpy.codec.http1 import HOST_CHARS, authority_with_port
from meshpy.codec.request_facts import SCANNED
from meshpy.errors import BadRequest
from meshpy.transport.accept import accepted, connection_info, released
from meshpy.transport.admission import keep_alive_allowed
from meshpy.transport.h1_body_relay import relay_parser
from meshpy.transport.h1_response import Http1Responses
from meshpy.transport.writes import send

if TYPE_CHECKING:
    from meshpy.ports import ConnectionInfo, DownstreamExchange, Http1Exchange
    from meshpy.routing.compile import ListenerSlot

# Reasons reading may be paused; reading resumes only when none is left.
PAUSE_PIPELINE = 1
PAUSE_UPSTREAM = 2
PAUSE_BODY_BUFFER = 4


class Http1Downstream(Http1Responses, asyncio.Protocol):
    __slots__ = (
        "_hdr_append",
        "_hdr_bytes",
        "_head_fresh",
        "_head_raw",
        "_info",
        "_life",
        "_parsing",
        "_paused",
        "_pending",
        "_raw_body",
        "_timer",
        "_valid_host",
        "active",
        "born",
        "closing",
        "fatal",
        "half_closed",
        "head_started",
        "idle_since",
        "loop",
        "original_dst",
        "out",
        "parser",
        "peer",
        "served",
        "slot",
        "stats",
        "transport",
        "write_paused",
    )

    def __init__(self, slot: ListenerSlot, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._info: ConnectionInfo | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        # Set by an intercepting listener: where the client was connecting (see transport/listen.py).
        self.original_dst: tuple[str, int] | None = None
        self.active: Http1Exchange | None = None
        self._parsing: Http1Exchange | None = None
        self._pending: deque[Http1Exchange] = deque()
        # An `Upgrade: h2c` request served as plain HTTP/1.1 whose body llhttp skipped (it hands on
        # everything after an upgrade head): read by a relay parser (meshpy.transport.h1_body_relay).
        self._raw_body: Http1Exchange | None = None
        self._valid_host = b""  # the last Host header found valid on this connection
        self._paused = 0
        self.write_paused = False
        self.closing = False
        self.half_closed = False
        self.fatal: BadRequest | None = None
        self.out: list[bytes] = []
        self._hdr_bytes = 0
        empty: list[tuple[bytes, bytes]] = []
        self._hdr_append: Callable[[tuple[bytes, bytes]], None] = empty.append  # set per request head
        self._head_raw = 0
        self._head_fresh = False
        self.head_started = 0.0
        self.idle_since = 0.0
        self._timer: asyncio.Handle | None = None
        self.served = 0  # requests taken, and since when: counted only with limits (cfg.conn_limited)
        self.born = 0.0
        self._life: asyncio.TimerHandle | None = None  # max_connection_duration

    # -- connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer, self.stats = accepted(self, self.slot, transport)
        if self.transport.is_closing():
            return  # over a limit (transport/admission.py)
        self.idle_since = self.born = self.loop.time()
        self._schedule_timer()
        limits = self.slot.current.http_limits
        if limits is not None and limits.max_connection_duration is not None:
            self._life = self.loop.call_later(limits.max_connection_duration, self._lived)

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
        active = self.active
        self.active = None
        if active is not None:
            active.downstream_lost()
        for ex in self._pending:
            ex.downstream_lost()
        self._pending.clear()
        if self._parsing is not None and self._parsing is not active and not self.head_started:
            # (a head cut short never started a request: nothing to end, nothing to count)
            self._parsing.downstream_lost()
        self._parsing = None

    def data_received(self, data: bytes) -> None:
        if self.closing or self.fatal is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            last = self._pending[-1] if self._pending else self.active
            if last is not None and last.upgrade is not None:
                # A handshake the listener allows: what follows is the new protocol, for the tunnel
                # the exchange makes on a 101. Nothing more is read until then.
                last.early += data[offset:]
                self.pause_reading(PAUSE_PIPELINE)
            else:
                # An `Upgrade: h2c` served as a plain request (other types were refused with 403 by
                # the exchange, before this): its body, if any, then a fresh parse of what follows.
                ex = self._raw_body
                if ex is None:
                    self.parser = httptools.HttpRequestParser(self)
                else:
                    self._parsing = ex  # (the body is still to come: a bad chunk breaks this request)
                    self.parser = relay_parser(self, ex)
                if offset < len(data):
                    self.data_received(data[offset:])
                    return  # that call counted and flushed
        except httptools.HttpParserCallbackError as err:
            ctx = err.__context__
            self._protocol_error(ctx if isinstance(ctx, BadRequest) else BadRequest("bad request"))
        except httptools.HttpParserError as err:
            self._protocol_error(BadRequest(_parser_reason(err)))
        if self.head_started and self.fatal is None and not self.closing:
            self._count_head_bytes(len(data))
        self.flush()

    def _count_head_bytes(self, n: int) -> None:
        """httptools holds a header line until it ends and on_header only sees complete lines, so a head
        that never ends would be buffered without bound: count the raw bytes of an unfinished head too.
        The read in which the head began is not counted (part of it may be the previous request), so at
        most one read more than the limit is ever held."""
        if self._head_fresh:
            self._head_fresh = False
            return
        self._head_raw += n
        ex = self._parsing
        if ex is not None and self._head_raw > ex.cfg.max_header_bytes:
            self._protocol_error(BadRequest("request header fields too large", 431))

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None:
            self.active.down_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.active.down_resume_writing()

    def eof_received(self) -> bool | None:
        # A client half-close after its request: keep the socket open to send the answer.
        if self.active is None and not self._pending:
            return None
        if self._parsing is not None:
            # EOF in the middle of a request (its body): it can never complete, so this is no
            # half-close but an abort; closing resets the exchanges (connection_lost).
            return None
        self.half_closed = True  # answer what was asked, then close
        return True

    # -- read pausing, writing -------------------------------------------------------------------
    def pause_reading(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None:
            send(self.transport, out)
            self.out = []

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.flush()
            self.transport.close()

    # -- exchange bookkeeping --------------------------------------------------------------------
    def exchange_done(self, ex: DownstreamExchange, keep_alive: bool) -> None:
        """Called by the active exchange once its response is fully written."""
        if ex is not self.active:
            return
        self.active = None
        if not keep_alive or self.closing:
            self.close()
            return
        if self._pending:
            nxt = self._pending.popleft()
            self.active = nxt
            if not self._pending:
                self.resume_reading(PAUSE_PIPELINE)
            nxt.start()
            return
        if self.fatal is not None:
            self._send_fatal()
            return
        if self.half_closed:
            self.close()
            return
        self.idle_since = self.loop.time()
        self.flush()

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.head_started = self.loop.time()
        self._hdr_bytes = 0
        self._head_raw = 0
        self._head_fresh = True
        cfg = self.slot.current
        self._parsing = ex = cfg.http1_exchange(self, cfg)
        self._hdr_append = ex.headers.append

    def on_url(self, url: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.target += url
        self._hdr_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept to the bare minimum: llhttp has already refused CR, LF and NUL in values and bad names,
        # and the count and size limits are checked once the head is complete (a head that never
        # completes is bounded by _count_head_bytes).
        self._hdr_bytes += len(name) + len(value)
        name = name.lower()
        if name in SCANNED:
            ex = self._parsing
            assert ex is not None
            ex.facts.note(name, value, len(ex.headers))
        self._hdr_append((name, value))

    def on_headers_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        cfg = ex.cfg
        if len(ex.headers) > cfg.max_headers or self._hdr_bytes > cfg.max_header_bytes:
            raise BadRequest("request header fields too large", 431)
        self.head_started = 0.0
        host = ex.facts.authority
        if host is not None and host != self._valid_host:
            # RFC 9112 3.2: a Host that is not host[:port] gets 400. A keep-alive client sends the same
            # one every time: checked once per connection (~0.25 µs with a port, ~0.04 µs after).
            if host.translate(None, HOST_CHARS) and not authority_with_port(host):
                raise BadRequest("invalid host header")
            self._valid_host = host
        p = self.parser
        method = p.get_method()
        keep = p.should_keep_alive()
        if cfg.conn_limited and keep:
            self.served += 1
            keep = keep_alive_allowed(cfg, self.stats, self.served, self.born, self.loop.time())
        if ex.facts.upgrade is None and method != b"CONNECT":
            ex.head_complete(method, p.get_http_version(), keep)
        else:  # where llhttp may take what follows the head as another protocol
            upgrading = p.should_upgrade()
            ex.head_complete(method, p.get_http_version(), keep, upgrading)
            if upgrading and ex.upgrade is None and ex.has_body():
                # h2c with a body, which llhttp skips: read by a relay parser (h1_body_relay), and
                # its request ends there, not at this message's end (hence no _parsing).
                self._raw_body = ex
                self._parsing = None
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self._pending.append(ex)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self._parsing
        self._parsing = None
        if ex is not None:
            ex.request_end()

    def body_relayed(self, ex: Http1Exchange) -> None:
        """The relay parser read the whole body of the h2c request `ex`."""
        self._raw_body = None
        self._parsing = None
        ex.request_end()

    # -- errors and timers -----------------------------------------------------------------------
    def _protocol_error(self, err: BadRequest) -> None:
        """The client broke HTTP: answer the error in order, after any request already accepted."""
        self.fatal = err
        self.pause_reading(PAUSE_PIPELINE)
        parsing = self._parsing
        self._parsing = None
        if parsing is not None and parsing is self.active:
            # The bad bytes were inside an accepted request's body: it cannot complete.
            parsing.request_broken(err)
        elif parsing is not None and parsing in self._pending:
            # A queued request, not started: it goes, and its 400 comes in turn, after the answers
            # before it (_send_fatal, from exchange_done), which counts it as the request that broke.
            self._pending.remove(parsing)
            parsing.cfg.stats.rq_total -= 1
            parsing.cfg.stats.rq_active -= 1
        if self.active is None:
            self._send_fatal()

    def _send_fatal(self) -> None:
        err = self.fatal
        assert err is not None
        stats = self.slot.current.stats
        stats.request_started()  # the request that broke was never counted as started
        stats.request_done(err.status, 0.0)
        if self.transport is not None and not self.transport.is_closing():
            self.respond_error(err.status, err.body + b"\n")
            for logger in self.slot.current.loggers:  # as Envoy logs them (flag DPE)
                logger.log_refused(self, err.status, len(err.body) + 1, self.head_started or self.loop.time())
        self.close()

    def _schedule_timer(self) -> None:
        cfg = self.slot.current
        interval = cfg.timer_interval
        if interval is not None:
            self._timer = self.loop.call_later(interval, self._on_timer)

    def _on_timer(self) -> None:
        """One lazy timer per connection instead of timers per request: a request head slower than
        the headers timeout gets 408 (slowloris); a keep-alive connection idle too long is closed.
        Detection happens within one interval after the limit."""
        self._timer = None
        if self.closing:
            return
        cfg = self.slot.current
        now = self.loop.time()
        if self.head_started and cfg.headers_timeout is not None and \
                now - self.head_started >= cfg.headers_timeout:
            self.fatal = BadRequest("request headers timeout", 408)
            self._parsing = None
            if self.active is None:
                self._send_fatal()
                return
        elif self.active is None and not self.head_started and cfg.idle_timeout is not None and \
                now - self.idle_since >= cfg.idle_timeout:
            self.close()
            return
        self._schedule_timer()

    def begin_drain(self) -> None:
        """Nothing to send now: every answer from here on carries `Connection: close` (slot.draining)."""

    def _lived(self) -> None:
        """max_connection_duration: an idle connection closes now; a busy one is looked at again soon,
        and closes when its answer is out (a request that comes first is answered with
        `Connection: close`: keep_alive_allowed sees the age)."""
        self._life = None
        if self.closing:
            return
        if self.idle():
            self.stats.cx_max_duration += 1
            self.close()
        else:
            self._life = self.loop.call_later(0.2, self._lived)

    def idle(self) -> bool:
        """No request read, waiting or answered (a tunnel keeps `active` set until it ends)."""
        return self.active is None and self._parsing is None and not self._pending and self._raw_body is None

    def start_drain(self) -> None:
        """Listener draining: idle keep-alive connections close now; busy ones after this answer."""
        if self.active is None and self._parsing is None and not self._pending:
            self.close()


def _parser_reason(err: Exception) -> str:
    text = str(err).strip()
    return f"bad request: {text}" if text else "bad request"
