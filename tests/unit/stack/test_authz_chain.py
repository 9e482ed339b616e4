"""The authz filter in a route's chain (meshpy.stack.filter_chain with meshpy.stack.authz_filter):
ahead of the other built-ins, replaced or turned off per virtual host and route, compiled once per
config, and its errors at their paths."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.authz import Always, HeaderRule, Policy, Rbac, RbacFilter
from meshpy.model.filter_types import FilterOverride, HttpFilterSpec, effective_chain
from meshpy.model.routes import Fault, HeaderMatch, LocalRateLimit, StringMatch
from meshpy.stack.authz_filter import AuthzFilter
from meshpy.stack.filter_chain import ChainBuilder, PythonFilter, RouteChain
from meshpy.stack.guards import CompiledFault, TokenBucket
from meshpy.stack.headers import HeaderOps
from meshpy.stack.policy_runtime import PolicyClaims

LIMIT = TokenBucket(LocalRateLimit(max_tokens=1, tokens_per_fill=1, fill_interval=1.0))
FAULT = CompiledFault(Fault(abort_status=503))
DENY_ALL = RbacFilter(rules=Rbac(action="deny", policies=(
    Policy(name="all", permissions=(Always(),), principals=(Always(),)),)), rules_stat_prefix="l_")
ALLOW_NONE = RbacFilter(rules=Rbac(action="allow"))
AUTHZ = HttpFilterSpec(name="authz", kind="authz", rbac=DENY_ALL)
COUNTER = HttpFilterSpec(name="counter", kind="python", python_class="tests.filter_kit:Counter")


def _chain(b: ChainBuilder, vhost: tuple[FilterOverride, ...] = (),
           route: tuple[FilterOverride, ...] = ()) -> RouteChain:
    return b.build(LIMIT, FAULT, HeaderOps(), HeaderOps(), b.check(vhost, "vh"), route, "r")


def _kinds(chain: tuple[object, ...]) -> list[str]:
    return [f.name if isinstance(f, PythonFilter) else type(f).__name__ for f in chain]


def test_authz_runs_first_unless_placed_after_another() -> None:
    b = ChainBuilder((AUTHZ, COUNTER), PolicyClaims(), "web")
    assert _kinds(_chain(b).request) == ["AuthzFilter", "RateLimitFilter", "FaultFilter", "counter"]
    limit = HttpFilterSpec(name="rate_limit", kind="rate_limit")
    placed = ChainBuilder((limit, AUTHZ), PolicyClaims(), "web")
    assert _kinds(_chain(placed).request) == ["FaultFilter", "RateLimitFilter", "AuthzFilter"]
    assert [s.kind for s in effective_chain((COUNTER,))] == ["authz", "rate_limit", "fault", "python"]


def test_an_unconfigured_authz_costs_nothing_until_a_route_gives_it_rules() -> None:
    b = ChainBuilder((COUNTER,), PolicyClaims(), "web")
    assert _kinds(_chain(b).request) == ["RateLimitFilter", "FaultFilter", "counter"]
    own = _chain(b, route=(FilterOverride(name="authz", rbac=ALLOW_NONE),)).request
    assert _kinds(own) == ["AuthzFilter", "RateLimitFilter", "FaultFilter", "counter"]
    # Envoy's name for it works as well.
    by_envoy_name = _chain(b, route=(FilterOverride(name="envoy.filters.http.rbac", rbac=ALLOW_NONE),))
    assert _kinds(by_envoy_name.request)[0] == "AuthzFilter"


def test_routes_replace_or_turn_off_and_the_route_wins() -> None:
    b = ChainBuilder((AUTHZ,), PolicyClaims(), "web")
    listener = _chain(b).request[0]
    assert isinstance(listener, AuthzFilter) and listener.prefixes == ("l_", "")
    assert _kinds(_chain(b, route=(FilterOverride(name="authz", disabled=True),)).request) == [
        "RateLimitFilter", "FaultFilter"]
    vhost = (FilterOverride(name="authz", rbac=ALLOW_NONE),)
    replaced = _chain(b, vhost=vhost).request[0]
    assert isinstance(replaced, AuthzFilter) and replaced is not listener
    assert replaced.prefixes == ("l_", "")  # counted under the listener's filter's prefix, as Envoy
    # A route's `disabled: false` keeps its virtual host's replacement; its own replacement wins.
    on = (FilterOverride(name="authz", disabled=False),)
    assert _chain(b, vhost=vhost, route=on).request[0] is replaced
    other = RbacFilter(rules=Rbac(action="log"))
    assert _chain(b, vhost=vhost, route=(FilterOverride(name="authz", rbac=other),)).request[0] not in (
        replaced, listener)
    # Routes that share a config share one compiled filter.
    assert _chain(b).request[0] is listener
    assert _chain(b, route=vhost).request[0] is replaced


def test_a_listener_authz_that_is_disabled_runs_where_a_route_turns_it_on() -> None:
    b = ChainBuilder((HttpFilterSpec(name="authz", kind="authz", rbac=DENY_ALL, disabled=True),),
                     PolicyClaims(), "web")
    assert _kinds(_chain(b).request) == ["RateLimitFilter", "FaultFilter"]
    on = (FilterOverride(name="authz", disabled=False),)
    assert _kinds(_chain(b, route=on).request)[0] == "AuthzFilter"


def test_overrides_are_checked() -> None:
    b = ChainBuilder((AUTHZ, COUNTER), PolicyClaims(), "web")
    with pytest.raises(ConfigError) as err:
        b.check((FilterOverride(name="counter", rbac=ALLOW_NONE),), "virtual_hosts[0]")
    assert str(err.value.issues[0]) == (
        "virtual_hosts[0].filters.counter: an authorization config, for a python filter")
    with pytest.raises(ConfigError) as err:
        b.check((FilterOverride(name="authz", config="{}"),), "virtual_hosts[0]")
    assert err.value.issues[0].path == "virtual_hosts[0].filters.authz.config"


def test_a_rule_that_cannot_compile_is_an_error_at_its_place() -> None:
    bad = RbacFilter(rules=Rbac(action="allow", policies=(Policy(
        name="p", permissions=(HeaderRule(match=HeaderMatch(name=":protocol", match=StringMatch(
            kind="exact", value="x"))),), principals=(Always(),)),)))
    with pytest.raises(ConfigError) as err:
        ChainBuilder((COUNTER, HttpFilterSpec(name="authz", kind="authz", rbac=bad)), PolicyClaims(), "web")
    assert str(err.value.issues[0]) == (
        "filters[1].authz.rules.policies[p].permissions[0].name: unsupported pseudo-header ':protocol'")
    b = ChainBuilder((), PolicyClaims(), "web")
    with pytest.raises(ConfigError) as err:
        _chain(b, route=(FilterOverride(name="authz", rbac=bad),))
    assert err.value.issues[0].path == "r.filters.authz.rules.policies[p].permissions[0].name"
