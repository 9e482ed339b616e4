"""A route's filter chain (meshpy.stack.filter_chain): the listener's order, built-ins first unless
listed, filters turned on and off per virtual host and route (a config of its own turns one on, as in
Envoy), Envoy's names of built-ins, and overrides checked with their paths."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.filter_types import FilterOverride, HttpFilterSpec
from meshpy.model.types import Fault, LocalRateLimit
from meshpy.stack.filter_chain import ChainBuilder, FaultFilter, PythonFilter, RateLimitFilter
from meshpy.stack.guards import CompiledFault, TokenBucket
from meshpy.stack.policy_runtime import PolicyClaims

LIMIT = TokenBucket(LocalRateLimit(max_tokens=1, tokens_per_fill=1, fill_interval=1.0))
FAULT = CompiledFault(Fault(abort_status=503))
COUNTER = HttpFilterSpec(name="counter", kind="python", python_class="tests.filter_kit:Counter",
                         config='{"label":"x"}')
LATER = HttpFilterSpec(name="later", kind="python", python_class="tests.filter_kit:Later", disabled=True)


def _kinds(chain: tuple[object, ...]) -> list[str]:
    return [f.name if isinstance(f, PythonFilter) else type(f).__name__ for f in chain]


def test_builtins_first_unless_listed() -> None:
    b = ChainBuilder((COUNTER,), PolicyClaims(), "web")
    assert _kinds(b.build(LIMIT, FAULT, (), (), "r")[0]) == ["RateLimitFilter", "FaultFilter", "counter"]
    listed = ChainBuilder((HttpFilterSpec(name="fault", kind="fault"), COUNTER,
                           HttpFilterSpec(name="rate_limit", kind="rate_limit")), PolicyClaims(), "web")
    assert _kinds(listed.build(LIMIT, FAULT, (), (), "r")[0]) == ["FaultFilter", "counter", "RateLimitFilter"]
    # A built-in with nothing to do on a route is not in its chain at all.
    assert _kinds(listed.build(None, None, (), (), "r")[0]) == ["counter"]


def test_on_and_off_by_virtual_host_and_route() -> None:
    b = ChainBuilder((COUNTER, LATER), PolicyClaims(), "web")
    assert _kinds(b.build(None, None, (), (), "r")[0]) == ["counter"]
    vhost = b.check((FilterOverride(name="later", disabled=False),), "virtual_hosts[0]")
    assert _kinds(b.build(None, None, vhost, (), "r")[0]) == ["counter", "later"]
    off = (FilterOverride(name="later", disabled=True), FilterOverride(name="counter", disabled=True))
    assert _kinds(b.build(None, None, vhost, off, "r")[0]) == []
    # As in Envoy: a config of its own turns a disabled filter on; it is a separate instance.
    own = (FilterOverride(name="later", config='{"delay":1}'),)
    chain, _, _ = b.build(None, None, (), own, "r")
    assert _kinds(chain) == ["counter", "later"] and chain[1].user.config == {"delay": 1}


def test_response_and_complete_hooks_only_where_overridden() -> None:
    boom = HttpFilterSpec(name="boom", kind="python", python_class="tests.filter_kit:Boom")
    _, respond, complete = ChainBuilder((COUNTER, boom), PolicyClaims(), "web").build(None, None, (), (), "r")
    assert [f.name for f in respond] == ["counter", "boom"] and [f.name for f in complete] == ["boom"]


def test_envoy_names_of_builtins() -> None:
    b = ChainBuilder((), PolicyClaims(), "web")
    off = b.check((FilterOverride(name="envoy.filters.http.fault", disabled=True),), "virtual_hosts[0]")
    assert off == (FilterOverride(name="fault", disabled=True),)
    assert [type(f) for f in b.build(LIMIT, FAULT, off, (), "r")[0]] == [RateLimitFilter]
    assert [type(f) for f in b.build(LIMIT, FAULT, (), (), "r")[0]] == [RateLimitFilter, FaultFilter]


@pytest.mark.parametrize(("given", "where"), [
    (FilterOverride(name="nosuch", disabled=True), "virtual_hosts[0].filters.nosuch"),
    (FilterOverride(name="rate_limit", config='{"a":1}'), "virtual_hosts[0].filters.rate_limit.config"),
])
def test_overrides_are_checked_with_their_path(given: FilterOverride, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        ChainBuilder((COUNTER,), PolicyClaims(), "web").check((given,), "virtual_hosts[0]")
    assert err.value.issues[0].path == where
