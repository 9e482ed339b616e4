"""Envoy's RBAC -> the model (meshpy.xds.translate_authz): the HTTP filter in a chain and per route,
the network filter, what is refused (naming the field), and model -> Envoy -> model round trips
through the control plane's exporter (control.sources.export_authz)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.rbac.v3 import rbac_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from hypothesis import given
from hypothesis import strategies as st

from control.sources import export_authz
from meshpy.errors import ConfigError
from meshpy.model.authz import (
    AllOf,
    Always,
    AnyOf,
    Authenticated,
    HeaderRule,
    IpRule,
    NetworkRbac,
    Not,
    PathRule,
    Policy,
    PortRule,
    Rbac,
    RbacFilter,
    Rule,
    ServerNameRule,
    sorted_policies,
)
from meshpy.model.filter_types import FilterOverride, HttpFilterSpec
from meshpy.model.load import load_text
from meshpy.model.routes import HeaderMatch, StringMatch
from meshpy.xds.translate_authz import HttpRbac, NetworkRbacConfig, network_rbac, rbac_filter, rules
from meshpy.xds.translate_base import UNSUPPORTED, Issues

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def bootstrap(filters: str, routes: str = "") -> str:
    return f"""
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: web
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
              - match: {{prefix: /}}
                direct_response: {{status: 200}}
"""


def parsed(kind: type[Any], data: Any) -> Any:
    return json_format.ParseDict(data, kind())


def issues_of(fn: Any, msg: Any) -> list[str]:
    issues = Issues()
    fn(issues, msg, "x")
    return [str(i) for i in issues.items]


POLICY = {"permissions": [{"any": True}], "principals": [{"any": True}]}


def test_the_filter_and_its_per_route_configs() -> None:
    config = load_text(bootstrap("""
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: r_
              rules:
                action: DENY
                policies:
                  zz: {permissions: [{url_path: {path: {prefix: /admin}}}], principals: [{any: true}]}
                  aa: {permissions: [{destination_port_range: {start: 80, end: 90}}],
                       principals: [{not_id: {remote_ip: {address_prefix: 10.1.2.3, prefix_len: 8}}}]}
""", """
              - match: {prefix: /open}
                direct_response: {status: 200}
                typed_per_filter_config:
                  envoy.filters.http.rbac: {"@type": "$per_route"}
              - match: {prefix: /own}
                direct_response: {status: 200}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": $per_route
                    rbac: {rules: {action: LOG}}
