"""`authz:` in meshpy YAML: authorization written the way Istio's AuthorizationPolicy reads, compiled
to the same model as Envoy's RBAC (meshpy.model.authz).

    authz:
      action: allow                   # allow (default) | deny | log
      policies:
        orders-can-read:
          from: [{principal: "spiffe://cluster.local/ns/shop/sa/orders"}, {ip: 10.0.0.0/8}]
          to: [{methods: [GET, HEAD], paths: ["/api/*"]}]
          when: [{header: x-env, values: [prod]}]
      shadow: {action: deny, policies: {...}}   # evaluated and counted, never enforced
      stat_prefix: orders_                      # Envoy's rules_stat_prefix (shadow_stat_prefix too)

A policy matches a request when one of its `from` entries, one of its `to` entries, and every `when`
condition match (a part left out matches everything). In an entry, every key must match, and a key
matches when one of its values does (`not_` keys: when none does). Values are Istio's: exact, `pre*`,
`*suf`, or `*`; a principal without a scheme is a SPIFFE ID's path (`cluster.local/ns/a/sa/b`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

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
from meshpy.model.meshpy_yaml_matches import TOKEN, header_name
from meshpy.model.routes import HeaderMatch, StringMatch
from meshpy.model.yaml_reader import Fields, Reader, as_name, as_str, child, is_off, item
from meshpy.model.yaml_values import yaml_kind

_ACTIONS: dict[str, Action] = {"allow": "allow", "deny": "deny", "log": "log", "audit": "log"}
_FILTER_KEYS = ("action", "policies", "shadow", "stat_prefix", "shadow_stat_prefix")
_ROUTE_KEYS = ("action", "policies", "shadow")
_POLICY_KEYS = ("from", "to", "when")
_ROUTE_MISPLACED = dict.fromkeys(("stat_prefix", "shadow_stat_prefix"),
                                 "belongs to the listener's authz: a route's decisions are counted there")
Reading = Callable[[str, str], Rule]  # (value, path) -> the rule one value of a key stands for


def read_authz(r: Reader, node: object, path: str, *, route: bool = False) -> RbacFilter | None:
    """An `authz:` block (a route's has no stat prefixes: counts go under the listener's); None when
    it says nothing (no rules, no shadow rules: it would do nothing)."""
    f = r.mapping(node, path, _ROUTE_KEYS if route else _FILTER_KEYS, _ROUTE_MISPLACED if route else None)
    if f is None:
        return None
    rules = _rules(r, f) if f.present("action", "policies") else None
    shadow = None
    if "shadow" in f:
        s = r.mapping(f.raw("shadow"), f.at("shadow"), ("action", "policies"))
        shadow = _rules(r, s) if s is not None else None
    config = RbacFilter(rules=rules, shadow_rules=shadow, rules_stat_prefix=f.get("stat_prefix", as_str, ""),
                        shadow_rules_stat_prefix=f.get("shadow_stat_prefix", as_str, ""))
    return None if config == RbacFilter() else config


def _rules(r: Reader, f: Fields) -> Rbac:
    allow: Action = "allow"
    action = f.get("action", _action, allow)
    policies: list[Policy] = []
    if "policies" in f:
        m = r.mapping(f.raw("policies"), f.at("policies"), None)
        for name, node in (m.data.items() if m is not None else ()):
            at = child(f.at("policies"), str(name))
            try:
                policy_name = as_name(name)
            except ValueError as err:
                r.error(at, str(err))
                continue
            policies.append(_policy(r, policy_name, node, at))
    return Rbac(action=action, policies=sorted_policies(policies))


def _action(value: object) -> Action:
    text = as_str(value).lower()
    if text not in _ACTIONS:
        raise ValueError(f"must be allow, deny or log, got {value!r}")
    return _ACTIONS[text]


def _policy(r: Reader, name: str, node: object, path: str) -> Policy:
    f = r.mapping({} if node is None else node, path, _POLICY_KEYS)
    if f is None:
        return Policy(name=name, permissions=(Always(),), principals=(Always(),))
    sources = [_entry(r, e, at, _SOURCE) for e, at in _entries(r, f, "from")]
    operations = [_entry(r, e, at, _OPERATION) for e, at in _entries(r, f, "to")]
    conditions = [_condition(r, e, at) for e, at in _entries(r, f, "when")]
    # Envoy's permissions and principals take different rules: a condition on who asks goes with the
    # principals (both sides are AND'd, so where it goes changes nothing else).
    who = [c for c in conditions if _about_peer(c)]
    what = [c for c in conditions if not _about_peer(c)]
    return Policy(name=name,
                  permissions=tuple(_all([op, *what]) for op in operations) or (_all(what),),
                  principals=tuple(_all([src, *who]) for src in sources) or (_all(who),))


def _about_peer(rule: Rule) -> bool:
    while isinstance(rule, Not | AnyOf):
        rule = rule.rule if isinstance(rule, Not) else rule.rules[0]
    return isinstance(rule, Authenticated) or (isinstance(rule, IpRule) and rule.source != "destination")


def _entries(r: Reader, f: Fields, key: str) -> list[tuple[Any, str]]:
    if key not in f:
        return []
    found = r.sequence(f.raw(key), f.at(key), allow_single=isinstance(f.raw(key), dict))
    if f.raw(key) == []:
        r.error(f.at(key), "must not be empty (leave it out to match everything)")
    listed = isinstance(f.raw(key), list)
    return [(e, item(f.at(key), i) if listed else f.at(key)) for i, e in enumerate(found)]


def _all(rules: list[Rule]) -> Rule:
    if not rules:
        return Always()
    return rules[0] if len(rules) == 1 else AllOf(rules=tuple(rules))


def _any(rules: list[Rule]) -> Rule:
    return rules[0] if len(rules) == 1 else AnyOf(rules=tuple(rules))


def _entry(r: Reader, node: object, path: str, keys: dict[str, tuple[str, Reading]]) -> Rule:
    """One `from` or `to` entry: each key AND'd, each key's values OR'd, `not_` keys negated."""
    allowed = [*keys, *(f"not_{k}" for k in keys)]
    f = r.mapping(node, path, allowed)
    if f is None:
        return Always()
    if not f.data:
        r.error(path, f"is empty; give one of {', '.join(k for k in keys if not k.endswith('s'))}")
    rules: list[Rule] = []
    for key in f.data:
        if not isinstance(key, str) or key not in allowed:
            continue  # (reported by the reader)
        negated = key.startswith("not_")
        _, read = keys[key[4:] if negated else key]
        values = r.sequence(f.raw(key), f.at(key), allow_single=True)
        if not values:
            r.error(f.at(key), "must not be empty")
            continue
        found = []
        for i, value in enumerate(values):
            at = item(f.at(key), i) if isinstance(f.raw(key), list) else f.at(key)
            try:
                found.append(read(as_str(value), at))
            except ValueError as err:
                r.error(at, str(err))
        if found:
            rules.append(Not(rule=_any(found)) if negated else _any(found))
    return _all(rules)


