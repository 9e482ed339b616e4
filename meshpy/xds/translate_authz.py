"""Envoy's RBAC -> the model (meshpy.model.authz): the HTTP filter (`envoy.filters.http.rbac`, its
per-route RBACPerRoute) and the network filter (`envoy.filters.network.rbac`).

What meshpy does not evaluate is an error naming the field, as everywhere in the translator:
metadata and filter state matchers, CEL `condition`s, audit logging, per-rule stats, URI templates
and custom principals (the HTTP filter's unified `matcher` is translate_authz_matcher's). A config
Envoy itself refuses is refused too: a policy without permissions or principals, an empty
`and_rules`/`or_ids`, `any: false`, a port range that is empty, and (network filter) header rules.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from meshpy.model.authz import (
    Action,
    AllOf,
    Always,
    AnyOf,
    Authenticated,
    HeaderRule,
    IpRule,
    IpSource,
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
from meshpy.model.routes import StringMatch
from meshpy.xds.translate_authz_matcher import rbac_matcher
from meshpy.xds.translate_base import Issues, child, enum_name, item, seconds
from meshpy.xds.translate_matchers import header_match, string_match

HttpRbac = http_rbac_pb2.RBAC
HttpRbacPerRoute = http_rbac_pb2.RBACPerRoute
NetworkRbacConfig = network_rbac_pb2.RBAC
HTTP_RBAC = HttpRbac.DESCRIPTOR.full_name
HTTP_RBAC_PER_ROUTE = HttpRbacPerRoute.DESCRIPTOR.full_name
NETWORK_RBAC = NetworkRbacConfig.DESCRIPTOR.full_name

_ACTIONS: dict[str, Action] = {"ALLOW": "allow", "DENY": "deny", "LOG": "log"}
_IPS: dict[str, IpSource] = {"destination_ip": "destination", "source_ip": "source",
                             "direct_remote_ip": "direct_remote", "remote_ip": "remote"}
_PERMISSION = frozenset({"and_rules", "or_rules", "any", "header", "url_path", "destination_ip",
                         "destination_port", "destination_port_range", "not_rule", "requested_server_name"})
_PRINCIPAL = frozenset({"and_ids", "or_ids", "any", "authenticated", "source_ip", "direct_remote_ip",
                        "remote_ip", "header", "url_path", "not_id"})


def rbac_filter(issues: Issues, msg: Any, path: str) -> RbacFilter | None:
    """An envoy.extensions.filters.http.rbac.v3.RBAC (the listener's, or a route's); None when it is
    empty, which does nothing (no engine: every request passes, uncounted). A `matcher` takes the
    place of `rules` (and `shadow_matcher` of `shadow_rules`): Envoy then ignores the rules, with a
    warning, so they are not read (meshpy.xds.translate_authz_matcher)."""
    issues.fields(msg, path, {"rules", "rules_stat_prefix", "shadow_rules", "shadow_rules_stat_prefix",
                              "matcher", "shadow_matcher"})
    if not msg.ListFields():
        return None  # no rules and nothing to count: the filter does nothing
    matcher = rbac_matcher(issues, msg.matcher, child(path, "matcher")) if msg.HasField("matcher") else None
    shadow_matcher = (rbac_matcher(issues, msg.shadow_matcher, child(path, "shadow_matcher"))
                      if msg.HasField("shadow_matcher") else None)
    return RbacFilter(
        rules=(rules(issues, msg.rules, child(path, "rules"))
               if msg.HasField("rules") and matcher is None else None),
        shadow_rules=(rules(issues, msg.shadow_rules, child(path, "shadow_rules"))
                      if msg.HasField("shadow_rules") and shadow_matcher is None else None),
        rules_stat_prefix=msg.rules_stat_prefix, shadow_rules_stat_prefix=msg.shadow_rules_stat_prefix,
        matcher=matcher, shadow_matcher=shadow_matcher)


def rbac_per_route(issues: Issues, msg: Any, path: str) -> RbacFilter | None:
    """An RBACPerRoute: the config that replaces the listener's here; None when it has none (or an
    empty one), which turns the filter off here (Envoy: "If absent, the global RBAC policy will be
    disabled for this route")."""
    issues.fields(msg, path, {"rbac"})
    return rbac_filter(issues, msg.rbac, child(path, "rbac")) if msg.HasField("rbac") else None


def network_rbac(issues: Issues, msg: Any, path: str) -> NetworkRbac:
    """An envoy.extensions.filters.network.rbac.v3.RBAC. Header rules are refused, as Envoy refuses
    them ("not supported by RBAC network filter"): a connection has no headers."""
    issues.fields(msg, path, {"rules", "shadow_rules", "shadow_rules_stat_prefix", "stat_prefix",
                              "enforcement_type", "delay_deny"})
    if not msg.stat_prefix:
        issues.add(child(path, "stat_prefix"), "is required")
    enforcement = enum_name(msg, "enforcement_type")
    if enforcement not in ("ONE_TIME_ON_FIRST_BYTE", "CONTINUOUS"):
        issues.add(child(path, "enforcement_type"), f"unknown {enforcement}")
    delay = seconds(msg.delay_deny) if msg.HasField("delay_deny") else None
    if delay is not None and delay < 0:
        issues.add(child(path, "delay_deny"), "must not be negative")
    return NetworkRbac(
        stat_prefix=msg.stat_prefix,
        rules=rules(issues, msg.rules, child(path, "rules"), network=True) if msg.HasField("rules") else None,
        shadow_rules=(rules(issues, msg.shadow_rules, child(path, "shadow_rules"), network=True)
                      if msg.HasField("shadow_rules") else None),
        shadow_rules_stat_prefix=msg.shadow_rules_stat_prefix,
        enforcement_type="continuous" if enforcement == "CONTINUOUS" else "one_time_on_first_byte",
        delay_deny=delay or None)


def rules(issues: Issues, msg: Any, path: str, *, network: bool = False) -> Rbac:
    """An envoy.config.rbac.v3.RBAC: the action and the policies, in Envoy's order (by name)."""
    issues.fields(msg, path, {"action", "policies"})
    action = enum_name(msg, "action")
    if action not in _ACTIONS:
        issues.add(child(path, "action"), f"unknown {action}")
    reader = _Reader(issues, network)
    policies = [reader.policy(name, msg.policies[name], child(path, f"policies[{name}]"))
                for name in sorted(msg.policies, key=str.encode)]  # (a proto map has no order)
    return Rbac(action=_ACTIONS.get(action, "deny"), policies=sorted_policies(policies))


class _Reader:
    __slots__ = ("issues", "network")

    def __init__(self, issues: Issues, network: bool) -> None:
        self.issues = issues
        self.network = network

    def policy(self, name: str, msg: Any, path: str) -> Policy:
        # condition, checked_condition (CEL) and cel_config are reported here.
        self.issues.fields(msg, path, {"permissions", "principals"})
        for field in ("permissions", "principals"):
            if not getattr(msg, field):
                self.issues.add(child(path, field), "must have at least one entry")
        return Policy(
            name=name,
            permissions=tuple(self.rule(p, item(child(path, "permissions"), i), principal=False)
                              for i, p in enumerate(msg.permissions)),
            principals=tuple(self.rule(p, item(child(path, "principals"), i), principal=True)
                             for i, p in enumerate(msg.principals)))

    def rule(self, msg: Any, path: str, *, principal: bool) -> Rule:
        issues = self.issues
        issues.fields(msg, path, _PRINCIPAL if principal else _PERMISSION)
        kind = msg.WhichOneof("identifier" if principal else "rule")
        at = child(path, kind or "")
        if kind is None:
            issues.add(path, "one rule is required" if not principal else "one identifier is required")
            return Always()
        if kind not in (_PRINCIPAL if principal else _PERMISSION):
            return Always()  # (reported by `fields`)
        if kind == "any":
            if not msg.any:
                issues.add(at, "must be true")
            return Always()
        if kind in ("and_rules", "or_rules", "and_ids", "or_ids"):
            members = msg.and_ids.ids if kind == "and_ids" else msg.or_ids.ids if kind == "or_ids" \
                else getattr(msg, kind).rules
            issues.fields(getattr(msg, kind), at, {"ids" if principal else "rules"})
            if not members:
                issues.add(at, "must have at least one entry")
            where = child(at, "ids" if principal else "rules")
            found = tuple(self.rule(m, item(where, i), principal=principal) for i, m in enumerate(members))
            return AllOf(rules=found) if kind.startswith("and") else AnyOf(rules=found)
        if kind in ("not_rule", "not_id"):
            return Not(rule=self.rule(getattr(msg, kind), at, principal=principal))
        if kind == "header":
            if self.network:
                issues.add(at, "header rules are not supported by the RBAC network filter (as in Envoy)")
            return HeaderRule(match=header_match(issues, msg.header, at))
        if kind == "url_path":
            return PathRule(match=self._path(msg.url_path, at))
        if kind in _IPS:
            return IpRule(source=_IPS[kind], cidr=_cidr(issues, getattr(msg, kind), at))
        if kind == "destination_port":
            if msg.destination_port > 65535:
                issues.add(at, f"must be at most 65535, got {msg.destination_port}")
            return PortRule(start=msg.destination_port, end=msg.destination_port + 1)
        if kind == "destination_port_range":
            r = msg.destination_port_range
            issues.fields(r, at, {"start", "end"})
            if not (0 <= r.start < r.end <= 65536):
                issues.add(at, f"must have 0 <= start < end <= 65536, got [{r.start}, {r.end})")
            return PortRule(start=r.start, end=r.end)
        if kind == "requested_server_name":
            return ServerNameRule(match=string_match(issues, msg.requested_server_name, at))
        return self._authenticated(msg.authenticated, at)

    def _path(self, msg: Any, path: str) -> StringMatch:
        self.issues.fields(msg, path, {"path"})
        if not msg.HasField("path"):
            self.issues.add(child(path, "path"), "is required")
            return StringMatch(kind="exact")
        return string_match(self.issues, msg.path, child(path, "path"))

    def _authenticated(self, msg: Any, path: str) -> Authenticated:
        self.issues.fields(msg, path, {"principal_name"})
        if not msg.HasField("principal_name"):
            return Authenticated()
        name = string_match(self.issues, msg.principal_name, child(path, "principal_name"))
        return Authenticated(principal=name)


def _cidr(issues: Issues, msg: Any, path: str) -> str:
    """A CidrRange as canonical network text (host bits cleared, as Envoy's range check ignores them)."""
    issues.fields(msg, path, {"address_prefix", "prefix_len"})
    prefix_len = msg.prefix_len.value if msg.HasField("prefix_len") else 0
    try:
        return str(ipaddress.ip_network(f"{msg.address_prefix}/{prefix_len}", strict=False))
    except ValueError as err:
        issues.add(path, f"not a CIDR: {err}")
        return "0.0.0.0/32"
