"""Policy state across compiles (meshpy.stack.policy_runtime): a route table compiled again with the
same limit at the same place keeps its bucket and its fault state; a changed limit, a route moved to
another virtual host, or a compile that is never committed does not."""

from __future__ import annotations

from dataclasses import replace

from meshpy.model.routes import Fault, ForwardAction, LocalRateLimit, Route, RouteConfig, VirtualHost
from meshpy.routing.table import CompiledRoute, RouteTable
from meshpy.stack.policy_runtime import PolicyRuntime, route_places

LIMIT = LocalRateLimit(max_tokens=2, tokens_per_fill=2, fill_interval=60.0)


def _config(limit: LocalRateLimit = LIMIT, vhost: str = "api", cluster: str = "a") -> RouteConfig:
    route = Route(name="orders", action=ForwardAction(cluster=cluster), rate_limit=limit,
                  fault=Fault(delay=1.0, delay_percent=100.0, max_active=3))
    return RouteConfig(name="rc", virtual_hosts=(VirtualHost(name=vhost, domains=("*",), routes=(route,)),))


def _compile(runtime: PolicyRuntime, rc: RouteConfig, commit: bool = True) -> RouteTable:
    claims = runtime.claims()
    table = RouteTable(rc, policies=claims, scope="web")
    if commit:
        runtime.commit(claims)
    return table


def _route(table: RouteTable) -> CompiledRoute:
    route = table.match("h", "/", "GET", [])
    assert route is not None
    return route


def test_an_unchanged_limit_keeps_its_bucket_when_the_rest_changes() -> None:
    runtime = PolicyRuntime()
    first = _route(_compile(runtime, _config()))
    assert first.limiter is not None and first.fault is not None
    assert first.limiter.take(0.0) and first.limiter.take(0.0) and not first.limiter.take(0.0)
    first.fault.active = 2
    # Another compile where only the cluster changed (as an endpoint or cluster push does).
    again = _route(_compile(runtime, _config(cluster="b")))
    assert again.limiter is first.limiter and not again.limiter.take(1.0)  # still empty: no refill
    assert again.fault is first.fault and again.fault.active == 2
    assert len(runtime) == 2


def test_a_changed_limit_or_place_gets_new_state() -> None:
    runtime = PolicyRuntime()
    first = _route(_compile(runtime, _config()))
    changed = _route(_compile(runtime, _config(limit=replace(LIMIT, max_tokens=5))))
    assert changed.limiter is not first.limiter and changed.fault is first.fault
    moved = _route(_compile(runtime, _config(limit=replace(LIMIT, max_tokens=5), vhost="other")))
    assert moved.limiter is not changed.limiter and moved.fault is not changed.fault
    assert len(runtime) == 2  # what no compile claims any more is gone


def test_a_compile_that_is_not_committed_changes_nothing() -> None:
    runtime = PolicyRuntime()
    first = _route(_compile(runtime, _config()))
    _compile(runtime, _config(vhost="other"), commit=False)  # e.g. a config that failed to bind
    assert _route(_compile(runtime, _config())).limiter is first.limiter


def test_route_places_by_name_then_position() -> None:
    def r(name: str) -> Route:
        return Route(name=name, action=ForwardAction(cluster="a"))

    assert route_places((r("a"), r(""), r("a"), r("b"))) == ["a", "#1", "a#1", "b"]
