"""Envoy's unified matcher (xds.type.matcher.v3.Matcher) of the RBAC HTTP filter -> the model
(meshpy.model.authz_matcher).

As Envoy 1.40 builds it (rbac_filter.cc, matcher.h) and refuses it:
- inputs: the ones the RBAC HTTP filter accepts (request headers, destination and source address and
  port, the direct source address, the SNI, the client certificate's URI and DNS SANs and subject);
  another input is refused in Envoy's words ("RBAC HTTP filter cannot match on ..."), and the two
  Envoy accepts that meshpy does not evaluate (dynamic metadata, CEL) are reported as unsupported;
- a predicate's value is a StringMatcher or the IP input matcher (CIDR ranges);
- actions are envoy.config.rbac.v3.Action; `keep_matching` is refused, as Envoy refuses it here;
- the proto's own constraints (a non-empty list, two predicates at least for and/or, a non-empty
  prefix, a map with entries) are checked, since Envoy refuses a config that breaks them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2 as net_pb2
from envoy.extensions.matching.common_inputs.ssl.v3 import ssl_inputs_pb2 as ssl_pb2
from envoy.extensions.matching.input_matchers.ip.v3 import ip_pb2
from envoy.type.matcher.v3 import http_inputs_pb2

from meshpy.model.authz import Action
from meshpy.model.authz_matcher import (
    FieldMatcher,
    InputKind,
    MatcherTree,
    MatchInput,
    NotPredicate,
    OnMatch,
    Predicate,
    PredicateList,
    RbacAction,
    RbacMatcher,
    SinglePredicate,
)
from meshpy.model.routes import StringMatch
from meshpy.xds.translate_base import UNSUPPORTED, Issues, child, enum_name, item
from meshpy.xds.translate_matchers import string_match

_ACTIONS: dict[str, Action] = {"ALLOW": "allow", "DENY": "deny", "LOG": "log"}
_HEADER = http_inputs_pb2.HttpRequestHeaderMatchInput.DESCRIPTOR.full_name
# The inputs without fields, by type.
_INPUTS: dict[str, InputKind] = {
    net_pb2.DestinationIPInput.DESCRIPTOR.full_name: "destination_ip",
    net_pb2.DestinationPortInput.DESCRIPTOR.full_name: "destination_port",
    net_pb2.SourceIPInput.DESCRIPTOR.full_name: "source_ip",
    net_pb2.SourcePortInput.DESCRIPTOR.full_name: "source_port",
    net_pb2.DirectSourceIPInput.DESCRIPTOR.full_name: "direct_source_ip",
    net_pb2.ServerNameInput.DESCRIPTOR.full_name: "server_name",
    ssl_pb2.UriSanInput.DESCRIPTOR.full_name: "uri_san",
    ssl_pb2.DnsSanInput.DESCRIPTOR.full_name: "dns_san",
    ssl_pb2.SubjectInput.DESCRIPTOR.full_name: "subject",
}
_MESSAGES = {net_pb2.DestinationIPInput, net_pb2.DestinationPortInput, net_pb2.SourceIPInput,
             net_pb2.SourcePortInput, net_pb2.DirectSourceIPInput, net_pb2.ServerNameInput,
             ssl_pb2.UriSanInput, ssl_pb2.DnsSanInput, ssl_pb2.SubjectInput}
_BY_NAME = {m.DESCRIPTOR.full_name: m for m in _MESSAGES}
# Accepted by Envoy's RBAC HTTP filter, not evaluated by meshpy.
_NOT_HERE = {net_pb2.DynamicMetadataInput.DESCRIPTOR.full_name,
             "xds.type.matcher.v3.HttpAttributesCelMatchInput"}
_IP = ip_pb2.Ip.DESCRIPTOR.full_name
_ACTION = rbac_pb2.Action.DESCRIPTOR.full_name
_NON_EMPTY = ("prefix", "suffix", "contains")  # (exact may be empty)
_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def rbac_matcher(issues: Issues, msg: Any, path: str) -> RbacMatcher:
    """An xds.type.matcher.v3.Matcher whose actions are RBAC actions."""
    issues.fields(msg, path, {"matcher_list", "matcher_tree", "on_no_match"})
    on_no_match = _on_match(issues, msg.on_no_match, child(path, "on_no_match")) \
        if msg.HasField("on_no_match") else None
    if msg.HasField("matcher_tree"):
        return RbacMatcher(tree=_tree(issues, msg.matcher_tree, child(path, "matcher_tree")),
                           on_no_match=on_no_match)
    matchers: tuple[FieldMatcher, ...] = ()
    if msg.HasField("matcher_list"):
        at = child(path, "matcher_list")
        issues.fields(msg.matcher_list, at, {"matchers"})
        if not msg.matcher_list.matchers:
            issues.add(child(at, "matchers"), "must have at least one entry")
        matchers = tuple(_field_matcher(issues, m, item(child(at, "matchers"), i))
                         for i, m in enumerate(msg.matcher_list.matchers))
    return RbacMatcher(matchers=matchers, on_no_match=on_no_match)


def _field_matcher(issues: Issues, msg: Any, path: str) -> FieldMatcher:
    issues.fields(msg, path, {"predicate", "on_match"})
    for name in ("predicate", "on_match"):
        if not msg.HasField(name):
            issues.add(child(path, name), "is required")
    return FieldMatcher(predicate=_predicate(issues, msg.predicate, child(path, "predicate")),
                        on_match=_on_match(issues, msg.on_match, child(path, "on_match")))


def _predicate(issues: Issues, msg: Any, path: str) -> Predicate:
    issues.fields(msg, path, {"single_predicate", "or_matcher", "and_matcher", "not_matcher"})
    kind = msg.WhichOneof("match_type")
    at = child(path, kind or "")
    if kind == "single_predicate":
        return _single(issues, msg.single_predicate, at)
    if kind in ("or_matcher", "and_matcher"):
        members = getattr(msg, kind)
        issues.fields(members, at, {"predicate"})
        if len(members.predicate) < 2:
            issues.add(child(at, "predicate"), "must have at least two entries")
        return PredicateList(all=kind == "and_matcher", predicates=tuple(
            _predicate(issues, p, item(child(at, "predicate"), i)) for i, p in enumerate(members.predicate)))
    if kind == "not_matcher":
        return NotPredicate(predicate=_predicate(issues, msg.not_matcher, at))
    issues.add(path, "one of single_predicate, or_matcher, and_matcher or not_matcher is required")
    return NotPredicate(predicate=PredicateList(all=False, predicates=()))


def _single(issues: Issues, msg: Any, path: str) -> SinglePredicate:
    issues.fields(msg, path, {"input", "value_match", "custom_match"})
    if not msg.HasField("input"):
        issues.add(child(path, "input"), "is required")
    found = _input(issues, msg.input, child(path, "input"))
    if msg.HasField("value_match"):
        match = _string(issues, msg.value_match, child(path, "value_match"))
        return SinglePredicate(input=found, match=match)
    if msg.HasField("custom_match"):
        return SinglePredicate(input=found, cidrs=_ip_matcher(issues, msg.custom_match,
                                                              child(path, "custom_match")))
    issues.add(path, "one of value_match or custom_match is required")
    return SinglePredicate(input=found, match=StringMatch(kind="exact"))


def _string(issues: Issues, msg: Any, path: str) -> StringMatch:
    kind = msg.WhichOneof("match_pattern")
    if kind in _NON_EMPTY and not getattr(msg, kind):
        issues.add(child(path, kind), "must not be empty (as Envoy requires)")
    if kind == "safe_regex" and not msg.safe_regex.HasField("google_re2"):
        issues.add(child(path, "safe_regex.google_re2"), "is required (the engine, as Envoy requires)")
    return string_match(issues, msg, path)


def _typed(issues: Issues, msg: Any, path: str) -> str:
    """A TypedExtensionConfig's type (its name is a label only)."""
    issues.fields(msg, path, {"name", "typed_config"})
    if not msg.name:
        issues.add(child(path, "name"), "is required")
    if not msg.HasField("typed_config"):
        issues.add(child(path, "typed_config"), "is required")
        return ""
    return str(msg.typed_config.TypeName())


