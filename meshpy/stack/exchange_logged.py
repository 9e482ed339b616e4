"""The exchange a listener uses when its access logs write Envoy's formats or filter on a request.

Envoy's operators read what a plain exchange does not keep: the response head as sent, when the
request ended and the first response byte came, the upstream connection's local address, why a
connect failed. These subclasses note them as they happen and answer the operators' questions at
flush time (the `log_*` methods, meshpy.telemetry.accesslog_ops.HttpRecord), in Envoy's terms. A
listener without such a log uses the plain classes and pays for none of this (meshpy.routing.compile
picks the classes).

What an operator sees is what Envoy's would: the request headers as forwarded (the router's rewrites
of :path and :authority, x-request-id, x-forwarded-proto, x-envoy-* in them), the response headers as
sent to the client, and for a request refused before it was read (DPE) no request headers at all.
"""

from __future__ import annotations

import errno
import ssl
from typing import TYPE_CHECKING, ClassVar

from meshpy.codec.raw_head import parse_fields
from meshpy.stack.exchange import Exchange
from meshpy.stack.exchange_h2 import H2Exchange
from meshpy.stack.forwarding import request_id

if TYPE_CHECKING:
    from meshpy.ports import ConnectionInfo, UpstreamStream

Header = tuple[bytes, bytes]
_SLOTS = ("resp_list", "resp_raw", "t_req", "t_resp", "up_conn", "up_failure")
# RESPONSE_CODE_DETAILS of the answers meshpy makes itself, by response flag (Envoy's strings).
_DETAILS = {
    "NR": "route_not_found", "NC": "cluster_not_found", "UH": "no_healthy_upstream",
    "UT": "response_timeout", "DC": "downstream_remote_disconnect", "RL": "local_rate_limited",
    "FI": "fault_filter_abort", "SI": "stream_idle_timeout", "DT": "duration_timeout",
    "UMSDR": "max_duration_timeout", "UO": "upstream_reset_before_response_started{overflow}",
    "UPE": "upstream_reset_before_response_started{protocol_error}",
}  # fmt: skip


def _first(headers: list[Header], name: bytes) -> str | None:
    for n, v in headers:
        if n == name:
            return v.decode("latin-1")
    return None


def _raw_field(fields: bytes, name: bytes) -> str | None:
    """The first `name` field of a raw head block (meshpy.codec.raw_head) without parsing it whole:
    a lookup costs one search, not a list of every field."""
    low = fields.lower()
    key = name + b":"
    if low.startswith(key):
        start = len(key)
    else:
        at = low.find(b"\n" + key)
        if at < 0:
            return None
        start = at + 1 + len(key)
    end = fields.find(b"\r\n", start)
    if end < 0:
        end = len(fields)
    if fields[end + 2:end + 3] in (b" ", b"\t"):  # an obs-fold line continues the value
        return _first(parse_fields(fields), name)
    return fields[start:end].strip().decode("latin-1")


def _address(sockname: object) -> str | None:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = str(sockname[0])
        return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"
    return None


