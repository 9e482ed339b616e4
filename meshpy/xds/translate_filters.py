"""An HTTP connection manager's `http_filters` and the `typed_per_filter_config` of virtual hosts and
routes -> the model's filter chain (meshpy.model.filter_types).

The chain keeps Envoy's order. The fault and local rate limit filters are built in; a Python filter of
meshpy's is a `TypedStruct` (xds.type.v3 or udpa.type.v1) whose `type_url` is PYTHON_FILTER and whose
`value` is `{class: "package.module:Class", config: {...}}`:

    http_filters:
    - name: api_key
      is_optional: true          # so that Envoy, which has no such filter, passes over it
      typed_config:
        "@type": type.googleapis.com/xds.type.v3.TypedStruct
        type_url: type.googleapis.com/meshpy.filters.v1.Python
        value: {class: "config.filters.api_key:ApiKeyFilter", config: {keys: [k1]}}
    - name: envoy.filters.http.router
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}

A filter with `is_optional` whose type meshpy does not know is passed over, as Envoy does. Per virtual
host or route, `typed_per_filter_config` keyed by the filter's name takes an
`envoy.config.route.v3.FilterConfig` (`disabled`, and a `config` of its own) or the config itself.
"""

from __future__ import annotations

import json
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from google.protobuf import json_format
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2

from meshpy import extensions
from meshpy.model.authz import RbacFilter
from meshpy.model.filter_types import (
    BUILTIN_FILTERS,
    ENVOY_NAMES,
    FilterKind,
    FilterOverride,
    HttpFilterSpec,
    leading_authz,
)
from meshpy.model.meshpy_yaml_filters import canonical_config, python_class
from meshpy.model.routes import Fault, LocalRateLimit
from meshpy.xds import translate_guards
from meshpy.xds.translate_authz import (
    HTTP_RBAC,
    HTTP_RBAC_PER_ROUTE,
    HttpRbac,
    HttpRbacPerRoute,
    rbac_filter,
    rbac_per_route,
)
from meshpy.xds.translate_base import UNSUPPORTED, Issues, child, item

PYTHON_FILTER = "type.googleapis.com/meshpy.filters.v1.Python"
TYPED_STRUCTS = {cls.DESCRIPTOR.full_name: cls
                 for cls in (typed_struct_pb2.TypedStruct, udpa_typed_struct_pb2.TypedStruct)}
FILTER_CONFIG = route_components_pb2.FilterConfig
ROUTER = "envoy.extensions.filters.http.router.v3.Router"

# The chain before the router, the fault and rate limit filters' own configs, and whether the router
# adds its x-envoy-* headers (not suppress_envoy_headers).
Chain = tuple[tuple[HttpFilterSpec, ...], Fault | None, LocalRateLimit | None, bool]


