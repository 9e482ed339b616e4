"""`authz:` in meshpy YAML (meshpy.model.authz_yaml): Istio's from/to/when compiled to Envoy's RBAC
model, on a listener (as a filter), a virtual host and a route, with errors at their paths."""

from __future__ import annotations

from yamlkit import CLUSTERS, issues, load

from meshpy.model.authz import (
    AllOf,
    Always,
    AnyOf,
    Authenticated,
    HeaderRule,
    IpRule,
    Not,
    PathRule,
    Policy,
    PortRule,
    Rbac,
    RbacFilter,
    ServerNameRule,
)
from meshpy.model.filter_types import FilterOverride, HttpFilterSpec
from meshpy.model.meshpy_yaml_filters import with_listener_authz
from meshpy.model.routes import HeaderMatch, StringMatch
from meshpy.model.yaml_reader import Reader


def listener(authz: str, routes: str = "      - {match: /, cluster: backend}\n") -> str:
    return ("listeners:\n  - name: web\n    address: 127.0.0.1:10000\n    filters:\n      - authz:\n"
            + "".join(f"          {line}\n" for line in authz.strip("\n").splitlines())
            + "    routes:\n" + routes + CLUSTERS)


def spec_of(text: str) -> HttpFilterSpec:
    http = load(text).listeners[0].http
    assert http is not None
    (spec,) = http.filters
    return spec


def method(m: str) -> HeaderRule:
    return HeaderRule(match=HeaderMatch(name=":method", match=StringMatch(kind="exact", value=m)))


def test_from_to_when_compile_to_envoys_model() -> None:
    spec = spec_of(listener("""
action: allow
policies:
  orders-can-read:
    from: [{principal: "spiffe://cluster.local/ns/shop/sa/orders"}, {ip: 10.1.2.3/8}]
    to: [{methods: [GET, head], paths: ["/api/*", /exact, "*.json"]}, {port: 8080}]
    when: [{header: x-env, values: [prod]}, {key: source.namespace, values: [shop]}]
"""))
    assert (spec.name, spec.kind) == ("authz", "authz")
    env = HeaderRule(match=HeaderMatch(name="x-env", match=StringMatch(kind="exact", value="prod")))
    shop = Authenticated(principal=StringMatch(kind="regex", value=".*/ns/shop/.*"))
    paths = AnyOf(rules=(PathRule(match=StringMatch(kind="prefix", value="/api/")),
                         PathRule(match=StringMatch(kind="exact", value="/exact")),
                         PathRule(match=StringMatch(kind="suffix", value=".json"))))
    assert spec.rbac == RbacFilter(rules=Rbac(action="allow", policies=(Policy(
        name="orders-can-read",
        # Conditions on what is asked join the permissions; on who asks, the principals.
        permissions=(AllOf(rules=(AllOf(rules=(AnyOf(rules=(method("GET"), method("HEAD"))), paths)), env)),
                     AllOf(rules=(PortRule(start=8080, end=8081), env))),
        principals=(AllOf(rules=(Authenticated(principal=StringMatch(
                        kind="exact", value="spiffe://cluster.local/ns/shop/sa/orders")), shop)),
                    AllOf(rules=(IpRule(source="direct_remote", cidr="10.0.0.0/8"), shop)))),)))


def test_parts_left_out_match_everything_and_not_keys_negate() -> None:
    spec = spec_of(listener("""
action: deny
policies:
  everything: {}
  outsiders:
    from: {not_namespaces: [shop, ops], remote_ip: 192.0.2.0/24}
    to: {not_hosts: ["*.internal"], server_name: api.example.com}
"""))
    assert spec.rbac is not None and spec.rbac.rules is not None
    everything, outsiders = spec.rbac.rules.policies
    assert everything == Policy(name="everything", permissions=(Always(),), principals=(Always(),))
    ns = [Authenticated(principal=StringMatch(kind="regex", value=f".*/ns/{n}/.*")) for n in ("shop", "ops")]
    assert outsiders.principals == (AllOf(rules=(Not(rule=AnyOf(rules=tuple(ns))),
                                                 IpRule(source="remote", cidr="192.0.2.0/24"))),)
    internal = StringMatch(kind="suffix", value=".internal", ignore_case=True)
    host = HeaderMatch(name=":authority", match=internal)
    assert outsiders.permissions == (AllOf(rules=(
        Not(rule=HeaderRule(match=host)),
        ServerNameRule(match=StringMatch(kind="exact", value="api.example.com")))),)


def test_principal_forms_as_istio_writes_them() -> None:
    spec = spec_of(listener("""
policies:
  p: {from: [{principals: ["cluster.local/ns/a/sa/b", "*", "*/sa/b", "spiffe://td/*"]}]}
"""))
    assert spec.rbac is not None and spec.rbac.rules is not None
    assert spec.rbac.rules.action == "allow"  # the default, as Istio's
    (principal,) = spec.rbac.rules.policies[0].principals
    assert principal == AnyOf(rules=(
        Authenticated(principal=StringMatch(kind="exact", value="spiffe://cluster.local/ns/a/sa/b")),
        Authenticated(principal=StringMatch(kind="regex", value=".+")),
        Authenticated(principal=StringMatch(kind="suffix", value="/sa/b")),
        Authenticated(principal=StringMatch(kind="prefix", value="spiffe://td/"))))


