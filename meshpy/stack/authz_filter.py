"""The authorization HTTP filter (Envoy's `envoy.filters.http.rbac`): decides on the request head.

What it does, as Envoy 1.40 does it (checked against the binary, tests/integration/test_rbac_envoy.py):
- the shadow rules first, when there are some: counted (`shadow_allowed` / `shadow_denied`), never
  enforced;
- then the rules, when there are some: an allowed request goes on and counts as `allowed`; a denied
  one is answered 403 with the body `RBAC: access denied` (text/plain) and counts as `denied`. Envoy
  sets no response flag for it (the access log says `-`); its response code details say
  `rbac_access_denied_matched_policy[<policy>|none]` (meshpy.stack.authz.denial_details), which
  meshpy's access log has no field for;
- a config without rules (a route's RBACPerRoute without any) lets everything pass, uncounted.
The unified matcher (`matcher`, `shadow_matcher`) decides in place of the rules, the same way; the
action it finds names the "policy".
The counters are the listener's (meshpy.telemetry.rbac_stats), bound on the first request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshpy.model.authz import Rbac, RbacFilter
from meshpy.model.authz_matcher import RbacMatcher
from meshpy.stack.authz import CompiledRbac, Facts, remote_address
from meshpy.stack.authz_matcher import CompiledMatcher
from meshpy.telemetry.rbac_stats import RbacCounters

if TYPE_CHECKING:
    from meshpy.stack.exchange import Exchange

DENIED_BODY = b"RBAC: access denied"


def _engine(rules: Rbac | None, matcher: RbacMatcher | None, where: str,
            prefix: str) -> CompiledRbac | CompiledMatcher | None:
    """The rules or the unified matcher (meshpy.stack.authz_matcher), compiled; the same interface."""
    if matcher is not None:
        return CompiledMatcher(matcher, f"{where}.{prefix}matcher")
    return CompiledRbac(rules, f"{where}.{prefix}rules") if rules is not None else None


class AuthzFilter:
    """One RbacFilter, compiled; shared by every route of a listener where the same config applies.
    `prefixes`: the stat prefixes to count under (the listener's filter's, which a route's
    replacement config does not change, as in Envoy)."""

    __slots__ = ("counters", "engine", "needs_remote", "prefixes", "shadow", "shadow_counters")

    def __init__(self, config: RbacFilter, prefixes: tuple[str, str], where: str = "") -> None:
        self.engine = _engine(config.rules, config.matcher, where, "")
        self.shadow = _engine(config.shadow_rules, config.shadow_matcher, where, "shadow_")
        self.needs_remote = any(e is not None and e.needs_remote for e in (self.engine, self.shadow))
        self.prefixes = prefixes
        self.counters: RbacCounters | None = None  # bound on the first request (the listener's stats)
        self.shadow_counters: RbacCounters | None = None

    def facts(self, ex: Exchange) -> Facts:
        down = ex.down
        remote = None
        if self.needs_remote:
            cfg = ex.cfg
            remote = remote_address(down.peer, ex.headers, cfg.use_remote_address,
                                    cfg.options.xff_num_trusted_hops)
        return Facts(down.connection_info(), ex.method.decode("latin-1"), ex.path, ex.authority, ex.headers,
                     remote)

    def _bind(self, ex: Exchange) -> RbacCounters:
        stats = ex.cfg.stats
        self.shadow_counters = stats.rbac_counters(self.prefixes[1])
        counters = self.counters = stats.rbac_counters(self.prefixes[0])
        return counters

    def on_request(self, ex: Exchange, index: int) -> bool:
        counters = self.counters
        if counters is None:
            counters = self._bind(ex)
        facts = self.facts(ex)
        shadow = self.shadow
        if shadow is not None:
            shadow_counters = self.shadow_counters
            assert shadow_counters is not None
            if shadow.evaluate(facts)[0]:
                shadow_counters.shadow_allowed += 1
            else:
                shadow_counters.shadow_denied += 1
        engine = self.engine
        if engine is None:
            return False
        allowed, _policy = engine.evaluate(facts)
        if allowed:
            counters.allowed += 1
            return False
        counters.denied += 1
        ex._local_reply(403, DENIED_BODY, "", route=ex.route, close=not ex.req_done and ex.has_body())
        return True
