"""`filters:` in meshpy YAML: a listener's HTTP filter chain, and what a virtual host or route says of
one of its filters.

    listeners:
      - name: web
        filters:
          - rate_limit                                   # built in; unlisted built-ins run first
          - python: {class: "mypkg.auth:ApiKeyFilter", config: {keys: [k1]}}
          - name: canary
            python: {class: "mypkg.canary:Canary", config: {percent: 10}}
            disabled: true                               # on only where a route turns it on
          - authz: {action: deny, policies: {...}}       # authorization (meshpy.model.authz_yaml)
        routes:
          - match: /beta
            filters: {canary: {disabled: false, config: {percent: 50}}, rate_limit: {disabled: true}}
            authz: off                                   # or a block of its own for this route

A python filter is named by its `name`, else by its class path. The config is any YAML mapping; it is
kept as canonical JSON, so an unchanged config is recognised across reloads (the filter instance, and
its state, survive them).
"""

from __future__ import annotations

import json
from typing import Any

from meshpy.model.authz_yaml import read_authz, route_authz
from meshpy.model.filter_types import BUILTIN_FILTERS, FilterOverride, HttpFilterSpec
from meshpy.model.yaml_reader import Fields, Reader, as_bool, as_name, as_str, child, item

_SPEC_KEYS = ("name", "python", "authz", "disabled")
AUTHZ = "authz"  # the name of the authz filter that `authz:` on a listener, host or route speaks of
_PYTHON_KEYS = ("class", "config")
_OVERRIDE_KEYS = ("disabled", "config")


def canonical_config(value: object) -> str:
    """A filter config as JSON with sorted keys: equal configs give equal text. Whole floats are
    written as integers (5.0 as 5): an Envoy config's Struct has only doubles, and the same config must
    read the same from either form."""
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping, got {type(value).__name__}")
    try:
        return json.dumps(_whole(value), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot be written as JSON: {err}") from err


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def python_class(value: object) -> str:
    text = as_str(value)
    module, sep, name = text.partition(":")
    if not sep or not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise ValueError(f"must be 'package.module:Class', got {text!r}")
    return text


def read_filters(r: Reader, node: object, path: str) -> tuple[HttpFilterSpec, ...]:
    specs: list[HttpFilterSpec] = []
    names: set[str] = set()
    for i, entry in enumerate(r.sequence(node, path)):
        at = item(path, i)
        spec = _spec(r, entry, at)
        if spec is None:
            continue
        if spec.name in names:
            r.error(at, f"a second filter named {spec.name!r} (name one of them)")
            continue
        names.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def _spec(r: Reader, entry: object, at: str) -> HttpFilterSpec | None:
    if isinstance(entry, str):
        if entry not in BUILTIN_FILTERS:
            known = ", ".join(BUILTIN_FILTERS)
            r.error(at, f"unknown filter {entry!r}; built in: {known}, or python: {{...}}")
            return None
        return HttpFilterSpec(name=entry, kind=entry)
    f = r.mapping(entry, at, _SPEC_KEYS)
    if f is None:
        return None
    if "authz" in f and "python" not in f:
        return HttpFilterSpec(name=f.get("name", as_name, AUTHZ), kind="authz",
                              rbac=read_authz(r, f.raw("authz"), f.at("authz")),
                              disabled=f.get("disabled", as_bool, False))
    if "python" not in f:
        r.error(at, "needs python: {class: 'package.module:Class', config: {...}}, authz: {...} "
                    "(or a built-in name)")
        return None
    if "authz" in f:
        r.error(f.at("authz"), "a filter is python or authz, not both")
    p = r.mapping(f.raw("python"), f.at("python"), _PYTHON_KEYS)
    if p is None:
        return None
    cls = p.require("class", python_class, "")
    return HttpFilterSpec(
        name=f.get("name", as_name, cls), kind="python", python_class=cls,
        config=p.get("config", canonical_config, "{}"), disabled=f.get("disabled", as_bool, False))


def read_overrides(r: Reader, f: Fields) -> tuple[FilterOverride, ...]:
    """A virtual host's or route's `filters: {name: {disabled: bool, config: {...}}}`."""
    if "filters" not in f:
        return ()
    path = f.at("filters")
    m = r.mapping(f.raw("filters"), path, None)
    if m is None:
        return ()
    out = []
    for name, value in m.data.items():
        at = child(path, str(name))
        o = r.mapping(value, at, _OVERRIDE_KEYS)
        if o is None:
            continue
        out.append(FilterOverride(
            name=str(name), disabled=o.get("disabled", as_bool, None),
            config=o.get("config", canonical_config, None)))
    return tuple(sorted(out, key=lambda o: o.name))  # one per name: the order says nothing


def with_listener_authz(r: Reader, f: Fields,
                        specs: tuple[HttpFilterSpec, ...]) -> tuple[HttpFilterSpec, ...]:
    """A listener's `authz:` block: its authz filter, where `filters:` places `authz` (a bare name),
    else first."""
    if "authz" not in f:
        return specs
    rbac = read_authz(r, f.raw("authz"), f.at("authz"))
    for i, spec in enumerate(specs):
        if spec.name == AUTHZ:
            if spec.kind != "authz" or spec.rbac is not None:
                r.error(f.at("authz"), "filters: has an authz filter with a config of its own; give one")
                return specs
            return (*specs[:i], HttpFilterSpec(name=AUTHZ, kind="authz", rbac=rbac), *specs[i + 1:])
    return (HttpFilterSpec(name=AUTHZ, kind="authz", rbac=rbac), *specs)


def with_route_authz(r: Reader, f: Fields,
                     overrides: tuple[FilterOverride, ...]) -> tuple[FilterOverride, ...]:
    """A virtual host's or route's `authz:` (`off`, or a block that replaces the listener's here), as
    the override of the filter named authz."""
    if "authz" not in f:
        return overrides
    if any(o.name == AUTHZ for o in overrides):
        r.error(f.at("authz"), "filters: speaks of authz here too; say it once")
        return overrides
    rbac = route_authz(r, f.raw("authz"), f.at("authz"))
    given = FilterOverride(name=AUTHZ, rbac=rbac) if rbac is not None else \
        FilterOverride(name=AUTHZ, disabled=True)
    return tuple(sorted((*overrides, given), key=lambda o: o.name))


def data_of(config: str) -> Any:
    """The config of a spec or override, as the filter gets it."""
    return json.loads(config)
