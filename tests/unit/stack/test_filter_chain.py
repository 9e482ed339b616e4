"""A route's filter chain (meshpy.stack.filter_chain): the listener's order, built-ins first unless
listed, filters turned on and off per virtual host and route (a config of its own turns one on, as in
Envoy), Envoy's names of built-ins, and overrides checked with their paths."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.filter_types import FilterOverride, HttpFilterSpec
from meshpy.model.routes import Fault, HeaderEdits, HeaderValue, LocalRateLimit
from meshpy.stack.filter_chain import (
    ChainBuilder,
    FaultFilter,
    HeaderEditsFilter,
    PythonFilter,
    RateLimitFilter,
    RouteChain,
)
from meshpy.stack.guards import CompiledFault, TokenBucket
from meshpy.stack.headers import HeaderOps, compile_edits
from meshpy.stack.policy_runtime import PolicyClaims

LIMIT = TokenBucket(LocalRateLimit(max_tokens=1, tokens_per_fill=1, fill_interval=1.0))
FAULT = CompiledFault(Fault(abort_status=503))
COUNTER = HttpFilterSpec(name="counter", kind="python", python_class="tests.filter_kit:Counter",
                         config='{"label":"x"}')
LATER = HttpFilterSpec(name="later", kind="python", python_class="tests.filter_kit:Later", disabled=True)


def _chain(b: ChainBuilder, limiter: TokenBucket | None, fault: CompiledFault | None,
           vhost: tuple[FilterOverride, ...], route: tuple[FilterOverride, ...]) -> RouteChain:
    return b.build(limiter, fault, HeaderOps(), HeaderOps(), vhost, route, "r")


def _kinds(chain: tuple[object, ...]) -> list[str]:
    return [f.name if isinstance(f, PythonFilter) else type(f).__name__ for f in chain]


def test_builtins_first_unless_listed() -> None:
    b = ChainBuilder((COUNTER,), PolicyClaims(), "web")
    assert _kinds(_chain(b, LIMIT, FAULT, (), ()).request) == ["RateLimitFilter", "FaultFilter", "counter"]
    listed = ChainBuilder((HttpFilterSpec(name="fault", kind="fault"), COUNTER,
                           HttpFilterSpec(name="rate_limit", kind="rate_limit")), PolicyClaims(), "web")
    assert _kinds(_chain(listed, LIMIT, FAULT, (), ()).request) == [
        "FaultFilter", "counter", "RateLimitFilter"]
    # A built-in with nothing to do on a route is not in its chain at all.
    assert _kinds(_chain(listed, None, None, (), ()).request) == ["counter"]


def test_on_and_off_by_virtual_host_and_route() -> None:
    b = ChainBuilder((COUNTER, LATER), PolicyClaims(), "web")
    assert _kinds(_chain(b, None, None, (), ()).request) == ["counter"]
    vhost = b.check((FilterOverride(name="later", disabled=False),), "virtual_hosts[0]")
    assert _kinds(_chain(b, None, None, vhost, ()).request) == ["counter", "later"]
    off = (FilterOverride(name="later", disabled=True), FilterOverride(name="counter", disabled=True))
    assert _kinds(_chain(b, None, None, vhost, off).request) == []
    # As in Envoy: a config of its own turns a disabled filter on; it is a separate instance.
    own = (FilterOverride(name="later", config='{"delay":1}'),)
    chain = _chain(b, None, None, (), own).request
    assert _kinds(chain) == ["counter", "later"] and chain[1].user.config == {"delay": 1}


def test_each_hook_holds_only_the_filters_that_have_it() -> None:
    boom = HttpFilterSpec(name="boom", kind="python", python_class="tests.filter_kit:Boom")
    upper = HttpFilterSpec(name="upper", kind="python", python_class="tests.filter_kit:Upper")
    chain = _chain(ChainBuilder((COUNTER, boom, upper), PolicyClaims(), "web"), None, None, (), ())
    assert _kinds(chain.request) == ["counter", "boom", "upper"]
    # Responses in Envoy's encoder order: the chain backwards.
    assert _kinds(chain.response) == ["boom", "counter"] and _kinds(chain.complete) == ["boom"]
    assert _kinds(chain.request_body) == ["upper"] and _kinds(chain.response_body) == ["upper"]
    assert chain.upstream == ()


def test_route_header_edits_are_filters() -> None:
    edits = compile_edits(HeaderEdits(add=(HeaderValue(name="x-a", value="1", append="overwrite"),)))
    b = ChainBuilder((COUNTER,), PolicyClaims(), "web")
    chain = b.build(None, None, edits, edits, (), (), "r")
    assert [type(f) for f in chain.upstream] == [HeaderEditsFilter]
    # The route's response edits come first, before any user filter sees the head.
    assert _kinds(chain.response) == ["HeaderEditsFilter", "counter"]
    headers: list[tuple[bytes, bytes]] = [(b"x-a", b"0")]
    chain.upstream[0].on_upstream(None, headers)  # type: ignore[arg-type]
    assert headers == [(b"x-a", b"1")]


def test_envoy_names_of_builtins() -> None:
    b = ChainBuilder((), PolicyClaims(), "web")
    off = b.check((FilterOverride(name="envoy.filters.http.fault", disabled=True),), "virtual_hosts[0]")
    assert off == (FilterOverride(name="fault", disabled=True),)
    assert [type(f) for f in _chain(b, LIMIT, FAULT, off, ()).request] == [RateLimitFilter]
    assert [type(f) for f in _chain(b, LIMIT, FAULT, (), ()).request] == [RateLimitFilter, FaultFilter]


@pytest.mark.parametrize(("given", "where"), [
    (FilterOverride(name="nosuch", disabled=True), "virtual_hosts[0].filters.nosuch"),
    (FilterOverride(name="rate_limit", config='{"a":1}'), "virtual_hosts[0].filters.rate_limit.config"),
])
def test_overrides_are_checked_with_their_path(given: FilterOverride, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        ChainBuilder((COUNTER,), PolicyClaims(), "web").check((given,), "virtual_hosts[0]")
    assert err.value.issues[0].path == where
