"""The HTTP filter chain, compiled per route: what runs between routing and the router, in the
listener's order (Envoy's http_filters), as each virtual host and route turn filters on or off.

A route's chain (RouteChain) is one tuple per hook, holding only the filters that have that hook, so
a hook no filter has costs the request path one attribute check. The internal hooks are:
- `on_request(ex, index) -> bool`: the request head; True when the filter answered the request or
  holds it (a held request goes on with `Exchange.resume_filters(index + 1)`);
- `on_upstream(ex, headers)`: the request head as it goes upstream (the route's header edits: Envoy's
  router applies them there, after x-forwarded-for and x-request-id);
- `on_response(ex, status, headers) -> bool`: the response head; False when the filter failed (the
  exchange has answered for it);
- `on_request_body(ex, chunk, end)` and `on_response_body(...)` -> bytes, or None when the filter
  answered or failed;
- `on_complete(ex)`.
Authorization (meshpy.stack.authz_filter), the local rate limit and fault injection read the exchange
directly; the route's header edits are HeaderEditsFilter filters; a user's filter
(meshpy.filters.HttpFilter) is wrapped by PythonFilter, which gives it the public Request and turns an
exception into a 500 with the flag FE.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import TYPE_CHECKING, Any

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.filters import CONTINUE, HOLD, REPLIED, HttpFilter, Response
from meshpy.model.authz import RbacFilter
from meshpy.model.filter_types import ENVOY_NAMES, FilterOverride, HttpFilterSpec, effective_chain
from meshpy.model.meshpy_yaml_filters import canonical_config
from meshpy.stack.authz_filter import AuthzFilter
from meshpy.stack.guards import CompiledFault, TokenBucket
from meshpy.stack.headers import HeaderOps
from meshpy.stack.policy_runtime import PolicyClaims

if TYPE_CHECKING:
    from meshpy.stack.exchange import Exchange

log = logging.getLogger(__name__)


class RateLimitFilter:
    __slots__ = ("bucket",)

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    def on_request(self, ex: Exchange, index: int) -> bool:
        bucket = self.bucket
        if bucket.gated and not bucket.share(bucket.enabled_key, bucket.enabled):
            return False  # not enabled for this request: no token taken
        if bucket.take(ex.down.loop.time()):
            return False
        if bucket.gated and not bucket.share(bucket.enforced_key, bucket.enforced):
            return False  # Envoy's shadow mode: counted as limited there, but let through
        ex.cfg.stats.rq_rate_limited += 1
        extra: list[tuple[bytes, bytes]] | None = None
        if bucket.headers:
            extra = []
            bucket.headers.apply(extra)
        ex._local_reply(bucket.status, b"local_rate_limited", "RL", route=ex.route, extra=extra,
                        close=not ex.req_done and ex.has_body())
        return True


class FaultFilter:
    __slots__ = ("fault",)

    def __init__(self, fault: CompiledFault) -> None:
        self.fault = fault

    def on_request(self, ex: Exchange, index: int) -> bool:
        fault = self.fault
        plan = fault.plan(ex.headers)
        if plan is None:
            return False
        if plan.delay is None:
            return _abort(ex, plan.abort)
        ex.cfg.stats.fault_delays += 1
        fault.active += 1  # given back when the delay ends, or by Exchange._complete if the client left
        ex.flag = "DI"
        ex._fault_timer = ex.down.loop.call_later(plan.delay, self._after_delay, ex, plan.abort, index + 1)
        return True

    def _after_delay(self, ex: Exchange, abort: int | None, after: int) -> None:
        ex._fault_timer = None
        self.fault.active -= 1
        if not ex.done and not _abort(ex, abort):
            ex.resume_filters(after)


def _abort(ex: Exchange, status: int | None) -> bool:
    if status is None:
        return False
    ex.cfg.stats.fault_aborts += 1
    ex._local_reply(status, b"fault filter abort", "FI", route=ex.route,
                    close=not ex.req_done and ex.has_body())
    return True


class HeaderEditsFilter:
    """The route's header edits (route, virtual host and route config levels, merged): on the upstream
    request head, or on the response head before any user filter sees it (as in Envoy, where the
    router, last to decode, is first to encode)."""

    __slots__ = ("ops",)

    def __init__(self, ops: HeaderOps) -> None:
        self.ops = ops

    def on_upstream(self, ex: Exchange, headers: list[tuple[bytes, bytes]]) -> None:
        self.ops.apply(headers)

    def on_response(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        self.ops.apply(headers)
        return True


class PythonFilter:
    """A user's filter: the public Request, errors contained."""

    __slots__ = ("name", "user")

    def __init__(self, name: str, user: HttpFilter) -> None:
        self.name = name
        self.user = user

    def on_request(self, ex: Exchange, index: int) -> bool:
        request = ex.filter_request()
        try:
            verdict = self.user.on_request(request)
        except Exception:
            log.exception("http filter %s failed on a request", self.name)
            ex.filter_failed()
            return True
        if verdict is HOLD:
            return ex.filter_hold(index + 1)  # (False: it resumed before returning HOLD)
        if verdict is REPLIED or ex._local is not None or ex.done:
            return True
        if verdict is CONTINUE or verdict is None:
            return False
        log.error("http filter %s returned %r, not CONTINUE, HOLD or request.reply()", self.name, verdict)
        ex.filter_failed()
        return True

    def on_response(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        request = ex.filter_request()
        request._responding = True  # reply() is for the request side
        response = request._response
        if response is None or response.headers._fields is not headers:  # the first filter of this head
            response = request._response = Response(status, headers, ex.response_has_body(status, headers))
        response._passed = False
        try:
            self.user.on_response(request, response)
        except Exception:
            log.exception("http filter %s failed on a response", self.name)
            ex.filter_failed()
            return False
        finally:
            request._responding = False
        if response._passed:  # response.pass_body(): this filter's body hook sits this body out
            if request._passed_out is None:
                request._passed_out = set()
            request._passed_out.add(self.user)
        return True

    def on_request_body(self, ex: Exchange, chunk: bytes, end: bool) -> bytes | None:
        return self._body(ex, chunk, end, response=False)

    def on_response_body(self, ex: Exchange, chunk: bytes, end: bool) -> bytes | None:
        return self._body(ex, chunk, end, response=True)

    def _body(self, ex: Exchange, chunk: bytes, end: bool, response: bool) -> bytes | None:
        """A body hook: the piece to send on, or None when it answered (request side) or failed."""
        request = ex.filter_request()
        request._responding = response  # reply() is for the request side
        try:
            hook = self.user.on_response_body if response else self.user.on_request_body
            out = hook(request, chunk, end)
        except Exception:
            log.exception("http filter %s failed on a %s body", self.name,
                          "response" if response else "request")
            ex.filter_failed()
            return None
        finally:
            request._responding = False
        if not response and (ex.done or ex._local is not None):
            return None  # it answered
        return self._checked(ex, chunk if out is None else out)

    def _checked(self, ex: Exchange, out: object) -> bytes | None:
        if isinstance(out, bytes):
            return out
        if isinstance(out, (bytearray, memoryview)):
            return bytes(out)
        log.error("http filter %s returned %s for a body piece, not bytes or None", self.name,
                  type(out).__name__)
        ex.filter_failed()
        return None

    def on_complete(self, ex: Exchange) -> None:
        try:
            self.user.on_complete(ex.filter_request())
        except Exception:
            ex.cfg.stats.rq_filter_errors += 1
            log.exception("http filter %s failed at completion", self.name)


def filter_class(path: str) -> type[HttpFilter]:
    """The class at `path` ("package.module:Class")."""
    module_name, _, class_name = path.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, HttpFilter):
        raise TypeError(f"{path} is not a subclass of meshpy.filters.HttpFilter")
    return cls


