"""The CORS filter's config through the translator and the chain: the Cors filter becomes a Python
filter of meshpy.extensions.cors; per-route CorsPolicy configs of a virtual host and a route merge level
by level (HttpFilter.route_config_levels); the deprecated `cors` fields of VirtualHost and RouteAction
reach every CORS filter of the listener, unless a typed_per_filter_config names that filter; bad
policies are issues at their path; meshpy YAML takes the same class and configs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.extensions.cors import Cors
from meshpy.model.load import load_text
from meshpy.model.types import Config
from meshpy.stack.filter_chain import ChainBuilder, PythonFilter
from meshpy.stack.headers import HeaderOps
from meshpy.stack.policy_runtime import PolicyClaims
from meshpy.xds.translate import load_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
VHOST = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
A = [{"exact": "https://a.example"}]


def bootstrap(vhost: dict[str, Any], route: dict[str, Any] | None = None,
              filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}, **(route or {})}]
    if filters is None:
        filters = [{"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}}]
    hcm = {"@type": HCM, "stat_prefix": "web",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes, **vhost}]},
           "http_filters": [*filters, {"name": "router", "typed_config": {"@type": ROUTER}}]}
    return {"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
        "clusters": [{"name": "up", "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 9000}}}}]}]}}]}}


def cors_filters(cfg: Config) -> dict[str, Cors]:
    """The CORS filters of the first route's chain, by name."""
    http = cfg.listeners[0].http
    assert http is not None
    vhost = http.route_config.virtual_hosts[0]
    builder = ChainBuilder(http.filters, PolicyClaims(), "web")
    chain = builder.build(None, None, HeaderOps(), HeaderOps(), builder.check(vhost.filters, "v"),
                          vhost.routes[0].filters, "r")
    return {f.name: f.user for f in chain.request if isinstance(f, PythonFilter) and isinstance(f.user, Cors)}


def policy_of(cfg: Config, name: str = "envoy.filters.http.cors") -> dict[str, Any] | None:
    made = cors_filters(cfg).get(name)
    assert made is not None, f"no CORS filter {name!r} on the route"
    policy: dict[str, Any] | None = made.config.get("policy")
    return policy


