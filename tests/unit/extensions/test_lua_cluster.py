"""The Lua cluster specifier's config through the translator and the route table: a route whose
cluster a script names per request (inline, or a route configuration's plugin named by the route);
what meshpy does not have, and scripts that do not load or name no envoy_on_route, are errors at their
path; routes without a plugin are compiled as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.routes import ForwardAction, LuaClusterSpecifier, Route, RouteConfig, VirtualHost
from meshpy.routing.table import RouteTable
from meshpy.xds.translate import load_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
LUA_CLUSTER = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ROUTE_CONFIG = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
SCRIPT = 'function envoy_on_route(route_handle) return "app" end'
CORPUS = Path(__file__).parents[2] / "data" / "envoy-corpus" / "examples-lua-cluster-specifier.yaml"


def plugin(script: str = SCRIPT) -> dict[str, Any]:
    return {"extension": {"name": "lua", "typed_config": {
        "@type": LUA_CLUSTER, "source_code": {"inline_string": script}, "default_cluster": "app"}}}


def bootstrap(action: dict[str, Any], plugins: list[dict[str, Any]] | None = None) -> Any:
    route_config: dict[str, Any] = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": action}]}]}
    if plugins is not None:
        route_config["cluster_specifier_plugins"] = plugins
    hcm = {"@type": HCM, "stat_prefix": "web", "route_config": route_config,
           "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}]}
    return load_bootstrap({"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
        "clusters": [{"name": "app", "load_assignment": {"cluster_name": "app", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 9000}}}}]}]}}]}})


def action_of(cfg: Any) -> ForwardAction:
    action = cfg.listeners[0].http.route_config.virtual_hosts[0].routes[0].action
    assert isinstance(action, ForwardAction)
    return action


def issues(action: dict[str, Any], plugins: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        bootstrap(action, plugins)
    return [(i.path, i.reason) for i in caught.value.issues]


def test_an_inline_plugin_names_the_cluster_per_request() -> None:
    action = action_of(bootstrap({"inline_cluster_specifier_plugin": plugin()}))
    assert action.cluster is None and not action.weighted
    assert action.cluster_plugin == LuaClusterSpecifier(source_code=SCRIPT, default_cluster="app")


def test_a_route_names_a_plugin_of_its_route_configuration() -> None:
    action = action_of(bootstrap({"cluster_specifier_plugin": "lua"}, [plugin()]))
    assert action.cluster_plugin == LuaClusterSpecifier(source_code=SCRIPT, default_cluster="app")
    where = f"{ROUTE_CONFIG}.virtual_hosts[0].routes[0].route.cluster_specifier_plugin"
    assert issues({"cluster_specifier_plugin": "other"}, [plugin()]) == [
        (where, "unknown cluster specifier plugin name: other is used in the route")]


@pytest.mark.parametrize("given, reason", [
    (plugin("function envoy_on_request(h) end"),
     "the script does not load: envoy_on_route() function not found. Lua will not hook cluster specifier."),
    (plugin("function envoy_on_route(h) return ( end"),
     "the script does not load: [string \"function envoy_on_route(h) return ( end\"]:1: unexpected "
     "symbol near 'end'"),
])
def test_a_script_that_does_not_load_is_an_error_at_its_path(given: dict[str, Any], reason: str) -> None:
    where = f"{ROUTE_CONFIG}.virtual_hosts[0].routes[0].route.inline_cluster_specifier_plugin.extension" \
            ".typed_config.source_code"
    assert issues({"inline_cluster_specifier_plugin": given}) == [(where, reason)]


def test_another_plugin_type_is_not_supported() -> None:
    other = {"extension": {"name": "other", "typed_config": {"@type": ROUTER}}}
    (path, reason), = issues({"inline_cluster_specifier_plugin": other})
    assert path.endswith("inline_cluster_specifier_plugin.extension.typed_config")
    assert reason == ("envoy.extensions.filters.http.router.v3.Router is not supported by meshpy "
                      "(the Lua cluster specifier is)")


def table(route: Route) -> RouteTable:
    vhost = VirtualHost(name="v", domains=("*",), routes=(route,))
    return RouteTable(RouteConfig(name="rc", virtual_hosts=(vhost,)))


def test_without_a_request_the_route_goes_to_its_default_cluster() -> None:
    spec = LuaClusterSpecifier(source_code=SCRIPT, default_cluster="fallback")
    found = table(Route(action=ForwardAction(cluster_plugin=spec))).match("h", "/", "GET", [])
    assert found is not None and found.pick_cluster() == "fallback"


def test_a_plugin_whose_script_does_not_load_is_a_compile_error() -> None:
    route = Route(action=ForwardAction(cluster_plugin=LuaClusterSpecifier(source_code="x = (")))
    with pytest.raises(ConfigError, match=r"cluster_plugin: .*unexpected symbol"):
        table(route)


def test_the_envoy_examples_sandbox_loads() -> None:
    import yaml

    text = CORPUS.read_text()
    cfg = load_bootstrap(yaml.safe_load(text[text.index("static_resources"):]))
    action = action_of(cfg)
    assert action.cluster_plugin is not None and action.cluster_plugin.default_cluster == "example_cluster"
    assert "fake_cluster" in action.cluster_plugin.source_code