def _glob(value: str) -> StringMatch:
    """Istio's value forms: `*` (anything, not empty), `pre*`, `*suf`, else exact."""
    if value == "*":
        return StringMatch(kind="regex", value=".+")
    if value.endswith("*"):
        return StringMatch(kind="prefix", value=value[:-1])
    if value.startswith("*"):
        return StringMatch(kind="suffix", value=value[1:])
    return StringMatch(kind="exact", value=value)


def _principal(value: str, path: str) -> Rule:
    if not value.startswith("*") and "://" not in value:
        value = "spiffe://" + value  # Istio's form: the trust domain and path of a SPIFFE ID
    return Authenticated(principal=_glob(value))


def _namespace(value: str, path: str) -> Rule:
    if not value or "/" in value:
        raise ValueError(f"{value!r} is not a namespace")
    return Authenticated(principal=StringMatch(kind="regex", value=f".*/ns/{re.escape(value)}/.*"))


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"not a CIDR or an IP address: {value!r}") from None


def _path(value: str, path: str) -> Rule:
    if not value.startswith(("/", "*")):
        raise ValueError(f"{value!r} must start with / (or be *, or *suffix)")
    return PathRule(match=StringMatch(kind="prefix", value="") if value == "*" else _glob(value))


def _method(value: str, path: str) -> Rule:
    method = value.upper()
    if not TOKEN.fullmatch(method.lower()):
        raise ValueError(f"{value!r} is not an HTTP method")
    return HeaderRule(match=HeaderMatch(name=":method", match=StringMatch(kind="exact", value=method)))


def _host(value: str, path: str) -> Rule:
    match = StringMatch(kind="present") if value == "*" else _glob(value.lower())
    match = StringMatch(kind=match.kind, value=match.value, ignore_case=match.kind != "present")
    return HeaderRule(match=HeaderMatch(name=":authority", match=match))


def _port(value: str, path: str) -> Rule:
    if not value.isdigit() or not 0 < int(value) <= 65535:
        raise ValueError(f"not a port: {value!r}")
    return PortRule(start=int(value), end=int(value) + 1)


