"""The HTTP filter chain, compiled per route: what runs between routing and the router, in the
listener's order (Envoy's http_filters), as each virtual host and route turn filters on or off.

Every filter here has one internal hook, `on_request(ex, index) -> bool`: True when it answered the
request or holds it (a held request goes on with `Exchange.resume_filters(index + 1)`). The built-in
ones, the local rate limit and fault injection, read the exchange directly; a user's filter
(meshpy.filters.HttpFilter) is wrapped by PythonFilter, which gives it the public Request and turns
an exception into a 500 with the flag FE. A route with no filter on has an empty chain: the request
path pays one attribute check, as before filters existed.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import TYPE_CHECKING, Any

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.filters import CONTINUE, HOLD, REPLIED, HttpFilter
from meshpy.model.filter_types import ENVOY_NAMES, FilterOverride, HttpFilterSpec, effective_chain
from meshpy.stack.guards import CompiledFault, TokenBucket
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
        if bucket.take(ex.down.loop.time()):
            return False
        ex.cfg.stats.rq_rate_limited += 1
        ex._local_reply(bucket.status, b"local_rate_limited", "RL", route=ex.route,
                        close=not ex.req_done and ex._has_body())
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
                    close=not ex.req_done and ex._has_body())
    return True


class PythonFilter:
    """A user's filter on the request path: the public Request, errors contained."""

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


def load_filter(spec: tuple[str, str]) -> HttpFilter:
    """A new instance of the class at `spec[0]` ("package.module:Class") with the config `spec[1]`."""
    path, config = spec
    module_name, _, class_name = path.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, HttpFilter):
        raise TypeError(f"{path} is not a subclass of meshpy.filters.HttpFilter")
    return cls(json.loads(config))


def _overrides(cls: type[HttpFilter]) -> tuple[bool, bool]:
    """Whether the class has on_response and on_complete of its own (else they cost nothing)."""
    return cls.on_response is not HttpFilter.on_response, cls.on_complete is not HttpFilter.on_complete


class ChainBuilder:
    """A listener's filters, ready to compile into each route's chain. Python filters are made (or
    taken over from the live Snapshot, config unchanged) through the policy claims."""

    __slots__ = ("_aliases", "_claims", "_listener", "_made", "specs")

    def __init__(self, specs: tuple[HttpFilterSpec, ...], claims: PolicyClaims, listener: str) -> None:
        self.specs = effective_chain(specs)
        # A route may name an unlisted built-in the way Envoy configs do (envoy.filters.http.fault).
        self._aliases = {alias: kind for alias, kind in ENVOY_NAMES.items()
                         if any(s.name == kind for s in self.specs)}
        self._claims = claims
        self._listener = listener
        self._made: dict[int, PythonFilter] = {}
        issues = []
        for i, spec in enumerate(specs):  # (disabled ones too: a broken one is an error anywhere)
            if spec.kind == "python":
                try:
                    self._python(spec, spec.config)
                except ConfigError as err:
                    issues.append(ConfigIssue(f"filters[{i}]", err.issues[0].reason))
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

    def check(self, overrides: tuple[FilterOverride, ...], where: str) -> tuple[FilterOverride, ...]:
        """A virtual host's or route's overrides, checked (a filter of the listener's; a config only
        for Python filters) and with Envoy's names of built-ins resolved."""
        kinds = {s.name: s.kind for s in self.specs}
        out = []
        for given in overrides:
            if given.name in self._aliases and given.name not in kinds:
                given = FilterOverride(name=self._aliases[given.name], disabled=given.disabled,
                                       config=given.config)
            if given.name not in kinds:
                raise ConfigError.at(f"{where}.filters.{given.name}", "no such filter on the listener")
            if given.config is not None and kinds[given.name] != "python":
                raise ConfigError.at(f"{where}.filters.{given.name}.config",
                                     "only Python filters take a config here (the built-ins are configured "
                                     "by rate_limit: and fault: on the route)")
            out.append(given)
        return tuple(out)

    def build(self, limiter: TokenBucket | None, fault: CompiledFault | None,
              vhost: tuple[FilterOverride, ...], route: tuple[FilterOverride, ...], where: str) -> tuple[
                  tuple[Any, ...], tuple[PythonFilter, ...], tuple[PythonFilter, ...]]:
        """One route's chain: (request filters, filters with on_response, filters with on_complete).
        `vhost`: its virtual host's overrides, already checked; `route`: its own, which win."""
        said: dict[str, FilterOverride] = {o.name: o for o in vhost}
        for given in self.check(route, where):
            prev = said.get(given.name)
            said[given.name] = given if prev is None else FilterOverride(
                name=given.name, disabled=given.disabled if given.disabled is not None else prev.disabled,
                config=given.config if given.config is not None else prev.config)
        chain: list[Any] = []
        respond: list[PythonFilter] = []
        complete: list[PythonFilter] = []
        for spec in self.specs:
            o = said.get(spec.name)
            # As in Envoy, a config of its own here turns a filter on here, unless it says disabled.
            on_here = None if o is None else (not o.disabled if o.disabled is not None else
                                              (True if o.config is not None else None))
            if not (on_here if on_here is not None else not spec.disabled):
                continue
            if spec.kind == "rate_limit":
                if limiter is not None:
                    chain.append(RateLimitFilter(limiter))
            elif spec.kind == "fault":
                if fault is not None:
                    chain.append(FaultFilter(fault))
            else:
                config = o.config if o is not None and o.config is not None else spec.config
                try:
                    f = self._python(spec, config)
                except ConfigError as err:
                    raise ConfigError.at(f"{where}.filters.{spec.name}", err.issues[0].reason) from err
                chain.append(f)
                has_response, has_complete = _overrides(type(f.user))
                if has_response:
                    respond.append(f)
                if has_complete:
                    complete.append(f)
        return tuple(chain), tuple(respond), tuple(complete)
