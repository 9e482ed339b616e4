"""Records that are not HTTP exchanges, in the operators' terms (meshpy.telemetry.accesslog_ops
.HttpRecord): a TCP proxy session, and an HTTP/1.1 request refused while it was being read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshpy.telemetry.accesslog_ops import address

if TYPE_CHECKING:
    from meshpy.ports import ConnectionInfo


class TcpRecord:
    """A TCP proxy session (meshpy.transport.tcp.TcpDownstream) in the operators' terms: no request,
    no response, code 0, as Envoy logs a TCP session."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def wall0(self) -> float:
        return float(self._conn.wall0)

    resp_status = 0

    @property
    def flag(self) -> str:
        return str(self._conn.flag)

    @property
    def bytes_in(self) -> int:
        return int(self._conn.bytes_in)

    @property
    def bytes_out(self) -> int:
        return int(self._conn.bytes_out)

    def log_request_header(self, name: bytes) -> str | None:
        return None

    log_response_header = log_trailer = log_request_header

    def log_header_list(self) -> list[tuple[bytes, bytes]]:
        return []

    def log_protocol(self) -> str | None:
        return None

    log_details = log_route_name = log_failure_reason = log_protocol

    def log_request_ms(self) -> int | None:
        return None

    log_response_ms = log_request_ms

    def log_tx_ms(self, seconds: float) -> int | None:
        return None

    def log_upstream_host(self) -> str | None:
        host = self._conn.host
        return str(host.label) if host is not None else None

    def log_cluster(self) -> str | None:
        return str(self._conn.cfg.cluster) if self._conn.host is not None else None

    def log_upstream_local(self) -> str | None:
        up = self._conn.up
        transport = getattr(up, "transport", None)
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return address(str(sockname[0]), sockname[1]) if isinstance(sockname, tuple) else None

    def log_remote(self) -> tuple[str, int]:
        info = self._conn.connection_info()
        return info.peer, info.peer_port

    def log_connection(self) -> ConnectionInfo:
        info: ConnectionInfo = self._conn.connection_info()
        return info

    def log_attempts(self) -> int:
        return 1 if self._conn.host is not None else 0


_REFUSED_DETAILS = {426: "low_version", 431: "http1.headers_too_large", 408: "request_header_timeout"}


class RefusedRecord:
    """An HTTP/1.1 request refused while it was being read (Envoy's DPE): no request headers, the
    error answer's status and size. `conn`: the client connection (meshpy.ports.ResponseWriter)."""

    __slots__ = ("bytes_out", "cfg", "down", "resp_status", "wall0")

    # What meshpy's JSON line reads of an exchange, for a request that never became one.
    bytes_in = 0
    flag = "DPE"
    method = b""
    authority = path = ""
    http10 = False
    PROTOCOL = "HTTP/1.1"
    host = rid = None

    def __init__(self, conn: Any, status: int, bytes_out: int, wall0: float) -> None:
        self.down = conn
        self.cfg = conn.slot.current
        self.resp_status = status
        self.bytes_out = bytes_out
        self.wall0 = wall0

    def log_request_header(self, name: bytes) -> str | None:
        return None

    log_trailer = log_request_header

    def log_response_header(self, name: bytes) -> str | None:
        # What the error answer carries (meshpy.transport.h1_response.respond_error).
        if name == b"content-type":
            return "text/plain"
        if name == b"content-length":
            return str(self.bytes_out)
        server = self.cfg.server_name
        return server.decode("latin-1") if name == b"server" and server is not None else None

    def log_header_list(self) -> list[tuple[bytes, bytes]]:
        return []

    def log_protocol(self) -> str | None:
        return self.PROTOCOL

    def log_details(self) -> str | None:
        return _REFUSED_DETAILS.get(self.resp_status, "http1.codec_error")

    def log_request_ms(self) -> int | None:
        return None

    log_response_ms = log_request_ms

    def log_tx_ms(self, seconds: float) -> int | None:
        return None

    def log_cluster(self) -> str | None:
        return None

    log_upstream_host = log_upstream_local = log_failure_reason = log_route_name = log_cluster

    def log_remote(self) -> tuple[str, int]:
        info = self.down.connection_info()
        return info.peer, info.peer_port

    def log_connection(self) -> ConnectionInfo:
        info: ConnectionInfo = self.down.connection_info()
        return info

    def log_attempts(self) -> int:
        return 0
