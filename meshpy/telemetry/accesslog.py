"""Access log: one line per request (or TCP session), in meshpy's JSON (below) or in a format of
Envoy's (meshpy.telemetry.accesslog_format), to stdout, stderr or a file.

The request path hands over the finished exchange (`log_http`) or TCP session (`log_tcp`) and the
duration, and the logger reads at once only what its line needs: meshpy's JSON fields, or the values
of an Envoy format's operators (the request headers a %REQ(...)% names, ...), so the exchange goes
at once and a batch holds values, not requests (holding a batch of finished exchanges until the flush
cost ~3 µs a request in large batches, in garbage collection and cache misses). A log with a filter
asks it first, so a request it leaves out costs the filter only. `log(...)` takes the JSON fields
themselves.

Cost model. The request path appends one entry to a list and, for the first entry of a batch,
schedules a flush with `loop.call_soon`. The flush runs on the next loop
iteration, after every callback that was ready in this one, so a burst of completions that arrive in one
`select` wake-up shares a single formatting pass and a single `write` system call. Formatting happens
there, not on the request path; it is still CPU the proxy spends per request, so it avoids
`json.dumps(dict)` (builds a dict and an encoder per call: ~5.4 µs a line here) and fills a fixed
template, escaping each string with the same C function `json.dumps` uses (~2.2 µs a line).

Writes happen on the loop thread. Envoy hands them to a flush thread; here a regular file write lands
in the page cache in microseconds and one write per loop iteration keeps the count low. A write that
fails (a full disk, a closed pipe, a non-blocking stdout with no room) loses its lines and counts them
in `dropped` instead of raising into the data path. A blocking stdout pipe that nobody drains does
stall the loop, as any blocking write would: under heavy traffic, log to a file.

Field names and meanings follow Envoy's default format (and Istio's JSON access log):
start_time (RFC 3339, ms, UTC), method, authority, path, protocol, response_code, response_flags ("-"
when none), bytes_received, bytes_sent, duration_ms (whole milliseconds, truncated, as %DURATION%),
upstream_host, x_request_id, downstream_remote_address. A string field passed empty is written as
`null`, which is what Envoy's JSON formatter writes for an operator with no value; TCP sessions pass
method, authority and path as "" (so null) and protocol "-" or "TCP" as the caller sees fit.

A TLS connection's lines (HTTP and TCP) go on with what its handshake established, named after Envoy's
command operators: downstream_tls_version (%DOWNSTREAM_TLS_VERSION%, "TLSv1.3"),
downstream_tls_cipher (%DOWNSTREAM_TLS_CIPHER%), requested_server_name (%REQUESTED_SERVER_NAME%, the
SNI), downstream_tls_alpn (the protocol ALPN agreed on), and the client certificate's identity:
downstream_peer_uri_san (%DOWNSTREAM_PEER_URI_SAN%: its URI SANs, comma-separated) and
downstream_peer_subject (%DOWNSTREAM_PEER_SUBJECT%, as OpenSSL prints it), null without a certificate.
A plaintext connection's lines stay as they were, without these keys: the request path passes one
None, and neither the formatting nor the bytes written grow.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # C implementation when available, as json.dumps uses
from typing import TYPE_CHECKING, Any, BinaryIO

from meshpy.model.access_log import MESHPY_JSON, LogFilter, LogFormat
from meshpy.telemetry.accesslog_filter import compile_filter
from meshpy.telemetry.accesslog_format import compile_format
from meshpy.telemetry.accesslog_ops import LogContext
from meshpy.telemetry.accesslog_records import RefusedRecord, TcpRecord

if TYPE_CHECKING:
    from meshpy.model.access_log import AccessLog
    from meshpy.ports import TlsInfo

__all__ = ["DEFAULT_MAX_PENDING", "AccessLogger", "LogContext", "format_entry", "open_access_log",
           "rfc3339_ms"]

log = logging.getLogger(__name__)

# Flush right away once this many lines are waiting, so a long loop iteration (thousands of completions
# in one wake-up) cannot grow the batch without bound.
DEFAULT_MAX_PENDING = 1024

_STDOUT_PATHS = (None, "", "-", "stdout", "/dev/stdout")
_STDERR_PATHS = ("stderr", "/dev/stderr")

# One entry as log() receives it: (start_time, method, authority, path, protocol, status, flags,
# bytes_in, bytes_out, duration_s, upstream_host, request_id, downstream_remote, tls).
Entry = tuple[float, str, str, str, str, int, str, int, int, float, str, str, str, "TlsInfo | None"]

_TEMPLATE = (
    '{"start_time":"%s","method":%s,"authority":%s,"path":%s,"protocol":%s,"response_code":%d,'
    '"response_flags":%s,"bytes_received":%d,"bytes_sent":%d,"duration_ms":%d,"upstream_host":%s,'
    '"x_request_id":%s,"downstream_remote_address":%s}\n'
)
_TLS_TEMPLATE = (
    ',"downstream_tls_version":%s,"downstream_tls_cipher":%s,"requested_server_name":%s,'
    '"downstream_tls_alpn":%s,"downstream_peer_uri_san":%s,"downstream_peer_subject":%s}\n'
)


class _SecondCache:
    """`time.strftime` costs ~1.7 µs; requests finishing in the same second share the formatted prefix."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def format(self, t: float) -> str:
        sec = int(t)
        if sec != self.second:
            self.second = sec
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self.prefix}.{int((t - sec) * 1000):03d}Z"