def test_policies_in_envoys_order_shadow_and_stat_prefixes() -> None:
    spec = spec_of(listener("""
action: deny
policies: {zeta: {to: {method: POST}}, alpha: {to: {method: PUT}}}
shadow: {action: allow, policies: {s: {}}}
stat_prefix: enforced_
shadow_stat_prefix: shadow_
"""))
    assert spec.rbac is not None and spec.rbac.rules is not None
    assert [p.name for p in spec.rbac.rules.policies] == ["alpha", "zeta"]
    assert spec.rbac.shadow_rules == Rbac(action="allow", policies=(
        Policy(name="s", permissions=(Always(),), principals=(Always(),)),))
    assert (spec.rbac.rules_stat_prefix, spec.rbac.shadow_rules_stat_prefix) == ("enforced_", "shadow_")
    # Shadow rules alone: nothing enforced.
    only = spec_of(listener("shadow: {action: deny, policies: {s: {}}}"))
    assert only.rbac is not None and only.rbac.rules is None and only.rbac.shadow_rules is not None
    # An action alone: allow with no policies refuses everything, as Envoy does.
    assert spec_of(listener("action: allow")).rbac == RbacFilter(rules=Rbac(action="allow"))


def test_routes_and_virtual_hosts_turn_it_off_or_replace_it() -> None:
    config = load(listener("action: deny\npolicies: {all: {}}", routes="""\
      - {match: /open, authz: off, cluster: backend}
      - {match: /mine, authz: {action: allow, policies: {get: {to: {method: GET}}}}, cluster: backend}
      - {match: /, cluster: backend}
"""))
    http = config.listeners[0].http
    assert http is not None
    routes = http.route_config.virtual_hosts[0].routes
    assert routes[0].filters == (FilterOverride(name="authz", disabled=True),)
    get = Policy(name="get", permissions=(method("GET"),), principals=(Always(),))
    assert routes[1].filters == (FilterOverride(name="authz", rbac=RbacFilter(
        rules=Rbac(action="allow", policies=(get,)))),)
    assert routes[2].filters == ()
    vhosts = load("""
listeners:
  - address: 127.0.0.1:10000
    virtual_hosts:
      - domains: ["*"]
        authz: off
        filters: {rate_limit: {disabled: true}}
        routes: [{match: /, cluster: backend}]
""" + CLUSTERS).listeners[0].http
    assert vhosts is not None
    assert vhosts.route_config.virtual_hosts[0].filters == (
        FilterOverride(name="authz", disabled=True), FilterOverride(name="rate_limit", disabled=True))


def test_errors_name_their_paths() -> None:
    got = issues(listener("""
action: permit
policies:
  x:
    from: [{principal: a}, {ip: 10.0.0.300/8}, {nobody: 1}, {}]
    to: [{methods: ["GE T"], paths: [api], ports: [0, "80"]}]
    when: [{header: x-a}, {key: "request.auth.claims[iss]", values: [a]}]
    whom: []
"""))
    at = "listeners[0].filters[0].authz"
    assert got == [
        f"{at}.action: must be allow, deny or log, got 'permit'",
        f"{at}.policies.x.whom: unknown key",
        f"{at}.policies.x.from[1].ip: not a CIDR or an IP address: '10.0.0.300/8'",
        f"{at}.policies.x.from[2].nobody: unknown key",
        f"{at}.policies.x.from[3]: is empty; give one of principal, namespace, ip, remote_ip",
        f"{at}.policies.x.to[0].methods[0]: 'GE T' is not an HTTP method",
        f"{at}.policies.x.to[0].paths[0]: 'api' must start with / (or be *, or *suffix)",
        f"{at}.policies.x.to[0].ports[0]: not a port: '0'",
        f"{at}.policies.x.when[0]: needs one of header or key, and one of values or not_values",
        f"{at}.policies.x.when[1].key: unknown key 'request.auth.claims[iss]'; known: "
        "request.headers[<name>], source.ip, remote.ip, source.principal, source.namespace, "
        "destination.port, connection.sni",
    ]
    route = issues(listener("action: deny", routes="""\
      - {match: /, authz: yes please, cluster: backend}
      - {match: /b, authz: off, filters: {authz: {disabled: true}}, cluster: backend}
      - {match: /c, authz: {stat_prefix: x}, cluster: backend}
"""))
    assert route == [
        "listeners[0].routes[0].authz: expected off or a mapping, got a string",
        "listeners[0].routes[1].authz: filters: speaks of authz here too; say it once",
        "listeners[0].routes[2].authz.stat_prefix: belongs to the listener's authz: a route's decisions are "
        "counted there",
    ]


def test_a_filter_is_python_or_authz() -> None:
    got = issues(listener("action: deny").replace(
        "      - authz:\n", "      - python: {class: 'tests.filter_kit:Counter'}\n        authz:\n"))
    assert got == ["listeners[0].filters[0].authz: a filter is python or authz, not both"]


def test_a_listeners_authz_block_goes_first_or_where_filters_place_it() -> None:
    """`authz:` on the listener itself (meshpy_yaml wires the key to with_listener_authz)."""
    counter = HttpFilterSpec(name="c", kind="python", python_class="tests.filter_kit:Counter")
    placed = HttpFilterSpec(name="authz", kind="authz")
    r = Reader()
    f = r.mapping({"authz": {"action": "deny", "policies": {"all": {}}}}, "listeners[0]", ("authz",))
    assert f is not None
    first = with_listener_authz(r, f, (counter,))
    want = RbacFilter(rules=Rbac(action="deny", policies=(
        Policy(name="all", permissions=(Always(),), principals=(Always(),)),)))
    assert first == (HttpFilterSpec(name="authz", kind="authz", rbac=want), counter)
    assert with_listener_authz(r, f, (counter, placed))[1].rbac == want
    assert r.issues == []
    with_listener_authz(r, f, (HttpFilterSpec(name="authz", kind="authz", rbac=want),))
    assert [str(i) for i in r.issues] == [
        "listeners[0].authz: filters: has an authz filter with a config of its own; give one"]
