"""Active health checks: each endpoint of a cluster is asked every interval whether it is well.

Checks are HTTP GET, TCP connect, or gRPC (grpc.health.v1). An HTTP check is HTTP/1.1 unless TLS's ALPN
agreed on h2 (a cluster of protocol auto or http2 over TLS offers it): then it is HTTP/2, since a server
that said h2 expects nothing else. One task per cluster checks all its
endpoints at once, each on a fresh connection (a check must not
wait behind a request, nor keep a pooled connection busy). An endpoint that fails
`unhealthy_threshold` checks in a row leaves the balancer; `healthy_threshold` passes in a row bring
it back. Until its first check an endpoint counts as healthy, so a cluster serves from the start;
the first round runs at once. The cluster's panic threshold still applies: with fewer than half of
its endpoints in service the balancer uses them all.

Each endpoint has its own schedule, as in Envoy: `interval` once the cluster has opened a connection,
and before that `no_traffic_interval` (`no_traffic_healthy_interval` for an endpoint passing its
checks). An endpoint's health_check_config sends its checks to another port or address, with
another Host header, or nowhere (disable_active_health_check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from meshpy.codec import h2session
from meshpy.codec.h2session import (
    DATA,
    END,
    GOAWAY,
    RESET,
    RESPONSE,
    STREAM_ERROR,
    TRAILERS,
    SessionError,
    StreamGone,
)
from meshpy.codec.http2 import client_settings
from meshpy.model.types import DEFAULT_HTTP2, HealthCheck, Http2Options
from meshpy.model.unix_address import SockAddr
from meshpy.transport.upstream_alpn import agreed_protocol

if TYPE_CHECKING:
    from meshpy.upstream.cluster import ClusterRuntime, Host

log = logging.getLogger("meshpy.upstream")
_USER_AGENT = b"meshpy-health-check"


class HealthChecker:
    __slots__ = ("_task", "_wake", "cluster", "config", "transitions")

    def __init__(self, cluster: ClusterRuntime, config: HealthCheck) -> None:
        self.cluster = cluster
        self.config = config
        self.transitions: dict[str, int] = {}  # "healthy" / "unhealthy" -> count, for /metrics
        self._wake = asyncio.Event()  # new endpoints: checked at once, not after a (60 s) wait
        self._task: asyncio.Task[None] | None = cluster.tasks.spawn(self._run(),
                                                                    name=f"hc:{cluster.model.name}")

    def hosts_changed(self) -> None:
        self._wake.set()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        due: dict[Host, float] = {}  # when each endpoint's next check is (new ones: at once)
        while True:
            now = loop.time()
            hosts = [h for h in self.cluster.hosts if due.get(h, now) <= now and not _unchecked(h)]
            results = await asyncio.gather(*(self._check(h) for h in hosts))
            changed = False
            for host, ok in zip(hosts, results, strict=True):
                changed |= self._record(host, ok)
            if changed:
                self.cluster.rebuild_order()
            after = loop.time()
            due = {h: due.get(h, after) for h in self.cluster.hosts if not _unchecked(h)}  # (and gone)
            for host in hosts:
                if host in due:
                    due[host] = after + self._interval(host) + random.uniform(0, cfg.interval_jitter)
            wait = max(0.0, min(due.values(), default=after + cfg.interval) - after)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()

    def _interval(self, host: Host) -> float:
        """Envoy's choice of interval: the cluster's traffic is its upstream connections (not these
        checks); an endpoint whose last results are about to turn it is not yet `healthy`."""
        cfg = self.config
        if self.cluster.stats.cx_total or cfg.no_traffic_interval is None:
            return cfg.interval
        if host.hc_healthy and not host.hc_fails and cfg.no_traffic_healthy_interval is not None:
            return cfg.no_traffic_healthy_interval
        return cfg.no_traffic_interval

    def _record(self, host: Host, ok: bool) -> bool:
        """Count one result; True when the endpoint changed state."""
        cfg = self.config
        if ok:
            host.hc_fails = 0
            host.hc_passes += 1
            if not host.hc_healthy and host.hc_passes >= cfg.healthy_threshold:
                return self._turn(host, True)
        else:
            host.hc_passes = 0
            host.hc_fails += 1
            if host.hc_healthy and host.hc_fails >= cfg.unhealthy_threshold:
                return self._turn(host, False)
        return False

    def _turn(self, host: Host, healthy: bool) -> bool:
        host.hc_healthy = healthy
        key = "healthy" if healthy else "unhealthy"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        log.info("cluster %s: %s is now %s", self.cluster.model.name, host.label, key)
        return True

    async def _check(self, host: Host) -> bool:
        cfg = self.config
        writer = None
        try:
            async with asyncio.timeout(cfg.timeout):
                reader, writer = await self.cluster.connector.streams(check_address(host))
                if cfg.kind == "tcp":
                    return True
                target = host.endpoint.health_target if host.endpoint is not None else None
                hostname = ((target.hostname if target is not None else "") or cfg.host
                            or self.cluster.model.name).encode()
                if cfg.kind == "grpc":
                    return await grpc_health(reader, writer, hostname, cfg.service, self.cluster.model.http2)
                if agreed_protocol(writer.transport) == "h2":
                    status = await http2_status(reader, writer, hostname, cfg.path.encode(),
                                                self.cluster.model.http2)
                    return any(start <= status < end for start, end in cfg.expected_statuses)
                writer.write(b"GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: %s\r\nconnection: close\r\n\r\n"
                             % (cfg.path.encode(), hostname, _USER_AGENT))
                line = await reader.readline()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, SessionError, StreamGone):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False
        status = int(parts[1])
        return any(start <= status < end for start, end in cfg.expected_statuses)


def check_address(host: Host) -> SockAddr:
    """Where `host`'s checks go: its own address unless its endpoint's health_check_config says."""
    address = host.pool.address
    target = host.endpoint.health_target if host.endpoint is not None else None
    if target is None or (isinstance(address, str) and not target.path):
        return address
    if target.path:
        return target.path
    ip, port = address if isinstance(address, tuple) else ("", 0)
    return (target.ip or ip, target.port or port)


def _unchecked(host: Host) -> bool:
    """An endpoint with disable_active_health_check: never checked, healthy as far as checks go."""
    return host.endpoint is not None and host.endpoint.health_target is not None and \
        host.endpoint.health_target.disabled


_HEALTH_PATH = b"/grpc.health.v1.Health/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}, as protobuf encodes it


async def grpc_health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: bytes,
                      service: str, opts: Http2Options = DEFAULT_HTTP2) -> bool:
    """One grpc.health.v1.Health/Check call over a fresh HTTP/2 connection: True on SERVING.

    The two messages are one string and one enum field; they are written and read here directly
    rather than with generated code for a whole package (grpcio-health-checking) on the data path.
    The connection speaks the codec `opts` names, as the cluster's own connections do."""
    conn = h2session.client(opts, client_settings(opts))
    name = service.encode()
    request = b"\x0a" + _varint(len(name)) + name if name else b""  # HealthCheckRequest{service}
    sid = conn.open_stream([(b":method", b"POST"), (b":scheme", b"http"), (b":path", _HEALTH_PATH),
                            (b":authority", authority), (b"content-type", b"application/grpc"),
                            (b"te", b"trailers"), (b"user-agent", _USER_AGENT)], False)
    conn.send_data(sid, b"\x00" + len(request).to_bytes(4, "big") + request, True)
    writer.write(conn.data_to_send())
    grpc_status: bytes | None = None
    body = b""
    while True:
        data = await reader.read(65536)
        if not data:
            return False
        for kind, esid, a, _b in conn.receive(data):
            if esid != sid and kind != GOAWAY:
                continue
            if kind in (RESPONSE, TRAILERS):
                for key, value in a:
                    if key == b":status" and value != b"200":
                        return False
                    if key == b"grpc-status":
                        grpc_status = value
            elif kind == DATA:
                body += a
            elif kind == END:
                # The answer: a 5-byte gRPC message prefix, then the response message.
                return grpc_status == b"0" and body[5:] == _SERVING
            elif kind in (RESET, STREAM_ERROR, GOAWAY):
                return False
        writer.write(conn.data_to_send())


async def http2_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: bytes,
                       path: bytes, opts: Http2Options = DEFAULT_HTTP2) -> int:
    """The status of one GET over a fresh HTTP/2 connection (0: no answer came)."""
    conn = h2session.client(opts, client_settings(opts))
    sid = conn.open_stream([(b":method", b"GET"), (b":scheme", b"https"), (b":path", path),
                            (b":authority", authority), (b"user-agent", _USER_AGENT)], True)
    writer.write(conn.data_to_send())
    while True:
        data = await reader.read(65536)
        if not data:
            return 0
        for kind, esid, a, _b in conn.receive(data):
            if kind == RESPONSE and esid == sid:
                return next((int(v) for k, v in a if k == b":status"), 0)
            if kind in (RESET, STREAM_ERROR, GOAWAY):
                return 0
        writer.write(conn.data_to_send())


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
