"""The authorization engine (meshpy.stack.authz): each kind of rule, the actions, the order policies
are tried in, the TLS identity, the remote address from x-forwarded-for, and the network filter's
check on a connection."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    Rule,
    ServerNameRule,
    sorted_policies,
)
from meshpy.model.routes import HeaderMatch, StringMatch
from meshpy.ports import ConnectionInfo, TlsInfo
from meshpy.stack.authz import CompiledRbac, Facts, NetworkAuthz, denial_details, remote_address
from meshpy.telemetry.metrics import ListenerStats

PLAIN = ConnectionInfo(peer="10.1.2.3", peer_port=40000, local="127.0.0.1", local_port=8080,
                       original_destination=None, listener="web", direction="inbound")
SPIFFE = "spiffe://cluster.local/ns/shop/sa/orders"
MTLS = ConnectionInfo(peer="10.1.2.3", peer_port=40000, local="127.0.0.1", local_port=8080,
                      original_destination=("10.9.9.9", 9443), listener="web", direction="inbound",
                      tls=TlsInfo(version="TLSv1.3", cipher="x", sni="api.shop.svc", alpn="h2",
                                  peer_uris=("spiffe://other/x", SPIFFE), peer_dns=("orders.shop.svc",),
                                  peer_subject="CN=orders,O=shop"))


def exact(value: str, **kw: bool) -> StringMatch:
    return StringMatch(kind="exact", value=value, **kw)


def facts(conn: ConnectionInfo = PLAIN, method: str = "GET", target: str | None = "/api/x?y=1",
          headers: tuple[tuple[bytes, bytes], ...] = (), authority: str = "shop.test",
          remote: str | None = None) -> Facts:
    return Facts(conn, method, target, authority, headers, remote)


def matches(rule: Rule, f: Facts) -> bool:
    engine = CompiledRbac(Rbac(action="allow", policies=(
        Policy(name="p", permissions=(rule,), principals=(Always(),)),)))
    return engine.evaluate(f) == (True, "p")


def test_paths_see_no_query_and_honour_ignore_case() -> None:
    assert matches(PathRule(match=exact("/api/x")), facts())
    assert not matches(PathRule(match=exact("/api/x?y=1")), facts())
    assert matches(PathRule(match=exact("/API/X", ignore_case=True)), facts())
    assert matches(PathRule(match=StringMatch(kind="regex", value="/api/.*")), facts())
    # A request without a path (CONNECT) and a connection match no path rule, even "anything".
    anything = PathRule(match=StringMatch(kind="regex", value=".*"))
    assert not matches(anything, facts(target=""))
    assert not matches(anything, Facts(PLAIN))


def test_headers_as_the_route_table_reads_them() -> None:
    h = ((b"x-env", b"beta"), (b"x-env", b"prod"))
    assert matches(HeaderRule(match=HeaderMatch(name="x-env", match=exact("prod"))), facts(headers=h))
    joined = HeaderRule(match=HeaderMatch(name="x-env", match=exact("beta,prod")))
    assert not matches(joined, facts(headers=h))
    assert matches(HeaderRule(match=HeaderMatch(name=":method", match=exact("GET"))), facts())
    assert matches(HeaderRule(match=HeaderMatch(name=":path", match=exact("/api/x?y=1"))), facts())
    assert matches(HeaderRule(match=HeaderMatch(name=":authority", match=exact("shop.test"))), facts())
    absent = HeaderRule(match=HeaderMatch(name="x-gone", match=StringMatch(kind="present"), invert=True))
    assert matches(absent, facts(headers=h))
    assert not matches(HeaderRule(match=HeaderMatch(name="x-gone", match=exact("a"), invert=True)), facts())
    with pytest.raises(ConfigError, match="unsupported pseudo-header"):
        matches(HeaderRule(match=HeaderMatch(name=":protocol", match=exact("a"))), facts())


def test_addresses_ports_and_sni() -> None:
    assert matches(IpRule(source="direct_remote", cidr="10.0.0.0/8"), facts())
    assert matches(IpRule(source="source", cidr="10.1.2.3/32"), facts())
    assert not matches(IpRule(source="direct_remote", cidr="::/0"), facts())  # another family
    # The destination is the local address, or in a sidecar the original destination.
    assert matches(IpRule(source="destination", cidr="127.0.0.1/32"), facts())
    assert matches(IpRule(source="destination", cidr="10.9.9.0/24"), facts(MTLS))
    assert matches(PortRule(start=8080, end=8081), facts())
    assert not matches(PortRule(start=8080, end=8081), facts(MTLS))
    assert matches(PortRule(start=9000, end=10000), facts(MTLS))
    # remote_ip reads the remote address the filter computed, else the peer.
    assert matches(IpRule(source="remote", cidr="10.0.0.0/8"), facts())
    assert not matches(IpRule(source="remote", cidr="10.0.0.0/8"), facts(remote="192.0.2.1"))
    # SNI: empty on plaintext, as Envoy's requestedServerName.
    assert matches(ServerNameRule(match=exact("")), facts())
    assert matches(ServerNameRule(match=StringMatch(kind="suffix", value=".svc")), facts(MTLS))


def test_authenticated_tries_every_uri_then_dns_then_subject() -> None:
    assert not matches(Authenticated(), facts())  # plaintext: never
    assert matches(Authenticated(), facts(MTLS))
    assert matches(Authenticated(principal=exact(SPIFFE)), facts(MTLS))  # the second URI SAN
    assert matches(Authenticated(principal=exact("orders.shop.svc")), facts(MTLS))
    assert matches(Authenticated(principal=exact("CN=orders,O=shop")), facts(MTLS))
    assert not matches(Authenticated(principal=exact("spiffe://cluster.local/ns/x/sa/y")), facts(MTLS))
    # A TLS peer without a certificate: any authenticated matches (Envoy: ssl() is set), a name not.
    anonymous = ConnectionInfo(peer="10.1.2.3", peer_port=1, local="127.0.0.1", local_port=8080,
                               original_destination=None, listener="web", direction="inbound",
                               tls=TlsInfo(version="TLSv1.3", cipher="x", sni="", alpn=""))
    assert matches(Authenticated(), facts(anonymous))
    assert not matches(Authenticated(principal=StringMatch(kind="regex", value=".+")), facts(anonymous))


def test_and_or_not() -> None:
    get = HeaderRule(match=HeaderMatch(name=":method", match=exact("GET")))
    post = HeaderRule(match=HeaderMatch(name=":method", match=exact("POST")))
    assert matches(AnyOf(rules=(post, get)), facts())
    assert not matches(AllOf(rules=(post, get)), facts())
    assert matches(Not(rule=post), facts())
    assert matches(AllOf(rules=(get, Not(rule=AnyOf(rules=(post,))))), facts())


def _policy(name: str, rule: Rule) -> Policy:
    return Policy(name=name, permissions=(rule,), principals=(Always(),))


def test_actions_and_the_policy_named() -> None:
    api = PathRule(match=StringMatch(kind="prefix", value="/api"))
    other = PathRule(match=StringMatch(kind="prefix", value="/other"))
    # Tried by name, whatever order they were given in: "a" before "z", as Envoy's std::map.
    policies = sorted_policies([_policy("z", api), _policy("a", api), _policy("o", other)])
    assert [p.name for p in policies] == ["a", "o", "z"]
    assert CompiledRbac(Rbac(action="allow", policies=policies)).evaluate(facts()) == (True, "a")
    assert CompiledRbac(Rbac(action="deny", policies=policies)).evaluate(facts()) == (False, "a")
    assert CompiledRbac(Rbac(action="log", policies=policies)).evaluate(facts()) == (True, "a")
    nothing = facts(target="/nothing")
    assert CompiledRbac(Rbac(action="allow", policies=policies)).evaluate(nothing) == (False, None)
    assert CompiledRbac(Rbac(action="deny", policies=policies)).evaluate(nothing) == (True, None)
    # No policies: allow refuses everything, deny refuses nothing (checked with Envoy 1.40).
    assert CompiledRbac(Rbac(action="allow")).evaluate(facts()) == (False, None)
    assert CompiledRbac(Rbac(action="deny")).evaluate(facts()) == (True, None)


def test_a_policy_needs_a_permission_and_a_principal() -> None:
    policy = Policy(name="p", permissions=(Always(),), principals=(Authenticated(),))
    engine = CompiledRbac(Rbac(action="allow", policies=(policy,)))
    assert engine.evaluate(facts()) == (False, None)
    assert engine.evaluate(facts(MTLS)) == (True, "p")


@pytest.mark.parametrize(("peer", "xff", "use_remote", "hops", "want"), [
    ("1.1.1.1", [], False, 0, "1.1.1.1"),
    ("1.1.1.1", [b"10.0.0.1, 192.0.2.9"], False, 0, "192.0.2.9"),  # the rightmost, as Envoy 1.40
    ("1.1.1.1", [b"10.0.0.1, 192.0.2.9"], False, 1, "10.0.0.1"),
    ("1.1.1.1", [b"10.0.0.1", b"192.0.2.9"], False, 1, "10.0.0.1"),  # two lines read as one list
    ("1.1.1.1", [b"10.0.0.1"], False, 1, "1.1.1.1"),  # too few entries: the peer
    ("1.1.1.1", [b"not-an-ip"], False, 0, "1.1.1.1"),
    ("1.1.1.1", [b"10.0.0.1, 192.0.2.9"], True, 0, "1.1.1.1"),  # an edge proxy trusts only the peer
    ("1.1.1.1", [b"10.0.0.1, 192.0.2.9"], True, 1, "192.0.2.9"),
])
def test_remote_address(peer: str, xff: list[bytes], use_remote: bool, hops: int, want: str) -> None:
    headers = [(b"x-forwarded-for", v) for v in xff]
    assert remote_address(peer, headers, use_remote, hops) == want


def test_compiled_engine_says_when_it_needs_the_remote_address() -> None:
    assert not CompiledRbac(Rbac(action="allow", policies=(_policy("p", Always()),))).needs_remote
    remote = Policy(name="p", permissions=(Always(),),
                    principals=(Not(rule=IpRule(source="remote", cidr="10.0.0.0/8")),))
    assert CompiledRbac(Rbac(action="allow", policies=(remote,))).needs_remote


def test_network_check_on_a_connection() -> None:
    who = Policy(name="orders", permissions=(PortRule(start=9443, end=9444),),
                 principals=(Authenticated(principal=exact(SPIFFE)),))
    model = NetworkRbac(stat_prefix="tcp.", rules=Rbac(action="allow", policies=(who,)),
                        shadow_rules=Rbac(action="deny", policies=(who,)))
    check = NetworkAuthz(model)
    ok = check.check(MTLS)
    assert (ok.allowed, ok.policy, ok.enforced, ok.shadow) == (True, "orders", True, (False, "orders"))
    # Counted once bound to a listener's stats, under Envoy's prefixes (tcp.rbac., tcp.rbac.sh_.).
    stats = ListenerStats("tcp")
    check = NetworkAuthz(dataclasses.replace(model, shadow_rules_stat_prefix="sh_"))
    check.bind(stats)
    no = check.check(PLAIN)
    assert (no.allowed, no.policy, no.shadow) == (False, None, (True, None))
    check.check(MTLS)
    enforced, shadow = stats.rbac["tcp."], stats.rbac["tcp.sh_"]
    assert (enforced.allowed, enforced.denied, shadow.shadow_allowed, shadow.shadow_denied) == (1, 1, 1, 1)
    unenforced = NetworkAuthz(NetworkRbac(stat_prefix="tcp.")).check(PLAIN)
    assert (unenforced.allowed, unenforced.enforced, unenforced.shadow) == (True, False, None)


def test_denial_details_as_envoy_writes_them() -> None:
    assert denial_details("deny admin") == "rbac_access_denied_matched_policy[deny_admin]"
    assert denial_details("a \t\f\v\n\ry") == "rbac_access_denied_matched_policy[a______y]"
    assert denial_details(None) == "rbac_access_denied_matched_policy[none]"


def test_a_bad_cidr_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a CIDR"):
        matches(IpRule(source="source", cidr="10.0.0.300/8"), facts())


# -- properties ------------------------------------------------------------------------------------
v4 = st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(min_value=0, max_value=2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@given(st.one_of(v4, v6), st.one_of(v4, v6), st.integers(min_value=0, max_value=128))
def test_cidr_matching_agrees_with_ipaddress(peer: str, base: str, length: int) -> None:
    net = ipaddress.ip_network(f"{base}/{min(length, 32 if '.' in base else 128)}", strict=False)
    conn = ConnectionInfo(peer=peer, peer_port=1, local="127.0.0.1", local_port=1, original_destination=None,
                          listener="l", direction="unspecified")
    assert matches(IpRule(source="direct_remote", cidr=str(net)), facts(conn)) == (
        ipaddress.ip_address(peer) in net)


leaf = st.sampled_from(["GET", "POST", "PUT"]).map(
    lambda m: HeaderRule(match=HeaderMatch(name=":method", match=exact(m))))
trees = st.recursive(leaf | st.just(Always()), lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda rs: AllOf(rules=tuple(rs))),
    st.lists(inner, min_size=1, max_size=3).map(lambda rs: AnyOf(rules=tuple(rs))),
    inner.map(lambda r: Not(rule=r))), max_leaves=8)


def _truth(rule: Rule, method: str) -> bool:
    """The meaning of a rule tree, written out plainly, to check the compiled closures against."""
    if isinstance(rule, Always):
        return True
    if isinstance(rule, HeaderRule):
        return rule.match.match.value == method
    if isinstance(rule, AllOf):
        return all(_truth(r, method) for r in rule.rules)
    if isinstance(rule, AnyOf):
        return any(_truth(r, method) for r in rule.rules)
    assert isinstance(rule, Not)
    return not _truth(rule.rule, method)


@given(trees, st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
def test_compiled_rule_trees_mean_what_they_say(rule: Rule, method: str) -> None:
    assert matches(rule, facts(method=method)) == _truth(rule, method)