def _input(issues: Issues, msg: Any, path: str) -> MatchInput:
    kind = _typed(issues, msg, path)
    at = child(path, "typed_config")
    if kind == _HEADER:
        header = http_inputs_pb2.HttpRequestHeaderMatchInput()
        msg.typed_config.Unpack(header)
        issues.fields(header, at, {"header_name"})
        name = header.header_name.lower()
        if not name or any(c not in _HEADER_CHARS for c in name.removeprefix(":")):
            issues.add(child(at, "header_name"), f"not a header name: {header.header_name!r}")
        return MatchInput(kind="request_header", header=name)
    if kind in _INPUTS:
        body = _BY_NAME[kind]()
        msg.typed_config.Unpack(body)
        issues.fields(body, at, set())
        return MatchInput(kind=_INPUTS[kind])
    if kind in _NOT_HERE:
        issues.add(at, f"{kind} is {UNSUPPORTED}")
    elif kind:
        issues.add(at, f"RBAC HTTP filter cannot match on 'type.googleapis.com/{kind}' (as in Envoy)")
    return MatchInput(kind="destination_ip")


def _ip_matcher(issues: Issues, msg: Any, path: str) -> tuple[str, ...]:
    kind = _typed(issues, msg, path)
    at = child(path, "typed_config")
    if kind != _IP:
        if kind:
            issues.add(at, f"{kind} is {UNSUPPORTED} (only {_IP})")
        return ()
    ip = ip_pb2.Ip()
    msg.typed_config.Unpack(ip)
    issues.fields(ip, at, {"cidr_ranges", "stat_prefix"})  # (stat_prefix: Envoy's counters only)
    if not ip.stat_prefix:
        issues.add(child(at, "stat_prefix"), "is required")
    if not ip.cidr_ranges:
        issues.add(child(at, "cidr_ranges"), "must have at least one entry")
    return tuple(_cidr(issues, r, item(child(at, "cidr_ranges"), i)) for i, r in enumerate(ip.cidr_ranges))


