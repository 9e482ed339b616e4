"""One HTTP/1.1 request and its response, through routing, an upstream connection and back.

The exchange is a callback-driven state machine, not a coroutine: the downstream parser, the upstream
parser and the pool call into it. That keeps the per-request cost to a handful of method calls (a task
per request costs more than the whole routing step). Everything it needs was compiled ahead into the
listener config it captured at its start, so a reload never changes a request in flight.

Parts of it live in mixins, each in its own module: its timers (meshpy.stack.timers), the answers it
makes itself (meshpy.stack.replies) and retries (meshpy.stack.retrying).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from meshpy.codec.http1 import (
    CONTINUE_100,
    check_transfer_encoding,
    no_body_status,
    serialize_headers,
    split_absolute_form,
)
from meshpy.codec.http2 import CONNECTION_SPECIFIC
from meshpy.codec.raw_head import parse_fields
from meshpy.codec.request_facts import RequestFacts
from meshpy.errors import (
    BadRequest,
    ClusterNotFound,
    NoHealthyUpstream,
    NoRoute,
    UpstreamConnectFailure,
    UpstreamOverflow,
    UpstreamProtocolError,
    UpstreamReset,
)
from meshpy.ports import NO_BODY, SIZED, UNSIZED
from meshpy.stack.filtering import FilteringMixin
from meshpy.stack.forwarding import (
    downstream_response_headers,
    request_id,
    upstream_request_headers,
)
from meshpy.stack.guards import request_hash
from meshpy.stack.replies import RepliesMixin
from meshpy.stack.retry import CONNECT, RESET, RetryState
from meshpy.stack.retrying import RetryingMixin
from meshpy.stack.timers import TimersMixin
from meshpy.stack.upgrades import UpgradesMixin
from meshpy.upstream.pool import PoolOverflow

if TYPE_CHECKING:
    import asyncio

    from meshpy.ports import ResponseWriter, UpstreamStream
    from meshpy.routing.compile import HttpListenerConfig
    from meshpy.routing.table import CompiledRoute
    from meshpy.upstream.cluster import ClusterRuntime, Host

BODY_BUFFER_HIGH = 256 * 1024  # request body held while the upstream connection opens
_PAUSE_UPSTREAM = 2
_PAUSE_BODY_BUFFER = 4


class Exchange(RetryingMixin, TimersMixin, RepliesMixin, UpgradesMixin, FilteringMixin):
    PROTOCOL = "HTTP/1.1"  # for the access log
    # The upstream request head as a list, for an HTTP/2 upstream (no serialize-then-parse there);
    # set by _dispatch before any upstream sees it, so not in __init__ (a list less per request).
    up_fields: list[tuple[bytes, bytes]]
    up_target: bytes
    up_chunked: bool  # the request body goes upstream chunked (its own framing, or re-framed)
    __slots__ = (
        "_buffered",
        "_buffered_bytes",
        "_close_delimited",
        "_deadline",
        "_fault_timer",
        "_filter_req",
        "_grpc",
        "_grpc_status",
        "_head_base",
        "_last_activity",
        "_local",
        "_retried",
        "_reused",
        "_timer",
        "_timer_at",
        "_too_large",
        "_upgraded",
        "authority",
        "bytes_in",
        "bytes_out",
        "cfg",
        "cluster",
        "conn",
        "done",
        "down",
        "down_chunked",
        "early",
        "facts",
        "flag",
        "head_request",
        "headers",
        "host",
        "http10",
        "keep_alive",
        "method",
        "next_check",
        "path",
        "req_done",
        "resp_status",
        "retry",
        "rid",
        "route",
        "started",
        "t0",
        "target",
        "trailers",
        "up_chunked",
        "up_fields",
        "up_head_bytes",
        "up_target",
        "upgrade",
        "wall0",
    )

    def __init__(self, down: ResponseWriter, cfg: HttpListenerConfig) -> None:
        self.down = down
        self.cfg = cfg
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.http10 = False
        self.keep_alive = True
        # Filled by the downstream parser's header callback (RequestFacts.note), header by header.
        self.facts = RequestFacts()
        self.authority = ""
        self.path = ""
        self.rid: bytes | None = None
        self.route: CompiledRoute | None = None
        self.cluster: ClusterRuntime | None = None
        self.host: Host | None = None
        self.conn: UpstreamStream | None = None
        self.up_head_bytes = b""
        self._head_base = b""  # the upstream head without x-envoy-attempt-count (retry routes only)
        self.retry: RetryState | None = None
        self._buffered: list[bytes] | None = None
        self._buffered_bytes = 0
        self._local: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None  # a reply of its own
        self._grpc = False  # a gRPC call (HTTP/2 only): errors are answered as gRPC statuses
        self.trailers: list[tuple[bytes, bytes]] | None = None  # the response's, for an HTTP/2 client
        self._timer: asyncio.Handle | None = None  # a plain Handle when uvloop runs it at once
        self._fault_timer: asyncio.Handle | None = None  # an injected delay under way
        self.next_check = 0.0  # when the coarse sweep looks at this exchange next (0: not enrolled)
        self._deadline = 0.0
        self._last_activity = 0.0
        self._retried = False
        self._reused = False
        self._too_large = False
        self._close_delimited = False
        self.head_request = False
        self.req_done = False
        self.started = False  # response head written downstream
        self.done = False
        self.down_chunked = False
        self.resp_status = 0
        self.flag = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.upgrade: bytes | None = None  # an Upgrade the listener allows and the request asks for
        self.early = b""  # bytes the client sent after its upgrade request, for the tunnel
        self.t0 = down.loop.time()
        self.wall0 = time.time() if cfg.loggers else 0.0

    # -- request side ----------------------------------------------------------------------------
    def head_complete(self, method: bytes, version: str, keep_alive: bool, upgrading: bool = False) -> None:
        """Runs inside the parser callback: a BadRequest raised here becomes a 400 for the client.
        `upgrading`: the HTTP/1.1 parser takes what follows the head as another protocol (llhttp's
        upgrade flag), so no body of this request will be parsed."""
        self.method = method
        self.http10 = version == "1.0"
        self.keep_alive = keep_alive
        self.head_request = method == b"HEAD"
        stats = self.cfg.stats
        stats.rq_total += 1
        stats.rq_active += 1
        facts = self.facts
        if facts.chunked:
            for name, value in self.headers:
                if name == b"transfer-encoding":
                    check_transfer_encoding(value)
            if self.http10:
                self.keep_alive = False  # RFC 9112 6.1: the framing of such a message is suspect
        target = self.target
        if 0x23 in target:  # `#` (an int: ~13 ns against ~95 ns for the bytes b"#")
            raise BadRequest("fragment in request target")  # as Envoy: never sent, never routed on
        if target[:1] != b"/":
            if method == b"CONNECT":
                if self.has_body():
                    raise BadRequest("CONNECT with a body")  # it would be read as tunnel bytes
                return self._connect_request(target)
            target = self._absolute_form(target)
            self.target = target
        if facts.authority is None:
            if not self.http10:
                raise BadRequest("missing host header")
        else:  # (checked by the connection: Http1Downstream.on_headers_complete, or read_request)
            self.authority = facts.authority.decode("latin-1")
        self.path = target.decode("latin-1")
        if upgrading:
            self._upgrade_asked()
        limit = self.cfg.body_limit
        if limit is not None and facts.content_length is not None and facts.content_length > limit:
            self._too_large = True  # answered 413 by start(), in turn with any pipelined request

    def _upgrade_asked(self) -> None:
        """The parser will read no body and hand on every byte after the head: a tunnel if the listener
        allows the type; 403 for other types, as Envoy; `h2c` alone is served as a plain request (its
        upgrade headers dropped as hop-by-hop), its body read by a relay parser (see h1_body_relay)."""
        facts = self.facts
        kind = (facts.upgrade or b"").lower()
        if kind in self.cfg.upgrades and kind != b"connect":
            if self.has_body():
                raise BadRequest("upgrade request with a body")
            assert facts.upgrade is not None
            self._accept_upgrade(facts.upgrade)
        elif kind != b"h2c":
            raise BadRequest("upgrade not allowed", 403)

    def _absolute_form(self, target: bytes) -> bytes:
        # "GET http://host/path": the authority comes from the target (RFC 9112 3.2.2).
        host, path = split_absolute_form(target)
        self.facts_set_authority(host)
        return path

    def facts_set_authority(self, host: bytes) -> None:
        self.facts.authority = host
        self.headers = [(n, v) for n, v in self.headers if n != b"host"]
        self.headers.append((b"host", host))

    def start(self) -> None:
        """Route and, for a forwarded request, get an upstream connection."""
        if self._too_large:
            return self._local_reply(413, b"payload too large", "", close=True)
        cfg = self.cfg
        route = cfg.table.match(self.authority, self.path, self.method.decode("latin-1"), self.headers)
        if route is None:
            return self._error(NoRoute())
        self.route = route
        if route.request_body_filters and (self._buffered or self.req_done) and self._early_body(route):
            return
        if route.filters and self._run_filters(route, 0):
            return  # answered (rate limited, aborted, a filter's reply) or held (resume_filters)
        self._dispatch(route)

    def _dispatch(self, route: CompiledRoute) -> None:
        """Answer here, or pick a cluster and host and get an upstream connection."""
        if not route.forward:
            return self._answer_here(route)
        cfg = self.cfg
        cluster = cfg.clusters.get(route.pick_cluster())
        if cluster is None:
            return self._error(ClusterNotFound())
        balancer = cluster.balancer
        if balancer is None:
            host = cluster.round_robin()
        elif balancer.by_destination:
            host = cluster.host_for(self.down.original_dst)
        else:
            key = request_hash(route.hash_policy, self.headers, self.down.peer) if balancer.hashed else None
            host = balancer.pick(key)
        if host is None:
            return self._error(NoHealthyUpstream())
        self.cluster = cluster
        self.host = host
        facts = self.facts
        rid = facts.request_id
        new_rid = request_id() if (rid is None and cfg.generate_rid) or (rid and cfg.replace_rid) else None
        self.rid = new_rid or rid
        headers = upstream_request_headers(
            self.headers, facts, peer=self.down.peer, host=route.host_rewrite,
            use_remote_address=cfg.use_remote_address, forwarded_proto=cfg.forwarded_proto,
            request_id=new_rid)
        self.up_chunked = facts.chunked
        if route.upstream_filters:
            for f in route.upstream_filters:
                f.on_upstream(self, headers)
        if route.request_body_filters and self.has_body():
            # The filters may change the body's length: it goes upstream chunked.
            headers = [h for h in headers if h[0] != b"content-length"]
            if not facts.chunked:
                headers.append((b"transfer-encoding", b"chunked"))
                self.up_chunked = True
        if self.upgrade is not None:  # hop-by-hop, dropped above; this hop carries them on
            headers += [(b"connection", b"upgrade"), (b"upgrade", self.upgrade)]
        target = route.rewrite_path(self.path).encode("latin-1") if route.rewrites else self.target
        self.up_fields = headers
        self.up_target = target
        # join: about half the cost of bytes %-formatting for these pieces
        self.up_head_bytes = b"".join(
            (self.method, b" ", target, b" HTTP/1.1\r\n", serialize_headers(headers), b"\r\n"))
        if route.retry is not None:
            self._start_retries(route.retry)
        if facts.expect_continue and not self.http10:
            self.down.out.append(CONTINUE_100)
        host.active_requests += 1
        cstats = cluster.stats
        cstats.rq_total += 1
        cstats.rq_active += 1
        if self.req_done:
            self._request_timers()
        elif self.has_body():
            self._arm_idle()  # guards a slow upload until the request ends
        if self.upgrade == b"connect":
            return self._open_tunnel(host)  # CONNECT: a TCP connection of its own, not from the pool
        conn = host.pool.checkout(self._on_pool)
        if conn is not None:
            self._attach(conn)

    def is_grpc(self) -> bool:
        return self._grpc

    def has_body(self) -> bool:
        return self.facts.chunked or bool(self.facts.content_length)

    def request_body(self, data: bytes) -> None:
        if self.done:
            return  # the answer went out already (local reply, error): the rest is discarded
        self.bytes_in += len(data)
        limit = self.cfg.body_limit
        if limit is not None and self.bytes_in > limit:
            if not self.started:
                self._local_reply(413, b"payload too large", "", close=True)
            else:
                self._abort("")
            return
        if self._local is not None:
            return
        route = self.route
        if route is not None and route.request_body_filters:
            out = self._filter_request_body(route, data, False)
            if not out:
                return  # answered, failed, or nothing to send
            data = out
        self._last_activity = self.down.loop.time()
        self._forward_body(data)

    def _forward_body(self, data: bytes) -> None:
        if self.retry is not None:
            self.retry.keep(data)
        conn = self.conn
        if conn is not None:
            conn.write_body(data, self.up_chunked)
            return
        buf = self._buffered
        if buf is None:
            buf = self._buffered = []
        buf.append(data)
        self._buffered_bytes += len(data)
        if self._buffered_bytes > BODY_BUFFER_HIGH:
            self.down.pause_reading(_PAUSE_BODY_BUFFER)

    def request_end(self) -> None:
        self.req_done = True
        if self.done:
            return
        if self._local is not None:
            self._send_local()
            return
        route = self.route
        if route is not None and route.request_body_filters and not self._body_end(route):
            return
        conn = self.conn
        if conn is not None and (self.up_chunked or conn.multiplexed):  # else nothing marks the end
            conn.end_body(self.up_chunked)
        if self.host is not None:
            self._request_timers()

    def _body_end(self, route: CompiledRoute) -> bool:
        """The request body filters' end hook, and what they add; False when one answered or failed."""
        tail = self._filter_request_body(route, b"", True)
        if tail is None:
            return False
        if tail:
            self._forward_body(tail)
        return True

    def _early_body(self, route: CompiledRoute) -> bool:
        """A pipelined request's body came before it was routed: it passes the body filters now.
        True when one answered or failed."""
        buffered, self._buffered, self._buffered_bytes = self._buffered, None, 0
        for data in buffered or ():
            out = self._filter_request_body(route, data, False)
            if out is None:
                return True
            if out:
                self._forward_body(out)
        return self.req_done and not self._body_end(route)

    def _request_timers(self) -> None:
        timeout = self.route.timeout if self.route is not None else None
        if timeout is not None:
            self._deadline = self.down.loop.time() + timeout
        self._arm_idle()

    def request_broken(self, err: BadRequest) -> None:
        """The client's bytes went bad in the middle of this request's body."""
        if self.done:
            return
        if not self.started:
            self._local_reply(err.status, err.body, "DPE", close=True)
        else:
            self._abort("DPE")

    # -- upstream connection -----------------------------------------------------------------------
    def _on_pool(self, result: UpstreamStream | BaseException) -> None:
        if isinstance(result, BaseException):
            if not self.done:
                if isinstance(result, PoolOverflow):
                    self._error(UpstreamOverflow())
                    return
                self._host_failed()
                if not self._try_again(CONNECT):
                    self._error(UpstreamConnectFailure())
            return
        if self.done:
            assert self.host is not None
            self.host.pool.release(result)  # a fresh, unused connection: keep it for the next one
            return
        self._attach(result)

    def _attach(self, conn: UpstreamStream) -> None:
        self.conn = conn
        self._reused = conn.used
        conn.attach(self, self.head_request)
        if self.down.write_paused:
            # The client is still behind on an earlier answer, and the transport signals a pause
            # only once: hold this upstream back from the start.
            conn.pause_reading()
        buf = self._buffered
        rs = self.retry
        if rs is not None:
            if rs.attempt > 1:
                buf = rs.body  # everything the client sent so far, _buffered included
                if self._buffered is not None:
                    self._buffered = None
                    self._buffered_bytes = 0
                    self.down.resume_reading(_PAUSE_BODY_BUFFER)
            if rs.policy.per_try_timeout is not None:
                # Folded into the exchange's one timer (a coarse sweep for long ones), not a timer of its own.
                now = self.down.loop.time()
                rs.try_deadline = now + rs.policy.per_try_timeout
                self._schedule(rs.try_deadline, now)
        if buf and self._buffered is not None:
            self._buffered = None
            self._buffered_bytes = 0
            self.down.resume_reading(_PAUSE_BODY_BUFFER)
        conn.send_request(self, buf, self.req_done)

    def upstream_fields(self) -> list[tuple[bytes, bytes]]:
        """The upstream head as a header list (an HTTP/2 upstream frames it itself), with the attempt
        count as the HTTP/1.1 head has it."""
        rs = self.retry
        if self._head_base and rs is not None:
            return [*self.up_fields, (b"x-envoy-attempt-count", b"%d" % rs.attempt)]
        return self.up_fields

    def up_head(self, status: int, fields: bytes, keep_alive: bool) -> None:
        """`fields`: the upstream head after its status line (see meshpy.codec.raw_head)."""
        if status >= 200:
            cluster = self.cluster
            if cluster is not None and cluster.outlier is not None and self.host is not None:
                cluster.outlier.result(self.host, status)
            if self.retry is not None and self._retry_on_status(status, fields):
                return
        if status < 200:
            if status == 101 and self.upgrade is not None:
                return self._switch(fields)
            if status != 100:  # 100 was answered by the proxy itself
                self._interim(status, fields)
            return
        self.resp_status = status
        self._respond(status, fields)

    def _interim(self, status: int, fields: bytes) -> None:
        """A 1xx answer other than 100 (e.g. 103 Early Hints), for clients that can take one."""
        conn = self.conn
        listed = conn.response_fields(fields) if conn is not None else parse_fields(fields)
        self.down.respond_interim(self, status, downstream_response_headers(listed)[0])

    def _respond(self, status: int, fields: bytes) -> None:
        """The final response head, to the client: the upstream's bytes when nothing changes them and
        the writer can pass them on (HTTP/1.1), else rebuilt from the fields."""
        route = self.route
        if self.cfg.server_name is None and (route is None or not route.response_changes) and \
                self.down.respond_raw(self, status, fields):
            self.started = True
            return
        conn = self.conn
        listed = conn.response_fields(fields) if conn is not None else parse_fields(fields)
        self._head_from_list(status, listed)

    def _head_from_list(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The general path: hop-by-hop fields out, a Date, the route's response filters and the
        server name (_response_headers), then the writer frames it for its client."""
        listed, length, chunked, has_date = downstream_response_headers(headers)
        if not has_date:
            listed.append((b"date", self.down.slot.date.now()))  # as Envoy: RFC 9110 6.6.1
        final = self._response_headers(status, listed)
        if final is None:
            return
        if final is not listed and length is not None and not any(h[0] == b"content-length" for h in final):
            length = None  # re-framed for the response body filters
        if self.head_request or no_body_status(status):
            body = NO_BODY
        elif length is not None:
            body = SIZED
        else:
            body = UNSIZED
            self._close_delimited = not chunked
        if self._grpc:
            self._note_grpc_status(final)  # a trailers-only answer carries it in its head
        self.started = True
        self.down.respond_head(self, status, final, body)

    def up_body(self, data: bytes) -> None:
        route = self.route
        if route is not None and route.response_body_filters:
            out = None if self.done else self._filter_response_body(route, data, False)
            if not out:
                return  # failed (the exchange was reset), or nothing to send
            data = out
        self.bytes_out += len(data)
        self.down.respond_body(self, data)
        if self._deadline or self._timer is not None:
            self._last_activity = self.down.loop.time()

    def _write_body(self, data: bytes) -> None:
        """A piece of response body that no upstream read brought (a body filter's)."""
        self.bytes_out += len(data)
        self.down.respond_body(self, data)

    def up_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Response trailers (an HTTP/2 upstream's, gRPC's grpc-status among them): the end of an HTTP/2
        client's stream; an HTTP/1.1 client gets the body's end without them, as from Envoy by default."""
        self.trailers = [t for t in trailers if t[0] not in CONNECTION_SPECIFIC]
        if self._grpc:
            self._note_grpc_status(self.trailers)

    def _note_grpc_status(self, fields: list[tuple[bytes, bytes]]) -> None:
        for name, value in fields:
            if name == b"grpc-status" and value.isdigit():
                self._grpc_status = int(value)

    def up_end(self, keep_alive: bool) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None and self.host is not None:
            if keep_alive and self.req_done:
                self.host.pool.release(conn)
            else:
                self.host.pool.discard(conn)
        route = self.route
        if route is not None and route.response_body_filters:
            tail = self._filter_response_body(route, b"", True)
            if tail is None:
                return  # a filter failed: the exchange was reset
            if tail:
                self._write_body(tail)
        self.down.respond_end(self)
        if not self.req_done:
            self.keep_alive = False  # the rest of the request body would be read as a new request
        self._finish()

    def _host_failed(self) -> None:
        """No answer from the current host (connect failure, reset, timeout), for outlier detection."""
        cluster = self.cluster
        if cluster is not None and cluster.outlier is not None and self.host is not None:
            cluster.outlier.local_failure(self.host)

    def up_failed(self, exc: BaseException | None, protocol_error: bool) -> None:
        conn = self.conn
        if not self.done:
            self._host_failed()
        self.conn = None
        if conn is not None and self.host is not None:
            self.host.pool.discard(conn)
        if self.done:
            return
        if self.started:
            if not protocol_error and self._close_delimited:
                self.up_end(False)  # a close-delimited body ends with the connection
            else:
                self._abort("UPE" if protocol_error else "UC")
            return
        if protocol_error:
            return self._error(UpstreamProtocolError())
        if self.retry is not None and self._try_again(RESET):
            return
        if conn is not None and self._reused and not self._retried and not self.has_body() and \
                self.host is not None:
            # A keep-alive connection the upstream closed just as we reused it: nothing was received,
            # and a bodiless request can be sent again safely on a fresh connection, once.
            self._retried = True
            fresh = self.host.pool.checkout(self._on_pool)
            if fresh is not None:
                self._attach(fresh)
            return
        self._error(UpstreamReset())

    def flush(self) -> None:
        self.down.flush()

    # -- flow control ------------------------------------------------------------------------------
    def down_pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def down_resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def up_pause_writing(self) -> None:
        self.down.pause_reading(_PAUSE_UPSTREAM)

    def up_resume_writing(self) -> None:
        self.down.resume_reading(_PAUSE_UPSTREAM)

    def downstream_lost(self) -> None:
        if self.done:
            return
        conn = self.conn
        self.conn = None
        if conn is not None and self.host is not None:
            self.host.pool.discard(conn)
        elif self.host is not None:
            self.host.pool.cancel_waiter(self._on_pool)
        self.flag = self.flag or "DC"
        self.keep_alive = False
        self._complete()

    def _finish(self) -> None:
        self._complete()
        down = self.down
        down.exchange_done(self, self.keep_alive)
        down.flush()

    def _complete(self) -> None:
        if self.done:
            return
        self.done = True
        if self.retry is not None:
            self._end_retries()
        if self._fault_timer is not None:  # the client left during an injected delay
            self._fault_timer.cancel()
            self._fault_timer = None
            if self.route is not None and self.route.fault is not None:
                self.route.fault.active -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.next_check:
            self.down.slot.deadlines.discard(self)
        conn = self.conn
        if conn is not None:
            # Answered before the upstream exchange ended (413 or 400 while the request body was
            # streaming upstream): that connection holds a half-sent request, never reusable.
            self.conn = None
            conn.detach()
            if self.host is not None:
                self.host.pool.discard(conn)
        if self._buffered is not None:
            self._buffered = None
            self.down.resume_reading(_PAUSE_BODY_BUFFER)
        self.down.resume_reading(_PAUSE_UPSTREAM)
        now = self.down.loop.time()
        seconds = now - self.t0
        status = self.resp_status
        cfg = self.cfg
        cfg.stats.request_done(status, seconds)
        route = self.route
        if route is not None and route.complete_filters:  # (on_complete hooks)
            self._filter_complete(route)
        if self.host is not None:
            self.host.active_requests -= 1
        cluster = self.cluster
        if cluster is not None:  # (a hedged request may end with no attempt of its own running)
            cluster.stats.request_done(status, seconds)
            if cluster.balancer is not None and cluster.balancer.measures and self.host is not None:
                cluster.balancer.done(self.host, seconds)
        if cfg.loggers:
            upstream = self.host.label if self.host is not None else ""
            rid = (self.rid or b"").decode("latin-1")
            for logger in cfg.loggers:
                logger.log(self.wall0, self.method.decode("latin-1"), self.authority, self.path,
                           "HTTP/1.0" if self.http10 else self.PROTOCOL, status, self.flag, self.bytes_in,
                           self.bytes_out, seconds, upstream, rid, self.down.peer)