def load_filter(spec: tuple[str, str]) -> HttpFilter:
    """A new instance of the class at `spec[0]` with the config `spec[1]`."""
    return filter_class(spec[0])(json.loads(spec[1]))


def route_config(spec: HttpFilterSpec, configs: list[str]) -> str:
    """The config a Python filter runs with where its virtual host and route give `configs` (the
    virtual host's first): the class merges the most specific one with the listener's
    (HttpFilter.route_config; by default the route's replaces it), or, with route_config_levels, each
    level's with what the levels before made."""
    try:
        cls = filter_class(spec.python_class)
        if cls.route_config.__func__ is HttpFilter.route_config.__func__:  # type: ignore[attr-defined]
            return configs[-1]
        config = spec.config
        for given in configs if cls.route_config_levels else configs[-1:]:
            config = canonical_config(cls.route_config(json.loads(config), json.loads(given)))
        return config
    except Exception as err:  # the user's code: any exception
        raise ConfigError.at("", f"filter {spec.name!r} ({spec.python_class}): {err}") from err


_HOOKS = ("on_response", "on_request_body", "on_response_body", "on_complete")


def _hooks(cls: type[HttpFilter]) -> tuple[bool, ...]:
    """Which of _HOOKS the class overrides (a hook it does not costs nothing)."""
    return tuple(getattr(cls, hook) is not getattr(HttpFilter, hook) for hook in _HOOKS)