def _cidr(issues: Issues, msg: Any, path: str) -> str:
    issues.fields(msg, path, {"address_prefix", "prefix_len"})
    prefix_len = msg.prefix_len.value if msg.HasField("prefix_len") else 0
    try:
        return str(ipaddress.ip_network(f"{msg.address_prefix}/{prefix_len}", strict=False))
    except ValueError as err:
        issues.add(path, f"not a CIDR: {err}")
        return "0.0.0.0/32"


def _on_match(issues: Issues, msg: Any, path: str) -> OnMatch:
    issues.fields(msg, path, {"matcher", "action", "keep_matching"})
    if msg.keep_matching:
        issues.add(child(path, "keep_matching"), "keep_matching is not supported in this context "
                                                 "(as in Envoy's RBAC filter)")
    if msg.HasField("matcher"):
        return OnMatch(matcher=rbac_matcher(issues, msg.matcher, child(path, "matcher")))
    if not msg.HasField("action"):
        issues.add(path, "one of matcher or action is required")
        return OnMatch(action=RbacAction(name="", action="deny"))
    at = child(path, "action")
    kind = _typed(issues, msg.action, at)
    if kind != _ACTION:
        if kind:
            issues.add(child(at, "typed_config"), f"{kind} is not an RBAC action ({_ACTION})")
        return OnMatch(action=RbacAction(name="", action="deny"))
    action = rbac_pb2.Action()
    msg.action.typed_config.Unpack(action)
    issues.fields(action, child(at, "typed_config"), {"name", "action"})
    if not action.name:
        issues.add(child(at, "typed_config.name"), "is required")
    verdict = enum_name(action, "action")
    if verdict not in _ACTIONS:
        issues.add(child(at, "typed_config.action"), f"unknown {verdict}")
    return OnMatch(action=RbacAction(name=action.name, action=_ACTIONS.get(verdict, "deny")))


def _tree(issues: Issues, msg: Any, path: str) -> MatcherTree:
    issues.fields(msg, path, {"input", "exact_match_map", "prefix_match_map"})
    if not msg.HasField("input"):
        issues.add(child(path, "input"), "is required")
    found = _input(issues, msg.input, child(path, "input"))
    kind = msg.WhichOneof("tree_type")
    if kind not in ("exact_match_map", "prefix_match_map"):
        if kind is None:
            issues.add(path, "one of exact_match_map or prefix_match_map is required")
        return MatcherTree(input=found, prefix=False, entries=())
    mapping = getattr(msg, kind)
    at = child(path, kind)
    issues.fields(mapping, at, {"map"})
    if not mapping.map:
        issues.add(child(at, "map"), "must have at least one entry")
    entries = tuple((key, _on_match(issues, mapping.map[key], child(at, f"map[{key}]")))
                    for key in sorted(mapping.map))  # (a proto map has no order; the tree needs none)
    return MatcherTree(input=found, prefix=kind == "prefix_match_map", entries=entries)
