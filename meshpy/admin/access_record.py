"""A request to the admin, as the access log's operators read it (meshpy.telemetry.accesslog_ops).

Envoy serves its admin through an HTTP connection manager of its own, so an admin line says what a
data-plane line would, with what that manager does: x-forwarded-proto is set, the client's address
is appended to X-Forwarded-For (the host's own address for a client on loopback, as Envoy's
use_remote_address does), no request id is made, and the details say `admin_filter_response`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
from typing import Any

from meshpy.ports import ConnectionInfo

Header = tuple[bytes, bytes]
_SIOCGIFADDR = 0x8915


def host_address() -> str:
    """The host's first IPv4 address that is not a loopback one (Envoy's getLocalAddress), by
    interface index; 127.0.0.1 when it has none."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                addr = socket.inet_ntoa(packed[20:24])
                if not addr.startswith("127."):
                    return addr
    return "127.0.0.1"


class AdminRecord:
    __slots__ = ("_info", "_local_address", "bytes_in", "bytes_out", "flag", "headers", "http10", "method",
                 "resp_headers", "resp_status", "target", "wall0")

    def __init__(self, *, wall0: float, method: str, target: str, http10: bool, headers: list[Header],
                 status: int, resp_headers: list[Header], bytes_in: int, bytes_out: int,
                 info: ConnectionInfo, local_address: str) -> None:
        self.wall0 = wall0
        self.method = method
        self.target = target
        self.http10 = http10
        self.headers = headers
        self.resp_status = status
        self.resp_headers = resp_headers
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.flag = ""
        self._info = info
        self._local_address = local_address

    def log_request_header(self, name: bytes) -> str | None:
        if name == b":method":
            return self.method
        if name == b":path":
            return self.target
        if name == b":scheme" or name == b"x-forwarded-proto":
            return "http"  # (the admin's manager uses the remote address: it sets x-forwarded-proto)
        if name == b":authority":
            name = b"host"
        elif name == b"x-forwarded-for":
            peer = self._info.peer
            appended = self._local_address if peer.startswith("127.") or peer == "::1" else peer
            sent = self._first(b"x-forwarded-for")
            return f"{sent},{appended}" if sent else appended
        return self._first(name)

    def _first(self, key: bytes) -> str | None:
        for n, v in self.headers:
            if n == key:
                return v.decode("latin-1")
        return None

    def log_header_list(self) -> list[Header]:
        return self.headers

    def log_response_header(self, name: bytes) -> str | None:
        for n, v in self.resp_headers:
            if n == name:
                return v.decode("latin-1")
        return None

    def log_trailer(self, name: bytes) -> str | None:
        return None

    def log_protocol(self) -> str | None:
        return "HTTP/1.0" if self.http10 else "HTTP/1.1"

    def log_details(self) -> str | None:
        return "admin_filter_response"

    def log_request_ms(self) -> int | None:
        return 0  # read whole and answered in the same pass

    def log_response_ms(self) -> int | None:
        return None  # no upstream

    def log_tx_ms(self, seconds: float) -> int | None:
        return None

    def log_upstream_host(self) -> str | None:
        return None

    log_cluster = log_upstream_local = log_failure_reason = log_route_name = log_upstream_host

    def log_remote(self) -> tuple[str, int]:
        return self._info.peer, self._info.peer_port

    def log_connection(self) -> ConnectionInfo:
        return self._info

    def log_attempts(self) -> int:
        return 0


class AdminLog:
    """The admin's access loggers (set by the app at each config) and what its lines share."""

    __slots__ = ("_host_address", "loggers")

    def __init__(self) -> None:
        self.loggers: tuple[Any, ...] = ()  # meshpy.telemetry.accesslog.AccessLogger
        self._host_address: str | None = None

    @staticmethod
    def connection(transport: asyncio.BaseTransport | None) -> ConnectionInfo:
        """An admin connection's description (made once per connection, as the listeners' are)."""
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = transport.get_extra_info("sockname") if transport is not None else None
        peer_host, peer_port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        local_host, local_port = (str(local[0]), int(local[1])) if isinstance(local, tuple) else ("", 0)
        return ConnectionInfo(peer=peer_host, peer_port=peer_port, local=local_host, local_port=local_port,
                              original_destination=None, listener="admin", direction="unspecified")

    def request(self, info: ConnectionInfo, *, wall0: float, seconds: float, method: str, target: str,
                http10: bool, headers: list[Header], status: int, resp_headers: list[Header], bytes_in: int,
                bytes_out: int) -> None:
        """One answered request, to every logger."""
        if self._host_address is None:
            self._host_address = host_address()
        record = AdminRecord(wall0=wall0, method=method, target=target, http10=http10, headers=headers,
                             status=status, resp_headers=resp_headers, bytes_in=bytes_in, bytes_out=bytes_out,
                             info=info, local_address=self._host_address)
        for logger in self.loggers:
            logger.log_http(record, seconds)