""".replace("$per_route", PER_ROUTE)))
    http = config.listeners[0].http
    assert http is not None
    (spec,) = http.filters
    assert (spec.name, spec.kind, spec.disabled) == ("envoy.filters.http.rbac", "authz", False)
    assert spec.rbac == RbacFilter(rules_stat_prefix="r_", rules=Rbac(action="deny", policies=(
        Policy(name="aa", permissions=(PortRule(start=80, end=90),),
               principals=(Not(rule=IpRule(source="remote", cidr="10.0.0.0/8")),)),
        Policy(name="zz", permissions=(PathRule(match=StringMatch(kind="prefix", value="/admin")),),
               principals=(Always(),)))))
    routes = http.route_config.virtual_hosts[0].routes
    assert routes[0].filters == (FilterOverride(name="envoy.filters.http.rbac", disabled=True),)
    assert routes[1].filters == (FilterOverride(name="envoy.filters.http.rbac",
                                                rbac=RbacFilter(rules=Rbac(action="log"))),)


def test_an_empty_filter_at_the_head_is_the_implicit_one() -> None:
    """An RBAC filter without config, first: what a listener runs anyway (so meshpy YAML's model)."""
    config = load_text(bootstrap("""
          - name: envoy.filters.http.rbac
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC}
          - name: envoy.filters.http.fault
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
"""))
    http = config.listeners[0].http
    assert http is not None and http.filters == ()
    # One with a config stays ahead of the built-ins after it, which are left out as usual.
    config = load_text(bootstrap("""
          - name: envoy.filters.http.rbac
            typed_config: {"@type": "$rbac", rules: {action: ALLOW}}
          - name: envoy.filters.http.fault
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}
""".replace("$rbac", RBAC)))
    http = config.listeners[0].http
    assert http is not None
    assert http.filters == (HttpFilterSpec(name="envoy.filters.http.rbac", kind="authz",
                                           rbac=RbacFilter(rules=Rbac(action="allow"))),)


def test_what_meshpy_does_not_evaluate_is_refused_by_name() -> None:
    msg = parsed(HttpRbac, {
        "rules": {"action": "ALLOW", "audit_logging_options": {"audit_condition": "ON_DENY"}, "policies": {
            "p": {"permissions": [{"metadata": {"filter": "f", "path": [{"key": "k"}],
                                                "value": {"present_match": True}}},
                                  {"and_rules": {"rules": [{"uri_template": {"name": "t"}}]}}],
                  "principals": [{"filter_state": {"key": "k", "string_match": {"exact": "v"}}},
                                 {"or_ids": {"ids": [{"any": True}, {"metadata": {"filter": "f"}}]}}],
                  "condition": {"const_expr": {"bool_value": True}}}}},
        "track_per_rule_stats": True})
    assert issues_of(rbac_filter, msg) == [
        f"x.track_per_rule_stats: {UNSUPPORTED}",
        f"x.rules.audit_logging_options: {UNSUPPORTED}",
        f"x.rules.policies[p].condition: {UNSUPPORTED}",
        f"x.rules.policies[p].permissions[0].metadata: {UNSUPPORTED}",
        f"x.rules.policies[p].permissions[1].and_rules.rules[0].uri_template: {UNSUPPORTED}",
        f"x.rules.policies[p].principals[0].filter_state: {UNSUPPORTED}",
        f"x.rules.policies[p].principals[1].or_ids.ids[1].metadata: {UNSUPPORTED}",
    ]


def test_what_envoy_refuses_is_refused() -> None:
    msg = parsed(rbac_pb2.RBAC, {"action": "DENY", "policies": {
        "empty": {},
        "p": {"permissions": [{"any": False}, {"and_rules": {}},
                              {"destination_port_range": {"start": 9, "end": 9}},
                              {"destination_port": 70000}, {}, {"url_path": {}},
                              {"requested_server_name": {}}],
              "principals": [{"direct_remote_ip": {"address_prefix": "10.0.0.300", "prefix_len": 8}},
                             {"authenticated": {"principal_name": {"safe_regex": {"regex": "(?=x)"}}}}]}}})
    assert issues_of(rules, msg) == [
        "x.policies[empty].permissions: must have at least one entry",
        "x.policies[empty].principals: must have at least one entry",
        "x.policies[p].permissions[0].any: must be true",
        "x.policies[p].permissions[1].and_rules: must have at least one entry",
        "x.policies[p].permissions[2].destination_port_range: must have 0 <= start < end <= 65536, "
        "got [9, 9)",
        "x.policies[p].permissions[3].destination_port: must be at most 65535, got 70000",
        "x.policies[p].permissions[4]: one rule is required",
        "x.policies[p].permissions[5].url_path.path: is required",
        "x.policies[p].permissions[6].requested_server_name: one of exact, prefix, suffix, contains or "
        "safe_regex is required",
        "x.policies[p].principals[0].direct_remote_ip: not a CIDR: '10.0.0.300/8' does not appear to be an "
        "IPv4 or IPv6 network",
        "x.policies[p].principals[1].authenticated.principal_name.safe_regex.regex: lookaround and "
        "backreferences are not RE2 syntax",
    ]


def test_the_network_filter() -> None:
    msg = parsed(NetworkRbacConfig, {
        "stat_prefix": "tcp.", "enforcement_type": "CONTINUOUS", "delay_deny": "0.5s",
        "rules": {"action": "ALLOW", "policies": {"p": {
            "permissions": [{"destination_port": 9443}],
            "principals": [{"authenticated": {"principal_name": {"exact": "spiffe://td/sa/a"}}}]}}},
        "shadow_rules": {"action": "DENY"}, "shadow_rules_stat_prefix": "sh."})
    issues = Issues()
    model = network_rbac(issues, msg, "x")
    assert issues.items == []
    assert model == NetworkRbac(
        stat_prefix="tcp.", enforcement_type="continuous", delay_deny=0.5, shadow_rules_stat_prefix="sh.",
        shadow_rules=Rbac(action="deny"), rules=Rbac(action="allow", policies=(Policy(
            name="p", permissions=(PortRule(start=9443, end=9444),),
            principals=(Authenticated(principal=StringMatch(kind="exact", value="spiffe://td/sa/a")),)),)))
    # Header rules are Envoy's error too; a stat prefix is required; matchers are not evaluated.
    bad = parsed(NetworkRbacConfig, {"rules": {"policies": {"p": {
        "permissions": [{"not_rule": {"header": {"name": "x", "present_match": True}}}],
        "principals": [{"and_ids": {"ids": [{"header": {"name": "y", "present_match": True}}]}}]}}},
        "matcher": {"on_no_match": {"action": {"name": "a"}}}})
    assert issues_of(network_rbac, bad) == [
        f"x.matcher: {UNSUPPORTED}",
        "x.stat_prefix: is required",
        "x.rules.policies[p].permissions[0].not_rule.header: header rules are not supported by the RBAC "
        "network filter (as in Envoy)",
        "x.rules.policies[p].principals[0].and_ids.ids[0].header: header rules are not supported by the "
        "RBAC network filter (as in Envoy)",
    ]


def test_errors_reach_the_config_error_with_envoys_paths() -> None:
    with pytest.raises(ConfigError) as err:
        load_text(bootstrap("""
          - name: authz
            typed_config: {"@type": "$rbac", track_per_rule_stats: true}
""".replace("$rbac", RBAC)))
    assert [i.reason for i in err.value.issues] == [UNSUPPORTED]
    assert err.value.issues[0].path.endswith("http_filters[0].typed_config.track_per_rule_stats")


# -- round trips: model -> Envoy (control's exporter) -> model --------------------------------------
strings = st.builds(StringMatch, kind=st.sampled_from(["exact", "prefix", "suffix", "contains"]),
                    value=st.text("abc/.-", min_size=1, max_size=6), ignore_case=st.booleans()) | \
    st.builds(StringMatch, kind=st.just("regex"), value=st.sampled_from([".*", "a+", "[ab]/x"]))
headers = st.builds(HeaderMatch, name=st.sampled_from(["x-a", ":method", ":authority"]),
                    match=strings | st.just(StringMatch(kind="present")), invert=st.booleans())
cidrs = st.sampled_from(["10.0.0.0/8", "192.0.2.7/32", "::/0", "2001:db8::/32"])
ports = st.integers(min_value=0, max_value=65534).flatmap(
    lambda start: st.integers(min_value=start + 1, max_value=65536).map(
        lambda end: PortRule(start=start, end=end)))
common: st.SearchStrategy[Rule] = st.just(Always()) | st.builds(HeaderRule, match=headers) | \
    st.builds(PathRule, match=strings)
permission_leaf = common | st.builds(IpRule, source=st.just("destination"), cidr=cidrs) | ports | \
    st.builds(ServerNameRule, match=strings)
principal_leaf = common | st.builds(IpRule, source=st.sampled_from(["source", "direct_remote", "remote"]),
                                    cidr=cidrs) | \
    st.builds(Authenticated, principal=st.none() | strings)


def tree(leaf: st.SearchStrategy[Rule]) -> st.SearchStrategy[Rule]:
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda rs: AllOf(rules=tuple(rs))),
        st.lists(inner, min_size=1, max_size=3).map(lambda rs: AnyOf(rules=tuple(rs))),
        inner.map(lambda r: Not(rule=r))), max_leaves=5)


