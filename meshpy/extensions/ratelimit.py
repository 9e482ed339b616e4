"""Envoy's global rate limit filter (envoy.filters.http.ratelimit): the descriptors a request makes
(meshpy.extensions.ratelimit_actions) go to a rate limit service (envoy.service.ratelimit.v3,
ShouldRateLimit over gRPC; meshpy.extensions.ratelimit_calls), and a request over the limit is
answered 429 with the response flag RL, the other requests go on. As Envoy 1.40 does it:

- Which rate limits: a RateLimitPerRoute's own `rate_limits` where the route (or its virtual host)
  gives one; else the filter's own `rate_limits`; else the route's `rate_limits` of the filter's
  `stage`, and its virtual host's by `vh_rate_limits` (OVERRIDE: only where the route has none at all;
  INCLUDE, or the route's include_vh_rate_limits: both; IGNORE: the route's only), less those whose
  `disable_key` the runtime turns off (ratelimit.<key>.http_filter_enabled). A request that makes no
  descriptor is not held, nor one on a route without a route action (direct_response, redirect), nor
  an internal one where `request_type` is `internal` (meshpy takes none as internal: Envoy 1.40 does so
  only where internal_address_config says, which meshpy does not read), nor one that
  `filter_enabled` (or the runtime key ratelimit.http_filter_enabled) leaves out.
- The call: to the envoy_grpc cluster (or google_grpc target), bounded by `timeout` (20 ms by
  default; 0 is none). The request is held until the answer.
- OVER_LIMIT: the service's response_headers_to_add, x-envoy-ratelimited: true (unless
  disable_x_envoy_ratelimited_header), the X-RateLimit-* headers (enable_x_ratelimit_headers) and,
  for a 429, Retry-After (enable_retry_after_header) answer with `rate_limited_status` (429; below 400
  means 429), the service's raw_body, its content-type in place of the proxy's, and the filter's
  response_headers_to_add. A gRPC call gets UNAVAILABLE, or RESOURCE_EXHAUSTED with
  rate_limited_as_resource_exhausted. Where `filter_enforced` (or ratelimit.http_filter_enforcing)
  leaves a request out, it goes on as if allowed, the headers on its response.
- Allowed: the service's request_headers_to_add go upstream, its response_headers_to_add and the
  X-RateLimit-* headers onto the response, beside what is there.
- An error: the request goes on, unless failure_mode_deny: then `status_on_error` (500), with the
  response flag RLSE.
- apply_on_stream_done entries make a second call when the exchange is over, answer unread.

Per route, RateLimitPerRoute (typed_per_filter_config) gives vh_rate_limits, rate_limits and
`domain`; the route's and virtual host's `rate_limits` reach the filter as an override of every filter
of this class (meshpy.extensions.ratelimit_routes), merged here. A route where no rate limit applies
leaves the filter out of its chain (`inert`). Envoy's ratelimit.* counters are not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from meshpy import extensions
from meshpy.extensions import ratelimit_calls as calls
from meshpy.extensions import ratelimit_config as config_rules
from meshpy.extensions.ext_authz_config import target
from meshpy.extensions.ratelimit_actions import Facts, Policy, compile_entries
from meshpy.filters import CONTINUE, HOLD, HttpFilter, Request, Response, Verdict
from meshpy.model.routes import ForwardAction
from meshpy.upstream.side_calls import SideCallError, SideClient

log = logging.getLogger("meshpy.ratelimit")
CLASS = "meshpy.extensions.ratelimit:RateLimit"
PER_ROUTE = "_per_route"  # the merged config's key for a RateLimitPerRoute
ROUTE_LIMITS = "_route_limits"  # and for the route's and virtual host's rate_limits
_GRPC_RESOURCE_EXHAUSTED = 8
_VH = {0: "override", 1: "include", 2: "ignore"}  # RateLimitPerRoute.VhRateLimitsOptions
# Headers Envoy keeps once in a response (its inline headers): added again, the value is joined to
# the one there with a comma rather than sent twice.
_INLINE = frozenset({"content-type", "location", "via", "etag"})


class RateLimit(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        config = dict(config)
        route = config.pop(PER_ROUTE, None)
        limits = config.pop(ROUTE_LIMITS, None) or {}
        msg = extensions.parsed(EXTENSION, config)
        per_route = extensions.parsed(EXTENSION, route, route=True) if route is not None else None
        self.domain = per_route.domain if per_route is not None and per_route.domain else msg.domain
        self.policies = self._policies(msg, per_route, limits)
        self.on_request_path = tuple(p for p in self.policies if not p.on_done)
        self.on_done = tuple(p for p in self.policies if p.on_done)
        self.inert = not self.policies or msg.request_type == "internal"
        self.timeout = _seconds(msg.timeout) if msg.HasField("timeout") else 0.02
        self.deny = msg.failure_mode_deny
        self.grpc_code = _GRPC_RESOURCE_EXHAUSTED if msg.rate_limited_as_resource_exhausted else None
        self.x_headers = msg.enable_x_ratelimit_headers == msg.DRAFT_VERSION_03
        self.x_envoy_header = not msg.disable_x_envoy_ratelimited_header
        self.retry_after = msg.enable_retry_after_header
        code = msg.rate_limited_status.code
        self.limited_status = code if code >= 400 else 429
        code = msg.status_on_error.code
        self.error_status = code if 100 <= code <= 511 else 500
        self.reply_headers = [(o.header.key.lower(), o.header.value, o.append_action, o.keep_empty_value)
                              for o in msg.response_headers_to_add]
        self.enabled = _share(msg.filter_enabled) if msg.HasField("filter_enabled") \
            else ("ratelimit.http_filter_enabled", 1.0)
        self.enforced = _share(msg.filter_enforced) if msg.HasField("filter_enforced") \
            else ("ratelimit.http_filter_enforcing", 1.0)
        grpc = msg.rate_limit_service.grpc_service
        self.cluster = grpc.envoy_grpc.cluster_name
        self.authority = (grpc.envoy_grpc.authority or grpc.envoy_grpc.cluster_name).encode()
        self.target: tuple[str, int] | str | None = None
        if grpc.HasField("google_grpc"):
            self.target = target(grpc.google_grpc.target_uri)
            self.authority = grpc.google_grpc.target_uri.encode()
        self.metadata = [(m.key.lower().encode(), m.value.encode()) for m in grpc.initial_metadata]
        # request.state, under names of this filter's own (a chain may have two): the call under way, then
        # the headers for the response; and whether the request's descriptors were made (its end may call).
        self.state, self.made = f"ratelimit.{id(self)}", f"ratelimit.{id(self)}.made"
        self.client = SideClient()
        self.stream_done: set[asyncio.Task[calls.Answer]] = set()  # calls whose answers nobody reads

    @staticmethod
    def _policies(msg: Any, per_route: Any, limits: dict[str, Any]) -> tuple[Policy, ...]:
        """The entries that apply, by Envoy's precedence (see the module's docstring)."""
        if per_route is not None and per_route.rate_limits:
            return compile_entries([extensions.as_json(e) for e in per_route.rate_limits], per_filter=True)
        if msg.rate_limits:
            return compile_entries([extensions.as_json(e) for e in msg.rate_limits], per_filter=True)
        route = compile_entries(limits.get("route", []))
        vhost = compile_entries(limits.get("vhost", []))
        option = "include" if limits.get("include_vh") else \
            _VH.get(per_route.vh_rate_limits, "override") if per_route is not None else "override"
        if option == "ignore" or (option == "override" and route):
            vhost = ()
        return tuple(p for p in (*route, *vhost) if p.stage == msg.stage)

    @classmethod
    def route_config(cls, listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
        own = {k: v for k, v in route.items() if k != ROUTE_LIMITS}
        out = {**listener, ROUTE_LIMITS: route.get(ROUTE_LIMITS)}
        if own or ROUTE_LIMITS not in route:  # (an override of the class alone brings no RateLimitPerRoute)
            out[PER_ROUTE] = own
        return out

    # -- the request ----------------------------------------------------------------------------
    def on_request(self, request: Request) -> Verdict:
        ex = request._ex
        if not request.forwards or not self._in(request, self.enabled):
            return CONTINUE
        action = ex.route.route.action if ex.route is not None else None
        if isinstance(action, ForwardAction) and action.cluster and action.cluster not in ex.cfg.clusters:
            return CONTINUE  # (no such cluster: Envoy's filter lets the router answer)
        request.state[self.made] = True
        made = self._descriptors(request, Facts(request, ex.cfg.service_cluster), self.on_request_path)
        if not made:
            return CONTINUE
        task = asyncio.get_running_loop().create_task(self._check(request, made))
        request.state[self.state] = task
        return HOLD

    def _descriptors(self, request: Request, facts: Facts,
                     policies: tuple[Policy, ...]) -> list[tuple[calls.Descriptor, Policy]]:
        """The descriptors the request makes, each with the entry that made it."""
        out = []
        for p in policies:
            if p.disable_key and not self._in(request, (f"ratelimit.{p.disable_key}.http_filter_enabled",
                                                        1.0)):
                continue
            entries = p.descriptor(facts)
            if entries is not None:
                out.append(((entries, p.limit, p.hits_addend), p))
        return out

    async def _call(self, request: Request, made: list[tuple[calls.Descriptor, Policy]]) -> calls.Answer:
        message = calls.request(self.domain, [descriptor for descriptor, _ in made])
        try:
            async with asyncio.timeout(self.timeout or None):
                response = await self.client.grpc(request._ex.cfg.clusters, self.cluster, self.target,
                                                  calls.PATH, self.authority, message, self.metadata,
                                                  self.timeout)
                if response is None:
                    return calls.ERROR_ANSWER
        except (TimeoutError, OSError, SideCallError) as err:
            log.debug("rate limit call to %s failed: %s", self.cluster or self.target, err)
            return calls.ERROR_ANSWER
        return calls.answer(response)

    async def _check(self, request: Request, made: list[tuple[calls.Descriptor, Policy]]) -> None:
        answer = await self._call(request, made)  # (cancelled by on_complete when the client goes)
        request.state.pop(self.state, None)
        # (the statuses answer the descriptors sent, in order)
        self._apply(request, answer, frozenset(i for i, (_, p) in enumerate(made) if p.headers_off))

    def _apply(self, request: Request, answer: calls.Answer, headers_off: frozenset[int]) -> None:
        added = list(answer.response_headers)
        if answer.kind == calls.OVER_LIMIT and self.x_envoy_header:
            added.append(("x-envoy-ratelimited", "true"))
        if self.x_headers:
            added += calls.rate_limit_headers(answer.statuses, headers_off)
        if answer.kind == calls.OVER_LIMIT and self._in(request, self.enforced):
            self._reply_limited(request, answer, added)
            return
        if answer.kind == calls.ERROR and self.deny:
            self._reply(request, self.error_status, b"", [], "RLSE", None)
            return
        for name, value in answer.request_headers:
            with contextlib.suppress(ValueError):  # a header the proxy keeps (host, content-length, ...)
                request.headers.add(name, value)
        if added:
            request.state[self.state] = added
        request.resume()

    def _reply_limited(self, request: Request, answer: calls.Answer, added: list[tuple[str, str]]) -> None:
        status = self.limited_status
        if status == 429 and self.retry_after and (after := calls.retry_after(answer)) is not None:
            added.append(("retry-after", after))
        headers = [h for h in added if h[0] not in ("content-length", "transfer-encoding", "connection")]
        for name, value, action, keep_empty in self.reply_headers:
            if not value and not keep_empty:
                continue
            there = any(n == name for n, _ in headers)
            if action == 1 and there:  # ADD_IF_ABSENT
                continue
            if action in (2, 3):  # OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS
                if action == 3 and not there:
                    continue
                headers = [h for h in headers if h[0] != name]
            headers.append((name, value))
        self._reply(request, status, answer.body, headers, "RL", self.grpc_code)

    def _reply(self, request: Request, status: int, body: bytes, headers: list[tuple[str, str]], flag: str,
               grpc_code: int | None) -> None:
        """A local reply, as Request.reply makes one, with the gRPC status Envoy gives it."""
        ex = request._ex
        if ex.done or ex._local is not None:
            return
        extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        ex._local_reply(status, body, flag, route=ex.route, extra=extra,
                        close=not ex.req_done and ex.has_body(), grpc_status=grpc_code)
        ex.down.flush()

    def _in(self, request: Request, share: tuple[str, float]) -> bool:
        """Whether the request is in a RuntimeFractionalPercent's share (the runtime's value for its key
        where the runtime has one)."""
        key, fraction = share
        runtime = request._ex.cfg.runtime
        if key and runtime is not None and runtime.snapshot.values:
            fraction = runtime.snapshot.fraction(key, fraction)
        return fraction >= 1.0 or random.random() < fraction

    # -- the response and the end -----------------------------------------------------------------
    def on_response(self, request: Request, response: Response) -> None:
        added = request.state.pop(self.state, None)
        if isinstance(added, list):
            for name, value in added:
                there = response.headers.get(name) if name in _INLINE else None
                with contextlib.suppress(ValueError):  # a framing header: the proxy's own
                    if there is None:
                        response.headers.add(name, value)
                    else:
                        response.headers.set(name, f"{there},{value}")

    def on_complete(self, request: Request) -> None:
        task = request.state.pop(self.state, None)
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()  # (a call under way is cancelled, with no stream-done call: as Envoy)
            return
        if self.on_done and request.state.pop(self.made, False):
            facts = Facts(request, request._ex.cfg.service_cluster)  # (the request's headers as they are now)
            made = self._descriptors(request, facts, self.on_done)
            if made:
                done = asyncio.get_running_loop().create_task(self._call(request, made))
                self.stream_done.add(done)
                done.add_done_callback(self.stream_done.discard)


def _share(fraction: Any) -> tuple[str, float]:
    """A RuntimeFractionalPercent: its runtime key and its default share (0 to 1)."""
    value = fraction.default_value
    per = {0: 100, 1: 10_000, 2: 1_000_000}.get(value.denominator, 100)
    return fraction.runtime_key, value.numerator / per


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


EXTENSION = extensions.Extension(
    message=config_rules.RateLimitConfig, cls=CLASS, check=config_rules.check,
    route_message=config_rules.RateLimitPerRoute, route_check=config_rules.check_route)