def failure_reason(exc: BaseException) -> str | None:
    """Envoy's UPSTREAM_TRANSPORT_FAILURE_REASON for a failed connect (spaces as `_`, as it logs it)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS_error:_{exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno != errno.ETIMEDOUT:
        return f"delayed_connect_error:_{(exc.strerror or str(exc)).replace(' ', '_')}"
    return None


class LogView(Exchange):
    """What both logged exchanges add (HTTP/1.1 and HTTP/2: `_base` says which one it extends)."""

    __slots__ = ()  # (the classes below hold the slots)

    resp_list: list[Header] | None  # the final response head, when it was built as a list
    resp_raw: bytes | None  # the upstream's head, when it went to the client as it came
    t_req: float  # loop times: the request's end, the first response head
    t_resp: float
    up_conn: UpstreamStream | None  # the last upstream connection (or HTTP/2 stream) it was sent on
    up_failure: str | None

    # The class whose behaviour this adds to, called directly: a super() per hook cost ~0.1 µs.
    _base: ClassVar[type[Exchange]]

    # -- what happens, noted (the slots stay unset until then: read with defaults below) ---------
    def request_end(self) -> None:
        if not hasattr(self, "t_req"):
            self.t_req = self.down.loop.time()
        self._base.request_end(self)

    def _respond(self, status: int, fields: bytes) -> None:
        # The final answer's head, as the upstream sent it; its first byte came now.
        self.t_resp = self.down.loop.time()
        self.resp_raw = fields
        self._base._respond(self, status, fields)

    def _response_headers(self, status: int, headers: list[Header],
                          route_headers: bool = True) -> list[Header] | None:
        final = self._base._response_headers(self, status, headers, route_headers)
        self.resp_list = final
        return final

    def _attach(self, conn: UpstreamStream) -> None:
        self.up_conn = conn  # (its address is read only if a format asks: a syscall)
        self._base._attach(self, conn)

    def _on_pool(self, result: UpstreamStream | BaseException) -> None:
        if isinstance(result, BaseException) and not self.done:
            self.up_failure = failure_reason(result)
        self._base._on_pool(self, result)

    # -- the operators' questions, at flush time -------------------------------------------------
    def log_request_header(self, name: bytes) -> str | None:
        fields: list[Header] | None = getattr(self, "up_fields", None)  # (set once it was forwarded)
        if name[:1] == b":":
            return self._pseudo_header(name, fields)
        if name == b"x-request-id":
            return self._request_id()
        if fields is not None:
            for n, v in fields:
                if n == name:
                    return v.decode("latin-1")
            return None
        if self.flag == "DPE" and self.route is None:
            return None  # refused while being read: Envoy has no request headers to show
        for n, v in self.headers:
            if n == name:
                return v.decode("latin-1")
        if name == b"host":
            return self.authority or None
        if name == b"x-forwarded-proto" and self.cfg.forwarded_proto:
            return self.cfg.scheme.decode()  # (set for every request, routed or not)
        return None

    def _pseudo_header(self, name: bytes, fields: list[Header] | None) -> str | None:
        if self.flag == "DPE" and self.route is None:
            return None
        if name == b":method":
            return self.method.decode("latin-1") or None
        if name == b":path":
            return self.up_target.decode("latin-1") if fields is not None else self.path or None
        if name == b":authority":
            return self.log_request_header(b"host")
        if name == b":scheme":
            return self.cfg.scheme.decode()
        return None

    def _request_id(self) -> str | None:
        rid = self.rid if self.rid is not None else self.facts.request_id
        if rid is None and self.cfg.generate_rid and self.method:
            # Envoy makes the id before routing: a request answered before it was routed had one too.
            rid = self.rid = request_id()
        return rid.decode("latin-1") if rid is not None else None

    def log_header_list(self) -> list[Header]:
        if self.flag == "DPE" and not self.route:
            return []
        return self.up_fields if hasattr(self, "up_fields") else self.headers

    def log_response_header(self, key: bytes) -> str | None:
        if key == b":status":
            return str(self.resp_status) if self.resp_status else None
        local = self._local
        if local is not None:
            if key == b"content-length":
                return str(len(local[2])) if local[2] else None
            return _first(local[1], key)
        final = getattr(self, "resp_list", None)
        if final is not None:
            return _first(final, key)
        raw = getattr(self, "resp_raw", None)
        if raw is not None:
            value = _raw_field(raw, key)
            if value is None and key == b"x-envoy-upstream-service-time" and self.cfg.envoy_headers:
                return str(int((self.t_resp - self._up_t0) * 1000))
            return value
        return None

    def log_trailer(self, name: bytes) -> str | None:
        trailers = self.trailers
        return _first(trailers, name) if trailers else None

    def log_protocol(self) -> str | None:
        if self.flag == "DPE" and not self.route:
            return self.PROTOCOL  # refused before its version counted (Envoy's HTTP/1.1 for a 426)
        return "HTTP/1.0" if self.http10 else self.PROTOCOL

    def log_details(self) -> str | None:
        flag = self.flag
        if self._local is None and hasattr(self, "t_resp"):
            return "via_upstream"
        if flag in _DETAILS:
            return _DETAILS[flag]
        if flag == "UF":
            reason = getattr(self, "up_failure", None)
            what = f"remote_connection_failure|{reason}" if reason else "connection_failure"
            return f"upstream_reset_before_response_started{{{what}}}"
        if flag in ("UC", "UR"):
            when = "after" if self.started and self._local is None else "before"
            return f"upstream_reset_{when}_response_started{{connection_termination}}"
        if not flag and self._local is not None and self.route is not None and not self.route.forward:
            return "direct_response"
        if flag == "DPE" and self.resp_status == 426:
            return "low_version"
        return None

    def log_request_ms(self) -> int | None:
        t = getattr(self, "t_req", 0.0)
        return int((t - self.t0) * 1000) if t else None  # (None: never read whole)

    def log_response_ms(self) -> int | None:
        t = getattr(self, "t_resp", 0.0)
        return int((t - self.t0) * 1000) if t else None

    def log_tx_ms(self, seconds: float) -> int | None:
        t = getattr(self, "t_resp", 0.0)
        return int((self.t0 + seconds - t) * 1000) if t else None

    def log_upstream_host(self) -> str | None:
        return self.host.label if self.host is not None else None

    def log_cluster(self) -> str | None:
        if self.cluster is not None:
            return self.cluster.model.name
        route = self.route
        if self.flag == "UH" and route is not None:
            # The route found its cluster, which had no host to give.
            single: str | None = getattr(route, "_single_cluster", None)
            return single
        return None

    def log_upstream_local(self) -> str | None:
        conn = getattr(self, "up_conn", None)
        carrier = getattr(conn, "conn", conn)  # an HTTP/2 stream's connection, or the connection
        transport = getattr(carrier, "transport", None)
        return _address(transport.get_extra_info("sockname")) if transport is not None else None

    def log_failure_reason(self) -> str | None:
        reason: str | None = getattr(self, "up_failure", None)
        return reason

    def log_connection(self) -> ConnectionInfo:
        return self.down.connection_info()

    def log_remote(self) -> tuple[str, int]:
        """Envoy's downstream remote address: the peer's, or without use_remote_address the address
        X-Forwarded-For names (trusting xff_num_trusted_hops of its entries), port 0."""
        info = self.down.connection_info()
        cfg = self.cfg
        if not cfg.use_remote_address and self.flag != "DPE":
            xff = _first(self.headers, b"x-forwarded-for")
            if xff:
                entries = [e.strip() for e in xff.split(",")]
                at = len(entries) - 1 - cfg.options.xff_num_trusted_hops
                if at >= 0 and entries[at]:
                    return entries[at], 0
        return info.peer, info.peer_port

    def log_route_name(self) -> str | None:
        return (self.route.route.name or None) if self.route is not None else None

    def log_attempts(self) -> int:
        if self.retry is not None:
            return self.retry.attempt
        return 1 if self.host is not None or self.flag == "UH" else 0


class LoggedExchange(LogView):
    __slots__ = _SLOTS
    _base = Exchange


class LoggedH2Exchange(LogView, H2Exchange):
    __slots__ = _SLOTS
    _base = H2Exchange
