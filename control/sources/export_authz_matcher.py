"""Model -> Envoy for the RBAC filter's unified matcher (meshpy.model.authz_matcher): the inverse of
meshpy.xds.translate_authz_matcher, tied to it by a round trip in tests/unit/xds/test_rbac_matcher.py,
so that a config read from Envoy's form goes back to Envoy whole."""

from __future__ import annotations

from typing import Any

from control.sources.export_authz import string_matcher
from meshpy.model.authz_matcher import (
    MatchInput,
    NotPredicate,
    OnMatch,
    Predicate,
    PredicateList,
    RbacMatcher,
    SinglePredicate,
)

_T = "type.googleapis.com/"
_NET = _T + "envoy.extensions.matching.common_inputs.network.v3."
_SSL = _T + "envoy.extensions.matching.common_inputs.ssl.v3."
_INPUTS = {"destination_ip": _NET + "DestinationIPInput", "destination_port": _NET + "DestinationPortInput",
           "source_ip": _NET + "SourceIPInput", "source_port": _NET + "SourcePortInput",
           "direct_source_ip": _NET + "DirectSourceIPInput", "server_name": _NET + "ServerNameInput",
           "uri_san": _SSL + "UriSanInput", "dns_san": _SSL + "DnsSanInput", "subject": _SSL + "SubjectInput"}


def matcher_config(m: RbacMatcher) -> dict[str, Any]:
    """An xds.type.matcher.v3.Matcher, as proto JSON."""
    out: dict[str, Any] = {}
    if m.tree is not None:
        kind = "prefix_match_map" if m.tree.prefix else "exact_match_map"
        out["matcher_tree"] = {"input": _input(m.tree.input),
                               kind: {"map": {key: _on_match(om) for key, om in m.tree.entries}}}
    elif m.matchers:
        out["matcher_list"] = {"matchers": [
            {"predicate": _predicate(fm.predicate), "on_match": _on_match(fm.on_match)} for fm in m.matchers]}
    if m.on_no_match is not None:
        out["on_no_match"] = _on_match(m.on_no_match)
    return out


def _on_match(om: OnMatch) -> dict[str, Any]:
    if om.matcher is not None:
        return {"matcher": matcher_config(om.matcher)}
    assert om.action is not None
    action = {"@type": _T + "envoy.config.rbac.v3.Action", "name": om.action.name,
              "action": om.action.action.upper()}
    return {"action": {"name": "envoy.filters.rbac.action", "typed_config": action}}


def _predicate(p: Predicate) -> dict[str, Any]:
    if isinstance(p, SinglePredicate):
        single: dict[str, Any] = {"input": _input(p.input)}
        if p.match is not None:
            value = string_matcher(p.match)
            if "safe_regex" in value:
                value["safe_regex"]["google_re2"] = {}  # (xds's RegexMatcher requires its engine)
            single["value_match"] = value
        else:
            ranges = [{"address_prefix": c.partition("/")[0], "prefix_len": int(c.partition("/")[2])}
                      for c in p.cidrs]
            single["custom_match"] = {"name": "envoy.matching.input_matchers.ip", "typed_config": {
                "@type": _T + "envoy.extensions.matching.input_matchers.ip.v3.Ip", "cidr_ranges": ranges,
                "stat_prefix": "rbac"}}
        return {"single_predicate": single}
    if isinstance(p, PredicateList):
        members = [_predicate(q) for q in p.predicates]
        return {"and_matcher" if p.all else "or_matcher": {"predicate": members}}
    assert isinstance(p, NotPredicate)
    return {"not_matcher": _predicate(p.predicate)}


def _input(i: MatchInput) -> dict[str, Any]:
    if i.kind == "request_header":
        return {"name": "envoy.matching.inputs.request_headers", "typed_config": {
            "@type": _T + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": i.header}}
    return {"name": f"envoy.matching.inputs.{i.kind}", "typed_config": {"@type": _INPUTS[i.kind]}}