policies = st.dictionaries(st.text("abz -", min_size=1, max_size=5), st.tuples(
    st.lists(tree(permission_leaf), min_size=1, max_size=2),
    st.lists(tree(principal_leaf), min_size=1, max_size=2)),
    max_size=3).map(lambda d: sorted_policies([Policy(name=n, permissions=tuple(p), principals=tuple(q))
                                               for n, (p, q) in d.items()]))
rbacs = st.builds(Rbac, action=st.sampled_from(["allow", "deny", "log"]), policies=policies)


@given(st.builds(RbacFilter, rules=rbacs, shadow_rules=st.none() | rbacs,
                 rules_stat_prefix=st.sampled_from(["", "r_"]),
                 shadow_rules_stat_prefix=st.sampled_from(["", "s."])))
def test_filter_configs_round_trip(config: RbacFilter) -> None:
    msg = parsed(HttpRbac, export_authz.rbac_config(config))
    issues = Issues()
    back = rbac_filter(issues, msg, "x")
    assert issues.items == []
    assert back == config


def test_exported_per_route_and_filter_entries() -> None:
    spec = HttpFilterSpec(name="authz", kind="authz")
    assert export_authz.rbac_filter_entry(spec, used=False) is None
    assert export_authz.rbac_filter_entry(spec, used=True) == {
        "name": "authz", "typed_config": {"@type": RBAC}}
    assert export_authz.names_of(spec) == {"authz", "envoy.filters.http.rbac"}
    assert export_authz.per_route(FilterOverride(name="authz", disabled=True)) is None
    own = RbacFilter(rules=Rbac(action="deny"))
    assert export_authz.per_route(FilterOverride(name="authz", rbac=own)) == {
        "@type": PER_ROUTE, "rbac": {"rules": {"action": "DENY", "policies": {}}}}


def test_a_sample_envoy_config_document_parses() -> None:
    """The rule shapes of docs/authorization.md's Envoy example translate without issues."""
    doc = yaml.safe_load("""
action: ALLOW
policies:
  orders:
    permissions: [{and_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}},
                                       {url_path: {path: {prefix: /api/}}}]}}]
    principals: [{authenticated: {principal_name: {exact: "spiffe://cluster.local/ns/shop/sa/orders"}}}]
""")
    issues = Issues()
    model = rules(issues, parsed(rbac_pb2.RBAC, doc), "x")
    assert issues.items == [] and [p.name for p in model.policies] == ["orders"]