def http_filters(issues: Issues, msg: Any, path: str) -> Chain:
    """The chain before the router, and the fault and rate limit filters' own configs (which apply to
    every route without one of its own). Each filter after the router, or of a type meshpy does not
    know and not optional, is reported; a missing router only when nothing else explains it."""
    specs: list[HttpFilterSpec] = []
    found_fault: Fault | None = None
    found_limit: LocalRateLimit | None = None
    routers = 0
    envoy_headers = True
    for i, f in enumerate(msg.http_filters):
        at = item(path, i)
        config_path = child(at, "typed_config")
        issues.fields(f, at, {"name", "typed_config", "is_optional", "disabled"})
        if not f.HasField("typed_config"):
            issues.add(config_path, "is required")
            continue
        type_name = f.typed_config.TypeName()
        if routers and type_name:
            issues.add(config_path, "comes after the router, so it would never run")
        kind: FilterKind
        if type_name == ROUTER:
            routers += 1
            # Every other Router option (upstream_log, ...) changes behaviour meshpy does not have;
            # dynamic_stats only turns Envoy's per-cluster stats on or off (meshpy's metrics are its own).
            router = _unpacked(f.typed_config, ROUTER)
            issues.fields(router, config_path, {"suppress_envoy_headers", "dynamic_stats"})
            envoy_headers = not router.suppress_envoy_headers
            continue
        if type_name == translate_guards.FAULT:
            found_fault = translate_guards.fault(issues, _unpacked(f.typed_config, type_name), config_path)
            kind = "fault"
        elif type_name == translate_guards.RATE_LIMIT:
            limit_config = _unpacked(f.typed_config, type_name)
            found_limit = translate_guards.rate_limit(issues, limit_config, config_path)
            kind = "rate_limit"
        elif type_name == HTTP_RBAC:
            rbac = rbac_filter(issues, _unpacked(f.typed_config, type_name), config_path)
            specs.append(HttpFilterSpec(name=f.name or "authz", kind="authz", rbac=rbac, disabled=f.disabled))
            continue
        elif type_name in extensions.HTTP_FILTERS:
            cls, built_in = extensions.listener_config(issues, f.typed_config, config_path)
            specs.append(HttpFilterSpec(name=f.name or cls, kind="python", python_class=cls,
                                        config=canonical_config(built_in), disabled=f.disabled))
            continue
        elif (python := _python_value(f.typed_config)) is not None:
            cls, config = _python(issues, python, config_path)
            specs.append(HttpFilterSpec(name=f.name or cls, kind="python", python_class=cls, config=config,
                                        disabled=f.disabled))
            continue
        else:
            if not f.is_optional:
                issues.add(config_path, f"{_describe(f.typed_config)} is {UNSUPPORTED}")
            continue
        specs.append(HttpFilterSpec(name=f.name or kind, kind=kind, disabled=f.disabled))
    if not routers and not issues.items:
        issues.add(path, f"the router filter ({ROUTER}) is required: without it Envoy takes the listener "
                         "but answers none of its requests")
    return _plain(tuple(specs)), found_fault, found_limit, envoy_headers


def _plain(specs: tuple[HttpFilterSpec, ...]) -> tuple[HttpFilterSpec, ...]:
    """The built-ins at the head of the chain, on and in their usual order, are what a listener runs
    without listing them (meshpy.model.filter_types.effective_chain): left out, so that the model is
    the same as the same listener's in meshpy YAML. Authz filters with a config that open the chain
    run ahead of those in either case, and stay."""
    lead = leading_authz(specs)
    head, rest = specs[:lead], specs[lead:]
    n = 0
    usual = list(BUILTIN_FILTERS)
    while n < len(rest):
        s = rest[n]
        if s.kind not in usual or s.disabled or s.name not in (s.kind, *_envoy_names(s.kind)) or \
                s.rbac is not None:
            break
        usual = usual[usual.index(s.kind) + 1:]
        n += 1
    if any(s.kind in BUILTIN_FILTERS for s in rest[n:]):
        return specs  # a built-in listed again further on: the order is the listener's own
    return (*head, *rest[n:])


