"""Calls the proxy makes on its own behalf to a cluster (an authorization service, ...): one request,
one whole answer, outside the request path's pools.

Envoy makes such calls with its "async client" over the cluster's own pools. Here they take connections
of their own, opened by the cluster's Connector (so the cluster's connect timeout, socket options and
upstream TLS apply) to the host its balancer picks:
- HTTP/1.1: keep-alive connections, a few kept idle per endpoint and taken again;
- HTTP/2 (a cluster of protocol http2, TLS's ALPN choosing h2, and every gRPC call): one multiplexed
  connection per endpoint, shared by the calls in flight; a reader task delivers each stream's answer.
Bodies are bounded (MAX_BODY): an answer past that is an error, not memory spent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshpy.codec import h2session
from meshpy.codec.h2session import DATA, END, GOAWAY, RESET, RESPONSE, STREAM_ERROR, TRAILERS, SessionError
from meshpy.codec.http2 import client_settings
from meshpy.model.types import DEFAULT_HTTP2, Http2Options
from meshpy.transport.upstream_alpn import agreed_protocol

if TYPE_CHECKING:
    from meshpy.model.unix_address import SockAddr
    from meshpy.upstream.cluster import ClusterRuntime

MAX_BODY = 1 << 20
_IDLE_PER_HOST = 8
Fields = list[tuple[bytes, bytes]]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class SideCallError(Exception):
    """The call got no usable answer (no host, connect failure, reset, malformed or too large)."""


@dataclass(slots=True)
class SideResponse:
    status: int
    headers: Fields
    body: bytes = b""
    trailers: Fields = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class SideClient:
    """The side calls of one user (a filter instance): its idle HTTP/1.1 connections and its HTTP/2
    connections, by endpoint address."""

    __slots__ = ("_h2", "_idle")

    def __init__(self) -> None:
        self._idle: dict[SockAddr, list[Streams]] = {}
        self._h2: dict[SockAddr, _H2Connection] = {}

    async def call(self, cluster: ClusterRuntime, method: bytes, path: bytes, authority: bytes,
                   headers: Fields, body: bytes | None, *, grpc: bool = False) -> SideResponse:
        """One request to a host of `cluster`. The caller bounds the time (asyncio.timeout). `body`
        None: no body, and no content-length (b"": content-length 0)."""
        host = cluster.pick()
        if host is None:
            raise SideCallError(f"no healthy endpoint in cluster {cluster.model.name}")
        address = host.pool.address
        if grpc or cluster.model.protocol == "http2":
            return await self._h2_call(cluster, address, method, path, authority, headers, body)
        streams = self._take_idle(address)
        if streams is None:
            streams = await cluster.connector.streams(address)
            if agreed_protocol(streams[1].transport) == "h2":  # ALPN chose HTTP/2 (protocol auto)
                streams[1].close()
                return await self._h2_call(cluster, address, method, path, authority, headers, body)
        try:
            response, reusable = await _http1_exchange(streams, method, path, authority, headers, body)
        except BaseException:
            streams[1].close()
            raise
        if reusable and len(self._idle.setdefault(address, [])) < _IDLE_PER_HOST:
            self._idle[address].append(streams)
        else:
            streams[1].close()
        return response

    async def call_endpoint(self, address: SockAddr, path: bytes, authority: bytes,
                            headers: Fields, body: bytes) -> SideResponse:
        """A gRPC call to a fixed target (Envoy's google_grpc target_uri): host and port, or a Unix
        socket path, in plaintext."""
        key = (address, 0) if isinstance(address, str) else address
        conn = self._h2.get(key)
        if conn is None or conn.closed:
            if isinstance(address, str):
                streams = await asyncio.open_unix_connection(address)
            else:
                streams = await asyncio.open_connection(*address)
            conn = self._h2[key] = _H2Connection(streams, DEFAULT_HTTP2)
        return await conn.request(b"POST", path, authority, b"http", headers, body)

    async def grpc(self, clusters: Mapping[str, ClusterRuntime], cluster: str,
                   target: tuple[str, int] | str | None, path: bytes, authority: bytes, message: bytes,
                   metadata: Fields, timeout: float | None) -> SideResponse | None:
        """One unary gRPC call (Envoy's envoy_grpc to `cluster`, or google_grpc to `target`), the
        message framed here and the deadline sent as grpc-timeout; None when the cluster is unknown."""
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        headers = [(b"content-type", b"application/grpc"), *metadata]
        if timeout:
            headers.insert(1, (b"grpc-timeout", b"%dm" % max(1, int(timeout * 1000))))
        if target is not None:
            return await self.call_endpoint(target, path, authority, headers, framed)
        runtime = clusters.get(cluster)
        if runtime is None:
            return None
        return await self.call(runtime, b"POST", path, authority, headers, framed, grpc=True)

    def _take_idle(self, address: SockAddr) -> Streams | None:
        idle = self._idle.get(address)
        while idle:
            streams = idle.pop()
            if not streams[0].at_eof() and not streams[1].is_closing():
                return streams
            streams[1].close()
        return None

    async def _h2_call(self, cluster: ClusterRuntime, address: SockAddr, method: bytes, path: bytes,
                       authority: bytes, headers: Fields, body: bytes | None) -> SideResponse:
        conn = self._h2.get(address)
        if conn is None or conn.closed:
            streams = await cluster.connector.streams(address)
            conn = self._h2[address] = _H2Connection(streams, cluster.model.http2)
        scheme = b"https" if cluster.model.tls is not None else b"http"
        return await conn.request(method, path, authority, scheme, headers, body)

    def close(self) -> None:
        for idle in self._idle.values():
            for _reader, writer in idle:
                writer.close()
        self._idle.clear()
        for conn in self._h2.values():
            conn.close()
        self._h2.clear()


async def _http1_exchange(streams: Streams, method: bytes, path: bytes, authority: bytes,
                          headers: Fields, body: bytes | None) -> tuple[SideResponse, bool]:
    reader, writer = streams
    head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, path, authority)]
    head += [b"%s: %s\r\n" % (k, v) for k, v in headers if k not in (b"host", b"content-length")]
    head.append(b"\r\n" if body is None else b"content-length: %d\r\n\r\n" % len(body))
    writer.write(b"".join(head) + (body or b""))
    line = await reader.readline()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise SideCallError(f"not an HTTP/1.1 answer: {line[:60]!r}")
    status = int(parts[1])
    fields: Fields = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise SideCallError("the connection closed in the answer's head")
        name, sep, value = line.partition(b":")
        if not sep:
            raise SideCallError(f"malformed header line {line[:60]!r}")
        fields.append((name.strip().lower(), value.strip()))
        if len(fields) > 200:
            raise SideCallError("too many header fields")
    values = dict(fields)
    keep = values.get(b"connection", b"").lower() != b"close"
    if status in (204, 304) or 100 <= status < 200 or method == b"HEAD":
        data = b""
    elif b"chunked" in values.get(b"transfer-encoding", b"").lower():
        data = await _chunked(reader)
    elif b"content-length" in values:
        length = int(values[b"content-length"])
        if length > MAX_BODY:
            raise SideCallError(f"answer body of {length} bytes")
        data = await reader.readexactly(length)
    else:
        data = await reader.read(MAX_BODY + 1)
        keep = False
        if len(data) > MAX_BODY:
            raise SideCallError("answer body too large")
    return SideResponse(status, fields, data), keep


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";")[0].strip() or b"x", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers: not used by side calls
            return bytes(out)
        if len(out) + size > MAX_BODY:
            raise SideCallError("answer body too large")
        out += await reader.readexactly(size)
        await reader.readexactly(2)


class _H2Connection:
    """One HTTP/2 connection for side calls: streams multiplexed, answers delivered by a reader task."""

    def __init__(self, streams: Streams, opts: Http2Options) -> None:
        self._reader, self._writer = streams
        self._session = h2session.client(opts, client_settings(opts))
        self._waiting: dict[int, tuple[asyncio.Future[SideResponse], SideResponse]] = {}
        self.closed = False
        self._writer.write(self._session.data_to_send())
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def request(self, method: bytes, path: bytes, authority: bytes, scheme: bytes, headers: Fields,
                      body: bytes | None) -> SideResponse:
        if self.closed:
            raise SideCallError("the connection closed")
        head = [(b":method", method), (b":scheme", scheme), (b":path", path), (b":authority", authority),
                *((k, v) for k, v in headers if k not in (b"host", b"connection", b"te", b"content-length")
                  and not k.startswith(b":"))]
        if body is not None and (body or method == b"POST"):
            head.append((b"content-length", b"%d" % len(body)))
        if any(k == b"content-type" and v.startswith(b"application/grpc") for k, v in head):
            head.append((b"te", b"trailers"))
        sid = self._session.send_message(0, head, body or b"", None)
        future: asyncio.Future[SideResponse] = asyncio.get_running_loop().create_future()
        self._waiting[sid] = (future, SideResponse(0, []))
        self._writer.write(self._session.data_to_send())
        try:
            return await future
        finally:
            if self._waiting.pop(sid, None) is not None and not self.closed:  # cancelled: reset it
                with contextlib.suppress(Exception):
                    self._session.reset_stream(sid, h2session.ErrorCode.CANCEL)
                    self._writer.write(self._session.data_to_send())

    async def _read(self) -> None:
        reason = "the connection closed"
        try:
            while data := await self._reader.read(65536):
                for kind, sid, a, b in self._session.receive(data):
                    self._event(kind, sid, a, b)
                out = self._session.data_to_send()
                if out:
                    self._writer.write(out)
                if self._session.finished():
                    break
        except (OSError, SessionError) as err:
            reason = str(err) or type(err).__name__
        finally:
            self.close(reason)

    def _event(self, kind: int, sid: int, a: object, b: object) -> None:
        if kind == GOAWAY:
            self.closed = True  # no new calls; those below the last id finish
            return
        waiting = self._waiting.get(sid)
        if waiting is None:
            return
        future, response = waiting
        if kind == RESPONSE:
            assert isinstance(a, list)
            status = next((v for k, v in a if k == b":status"), b"0")
            if status.startswith(b"1"):
                return
            response.status = int(status)
            response.headers = [(k, v) for k, v in a if not k.startswith(b":")]
        elif kind == TRAILERS:
            assert isinstance(a, list)
            response.trailers = a
        elif kind == DATA:
            assert isinstance(a, bytes) and isinstance(b, int)
            response.body += a
            self._session.acknowledge(sid, b)
            if len(response.body) > MAX_BODY and not future.done():
                future.set_exception(SideCallError("answer body too large"))
        elif kind == END:
            if not future.done():
                future.set_result(response)
        elif kind in (RESET, STREAM_ERROR) and not future.done():
            future.set_exception(SideCallError(f"stream reset ({a})"))

    def close(self, reason: str = "closed") -> None:
        self.closed = True
        for future, _response in self._waiting.values():
            if not future.done():
                future.set_exception(SideCallError(reason))
        self._waiting.clear()
        self._writer.close()
        if not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()