def rfc3339_ms(t: float) -> str:
    """`1700000000.5` -> `2023-11-14T22:13:20.500Z` (Envoy's %START_TIME% default)."""
    return _SecondCache().format(t)


def _js(s: str) -> str:
    return encode_basestring_ascii(s) if s else "null"


def _tls_fields(tls: TlsInfo) -> str:
    return _TLS_TEMPLATE % (
        _js(tls.version),
        _js(tls.cipher),
        _js(tls.sni),
        _js(tls.alpn),
        _js(",".join(tls.peer_uris)),
        _js(tls.peer_subject),
    )


def _json_http(x: Any, seconds: float) -> Entry:
    """meshpy's JSON fields of a finished exchange (meshpy.stack.exchange)."""
    # (plaintext connections are not asked: describing one costs a ConnectionInfo)
    tls = x.down.connection_info().tls if x.cfg.scheme == b"https" else None
    host = x.host
    down = x.down
    # (peer ""): a client on a Unix socket, which Envoy logs as the listener's path
    return (x.wall0, x.method.decode("latin-1"), x.authority, x.path, "HTTP/1.0" if x.http10 else x.PROTOCOL,
            x.resp_status, x.flag, x.bytes_in, x.bytes_out, seconds, host.label if host is not None else "",
            (x.rid or b"").decode("latin-1"), down.peer or down.connection_info().peer, tls)


def _json_tcp(conn: Any, seconds: float) -> Entry:
    """meshpy's JSON fields of a TCP session (meshpy.transport.tcp.TcpDownstream)."""
    # TLS terminated ahead of this proxying (TlsConnection) says what its handshake agreed.
    transport = conn.transport
    tls = transport.get_extra_info("tls") if transport is not None else None
    host = conn.host
    return (conn.wall0, "", "", "", "TCP", 0, conn.flag, conn.bytes_in, conn.bytes_out, seconds,
            host.label if host is not None else "", "", conn.peer or conn.connection_info().peer, tls)


def format_entry(entry: Entry, clock: _SecondCache | None = None) -> str:
    """One entry as one JSON line (with its trailing newline)."""
    (start, method, authority, path, protocol, status, flags, b_in, b_out, dur, upstream, rid, remote,
     tls) = entry
    line = _TEMPLATE % (
        (clock or _SecondCache()).format(start),
        _js(method),
        _js(authority),
        _js(path),
        _js(protocol),
        status,
        encode_basestring_ascii(flags or "-"),
        b_in,
        b_out,
        int(dur * 1000),
        _js(upstream),
        _js(rid),
        _js(remote),
    )
    return line if tls is None else line[:-2] + _tls_fields(tls)