class RouteChain:
    """One route's filters, a tuple per hook, each in the order that hook runs."""

    __slots__ = ("complete", "request", "request_body", "response", "response_body", "upstream")

    def __init__(self) -> None:
        self.request: tuple[Any, ...] = ()
        self.upstream: tuple[HeaderEditsFilter, ...] = ()
        self.response: tuple[Any, ...] = ()
        self.request_body: tuple[PythonFilter, ...] = ()
        self.response_body: tuple[PythonFilter, ...] = ()
        self.complete: tuple[PythonFilter, ...] = ()


class ChainBuilder:
    """A listener's filters, ready to compile into each route's chain. Python filters are made (or
    taken over from the live Snapshot, config unchanged) through the policy claims."""

    __slots__ = ("_aliases", "_authz", "_claims", "_listener", "_made", "specs")

    def __init__(self, specs: tuple[HttpFilterSpec, ...], claims: PolicyClaims, listener: str) -> None:
        self.specs = effective_chain(specs)
        # A route may name an unlisted built-in the way Envoy configs do (envoy.filters.http.fault).
        self._aliases = {alias: kind for alias, kind in ENVOY_NAMES.items()
                         if any(s.name == kind for s in self.specs)}
        self._claims = claims
        self._listener = listener
        self._made: dict[int, PythonFilter] = {}
        self._authz: dict[tuple[str, RbacFilter], AuthzFilter] = {}
        issues = []
        for i, spec in enumerate(specs):  # (disabled ones too: a broken one is an error anywhere)
            try:
                if spec.kind == "python":
                    self._python(spec, spec.config)
                elif spec.kind == "authz" and spec.rbac is not None:
                    self._authz_filter(spec, spec.rbac, f"filters[{i}].authz")
            except ConfigError as err:
                issues.append(ConfigIssue(err.issues[0].path or f"filters[{i}]", err.issues[0].reason))
        if issues:
            raise ConfigError(issues)

    def _python(self, spec: HttpFilterSpec, config: str) -> PythonFilter:
        try:
            user = self._claims.claim(load_filter, (self._listener, spec.name), (spec.python_class, config))
        except Exception as err:  # import errors, a refused config: the user's code, any exception
            raise ConfigError.at("", f"filter {spec.name!r} ({spec.python_class}): {err}") from err
        adapter = self._made.get(id(user))
        if adapter is None:
            adapter = self._made[id(user)] = PythonFilter(spec.name, user)
        return adapter

    def _authz_filter(self, spec: HttpFilterSpec, config: RbacFilter, where: str) -> AuthzFilter:
        """One compiled filter per (filter, config): the routes that share a config share it."""
        key = (spec.name, config)
        made = self._authz.get(key)
        if made is None:
            counted = spec.rbac if spec.rbac is not None else config  # Envoy counts under the listener's
            prefixes = (counted.rules_stat_prefix, counted.shadow_rules_stat_prefix)
            made = self._authz[key] = AuthzFilter(config, prefixes, where)
        return made

    def check(self, overrides: tuple[FilterOverride, ...], where: str) -> tuple[FilterOverride, ...]:
        """A virtual host's or route's overrides, checked (a filter of the listener's; a config only
        for Python filters) and with Envoy's names of built-ins resolved."""
        kinds = {s.name: s.kind for s in self.specs}
        out = []
        for given in overrides:
            if given.by_class:  # (for whichever filters of the class the listener has, maybe none)
                out.append(given)
                continue
            if given.name in self._aliases and given.name not in kinds:
                given = FilterOverride(name=self._aliases[given.name], disabled=given.disabled,
                                       config=given.config, rbac=given.rbac)
            if given.name not in kinds:
                raise ConfigError.at(f"{where}.filters.{given.name}", "no such filter on the listener")
            if given.config is not None and kinds[given.name] != "python":
                raise ConfigError.at(f"{where}.filters.{given.name}.config",
                                     "only Python filters take a config here (the built-ins are configured "
                                     "by authz:, rate_limit: and fault: on the route)")
            if given.rbac is not None and kinds[given.name] != "authz":
                raise ConfigError.at(f"{where}.filters.{given.name}",
                                     f"an authorization config, for a {kinds[given.name]} filter")
            out.append(given)
        return tuple(out)

    def build(self, limiter: TokenBucket | None, fault: CompiledFault | None, request_edits: HeaderOps,
              response_edits: HeaderOps, vhost: tuple[FilterOverride, ...], route: tuple[FilterOverride, ...],
              where: str) -> RouteChain:
        """One route's chain. `vhost`: its virtual host's overrides, already checked; `route`: its own,
        which win."""
        said: dict[str, FilterOverride] = {}
        # The configs given, the virtual host's first, by filter name and by class (`by_class`: the
        # fallback of the filters of a class that no config here names; Envoy's deprecated `cors`).
        levels: dict[tuple[bool, str], list[str]] = {}
        for given in (*vhost, *self.check(route, where)):
            if given.config is not None:
                levels.setdefault((given.by_class, given.name), []).append(given.config)
            if given.by_class:
                continue
            prev = said.get(given.name)
            said[given.name] = given if prev is None else FilterOverride(
                name=given.name, disabled=given.disabled if given.disabled is not None else prev.disabled,
                config=given.config if given.config is not None else prev.config,
                rbac=given.rbac if given.rbac is not None else prev.rbac)
        request: list[Any] = []
        users: list[PythonFilter] = []
        for spec in self.specs:
            o = said.get(spec.name)
            # As in Envoy, a config of its own here turns a filter on here, unless it says disabled.
            on_here = None if o is None else (not o.disabled if o.disabled is not None else
                                              (True if o.config is not None or o.rbac is not None else None))
            if not (on_here if on_here is not None else not spec.disabled):
                continue
            if spec.kind == "authz":
                rbac = o.rbac if o is not None and o.rbac is not None else spec.rbac
                if rbac is not None:  # (none: an unlisted authz, on routes that give no config)
                    at = f"{where}.filters.{spec.name}" if rbac is not spec.rbac else where
                    request.append(self._authz_filter(spec, rbac, at))
            elif spec.kind == "rate_limit":
                if limiter is not None:
                    request.append(RateLimitFilter(limiter))
            elif spec.kind == "fault":
                if fault is not None:
                    request.append(FaultFilter(fault))
            else:
                config = spec.config
                configs = levels.get((False, spec.name)) or levels.get((True, spec.python_class))
                try:
                    if configs:
                        config = route_config(spec, configs)
                    f = self._python(spec, config)
                except ConfigError as err:
                    raise ConfigError.at(f"{where}.filters.{spec.name}", err.issues[0].reason) from err
                if f.user.inert:  # nothing to do on this route with this config (HttpFilter.inert)
                    continue
                request.append(f)
                users.append(f)
        chain = RouteChain()
        chain.request = tuple(request)
        if request_edits:
            chain.upstream = (HeaderEditsFilter(request_edits),)
        has = [_hooks(type(f.user)) for f in users]
        # Responses run the chain backwards (Envoy's encoder order), the route's edits first.
        chain.response = ((HeaderEditsFilter(response_edits),) if response_edits else ()) + tuple(
            f for f, h in zip(reversed(users), reversed(has), strict=True) if h[0])
        chain.request_body = tuple(f for f, h in zip(users, has, strict=True) if h[1])
        chain.response_body = tuple(f for f, h in zip(reversed(users), reversed(has), strict=True) if h[2])
        chain.complete = tuple(f for f, h in zip(users, has, strict=True) if h[3])
        return chain
