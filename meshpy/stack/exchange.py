"""One HTTP request and its response, through routing, an upstream connection and back (HTTP/2 requests
are read by meshpy.stack.exchange_h2; the rest is this one core for both).

The exchange is a callback-driven state machine, not a coroutine: the downstream parser, the upstream
parser and the pool call into it. That keeps the per-request cost to a handful of method calls (a task
per request costs more than the whole routing step). Everything it needs was compiled ahead into the
listener config it captured at its start, so a reload never changes a request in flight.

Parts of it live in mixins, each in its own module: the answer on its way to the client
(meshpy.stack.responding), the request body on its way upstream (meshpy.stack.request_body), its
timers (meshpy.stack.timers), the answers it makes itself (meshpy.stack.replies), retries
(meshpy.stack.retrying), upgrades and CONNECT (meshpy.stack.upgrades) and the filter chain
(meshpy.stack.filtering); meshpy.stack.parts tells mypy what they share.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from meshpy.codec.http1 import (
    CONTINUE_100,
    check_transfer_encoding,
    serialize_headers,
    split_absolute_form,
)
from meshpy.codec.request_facts import RequestFacts
from meshpy.errors import (
    BadRequest,
    ClusterNotFound,
    NoHealthyUpstream,
    NoRoute,
    UpstreamConnectFailure,
    UpstreamOverflow,
)
from meshpy.runtime.features import REJECT_FRAGMENT
from meshpy.stack.admission_guard import guard
from meshpy.stack.filtering import FilteringMixin
from meshpy.stack.forwarding import (
    envoy_request_headers,
    request_id,
    upstream_request_headers,
)
from meshpy.stack.guards import request_hash
from meshpy.stack.replies import RepliesMixin
from meshpy.stack.request_body import PAUSE_BODY_BUFFER, PAUSE_UPSTREAM, RequestBodyMixin
from meshpy.stack.responding import RespondingMixin
from meshpy.stack.retry import CONNECT, RetryState
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



class Exchange(RespondingMixin, RequestBodyMixin, RetryingMixin, TimersMixin, RepliesMixin, UpgradesMixin,
               FilteringMixin):
    PROTOCOL = "HTTP/1.1"  # for the access log
    # The upstream request head as a list, for an HTTP/2 upstream (no serialize-then-parse there);
    # set by _dispatch before any upstream sees it, so not in __init__ (a list less per request).
    up_fields: list[tuple[bytes, bytes]]
    up_target: bytes
    up_chunked: bool  # the request body goes upstream chunked (its own framing, or re-framed)
    _grpc_timeout = -1.0  # a gRPC call's grpc-timeout in seconds (-1: none); only HTTP/2 sets it
    __slots__ = (
        "_buffered",
        "_buffered_bytes",
        "_close_delimited",
        "_count_attempts",
        "_deadline",
        "_duration_deadline",
        "_fault_timer",
        "_filter_req",
        "_grpc",
        "_grpc_status",
        "_last_activity",
        "_local",
        "_retried",
        "_reused",
        "_timer",
        "_timer_at",
        "_too_large",
        "_up_t0",
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
        self._count_attempts = False  # x-envoy-attempt-count goes upstream (a retry policy asks)
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
        self._duration_deadline = 0.0  # the stream's duration limit (0: none), see _limit_stream
        self._last_activity = 0.0
        self._retried = False
        self._reused = False
        self._up_t0 = 0.0
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
        if self.http10 and self.cfg.refuse_http_10:
            self.keep_alive = False
            raise BadRequest("Upgrade Required", 426)  # (Envoy's answer, and its words)
        self.keep_alive = keep_alive
        self.head_request = method == b"HEAD"
        stats = self.cfg.stats
        stats.rq_total += 1
        stats.rq_active += 1
        try:
            facts = self.facts
            if facts.chunked:
                for name, value in self.headers:
                    if name == b"transfer-encoding":
                        check_transfer_encoding(value)
                if self.http10:
                    self.keep_alive = False  # RFC 9112 6.1: the framing of such a message is suspect
            target = self.target
            if 0x23 in target:  # `#` (an int: ~13 ns against ~95 ns for the bytes b"#")
                # As Envoy: never sent, never routed on; refused, or cut off where the runtime turns
                # envoy.reloadable_features.http_reject_path_with_fragment off.
                runtime = self.cfg.runtime
                if runtime is None or runtime.snapshot.get_bool(REJECT_FRAGMENT, True):
                    raise BadRequest("fragment in request target")
                target = self.target = target[:target.index(0x23)]
            if target[:1] != b"/":
                if method == b"CONNECT":
                    if self.has_body():
                        raise BadRequest("CONNECT with a body")  # it would be read as tunnel bytes
                    return self._connect_request(target)
                if target != b"*" or method != b"OPTIONS":
                    target = self._absolute_form(target)
                    self.target = target
                # (else asterisk-form, RFC 9112 3.2.4: routed as the path `*`, which no route's prefix
                # matches: 404, as from Envoy)
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
        except BadRequest:
            # Not a request that started: whoever answers the error counts it (Http1Downstream's
            # _send_fatal, H2Exchange for a method left empty), once.
            stats.rq_total -= 1
            stats.rq_active -= 1
            self.method = b""
            raise

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
        if cfg.guarded and guard(self):
            return  # shed under overload, or a header name refused
        facts = self.facts
        if facts.xfcc or cfg.client_cert.adds:
            # Before routing and filters, as Envoy: what they see is what goes upstream.
            xfcc = cfg.client_cert.rewrite(self.headers, facts.xfcc, self.down)
            if xfcc is not None:
                self.headers = xfcc
        route = cfg.table.match(self.authority, self.path, self.method.decode("latin-1"), self.headers)
        if route is None:
            return self._error(NoRoute())
        self.route = route
        if self.upgrade is not None and self._upgrade_refused(route):
            return
        if route.filtered and self._filtered(route):
            return  # answered (rate limited, aborted, a filter's reply) or held (resume_filters)
        self._dispatch(route)

    def _upgrade_refused(self, route: CompiledRoute) -> bool:
        """An upgrade the listener took for some route: this route's word (else the listener's)
        decides; refused, it is answered 403, as Envoy does."""
        kind = (self.upgrade or b"").lower()
        said = route.upgrades
        allowed = kind in self.cfg.listener_upgrades if said is None or kind not in said else said[kind]
        if allowed:
            return False
        self.upgrade = None
        self._local_reply(403, b"upgrade not allowed", "", route=route, close=True)
        return True

    def _dispatch(self, route: CompiledRoute) -> None:
        """Answer here, or pick a cluster and host and get an upstream connection."""
        if not route.forward:
            return self._answer_here(route)
        if route.stream_limited or self._grpc_timeout >= 0:
            self._limit_stream(route)
        cfg = self.cfg
        cluster = cfg.clusters.get(route.pick_cluster(self))  # (the exchange: for a plugin that reads it)
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
            request_id=new_rid, scheme=cfg.scheme, method=self.method)
        self.up_chunked = facts.chunked
        if route.upstream_filters:
            for f in route.upstream_filters:
                f.on_upstream(self, headers)
        if route.request_body_filters and not route.request_body_sized and self.has_body() and \
                self._body_may_change(route.request_body_filters, False):
            # The filters may change the body's length: it goes upstream chunked.
            headers = [h for h in headers if h[0] != b"content-length"]
            if not facts.chunked:
                headers.append((b"transfer-encoding", b"chunked"))
                self.up_chunked = True
        if self.upgrade is not None:  # hop-by-hop, dropped above; this hop carries them on
            headers += [(b"connection", b"upgrade"), (b"upgrade", self.upgrade)]
        target = route.rewrite_path(self.path).encode("latin-1") if route.rewrites else self.target
        if cfg.envoy_headers:
            original_host = self.facts.authority if route.host_rewrite is not None else None
            envoy_request_headers(headers, route, self.target if route.rewrites else None, original_host)
        self.up_fields = headers
        self.up_target = target
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
        if self.cfg.envoy_headers:
            self._up_t0 = self.down.loop.time()  # (x-envoy-upstream-service-time counts from here)
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
                    self.down.resume_reading(PAUSE_BODY_BUFFER)
            if rs.policy.per_try_timeout is not None:
                # Folded into the exchange's one timer (a coarse sweep for long ones), not a timer of its own.
                now = self.down.loop.time()
                rs.try_deadline = now + rs.policy.per_try_timeout
                self._schedule(rs.try_deadline, now)
        if buf and self._buffered is not None:
            self._buffered = None
            self._buffered_bytes = 0
            self.down.resume_reading(PAUSE_BODY_BUFFER)
        conn.send_request(self, buf, self.req_done)

    def upstream_fields(self) -> list[tuple[bytes, bytes]]:
        """The upstream head as a header list (an HTTP/2 upstream frames it itself), with the attempt
        count when the route asks for it."""
        rs = self.retry
        if self._count_attempts and rs is not None:
            return [*self.up_fields, (b"x-envoy-attempt-count", b"%d" % rs.attempt)]
        return self.up_fields

    def upstream_head(self) -> bytes:
        """The upstream head as HTTP/1.1 bytes: serialized once, when an HTTP/1.1 upstream first asks
        (an HTTP/2 one never does), with the attempt count when the route asks for it."""
        head = self.up_head_bytes
        if not head:
            # join: about half the cost of bytes %-formatting for these pieces
            head = self.up_head_bytes = b"".join((self.method, b" ", self.up_target, b" HTTP/1.1\r\n",
                                                  serialize_headers(self.up_fields), b"\r\n"))
        rs = self.retry
        if self._count_attempts and rs is not None:
            return b"%s%s%d\r\n\r\n" % (head[:-2], b"x-envoy-attempt-count: ", rs.attempt)
        return head

    # -- flow control ------------------------------------------------------------------------------
    def down_pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def down_resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def up_pause_writing(self) -> None:
        self.down.pause_reading(PAUSE_UPSTREAM)

    def up_resume_writing(self) -> None:
        self.down.resume_reading(PAUSE_UPSTREAM)

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
            self.down.resume_reading(PAUSE_BODY_BUFFER)
        self.down.resume_reading(PAUSE_UPSTREAM)
        now = self.down.loop.time()
        seconds = now - self.t0
        status = self.resp_status
        cfg = self.cfg
        cfg.stats.request_done(status, seconds)
        route = self.route
        if route is not None and route.filtered:
            if route.complete_filters:
                self._filter_complete(route)
            # The exchange and its filters' Request refer to each other: let go, so that both are
            # freed at once rather than by the cycle collector (which cost ~3 µs per request).
            self._filter_req = None
        if self.host is not None:
            self.host.active_requests -= 1
        cluster = self.cluster
        if cluster is not None:  # (a hedged request may end with no attempt of its own running)
            cluster.stats.request_done(status, seconds)
            if cluster.balancer is not None and cluster.balancer.measures and self.host is not None:
                cluster.balancer.done(self.host, seconds)
        if cfg.loggers:
            # The line is written from this exchange at the logger's flush: it is done and is never
            # reused, so handing it over copies nothing (meshpy.telemetry.accesslog).
            for logger in cfg.loggers:
                logger.log_http(self, seconds)