class AccessLogger:
    """Batched access log to stdout (`path` None, "", "-", "stdout"), stderr ("stderr",
    "/dev/stderr") or a file (appended), in meshpy's JSON line or `log_format`, with `log_filter`.

    Opening the file happens in the constructor, so a path that cannot be opened raises `OSError` at
    config time, where the app can reject the config. Share one logger per log config between
    listeners. `needs_view`: the exchanges it logs must be meshpy.stack.exchange_logged's, which keep
    what Envoy's operators and filters read.
    """

    __slots__ = (
        "_clock",
        "_file",
        "_filter_http",
        "_filter_tcp",
        "_handle",
        "_http",
        "_loop",
        "_pending",
        "_stderr",
        "_tcp",
        "dropped",
        "log_http",
        "log_tcp",
        "max_pending",
        "needs_view",
        "path",
        "written",
    )

    def __init__(
        self,
        path: str | None,
        loop: asyncio.AbstractEventLoop,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        log_format: LogFormat = MESHPY_JSON,
        log_filter: LogFilter | None = None,
        context: LogContext | None = None,
    ) -> None:
        self._stderr = path in _STDERR_PATHS
        self.path = None if path in _STDOUT_PATHS or self._stderr else path
        self._loop = loop
        self._pending: list[Any] = []
        self._handle: asyncio.Handle | None = None
        self._clock = _SecondCache()
        # What a finished request leaves in the batch: meshpy's JSON fields (an Entry), or
        # (render, the format's values).
        self._http: Callable[[Any, float], Any]
        self._tcp: Callable[[Any, float], Any]
        if log_format == MESHPY_JSON:
            self._http, self._tcp = _json_http, _json_tcp
        else:
            fmt = compile_format(log_format, context if context is not None else LogContext())
            capture, render = fmt.capture, fmt.render
            self._http = lambda x, s: (render, capture(x, s))
            self._tcp = lambda c, s: (render, capture(TcpRecord(c), s))
        self._filter_http: Callable[[Any, float], bool] | None = None
        self._filter_tcp: Callable[[Any, float], bool] | None = None
        if log_filter is not None:
            test = self._filter_http = compile_filter(log_filter)
            self._filter_tcp = lambda c, s: test(TcpRecord(c), s)
        self.needs_view = log_format != MESHPY_JSON or log_filter is not None
        # What the request path calls (meshpy's JSON line without a filter: no test to run).
        self.log_http: Callable[[Any, float], None] = self._queued(self._http, self._filter_http)
        self.log_tcp: Callable[[Any, float], None] = self._queued(self._tcp, self._filter_tcp)
        self._file: BinaryIO | None = self._open() if self.path is not None else None
        self.max_pending = max_pending
        self.dropped = 0  # lines lost to write errors
        self.written = 0  # lines written

    def _open(self) -> BinaryIO:
        assert self.path is not None
        # Unbuffered: each flush is already one big write; a Python buffer would only split or delay it.
        return open(self.path, "ab", buffering=0)

    def log(
        self,
        start_time: float,
        method: str,
        authority: str,
        path: str,
        protocol: str,
        status: int,
        flags: str,
        bytes_in: int,
        bytes_out: int,
        duration_s: float,
        upstream_host: str,
        request_id: str,
        downstream_remote: str,
        tls: TlsInfo | None = None,
    ) -> None:
        """Queue one line. Hot path: one tuple, one append, and one call_soon per batch. `tls`: the
        connection's TLS facts (None for plaintext)."""
        pending = self._pending
        pending.append(
            (
                start_time, method, authority, path, protocol, status, flags,
                bytes_in, bytes_out, duration_s, upstream_host, request_id, downstream_remote, tls,
            )
        )  # fmt: skip
        if len(pending) == 1:
            self._handle = self._loop.call_soon(self.flush)
        elif len(pending) >= self.max_pending:
            self.flush()

    def _queued(self, build: Callable[[Any, float], Any],
                test: Callable[[Any, float], bool] | None) -> Callable[[Any, float], None]:
        """The request path's log call for one kind of line: `test` (the log's filter, if any), the
        entry `build` makes, an append, and one call_soon per batch. A closure, so that the path pays
        no more than the method call it replaces."""
        lost = self._lost

        def queue(x: Any, seconds: float) -> None:
            try:  # (free unless raised: a bug in a log must not break the request it logs)
                if test is not None and not test(x, seconds):
                    return
                entry = build(x, seconds)
            except Exception:
                return lost()
            pending = self._pending  # (flush swaps the list)
            pending.append(entry)
            if len(pending) == 1:
                self._handle = self._loop.call_soon(self.flush)
            elif len(pending) >= self.max_pending:
                self.flush()

        return queue

    def log_refused(self, conn: Any, status: int, bytes_out: int, started: float) -> None:
        """A request refused while it was read (`started`: loop time its head began), as Envoy logs
        one: flag DPE, no request headers (meshpy.telemetry.accesslog_records.RefusedRecord)."""
        loop_now = self._loop.time()
        record = RefusedRecord(conn, status, bytes_out, time.time() - (loop_now - started))
        self.log_http(record, loop_now - started)

    def flush(self) -> None:
        """Format and write every queued line in one write call. Safe to call at any time."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pending = self._pending
        if not pending:
            return
        self._pending = []
        clock = self._clock
        # A pair is (render, values); an Entry holds meshpy's JSON fields.
        try:
            lines = [e[0](e[1]) if len(e) == 2 else format_entry(e, clock) for e in pending]
        except Exception:
            lines = self._each(pending)  # (a bug in one line must not lose the batch)
        # One char per byte (see accesslog_format), so latin-1 writes each line's bytes unchanged.
        data = "".join(lines).encode("latin-1", "replace")
        try:
            self._write(data)
        except OSError as exc:
            if self.dropped == 0:
                where = self.path or ("stderr" if self._stderr else "stdout")
                log.warning("access log %s: write failed, dropping lines: %s", where, exc)
            self.dropped += len(lines)
        else:
            self.written += len(lines)

    def _each(self, pending: list[Any]) -> list[str]:
        lines = []
        for e in pending:
            try:
                lines.append(e[0](e[1]) if len(e) == 2 else format_entry(e, self._clock))
            except Exception:
                self._lost()
        return lines

    def _lost(self) -> None:
        """A line that could not be made: counted in `dropped`, and the first one's error logged."""
        if self.dropped == 0:
            log.exception("access log %s: a line could not be made", self.path or "stdout")
        self.dropped += 1

    def _write(self, data: bytes) -> None:
        if self._file is not None:
            view = memoryview(data)
            while view:  # a raw write may be partial (signals, pipes); finish it
                n = self._file.write(view)
                if n is None:  # non-blocking fd with no room: give the rest up
                    raise BlockingIOError("access log would block")
                view = view[n:]
            return
        if self.path is not None:
            raise OSError("access log is closed")
        # stdout is looked up at each write so that redirection (and pytest's capture) is honoured.
        out = sys.stderr if self._stderr else sys.stdout
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            out.write(data.decode("latin-1"))
            out.flush()

    def reopen(self) -> None:
        """Open the path again (after logrotate moved the file). Lines queued so far go to the old file.
        If the new open fails the old file stays in use and OSError reaches the caller."""
        if self.path is None:
            return
        new = self._open()
        self.flush()
        old, self._file = self._file, new
        if old is not None:
            old.close()

    def close(self) -> None:
        """Write what is queued and close the file. Lines logged after this are dropped and counted."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def open_access_log(log: AccessLog, loop: asyncio.AbstractEventLoop, context: LogContext | None = None,
                    ) -> AccessLogger:
    """The logger a model AccessLog asks for (OSError if its file cannot be opened)."""
    return AccessLogger(log.path, loop, log_format=log.format, log_filter=log.filter, context=context)
