"""Model -> Envoy for authorization: an authz filter as `envoy.filters.http.rbac` (its RBAC config) and
a route's or virtual host's replacement as RBACPerRoute; the inverse of meshpy.xds.translate_authz,
tied to it by a round-trip test (model -> Envoy -> model gives the same model).

The filter keeps its model name (`authz` for meshpy YAML's), so that the per-route configs, keyed by
the filter's name, reach it in Envoy too.
"""

from __future__ import annotations

from typing import Any

from meshpy.model.authz import (
    AllOf,
    Always,
    AnyOf,
    Authenticated,
    HeaderRule,
    IpRule,
    Not,
    PathRule,
    PortRule,
    Rbac,
    RbacFilter,
    Rule,
    ServerNameRule,
)
from meshpy.model.filter_types import ENVOY_NAMES, FilterOverride, HttpFilterSpec
from meshpy.model.routes import HeaderMatch, StringMatch

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
_IP_FIELDS = {"destination": "destination_ip", "source": "source_ip", "direct_remote": "direct_remote_ip",
              "remote": "remote_ip"}


def rbac_filter_entry(spec: HttpFilterSpec, used: bool) -> dict[str, Any] | None:
    """The http_filters entry of an authz filter; None for one without a config that no virtual host
    or route speaks of (`used`), which does nothing."""
    if spec.rbac is None and not used:
        return None
    return {"name": spec.name, "typed_config": {"@type": RBAC_TYPE, **rbac_config(spec.rbac)}}


def names_of(spec: HttpFilterSpec) -> set[str]:
    """The names a virtual host's or route's override may call this filter by."""
    aliases = (alias for alias, kind in ENVOY_NAMES.items() if kind == spec.kind and spec.name == kind)
    return {spec.name, *aliases}


def per_route(o: FilterOverride) -> dict[str, Any] | None:
    """A replacement config as a typed_per_filter_config value; None when the override has none."""
    if o.rbac is None or o.disabled:
        return None
    return {"@type": RBAC_PER_ROUTE_TYPE, "rbac": rbac_config(o.rbac)}


def rbac_config(config: RbacFilter | None) -> dict[str, Any]:
    """An envoy.extensions.filters.http.rbac.v3.RBAC, as proto JSON (without its @type)."""
    out: dict[str, Any] = {}
    if config is None:
        return out
    if config.rules is not None:
        out["rules"] = rules(config.rules)
    if config.shadow_rules is not None:
        out["shadow_rules"] = rules(config.shadow_rules)
    if config.rules_stat_prefix:
        out["rules_stat_prefix"] = config.rules_stat_prefix
    if config.shadow_rules_stat_prefix:
        out["shadow_rules_stat_prefix"] = config.shadow_rules_stat_prefix
    if config.matcher is not None or config.shadow_matcher is not None:
        # (imported here: that module reads this one's string_matcher)
        from control.sources.export_authz_matcher import matcher_config

        if config.matcher is not None:
            out["matcher"] = matcher_config(config.matcher)
        if config.shadow_matcher is not None:
            out["shadow_matcher"] = matcher_config(config.shadow_matcher)
    return out


def rules(rbac: Rbac) -> dict[str, Any]:
    return {"action": rbac.action.upper(),
            "policies": {p.name: {"permissions": [_rule(r, principal=False) for r in p.permissions],
                                  "principals": [_rule(r, principal=True) for r in p.principals]}
                         for p in rbac.policies}}


def _rule(rule: Rule, *, principal: bool) -> dict[str, Any]:
    if isinstance(rule, Always):
        return {"any": True}
    if isinstance(rule, HeaderRule):
        return {"header": _header(rule.match)}
    if isinstance(rule, PathRule):
        return {"url_path": {"path": string_matcher(rule.match)}}
    if isinstance(rule, IpRule):
        address, _, length = rule.cidr.partition("/")
        return {_IP_FIELDS[rule.source]: {"address_prefix": address, "prefix_len": int(length)}}
    if isinstance(rule, PortRule):
        if rule.end == rule.start + 1:
            return {"destination_port": rule.start}
        return {"destination_port_range": {"start": rule.start, "end": rule.end}}
    if isinstance(rule, ServerNameRule):
        return {"requested_server_name": string_matcher(rule.match)}
    if isinstance(rule, Authenticated):
        name = {} if rule.principal is None else {"principal_name": string_matcher(rule.principal)}
        return {"authenticated": name}
    if isinstance(rule, AllOf | AnyOf):
        members = [_rule(r, principal=principal) for r in rule.rules]
        if principal:
            return {("and_ids" if isinstance(rule, AllOf) else "or_ids"): {"ids": members}}
        return {("and_rules" if isinstance(rule, AllOf) else "or_rules"): {"rules": members}}
    assert isinstance(rule, Not)
    return {("not_id" if principal else "not_rule"): _rule(rule.rule, principal=principal)}


def string_matcher(m: StringMatch) -> dict[str, Any]:
    """Envoy's StringMatcher (the export's one spelling of it)."""
    if m.kind == "regex":
        return {"safe_regex": {"regex": m.value}}
    return {m.kind: m.value, "ignore_case": m.ignore_case}


def _header(h: HeaderMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"name": h.name, "invert_match": h.invert}
    if h.match.kind == "present":
        out["present_match"] = True
    else:
        out["string_match"] = string_matcher(h.match)
    return out