def per_filter(issues: Issues, msg: Any, path: str) -> tuple[Fault | None, LocalRateLimit | None,
                                                             tuple[FilterOverride, ...]]:
    """What a virtual host's or route's `typed_per_filter_config` says: a fault and a rate limit of its
    own (recognised by their type, whatever the key), and per filter name, on or off and a config."""
    found_fault: Fault | None = None
    found_limit: LocalRateLimit | None = None
    overrides: list[FilterOverride] = []
    for key, any_msg in msg.typed_per_filter_config.items():
        where = child(path, f"typed_per_filter_config[{key}]")
        disabled: bool | None = None
        optional = False
        if any_msg.TypeName() == FILTER_CONFIG.DESCRIPTOR.full_name:
            fc = FILTER_CONFIG()
            any_msg.Unpack(fc)
            # Envoy: any per-filter config turns a filter on there; `disabled: true` turns it off.
            disabled, optional = (True if fc.disabled else None), fc.is_optional
            if not fc.HasField("config"):
                if disabled:
                    overrides.append(FilterOverride(name=key, disabled=True))
                continue
            any_msg, where = fc.config, child(where, "config")
        type_name = any_msg.TypeName()
        config: str | None = None
        rbac: RbacFilter | None = None
        if type_name == translate_guards.FAULT:
            found_fault = translate_guards.fault(issues, _unpacked(any_msg, type_name), where)
        elif type_name == translate_guards.RATE_LIMIT:
            found_limit = translate_guards.rate_limit(issues, _unpacked(any_msg, type_name), where)
        elif type_name == HTTP_RBAC_PER_ROUTE:
            rbac = rbac_per_route(issues, _unpacked(any_msg, type_name), where)
            if rbac is None:
                disabled = True  # RBACPerRoute without rules: the filter is off here
        elif type_name in extensions.PER_ROUTE:
            off, own = extensions.route_config(issues, any_msg, where)
            if off:
                disabled = True
            elif own is not None:
                config = canonical_config(own)
        elif (value := _python_value(any_msg)) is not None:
            if set(value) - {"config"}:
                issues.add(child(where, "value"), "only config may be given here (the class is the filter's)")
            if "config" in value:
                config = _config(issues, value["config"], child(where, "value.config"))
            elif disabled is None:
                disabled = False  # on here, with the listener's config
        else:
            if not optional:
                issues.add(where, f"{_describe(any_msg)} is {UNSUPPORTED}")
            continue
        if disabled is not None or config is not None or rbac is not None:
            overrides.append(FilterOverride(name=key, disabled=disabled, config=config, rbac=rbac))
    return found_fault, found_limit, tuple(sorted(overrides, key=lambda o: o.name))


_MESSAGES = {translate_guards.FAULT: translate_guards.HTTPFault,
             translate_guards.RATE_LIMIT: translate_guards.LocalRateLimitConfig, ROUTER: router_pb2.Router,
             HTTP_RBAC: HttpRbac, HTTP_RBAC_PER_ROUTE: HttpRbacPerRoute}


def _envoy_names(kind: str) -> list[str]:
    return [name for name, k in ENVOY_NAMES.items() if k == kind]


def _unpacked(any_msg: Any, type_name: str) -> Any:
    msg = _MESSAGES[type_name]()
    any_msg.Unpack(msg)
    return msg


def _python_value(any_msg: Any) -> dict[str, Any] | None:
    """The value of a TypedStruct that holds a Python filter's config; None for anything else."""
    if any_msg.TypeName() not in TYPED_STRUCTS:
        return None
    type_url, value = _typed_struct(any_msg)
    return value if type_url == PYTHON_FILTER else None


def _typed_struct(any_msg: Any) -> tuple[str, dict[str, Any]]:
    ts = TYPED_STRUCTS[any_msg.TypeName()]()
    any_msg.Unpack(ts)
    return ts.type_url, json_format.MessageToDict(ts.value)


def _describe(any_msg: Any) -> str:
    if any_msg.TypeName() in TYPED_STRUCTS:
        return f"a TypedStruct of {_typed_struct(any_msg)[0] or 'no type_url'}"
    return any_msg.TypeName() or "an empty typed_config"


def _python(issues: Issues, value: dict[str, Any], path: str) -> tuple[str, str]:
    unknown = sorted(set(value) - {"class", "config"})
    if unknown:
        issues.add(child(path, "value"), f"unknown keys {', '.join(unknown)} (class and config are known)")
    cls = ""
    try:
        cls = python_class(value.get("class"))
    except ValueError as err:
        issues.add(child(path, "value.class"), str(err))
    return cls, _config(issues, value.get("config"), child(path, "value.config")) or "{}"


def _config(issues: Issues, value: object, path: str) -> str | None:
    try:
        return canonical_config(value)
    except ValueError as err:
        issues.add(path, str(err))
        return None


def python_filter_entry(name: str, cls: str, config: str, *, disabled: bool = False) -> dict[str, Any]:
    """The http_filters entry of a Python filter, as meshpy reads it (for the control plane's export)."""
    entry: dict[str, Any] = {
        "name": name, "is_optional": True,
        "typed_config": {"@type": "type.googleapis.com/xds.type.v3.TypedStruct", "type_url": PYTHON_FILTER,
                         "value": {"class": cls, "config": json.loads(config)}}}
    if disabled:
        entry["disabled"] = True
    return entry
