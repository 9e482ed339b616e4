"""Envoy's command operators, each made once per format into a function of one logged record.

A record is what `HttpRecord` describes: an HTTP exchange (meshpy.stack.exchange_logged), a request
to the admin (meshpy.admin.access_record), a TCP session or a refused request (accesslog_records).
An operator returns a string, an int for the numeric ones (typed in a JSON line, as Envoy types
them), or None when it has no value (Envoy's "-", or null in JSON). Operators read their values
when the request completes (so that the record can go at once); turning them into a line is the
flush's work.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from meshpy.model.access_log import RESPONSE_FLAGS, Command

if TYPE_CHECKING:
    from meshpy.ports import ConnectionInfo, TlsInfo

Value = str | int | float | None
Op = Callable[[Any, float], Value]  # (record, duration in seconds) -> value
Finish = Callable[[Any], str]  # a value read at completion -> its text, at the flush


class HttpRecord(Protocol):
    """What the operators read of a finished request (see meshpy.stack.exchange_logged for the terms)."""

    wall0: float
    resp_status: int
    flag: str
    bytes_in: int
    bytes_out: int

    def log_request_header(self, name: bytes) -> str | None: ...  # lower case; pseudo-headers too
    def log_header_list(self) -> list[tuple[bytes, bytes]]: ...  # what a header filter matches on
    def log_response_header(self, name: bytes) -> str | None: ...
    def log_trailer(self, name: bytes) -> str | None: ...
    def log_protocol(self) -> str | None: ...
    def log_details(self) -> str | None: ...
    def log_request_ms(self) -> int | None: ...
    def log_response_ms(self) -> int | None: ...
    def log_tx_ms(self, seconds: float) -> int | None: ...
    def log_upstream_host(self) -> str | None: ...
    def log_cluster(self) -> str | None: ...
    def log_upstream_local(self) -> str | None: ...
    def log_failure_reason(self) -> str | None: ...
    def log_remote(self) -> tuple[str, int]: ...
    def log_connection(self) -> ConnectionInfo: ...
    def log_route_name(self) -> str | None: ...
    def log_attempts(self) -> int: ...


class LogContext:
    """What every format of one proxy shares: the host name, and connection ids, numbered in the
    order connections are first logged (Envoy numbers them as it accepts them; what holds the same
    is that one connection keeps one id and no two live connections share one)."""

    __slots__ = ("_ids", "_next", "hostname")
    MAX_IDS = 8192  # ids remembered; a connection first logged this many connections ago gets a new one

    def __init__(self, hostname: str | None = None) -> None:
        self.hostname = hostname if hostname is not None else socket.gethostname()
        # Keyed by the id() of the connection's ConnectionInfo, which the entry keeps alive so that
        # no other object can take its id() while it is remembered.
        self._ids: dict[int, tuple[object, int]] = {}
        self._next = 0

    def connection_id(self, info: object) -> int:
        ids = self._ids
        entry = ids.get(id(info))
        if entry is not None:
            return entry[1]
        self._next += 1
        if len(ids) >= self.MAX_IDS:
            del ids[next(iter(ids))]
        ids[id(info)] = (info, self._next)
        return self._next


def address(host: str, port: int) -> str:
    """Envoy's spelling: `ip:port`, `[ipv6]:port`, and a Unix socket's path alone."""
    if host[:1] in ("/", "@"):
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls(info: ConnectionInfo) -> TlsInfo | None:
    return info.tls


def _utf8(s: str) -> str:
    """A text value (a certificate's subject) as the bytes Envoy writes, one char per byte."""
    return s.encode("utf-8").decode("latin-1") if not s.isascii() else s


_FIXED: dict[str, Op] = {
    "PROTOCOL": lambda r, s: r.log_protocol(),
    "RESPONSE_CODE": lambda r, s: r.resp_status,
    "RESPONSE_CODE_DETAILS": lambda r, s: r.log_details(),
    "RESPONSE_FLAGS": lambda r, s: r.flag or "-",
    "RESPONSE_FLAGS_LONG": lambda r, s: ",".join(RESPONSE_FLAGS.get(f, f) for f in r.flag.split(",")) or "-",
    "BYTES_RECEIVED": lambda r, s: r.bytes_in,
    "BYTES_SENT": lambda r, s: r.bytes_out,
    "DURATION": lambda r, s: int(s * 1000),
    "REQUEST_DURATION": lambda r, s: r.log_request_ms(),
    "RESPONSE_DURATION": lambda r, s: r.log_response_ms(),
    "RESPONSE_TX_DURATION": lambda r, s: r.log_tx_ms(s),
    "UPSTREAM_HOST": lambda r, s: r.log_upstream_host(),
    "UPSTREAM_CLUSTER": lambda r, s: r.log_cluster(),
    "UPSTREAM_LOCAL_ADDRESS": lambda r, s: r.log_upstream_local(),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r, s: r.log_failure_reason(),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda r, s: address(*r.log_remote()),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda r, s: r.log_remote()[0],
    "DOWNSTREAM_REMOTE_PORT": lambda r, s: r.log_remote()[1],
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda r, s: address(*_peer(r.log_connection())),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda r, s: r.log_connection().peer,
    "DOWNSTREAM_DIRECT_REMOTE_PORT": lambda r, s: r.log_connection().peer_port,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda r, s: address(*_local(r.log_connection())),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda r, s: _local(r.log_connection())[0],
    "DOWNSTREAM_LOCAL_PORT": lambda r, s: _local(r.log_connection())[1],
    "REQUESTED_SERVER_NAME": lambda r, s: _tls_field(r, "sni"),
    "ROUTE_NAME": lambda r, s: r.log_route_name(),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda r, s: r.log_attempts(),
    "DOWNSTREAM_TLS_VERSION": lambda r, s: _tls_field(r, "version"),
    "DOWNSTREAM_TLS_CIPHER": lambda r, s: _tls_field(r, "cipher"),
    "DOWNSTREAM_PEER_URI_SAN": lambda r, s: _tls_list(r, "peer_uris"),
    "DOWNSTREAM_PEER_DNS_SAN": lambda r, s: _tls_list(r, "peer_dns"),
    "DOWNSTREAM_PEER_SUBJECT": lambda r, s: _tls_field(r, "peer_subject"),
    "DOWNSTREAM_LOCAL_URI_SAN": lambda r, s: _tls_list(r, "local_uris"),
}
NUMERIC = frozenset({"RESPONSE_CODE", "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "REQUEST_DURATION",
                     "RESPONSE_DURATION", "RESPONSE_TX_DURATION", "UPSTREAM_REQUEST_ATTEMPT_COUNT",
                     "DOWNSTREAM_REMOTE_PORT", "DOWNSTREAM_DIRECT_REMOTE_PORT", "DOWNSTREAM_LOCAL_PORT",
                     "CONNECTION_ID"})


def _peer(info: ConnectionInfo) -> tuple[str, int]:
    return info.peer, info.peer_port


def _local(info: ConnectionInfo) -> tuple[str, int]:
    # A connection redirected to the proxy (a sidecar's iptables) is logged where it was going.
    dst = info.original_destination
    return dst if dst is not None else (info.local, info.local_port)


def _tls_field(r: HttpRecord, name: str) -> str | None:
    tls = r.log_connection().tls
    value: str = getattr(tls, name) if tls is not None else ""
    return _utf8(value) if value else None


def _tls_list(r: HttpRecord, name: str) -> str | None:
    tls = r.log_connection().tls
    values: tuple[str, ...] = getattr(tls, name) if tls is not None else ()
    return _utf8(",".join(values)) if values else None


def make_op(cmd: Command, ctx: LogContext) -> tuple[Op, Finish | None]:
    """The function that reads `cmd`'s value from a finished request (already checked by
    meshpy.model.access_log.parse_format), and what turns that value into text at the flush when
    reading it is not all (START_TIME: the time is read, its text is made later)."""
    name = cmd.name
    if name == "START_TIME":
        return (lambda r, s: r.wall0), StartTime(cmd.arg)
    if name in ("REQ", "RESP", "TRAILER"):
        assert cmd.arg is not None
        main, _, alt = cmd.arg.lower().encode("latin-1").partition(b"?")
        return _header_op(name, main, alt, cmd.length), None
    if name == "HOSTNAME":
        hostname = ctx.hostname
        return (lambda r, s: hostname), None
    if name == "CONNECTION_ID":
        return (lambda r, s: ctx.connection_id(r.log_connection())), None
    return _FIXED[name], None


def _header_op(kind: str, main: bytes, alt: bytes, n: int | None) -> Op:
    """REQ, RESP or TRAILER: the header `main`, else `alt`, cut to `n` characters. (One closure per
    kind and shape: this is read for every line, so it costs one call, not two.)"""
    if kind == "REQ":
        if not alt and n is None:
            return lambda r, s: r.log_request_header(main)

        def req(r: Any, s: float) -> Value:
            value: str | None = r.log_request_header(main)
            if value is None and alt:
                value = r.log_request_header(alt)
            return value[:n] if value is not None and n is not None else value
        return req
    get = "log_response_header" if kind == "RESP" else "log_trailer"

    def other(r: Any, s: float) -> Value:
        lookup = getattr(r, get)
        value: str | None = lookup(main)
        if value is None and alt:
            value = lookup(alt)
        return value[:n] if value is not None and n is not None else value
    return other


class StartTime:
    """START_TIME's text for a wall-clock time, in UTC: strftime's specifiers, plus Envoy's `%s`
    (seconds since the epoch), `%f` and `%1f`..`%9f` (the fraction of the second, 9 digits or that
    many) and absl's `%E<n>S` / `%E*S` (seconds with n fraction digits / as many as it has) and `%Ez`.
    No argument: Envoy's `%Y-%m-%dT%H:%M:%E3SZ`. What depends only on the whole second is formatted
    once per second (strftime costs ~1.7 µs)."""

    __slots__ = ("_cached", "_default", "_parts", "_second", "_specials")

    def __init__(self, spec: str | None) -> None:
        self._default = spec is None  # the common case, one f-string per line
        self._parts = _split_time_format(spec or "%Y-%m-%dT%H:%M:%E3SZ")
        self._specials = [(i, p) for i, p in enumerate(self._parts) if not isinstance(p, str)]
        self._second = -1
        self._cached: list[str] = []

    def __call__(self, t: float) -> str:
        # Whole microseconds, as Envoy's clock has them (a float's fraction alone is off by a hair).
        sec, micros = divmod(round(t * 1_000_000), 1_000_000)
        if sec != self._second:
            tm = time.gmtime(sec)
            self._cached = [time.strftime(p, tm) if isinstance(p, str) else "" for p in self._parts]
            self._second = sec
        if self._default:
            return f"{self._cached[0]}{sec % 60:02d}.{micros // 1000:03d}Z"
        out = self._cached[:]
        for i, fn in self._specials:
            out[i] = fn(sec, micros)
        return "".join(out)


def _split_time_format(spec: str) -> list[str | Callable[[int, int], str]]:
    parts: list[str | Callable[[int, int], str]] = []
    plain: list[str] = []
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        special = _special(spec, i) if c == "%" else None
        if special is None:
            width = 2 if c == "%" and i + 1 < n else 1
            plain.append(spec[i:i + width])
            i += width
            continue
        fn, width = special
        if plain:
            parts.append("".join(plain))
            plain = []
        parts.append(fn)
        i += width
    if plain:
        parts.append("".join(plain))
    return parts


def _special(spec: str, i: int) -> tuple[Callable[[int, int], str], int] | None:
    rest = spec[i + 1:i + 4]
    if rest.startswith("s"):
        return (lambda sec, us: str(sec)), 2
    if rest.startswith("f"):
        return (lambda sec, us: f"{us:06d}000"), 2
    if len(rest) >= 2 and rest[0] in "123456789" and rest[1] == "f":
        n = int(rest[0])
        return (lambda sec, us: f"{us:06d}000"[:n]), 3
    if rest.startswith("Z"):
        return (lambda sec, us: "UTC"), 2  # (strftime would say GMT)
    if rest.startswith("Ez"):
        return (lambda sec, us: "+00:00"), 3
    if len(rest) == 3 and rest[0] == "E" and rest[2] == "S" and rest[1] == "*":
        return (lambda sec, us: f"{sec % 60:02d}" + (f".{us:06d}".rstrip("0") if us else "")), 4
    if len(rest) == 3 and rest[0] == "E" and rest[2] == "S" and rest[1].isdigit():
        d = int(rest[1])
        return (lambda sec, us: f"{sec % 60:02d}" + (f".{us:06d}000"[:d + 1] if d else "")), 4
    return None
