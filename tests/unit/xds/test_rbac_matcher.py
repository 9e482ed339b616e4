"""The RBAC HTTP filter's unified matcher: Envoy's xds.type.matcher.v3.Matcher -> the model
(meshpy.xds.translate_authz_matcher), what is refused and where, and its evaluation on a request's
facts (meshpy.stack.authz_matcher) input by input, as Envoy 1.40 evaluates it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from hypothesis import given
from hypothesis import strategies as st

from control.sources.export_authz import rbac_config
from meshpy.model.authz import RbacFilter
from meshpy.model.authz_matcher import (
    FieldMatcher,
    MatchInput,
    NotPredicate,
    OnMatch,
    RbacAction,
    RbacMatcher,
    SinglePredicate,
)
from meshpy.model.load import load_file
from meshpy.model.routes import StringMatch
from meshpy.ports import ConnectionInfo, TlsInfo
from meshpy.stack.authz import Facts
from meshpy.stack.authz_filter import AuthzFilter
from meshpy.stack.authz_matcher import CompiledMatcher
from meshpy.xds.translate_authz import rbac_filter
from meshpy.xds.translate_base import Issues

CORPUS = Path(__file__).resolve().parents[2] / "data" / "envoy-corpus" / "examples-rbac.yaml"
T = "type.googleapis.com/"
NET = T + "envoy.extensions.matching.common_inputs.network.v3"
SSL = T + "envoy.extensions.matching.common_inputs.ssl.v3."
ANY: dict[str, Any] = {"safe_regex": {"google_re2": {}, "regex": ".*"}}
PLAIN = ConnectionInfo(peer="127.0.0.1", peer_port=40000, local="127.0.0.1", local_port=8080,
                       original_destination=None, listener="web", direction="inbound")
MTLS = ConnectionInfo(peer="10.1.2.3", peer_port=40000, local="10.0.0.1", local_port=8443,
                      original_destination=("10.9.9.9", 9443), listener="web", direction="inbound",
                      tls=TlsInfo(version="TLSv1.3", cipher="x", sni="api.shop", alpn="h2",
                                  peer_uris=("spiffe://a/b", "spiffe://c/d"), peer_dns=("x.shop",),
                                  peer_subject="CN=x"))


def header(name: str) -> dict[str, Any]:
    return {"name": "h", "typed_config": {"@type": T + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                                          "header_name": name}}


def net(kind: str) -> dict[str, Any]:
    return {"name": "n", "typed_config": {"@type": f"{NET}.{kind}"}}


def single(input_: dict[str, Any], **value: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": input_, "value_match": value}}


def cidrs(input_: dict[str, Any], *ranges: str) -> dict[str, Any]:
    cidr = [{"address_prefix": r.split("/")[0], "prefix_len": int(r.split("/")[1])} for r in ranges]
    return {"single_predicate": {"input": input_, "custom_match": {"name": "ip", "typed_config": {
        "@type": T + "envoy.extensions.matching.input_matchers.ip.v3.Ip", "stat_prefix": "ip",
        "cidr_ranges": cidr}}}}


def act(name: str, action: str = "ALLOW") -> dict[str, Any]:
    return {"action": {"name": "a", "typed_config": {"@type": T + "envoy.config.rbac.v3.Action", "name": name,
                                                     "action": action}}}


def listed(*pairs: tuple[dict[str, Any], dict[str, Any]], no: dict[str, Any] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"matcher_list": {"matchers": [{"predicate": p, "on_match": o} for p, o in pairs]}}
    if no is not None:
        m["on_no_match"] = no
    return m


def translate(matcher: dict[str, Any], **more: Any) -> tuple[RbacFilter | None, list[str]]:
    msg = json_format.ParseDict({"matcher": matcher, **more}, rbac_pb2.RBAC())
    issues = Issues()
    found = rbac_filter(issues, msg, "rbac")
    return found, [str(i) for i in issues.items]


def engine(matcher: dict[str, Any]) -> CompiledMatcher:
    found, problems = translate(matcher)
    assert not problems and found is not None and found.matcher is not None
    return CompiledMatcher(found.matcher)


def facts(conn: ConnectionInfo = PLAIN, target: str = "/", headers: list[tuple[str, str]] | None = None,
          remote: str | None = None, method: str = "GET", authority: str = "example.com") -> Facts:
    fields = [(n.encode(), v.encode()) for n, v in headers or []]
    return Facts(conn, method, target, authority, fields, remote)


# -- translation -------------------------------------------------------------------------------------
def test_envoys_example_is_read() -> None:
    config = load_file(CORPUS)
    http = config.listeners[0].http
    assert http is not None
    (spec,) = http.filters
    assert spec.kind == "authz" and spec.rbac is not None and spec.rbac.rules is None
    regex = StringMatch(kind="regex", value="https?://(www.)?envoyproxy.io/docs/envoy.*")
    referer = SinglePredicate(input=MatchInput(kind="request_header", header="referer"), match=regex)
    assert spec.rbac.matcher == RbacMatcher(
        matchers=(FieldMatcher(predicate=NotPredicate(predicate=referer),
                               on_match=OnMatch(action=RbacAction(name="illegal-referer", action="deny"))),),
        on_no_match=OnMatch(action=RbacAction(name="all-pass", action="allow")))


def test_a_tree_and_the_network_inputs() -> None:
    found, problems = translate({"matcher_tree": {"input": net("DestinationPortInput"), "prefix_match_map": {
        "map": {"80": act("web"), "8": {"matcher": listed((cidrs(net("SourceIPInput"), "10.1.2.3/8"),
                                                           act("ten", "DENY")))}}}}},
        shadow_matcher=listed((single(header("X-Up"), exact="1"), act("up", "LOG"))),
        rules={"action": "DENY"}, shadow_rules={"action": "DENY"})
    assert not problems and found is not None
    assert found.rules is None and found.shadow_rules is None  # ignored beside a matcher, as in Envoy
    assert found.matcher is not None and found.matcher.tree is not None
    tree = found.matcher.tree
    assert tree.prefix and tree.input == MatchInput(kind="destination_port")
    assert [k for k, _ in tree.entries] == ["8", "80"]
    inner = tree.entries[0][1].matcher
    assert inner is not None and inner.matchers[0].predicate == SinglePredicate(
        input=MatchInput(kind="source_ip"), cidrs=("10.0.0.0/8",))
    assert found.shadow_matcher is not None
    assert found.shadow_matcher.matchers[0].predicate == SinglePredicate(
        input=MatchInput(kind="request_header", header="x-up"), match=StringMatch(kind="exact", value="1"))


@pytest.mark.parametrize(("matcher", "problem"), [
    (listed((single(header("a"), exact="1"), {**act("x"), "keep_matching": True})),
     "rbac.matcher.matcher_list.matchers[0].on_match.keep_matching: keep_matching is not supported in this "
     "context (as in Envoy's RBAC filter)"),
    (listed((single(net("SourceTypeInput"), exact="local"), act("x"))),
     "rbac.matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config: RBAC HTTP filter "
     f"cannot match on '{NET}.SourceTypeInput' (as in Envoy)"),
    (listed((single(header("a"), prefix=""), act("x"))),
     "rbac.matcher.matcher_list.matchers[0].predicate.single_predicate.value_match.prefix: must not be empty "
     "(as Envoy requires)"),
    (listed(({"and_matcher": {"predicate": [single(header("a"), exact="1")]}}, act("x"))),
     "rbac.matcher.matcher_list.matchers[0].predicate.and_matcher.predicate: must have at least two entries"),
    ({"matcher_list": {}}, "rbac.matcher.matcher_list.matchers: must have at least one entry"),
    (listed((single(header("a b"), exact="1"), act("x"))),
     "rbac.matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config.header_name: not a "
     "header name: 'a b'"),
    (listed((single(net("DynamicMetadataInput"), exact="1"), act("x"))),
     "rbac.matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config: "
     "envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput is not supported by meshpy"),
    ({"on_no_match": {"action": {"name": "a", "typed_config": {
        "@type": T + "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"}}}},
     "rbac.matcher.on_no_match.action.typed_config: envoy.extensions.matching.common_inputs.network.v3."
     "SourceIPInput is not an RBAC action (envoy.config.rbac.v3.Action)"),
    ({"matcher_tree": {"input": header("a"), "exact_match_map": {}}},
     "rbac.matcher.matcher_tree.exact_match_map.map: must have at least one entry"),
    (listed((single(header("a"), safe_regex={"regex": "a"}), act("x"))),
     "rbac.matcher.matcher_list.matchers[0].predicate.single_predicate.value_match.safe_regex.google_re2: is "
     "required (the engine, as Envoy requires)"),
])
def test_what_is_refused(matcher: dict[str, Any], problem: str) -> None:
    assert problem in translate(matcher)[1]


# -- evaluation --------------------------------------------------------------------------------------
def test_envoys_example_decides_on_the_referer() -> None:
    spec = load_file(CORPUS).listeners[0].http
    assert spec is not None and spec.filters[0].rbac is not None and spec.filters[0].rbac.matcher is not None
    e = CompiledMatcher(spec.filters[0].rbac.matcher)
    assert e.evaluate(facts(headers=[("referer", "https://www.envoyproxy.io/docs/envoy/latest")])) == (
        True, "all-pass")
    assert e.evaluate(facts(headers=[("referer", "https://evil.example/")])) == (False, "illegal-referer")
    assert e.evaluate(facts()) == (False, "illegal-referer")  # no referer: nothing matches, `not` holds


def test_a_nested_matcher_that_finds_nothing_lets_the_list_go_on() -> None:
    e = engine(listed((single(header("x-a"), prefix="n"),
                       {"matcher": listed((single(header("x-b"), exact="1"), act("inner", "DENY")))}),
                      (single(header("x-a"), **ANY), act("second", "DENY")),
                      no=act("nomatch")))
    assert e.evaluate(facts(headers=[("x-a", "n"), ("x-b", "1")])) == (False, "inner")
    assert e.evaluate(facts(headers=[("x-a", "n")])) == (False, "second")
    assert e.evaluate(facts()) == (True, "nomatch")


def test_no_action_found_denies_and_log_allows() -> None:
    e = engine(listed((single(header("x-a"), exact="1"), act("one", "LOG"))))
    assert e.evaluate(facts(headers=[("x-a", "1")])) == (True, "one")
    assert e.evaluate(facts()) == (False, None)


def test_headers_are_read_joined_and_pseudo_headers_from_the_request() -> None:
    e = engine(listed((single(header("x-a"), exact="1,2"), act("joined", "DENY")),
                      (single(header(":path"), prefix="/p/"), act("path", "DENY")),
                      (single(header(":method"), exact="POST"), act("method", "DENY")),
                      (single(header(":authority"), exact="deny.example"), act("authority", "DENY")),
                      (single(header("host"), **ANY), act("host", "DENY")),
                      (single(header("x-c"), exact="ABC", ignore_case=True), act("case", "DENY")),
                      no=act("x")))
    assert e.evaluate(facts(headers=[("x-a", "1"), ("x-a", "2")]))[1] == "joined"
    assert e.evaluate(facts(target="/p/q?x"))[1] == "path"
    assert e.evaluate(facts(method="POST"))[1] == "method"
    assert e.evaluate(facts(authority="deny.example"))[1] == "authority"
    assert e.evaluate(facts(headers=[("x-c", "abc")]))[1] == "case"
    assert e.evaluate(facts(headers=[("host", "a")])) == (True, "x")  # Envoy's Host is :authority


def test_the_network_inputs() -> None:
    def which(name: str, value: str, conn: ConnectionInfo = PLAIN, remote: str | None = None) -> bool:
        return engine(listed((single(net(name), exact=value), act("y", "DENY")), no=act("n"))).evaluate(
            facts(conn, remote=remote))[1] == "y"

    assert which("DestinationPortInput", "8080") and which("DestinationIPInput", "127.0.0.1")
    assert which("DestinationIPInput", "10.9.9.9", MTLS) and which("DestinationPortInput", "9443", MTLS)
    assert which("SourceIPInput", "127.0.0.1") and which("SourcePortInput", "40000")
    assert which("SourceIPInput", "10.7.7.7", remote="10.7.7.7")
    assert which("SourcePortInput", "0", remote="10.7.7.7")  # an address x-forwarded-for gave
    assert which("DirectSourceIPInput", "127.0.0.1", remote="10.7.7.7")
    assert which("ServerNameInput", "api.shop", MTLS) and not which("ServerNameInput", "", PLAIN)

    def ssl(name: str, value: str, conn: ConnectionInfo = MTLS) -> bool:
        inp = {"name": "s", "typed_config": {"@type": SSL + name}}
        return engine(listed((single(inp, exact=value), act("y", "DENY")), no=act("n"))).evaluate(
            facts(conn))[1] == "y"

    assert ssl("UriSanInput", "spiffe://a/b,spiffe://c/d") and ssl("DnsSanInput", "x.shop")
    assert ssl("SubjectInput", "CN=x") and not ssl("SubjectInput", "CN=x", PLAIN)


def test_ip_ranges_and_the_remote_address() -> None:
    e = engine(listed((cidrs(net("SourceIPInput"), "10.0.0.0/8", "2001:db8::/32"), act("inside", "DENY")),
                      no=act("outside")))
    assert e.needs_remote
    assert e.evaluate(facts(remote="10.1.2.3"))[1] == "inside"
    assert e.evaluate(facts(remote="2001:db8::1"))[1] == "inside"
    assert e.evaluate(facts())[1] == "outside"


def test_trees_longest_prefix_first_then_on_no_match() -> None:
    nested = {"matcher": listed((single(header("x-b"), exact="1"), act("long", "DENY")))}
    e = engine({"matcher_tree": {"input": header("x-a"), "prefix_match_map": {"map": {
        "a": act("short", "DENY"), "ab": nested}}}, "on_no_match": act("none")})
    assert e.evaluate(facts(headers=[("x-a", "abc"), ("x-b", "1")])) == (False, "long")
    assert e.evaluate(facts(headers=[("x-a", "abc")])) == (False, "short")
    assert e.evaluate(facts(headers=[("x-a", "b")])) == (True, "none")
    assert e.evaluate(facts()) == (True, "none")
    e = engine({"matcher_tree": {"input": header("x-a"), "exact_match_map": {"map": {"a": nested}}},
                "on_no_match": act("none")})
    assert e.evaluate(facts(headers=[("x-a", "a"), ("x-b", "1")])) == (False, "long")
    assert e.evaluate(facts(headers=[("x-a", "a")])) == (True, "none")
    assert e.evaluate(facts(headers=[("x-a", "ab")])) == (True, "none")


@given(st.lists(st.sampled_from(["1", "2", "3"]), max_size=3), st.sampled_from(["and", "or", "not-and"]))
def test_and_or_not_mean_what_they_say(values: list[str], kind: str) -> None:
    a, b = single(header("x-a"), exact="1"), single(header("x-b"), exact="2")
    both = {"and_matcher": {"predicate": [a, b]}} if kind != "or" else {"or_matcher": {"predicate": [a, b]}}
    predicate = {"not_matcher": both} if kind == "not-and" else both
    sent = [("x-a", values[0])] if values else []
    sent += [("x-b", v) for v in values[1:2]]
    has_a, has_b = bool(values) and values[0] == "1", len(values) > 1 and values[1] == "2"
    truth = {"and": has_a and has_b, "or": has_a or has_b, "not-and": not (has_a and has_b)}[kind]
    e = engine(listed((predicate, act("y", "DENY")), no=act("n")))
    assert e.evaluate(facts(headers=sent)) == ((False, "y") if truth else (True, "n"))


def test_the_filter_runs_the_matcher() -> None:
    found, _ = translate(listed((single(header("x-a"), exact="1"), act("deny-a", "DENY")), no=act("pass")),
                         shadow_matcher=listed((single(net("SourceIPInput"), exact="10.0.0.1"), act("s"))))
    assert found is not None
    flt = AuthzFilter(found, ("", ""))
    assert flt.needs_remote  # (the shadow matcher reads the source address)
    assert flt.engine is not None and flt.engine.evaluate(facts(headers=[("x-a", "1")])) == (False, "deny-a")
    assert flt.shadow is not None and flt.shadow.evaluate(facts(remote="10.0.0.1")) == (True, "s")


def test_model_to_envoy_to_model() -> None:
    """control's exporter writes a matcher back in Envoy's form (nothing dropped): the round trip."""
    tree = {"matcher_tree": {"input": net("DestinationPortInput"), "prefix_match_map": {"map": {
        "80": act("web"),
        "8": {"matcher": listed((cidrs(net("SourceIPInput"), "10.1.2.3/8"), act("ten", "DENY")))}}}},
        "on_no_match": act("none", "LOG")}
    richer = listed(({"not_matcher": {"or_matcher": {"predicate": [
        single(header("X-A"), safe_regex={"google_re2": {}, "regex": "a+"}),
        {"and_matcher": {"predicate": [single(net("ServerNameInput"), suffix=".shop", ignore_case=True),
                                       single(header(":path"), exact="")]}}]}}}, act("deny", "DENY")),
                    (single({"name": "s", "typed_config": {"@type": SSL + "UriSanInput"}}, contains="x"),
                     {"matcher": tree}))
    for matcher in (tree, richer):
        found, problems = translate(matcher, shadow_matcher=matcher, rules_stat_prefix="r_")
        assert not problems and found is not None
        exported = rbac_config(found)
        back, again = translate(exported["matcher"], shadow_matcher=exported["shadow_matcher"],
                                rules_stat_prefix="r_")
        assert not again and back == found