def _sni(value: str, path: str) -> Rule:
    return ServerNameRule(match=_glob(value.lower()))


def _ip(source: str) -> Reading:
    kind: IpSource = "direct_remote" if source == "ip" else "remote"
    return lambda value, path: IpRule(source=kind, cidr=_cidr(value))


def _pair(singular: str, read: Reading) -> dict[str, tuple[str, Reading]]:
    return {singular: (singular, read), singular + "s": (singular, read)}


# Istio's Source and Operation fields (principals, namespaces, ipBlocks, remoteIpBlocks; methods, paths,
# hosts, ports), singular or plural, plus SNI.
_SOURCE = {**_pair("principal", _principal), **_pair("namespace", _namespace), **_pair("ip", _ip("ip")),
           **_pair("remote_ip", _ip("remote"))}
_OPERATION = {**_pair("method", _method), **_pair("path", _path), **_pair("host", _host),
              **_pair("port", _port), **_pair("server_name", _sni)}


def _condition(r: Reader, node: object, path: str) -> Rule:
    """A `when` entry: `{header: name, values: [...]}` (or not_values), or Istio's `key:` form for
    request.headers[name], source.ip, remote.ip, source.principal, source.namespace, destination.port,
    connection.sni."""
    f = r.mapping(node, path, ("header", "key", "values", "not_values"))
    if f is None:
        return Always()
    forms = f.present("header", "key")
    lists = f.present("values", "not_values")
    if len(forms) != 1 or len(lists) != 1:
        r.error(path, "needs one of header or key, and one of values or not_values")
        return Always()
    read = f.get(forms[0], _header_reader if forms[0] == "header" else _key_reader, None)
    if read is None:
        return Always()
    # Reuse the entry reader: one key whose values are OR'd, negated for not_values.
    key = lists[0].removeprefix("not_")
    return _entry(r, {lists[0]: f.raw(lists[0])}, path, {key: (key, read)})


def _header_reader(value: object) -> Reading:
    name = header_name(value)
    return lambda v, path: HeaderRule(match=HeaderMatch(
        name=name, match=StringMatch(kind="present") if v == "*" else _glob(v)))


_HEADER_KEY = re.compile(r"request\.headers\[([^\]]+)\]")
_KEYS: dict[str, Reading] = {"source.ip": _ip("ip"), "remote.ip": _ip("remote"),
                             "source.principal": _principal, "source.namespace": _namespace,
                             "destination.port": _port, "connection.sni": _sni}


def _key_reader(value: object) -> Reading:
    key = as_str(value)
    if (m := _HEADER_KEY.fullmatch(key)) is not None:
        return _header_reader(m.group(1))
    if key not in _KEYS:
        raise ValueError(f"unknown key {key!r}; known: request.headers[<name>], {', '.join(_KEYS)}")
    return _KEYS[key]


def route_authz(r: Reader, node: object, path: str) -> RbacFilter | None:
    """A virtual host's or route's `authz:`: `off` turns the listener's off here (None); a block
    replaces it here."""
    if is_off(node):
        return None
    if not isinstance(node, dict):
        r.error(path, f"expected off or a mapping, got a {yaml_kind(node)}")
        return None
    return read_authz(r, node, path, route=True)  # (an empty block does nothing: off too)


def _request_rules(rule: Rule) -> bool:
    """Whether a rule reads the request (a connection has no headers, path or method)."""
    if isinstance(rule, HeaderRule | PathRule):
        return True
    if isinstance(rule, AllOf | AnyOf):
        return any(_request_rules(r) for r in rule.rules)
    if isinstance(rule, Not):
        return _request_rules(rule.rule)
    return False


def read_network_authz(r: Reader, node: object, path: str, name: str) -> NetworkRbac | None:
    """A TCP listener's `authz:` (Envoy's network RBAC filter): `from` and ports only, counted under
    the listener's name as the stat prefix."""
    found = read_authz(r, node, path)
    if found is None:
        return None
    for rules in (found.rules, found.shadow_rules):
        for policy in rules.policies if rules is not None else ():
            if any(_request_rules(x) for x in (*policy.permissions, *policy.principals)):
                r.error(child(child(path, "policies"), policy.name), "a TCP listener authorizes connections: "
                        "methods, paths, hosts and headers do not apply")
    return NetworkRbac(stat_prefix=f"{found.rules_stat_prefix or name}.", rules=found.rules,
                       shadow_rules=found.shadow_rules,
                       shadow_rules_stat_prefix=found.shadow_rules_stat_prefix)
