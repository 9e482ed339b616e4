"""What the Exchange's mixins (timers, replies, retrying) may use of the Exchange they are part of.

The mixins keep the exchange module to its request and upstream flow; this base tells mypy what they
may touch, once, and adds nothing at run time (no slots: Exchange holds them all).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from meshpy.codec.request_facts import RequestFacts
    from meshpy.errors import ProxyError
    from meshpy.filters import Request
    from meshpy.ports import ResponseWriter, UpstreamStream
    from meshpy.routing.compile import HttpListenerConfig
    from meshpy.routing.table import CompiledRoute
    from meshpy.stack.filter_chain import PythonFilter
    from meshpy.stack.retry import RetryState
    from meshpy.upstream.cluster import ClusterRuntime, Host


class ExchangeParts:
    if not TYPE_CHECKING:  # mypy would hold the mixins to these empty slots
        __slots__ = ()

    if TYPE_CHECKING:
        cfg: HttpListenerConfig
        down: ResponseWriter
        route: CompiledRoute | None
        cluster: ClusterRuntime | None
        host: Host | None
        conn: UpstreamStream | None
        retry: RetryState | None
        method: bytes
        authority: str
        path: str
        _filter_req: Request | None
        PROTOCOL: str
        headers: list[tuple[bytes, bytes]]
        up_head_bytes: bytes
        req_done: bool
        started: bool
        done: bool
        keep_alive: bool
        http10: bool
        head_request: bool
        down_chunked: bool
        flag: str
        resp_status: int
        bytes_out: int
        next_check: float
        _count_attempts: bool
        _deadline: float
        _duration_deadline: float
        _grpc_timeout: float
        _last_activity: float
        _timer: asyncio.Handle | None
        _timer_at: float
        _fault_timer: asyncio.Handle | None
        _local: tuple[int, list[tuple[bytes, bytes]], bytes] | None
        _buffered: list[bytes] | None
        _buffered_bytes: int
        _reused: bool
        _up_t0: float
        _retried: bool
        _close_delimited: bool
        trailers: list[tuple[bytes, bytes]] | None
        up_chunked: bool
        facts: RequestFacts
        _grpc: bool
        _grpc_status: int
        upgrade: bytes | None
        early: bytes
        bytes_in: int
        _upgraded: UpstreamStream | None  # the upstream side of a tunnel (None: CONNECT's own)

        def _attach(self, conn: UpstreamStream) -> None: ...
        def _on_pool(self, result: UpstreamStream | BaseException) -> None: ...
        def _complete(self) -> None: ...
        def _finish(self) -> None: ...
        def has_body(self) -> bool: ...
        def _host_failed(self) -> None: ...
        def _dispatch(self, route: CompiledRoute) -> None: ...
        def _open_tunnel(self, host: Host) -> None: ...
        def _connect_request(self, target: bytes) -> None: ...
        def _stop_timers(self) -> None: ...
        def is_grpc(self) -> bool: ...
        def up_head(self, status: int, fields: bytes, keep_alive: bool) -> None: ...
        # Provided by the mixins to one another:
        def on_deadline(self) -> None: ...
        def _per_try_timeout(self) -> None: ...
        def _schedule(self, when: float, now: float) -> None: ...
        def _arm_idle(self) -> None: ...
        def _timeout(self, err: ProxyError, flag: str) -> None: ...
        def _error(self, err: ProxyError) -> None: ...
        def _abort(self, flag: str) -> None: ...
        def _response_headers(self, status: int, headers: list[tuple[bytes, bytes]],
                              route_headers: bool = True) -> list[tuple[bytes, bytes]] | None: ...
        def _whole_body(self, route: CompiledRoute, body: bytes) -> bytes | None: ...
        def _filter_request_body(self, route: CompiledRoute, chunk: bytes, end: bool) -> bytes | None: ...
        def _filter_response_body(self, route: CompiledRoute, chunk: bytes, end: bool) -> bytes | None: ...
        def _body_may_change(self, filters: tuple[PythonFilter, ...], response: bool) -> bool: ...
        def _local_head(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None: ...
        def _hold_head(self, final: list[tuple[bytes, bytes]]) -> bool: ...
        def _held_head(self) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None: ...
        def _send_local(self) -> None: ...
        def _switch(self, fields: bytes) -> None: ...
        def _retry_on_status(self, status: int, fields: bytes) -> bool: ...
        def _try_again(self, kind: str, status: int = 0, grpc_status: int | None = None,
                       retry_after: float | None = None, delay: float | None = None) -> bool: ...
        def _request_timers(self) -> None: ...
        def _respond(self, status: int, fields: bytes) -> None: ...
        def _early_body(self, route: CompiledRoute) -> bool: ...
        def _local_reply(self, status: int, body: bytes, flag: str, *, route: CompiledRoute | None = None,
                         extra: list[tuple[bytes, bytes]] | None = None, close: bool = False,
                         grpc_status: int | None = None, local: bool = True, edits: bool = True) -> None: ...
