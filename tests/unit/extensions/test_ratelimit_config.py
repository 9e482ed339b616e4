"""The global rate limit filter's config through the translator and the chain: the RateLimit filter
becomes a Python filter of meshpy.extensions.ratelimit; the rate_limits of routes and virtual hosts
reach it as overrides of the routes they apply to (folded into a RateLimitPerRoute where one is given),
and the filter stays out of the chains of routes where none applies; what meshpy does not do is an
issue at its path (and where Envoy refuses the same, real Envoy agrees); meshpy YAML takes the class."""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from kit import envoy_binary

from meshpy.errors import ConfigError
from meshpy.extensions.ratelimit import RateLimit
from meshpy.model.load import load_text
from meshpy.model.types import Config
from meshpy.stack.filter_chain import ChainBuilder, PythonFilter
from meshpy.stack.headers import HeaderOps
from meshpy.stack.policy_runtime import PolicyClaims
from meshpy.xds.translate import load_bootstrap

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
VHOST = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
NAME = "envoy.filters.http.ratelimit"
SERVICE = {"grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}, "transport_api_version": "V3"}
KEY = {"generic_key": {"descriptor_value": "k"}}


def bootstrap(routes: list[dict[str, Any]], vhost: dict[str, Any] | None = None,
              rate_limit: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {"@type": RL, "domain": "web", "rate_limit_service": SERVICE, **(rate_limit or {})}
    hcm = {"@type": HCM, "stat_prefix": "web",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes,
                                               **(vhost or {})}]},
           "http_filters": [{"name": NAME, "typed_config": config},
                            {"name": "router", "typed_config": {"@type": ROUTER}}]}
    clusters = [{"name": name, "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        for name, port in (("up", 9000), ("up2", 9001), ("rls", 9002))]
    return {"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
        "clusters": clusters}}


def route(prefix: str, **action: Any) -> dict[str, Any]:
    per_route = action.pop("per_route", None)
    out: dict[str, Any] = {"match": {"prefix": prefix}, "route": {"cluster": "up", **action}}
    if per_route is not None:
        out["typed_per_filter_config"] = {NAME: {"@type": PER_ROUTE, **per_route}}
    return out


def filters_of(cfg: Config, index: int) -> list[RateLimit]:
    """The rate limit filters of the index-th route's chain."""
    http = cfg.listeners[0].http
    assert http is not None
    vhost = http.route_config.virtual_hosts[0]
    builder = ChainBuilder(http.filters, PolicyClaims(), "web")
    chain = builder.build(None, None, HeaderOps(), HeaderOps(), builder.check(vhost.filters, "v"),
                          vhost.routes[index].filters, "r")
    return [f.user for f in chain.request if isinstance(f, PythonFilter) and isinstance(f.user, RateLimit)]


def issues(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(data)
    return [(i.path, i.reason) for i in caught.value.issues]


def test_the_filter_is_the_python_class_with_envoys_config() -> None:
    http = load_bootstrap(bootstrap([route("/")])).listeners[0].http
    assert http is not None
    (spec,) = http.filters
    assert (spec.name, spec.kind) == (NAME, "python")
    assert spec.python_class == "meshpy.extensions.ratelimit:RateLimit"
    assert json.loads(spec.config) == {"domain": "web", "rate_limit_service": SERVICE}


def test_routes_without_rate_limits_carry_nothing_and_run_no_filter() -> None:
    cfg = load_bootstrap(bootstrap([route("/limited", rate_limits=[{"actions": [KEY]}]), route("/")]))
    http = cfg.listeners[0].http
    assert http is not None
    limited, plain = http.route_config.virtual_hosts[0].routes
    assert plain.filters == ()  # nothing added where no rate limit applies
    assert filters_of(cfg, 1) == []  # and the filter is not in its chain (inert there)
    (flt,) = filters_of(cfg, 0)
    assert [len(p.actions) for p in flt.policies] == [1] and not flt.inert
    (override,) = limited.filters
    assert override.by_class and override.name == "meshpy.extensions.ratelimit:RateLimit"


def test_the_virtual_hosts_rate_limits_apply_by_vh_rate_limits() -> None:
    vh_limits = {"rate_limits": [{"actions": [KEY]}, {"stage": 1, "actions": [KEY]}]}
    cfg = load_bootstrap(bootstrap([
        route("/own", rate_limits=[{"actions": [KEY]}]),  # OVERRIDE: the route's only
        route("/inc", rate_limits=[{"actions": [KEY]}], include_vh_rate_limits=True),
        route("/per", rate_limits=[{"actions": [KEY]}],
              per_route={"vh_rate_limits": "INCLUDE", "domain": "d"}),
        route("/ign", per_route={"vh_rate_limits": "IGNORE"}),
        route("/"),  # none of its own: the virtual host's (of the filter's stage, 0)
    ], vh_limits))
    counts = [len(filters_of(cfg, i)[0].policies) if filters_of(cfg, i) else 0 for i in range(5)]
    assert counts == [1, 2, 2, 0, 1]
    assert filters_of(cfg, 2)[0].domain == "d" and filters_of(cfg, 0)[0].domain == "web"


def test_a_virtual_hosts_rate_limit_per_route_reaches_routes_with_rate_limits() -> None:
    """The virtual host names the filter with a RateLimitPerRoute; the route's rate limits go with it."""
    per_route = {"@type": PER_ROUTE, "vh_rate_limits": "INCLUDE", "domain": "v"}
    vhost = {"typed_per_filter_config": {NAME: per_route}, "rate_limits": [{"actions": [KEY]}]}
    cfg = load_bootstrap(bootstrap([route("/", rate_limits=[{"actions": [KEY]}])], vhost))
    (flt,) = filters_of(cfg, 0)
    assert flt.domain == "v" and len(flt.policies) == 2


def test_the_filters_own_and_a_per_route_configs_own_rate_limits_win() -> None:
    own = {"rate_limits": [{"actions": [KEY]}, {"actions": [KEY], "apply_on_stream_done": True}]}
    cfg = load_bootstrap(bootstrap([route("/a", rate_limits=[{"actions": [KEY]}] * 3, per_route=own),
                                    route("/b", rate_limits=[{"actions": [KEY]}] * 3)],
                                   rate_limit={"rate_limits": [{"actions": [KEY]}]}))
    a, b = filters_of(cfg, 0)[0], filters_of(cfg, 1)[0]
    assert (len(a.on_request_path), len(a.on_done)) == (1, 1)
    assert len(b.policies) == 1  # the filter's own, not the route's three


def test_a_listener_without_the_filter_ignores_route_rate_limits() -> None:
    data = bootstrap([route("/", rate_limits=[{"actions": [KEY]}])])
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = hcm["http_filters"][1:]
    cfg = load_bootstrap(data)
    assert filters_of(cfg, 0) == []


ROUTE_LIMIT = f"{VHOST}.routes[0].route.rate_limits[0]"
PER_ROUTE_LIMIT = f"{VHOST}.routes[0].typed_per_filter_config[{NAME}].rate_limits[0]"
# (config change, where the issue is, words of its reason, whether Envoy 1.40 refuses it too)
REFUSED: list[tuple[str, dict[str, Any], str, str, bool]] = [
    ("stage_in_per_route", {"per_route": {"rate_limits": [{"stage": 1, "actions": [KEY]}]}}, PER_ROUTE_LIMIT,
     "stage and disable_key", True),
    ("status_not_named", {"rate_limit": {"rate_limited_status": {"code": 418}}},
     f"{FILTER}.rate_limited_status.code", "HTTP statuses Envoy names", True),
    ("dynamic_metadata", {"rate_limits": [{"actions": [{"dynamic_metadata": {
        "descriptor_key": "d", "metadata_key": {"key": "a", "path": [{"key": "b"}]}}}]}]},
     f"{ROUTE_LIMIT}.actions[0].dynamic_metadata", "deprecated", True),
    ("no_actions", {"rate_limits": [{"actions": []}]}, f"{ROUTE_LIMIT}.actions", "at least one", True),
    ("no_domain", {"rate_limit": {"domain": ""}}, f"{FILTER}.domain", "must not be empty", True),
    ("too_many_headers", {"rate_limit": {"response_headers_to_add": [
        {"header": {"key": f"x-{i}", "value": "v"}} for i in range(11)]}},
     f"{FILTER}.response_headers_to_add", "at most 10", True),
    ("hits_addend_both", {"per_route": {"rate_limits": [{"actions": [KEY], "hits_addend": {}}]}},
     f"{PER_ROUTE_LIMIT}.hits_addend", "exactly one of number and format", True),
    # Envoy does these; meshpy does not:
    ("cluster_metadata", {"rate_limits": [{"actions": [{"metadata": {
        "descriptor_key": "s", "source": "CLUSTER_LOCALITY_ENTRY",
        "metadata_key": {"key": "a", "path": [{"key": "b"}]}}}]}]},
     f"{ROUTE_LIMIT}.actions[0].metadata.source", "CLUSTER_LOCALITY_ENTRY is not supported", False),
    ("cel_descriptor", {"rate_limits": [{"actions": [{"extension": {"name": "c", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor",
        "descriptor_key": "k", "text": "request.method"}}}]}]},
     f"{ROUTE_LIMIT}.actions[0].extension.typed_config", "expr.v3.Descriptor is not supported", False),
    ("hits_addend_format", {"per_route": {"rate_limits": [{"actions": [KEY], "hits_addend": {
        "format": "%BYTES_RECEIVED%"}}]}}, f"{PER_ROUTE_LIMIT}.hits_addend.format", "not supported", False),
    ("header_format", {"rate_limit": {"response_headers_to_add": [
        {"header": {"key": "x", "value": "%REQ(a)%"}}]}},
     f"{FILTER}.response_headers_to_add[0].header.value", "format strings", False),
    ("metadata_namespace", {"rate_limit": {"metadata_namespace": "ns"}}, f"{FILTER}.metadata_namespace",
     "not supported", False),
    ("weighted_destination", {"weighted": True, "rate_limits": [{"actions": [{"destination_cluster": {}}]}]},
     f"{ROUTE_LIMIT}.actions[0].destination_cluster", "weighted_clusters", False),
    ("service_timeout", {"rate_limit": {"rate_limit_service": {
        "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}, "timeout": "1s"},
        "transport_api_version": "V3"}}},
     f"{FILTER}.rate_limit_service.grpc_service.timeout", "the filter's `timeout`", False),
]


def refused_config(change: dict[str, Any]) -> dict[str, Any]:
    change = copy.deepcopy(change)
    rate_limit = change.pop("rate_limit", None)
    weighted = change.pop("weighted", False)
    r = route("/", **change)
    if weighted:
        del r["route"]["cluster"]
        r["route"]["weighted_clusters"] = {"clusters": [{"name": "up", "weight": 1},
                                                        {"name": "up2", "weight": 1}]}
    return bootstrap([r], rate_limit=rate_limit)


@pytest.mark.parametrize(("change", "path", "words", "by_envoy"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_what_meshpy_does_not_do_is_an_issue_at_its_path(change: dict[str, Any], path: str, words: str,
                                                         by_envoy: bool) -> None:
    found = issues(refused_config(change))
    assert any(p == path and words in reason for p, reason in found), found


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="needs envoy")
@pytest.mark.parametrize(("change", "by_envoy"), [(r[1], r[4]) for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_envoy_refuses_what_both_refuse_and_takes_the_rest(change: dict[str, Any], by_envoy: bool,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(refused_config(change)))
    command = [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "critical"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    assert (run.returncode != 0) == by_envoy, run.stdout + run.stderr


def test_a_good_config_is_taken_whole() -> None:
    cfg = load_bootstrap(bootstrap(
        [route("/", rate_limits=[{"stage": 1, "disable_key": "k", "actions": [
            {"source_cluster": {}}, {"destination_cluster": {}}, {"remote_address": {}},
            {"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": True}},
            {"query_parameters": {"query_parameter_name": "q", "descriptor_key": "q"}},
            {"masked_remote_address": {"v4_prefix_mask_len": 24}},
            {"header_value_match": {"descriptor_value": "v", "expect_match": False,
                                    "headers": [{"name": "x-a", "string_match": {"prefix": "b"}}]}},
            {"query_parameter_value_match": {"descriptor_value": "q", "query_parameters": [{"name": "q"}]}},
            {"metadata": {"descriptor_key": "m", "source": "ROUTE_ENTRY",
                          "metadata_key": {"key": "a", "path": [{"key": "b"}]},
                          "default_value": "d", "skip_if_absent": True}},
            {"remote_address_match": {"descriptor_value": "ten", "address_matcher": {
                "ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}}},
            {"extension": {"name": "h", "typed_config": {
                "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                "header_name": "x-h"}}}],
            "limit": {"rate_limit": {"requests_per_unit": 5, "unit": "MINUTE"}},
            "x_ratelimit_option": "OFF"}])],
        rate_limit={"stage": 1, "request_type": "external", "timeout": "0.1s", "failure_mode_deny": True,
                    "rate_limited_as_resource_exhausted": True,
                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                    "disable_x_envoy_ratelimited_header": True, "rate_limited_status": {"code": 503},
                    "status_on_error": {"code": 502}, "stat_prefix": "s", "enable_retry_after_header": True,
                    "response_headers_to_add": [{"header": {"key": "x-a", "value": "b"}}],
                    "filter_enabled": {"default_value": {"numerator": 50}, "runtime_key": "a"},
                    "filter_enforced": {"default_value": {"numerator": 100}}}))
    (flt,) = filters_of(cfg, 0)
    (policy,) = flt.policies
    assert len(policy.actions) == 11 and policy.limit == (5, 2) and policy.headers_off
    assert (flt.limited_status, flt.error_status, flt.grpc_code, flt.timeout) == (503, 502, 8, 0.1)


def test_meshpy_yaml_takes_the_same_class_and_configs() -> None:
    rate_limit = {"domain": "web", "rate_limit_service": SERVICE}
    header_input = {"@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                    "header_name": "x-user"}
    by_user = {"extension": {"name": "user", "typed_config": header_input}}
    per_route = {"rate_limits": [{"actions": [KEY, by_user]}], "domain": "other"}
    cfg = load_text(f"""
listeners:
  - name: web
    address: 127.0.0.1:8000
    filters:
      - name: rl
        python: {{class: "meshpy.extensions.ratelimit:RateLimit", config: {json.dumps(rate_limit)}}}
    routes:
      - match: /limited
        cluster: rls
        filters: {{rl: {{config: {json.dumps(per_route)}}}}}
      - match: /
        cluster: rls
clusters:
  rls: 127.0.0.1:9000
""")
    (limited,) = filters_of(cfg, 0)
    assert limited.domain == "other" and [len(p.actions) for p in limited.policies] == [2]
    assert filters_of(cfg, 1) == []
    staged = {**rate_limit, "rate_limits": [{"stage": 2, "actions": [KEY]}]}
    bad = load_text(f"""
listeners:
  - name: web
    address: 127.0.0.1:8000
    filters:
      - name: rl
        python: {{class: "meshpy.extensions.ratelimit:RateLimit", config: {json.dumps(staged)}}}
    routes:
      - {{match: /, cluster: rls}}
clusters:
  rls: 127.0.0.1:9000
""")
    http = bad.listeners[0].http
    assert http is not None
    with pytest.raises(ConfigError, match="stage and disable_key"):  # (checked as the filter is made)
        ChainBuilder(http.filters, PolicyClaims(), "web")