def issues(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(data)
    return [(i.path, i.reason) for i in caught.value.issues]


def test_the_filter_is_the_python_class_with_envoys_config() -> None:
    http = load_bootstrap(bootstrap({})).listeners[0].http
    assert http is not None
    (spec,) = http.filters
    assert (spec.name, spec.kind, spec.python_class, spec.config) == (
        "envoy.filters.http.cors", "python", "meshpy.extensions.cors:Cors", "{}")
    assert policy_of(load_bootstrap(bootstrap({}))) is None  # no policy anywhere: it does nothing


def test_typed_policies_of_virtual_host_and_route_merge() -> None:
    vhost = {"typed_per_filter_config": {"envoy.filters.http.cors": {
        "@type": POLICY, "allow_origin_string_match": A, "allow_methods": "GET", "max_age": "60",
        "filter_enabled": {"default_value": {"numerator": 0}}}}}
    route = {"typed_per_filter_config": {"envoy.filters.http.cors": {
        "@type": POLICY, "allow_methods": "PUT", "allow_credentials": True}}}
    assert policy_of(load_bootstrap(bootstrap(vhost, route))) == {
        "allow_origin_string_match": A, "allow_methods": "PUT", "max_age": "60", "allow_credentials": True}
    # (0% is the default numerator, so JSON leaves it out)
    assert policy_of(load_bootstrap(bootstrap(vhost)))["filter_enabled"] == {  # type: ignore[index]
        "default_value": {}}


def test_deprecated_cors_fields_merge_and_yield_to_typed_configs() -> None:
    legacy = {"cors": {"allow_origin_string_match": A, "allow_methods": "GET", "max_age": "60"}}
    own = {"route": {"cluster": "up", "cors": {"expose_headers": "x-r"}}}
    assert policy_of(load_bootstrap(bootstrap(legacy, own))) == {
        "allow_origin_string_match": A, "allow_methods": "GET", "max_age": "60", "expose_headers": "x-r"}
    # A config under the filter's name, at any level: the deprecated fields are not read at all.
    typed = {"typed_per_filter_config": {"envoy.filters.http.cors": {"@type": POLICY, "expose_headers": "x"}}}
    assert policy_of(load_bootstrap(bootstrap(legacy, {**own, **typed}))) == {"expose_headers": "x"}


def test_deprecated_fields_reach_every_cors_filter_whatever_its_name() -> None:
    two = [{"name": "first", "typed_config": {"@type": CORS}},
           {"name": "second", "typed_config": {"@type": CORS}}]
    vhost = {"cors": {"allow_origin_string_match": A},
             "typed_per_filter_config": {"second": {"@type": POLICY, "max_age": "5"}}}
    cfg = load_bootstrap(bootstrap(vhost, filters=two))
    assert policy_of(cfg, "first") == {"allow_origin_string_match": A}
    assert policy_of(cfg, "second") == {"max_age": "5"}


def test_deprecated_fields_never_turn_a_filter_on_nor_need_one() -> None:
    legacy = {"cors": {"allow_origin_string_match": A}}
    off = [{"name": "c", "disabled": True, "typed_config": {"@type": CORS}}]
    assert cors_filters(load_bootstrap(bootstrap(legacy, filters=off))) == {}
    # A typed config of its own does turn it on there (as in Envoy), and the deprecated one is not read.
    on = {"typed_per_filter_config": {"c": {"@type": POLICY}}}
    assert policy_of(load_bootstrap(bootstrap(legacy, on, filters=off)), "c") == {}
    # No CORS filter on the listener: the policy has no one to read it, in Envoy as here.
    assert cors_filters(load_bootstrap(bootstrap(legacy, filters=[]))) == {}


def test_a_filter_config_turns_it_off_on_a_route() -> None:
    vhost = {"typed_per_filter_config": {"envoy.filters.http.cors": {
        "@type": POLICY, "allow_origin_string_match": A}}}
    route = {"typed_per_filter_config": {"envoy.filters.http.cors": {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}}
    assert cors_filters(load_bootstrap(bootstrap(vhost, route))) == {}


def test_bad_policies_are_issues_at_their_path() -> None:
    bad = {"allow_origin_string_match": [{"suffix": ""}], "expose_headers": "a\nb"}
    assert issues(bootstrap({"cors": bad})) == [
        (f"{VHOST}.cors.allow_origin_string_match[0].suffix", "must not be empty"),
        (f"{VHOST}.cors.expose_headers", "is not a valid header value (CR, LF or NUL)")]
    assert issues(bootstrap({}, {"route": {"cluster": "up", "cors": {"shadow_enabled": {}}}})) == [
        (f"{VHOST}.routes[0].route.cors.shadow_enabled.default_value", "is required")]
    typed = {"typed_per_filter_config": {"envoy.filters.http.cors": {
        "@type": POLICY, "allow_origin_string_match": [{"custom": {"name": "m"}}]}}}
    assert issues(bootstrap(typed)) == [
        (f"{VHOST}.typed_per_filter_config[envoy.filters.http.cors].allow_origin_string_match[0].custom",
         "not supported by meshpy")]
    listener = [{"name": "c", "typed_config": {"@type": CORS, "unknown": 1}}]
    with pytest.raises(ConfigError):  # (the Any does not even parse)
        load_bootstrap(bootstrap({}, filters=listener))


def test_meshpy_yaml_takes_the_same_class_and_configs() -> None:
    cfg = load_text(f"""
listeners:
  - name: web
    address: 127.0.0.1:8000
    filters:
      - name: cors
        python: {{class: "meshpy.extensions.cors:Cors", config: {{}}}}
    virtual_hosts:
      - domains: ["*"]
        filters: {{cors: {{config: {json.dumps({"allow_origin_string_match": A, "max_age": "60"})}}}}}
        routes:
          - match: /
            cluster: up
            filters: {{cors: {{config: {{allow_methods: "GET"}}}}}}
clusters:
  up: 127.0.0.1:9000
""")
    assert policy_of(cfg, "cors") == {"allow_origin_string_match": A, "max_age": "60", "allow_methods": "GET"}
