"""Envoy's HTTP filters that meshpy builds in, written against meshpy's own filter API
(meshpy.filters.HttpFilter), so that they are read, tested and extended like any user's filter.

An Envoy config's http_filters entry whose type is listed in HTTP_FILTERS becomes a Python filter spec:
its class is the extension's, and its config is the Envoy message as JSON with proto field names
(`json_format.MessageToDict(..., preserving_proto_field_name=True)`). The extension's `check` runs
first, on the message, and reports each field it does not act on at its path, as every translator
does. So:
- the filter sees Envoy's own config, in Envoy's words;
- meshpy YAML can list the same class with the same config (`class: meshpy.extensions.cors:Cors`),
  checked by the same code when the class is made;
- the control plane exports it back as the Envoy type (`envoy_entry`), so Envoy runs it too.

A virtual host's or route's typed_per_filter_config of the extension's per-route type becomes that
filter's override: `disabled`, or a config of its own, which the class merges with the listener's
(`HttpFilter.route_config`).

Modules are imported when a config names their type, not before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from meshpy.xds.translate_base import Issues

# Envoy's config type (full name) -> the module that builds it in; each module has EXTENSION.
HTTP_FILTERS: dict[str, str] = {}
# The per-route config type -> the module.
PER_ROUTE: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Extension:
    """One built-in Envoy filter: its config message and check, its class, and its per-route form."""

    message: type[Any]  # the listener's config message
    cls: str  # "meshpy.extensions.module:Class", a meshpy.filters.HttpFilter
    check: Callable[[Issues, Any, str], None]  # reports what meshpy does not do, at paths under the 3rd
    route_message: type[Any] | None = None
    # The per-route message -> True when it turns the filter off there (then no config is kept).
    route_check: Callable[[Issues, Any, str], bool] | None = None
    # The class for a given config, where one class does not fit all (by default `cls`).
    choose: Callable[[Any], str] | None = None

    @property
    def type_url(self) -> str:
        return f"type.googleapis.com/{self.message.DESCRIPTOR.full_name}"


def register(module: str, message: str, route_message: str = "") -> None:
    HTTP_FILTERS[message] = module
    if route_message:
        PER_ROUTE[route_message] = module


def extension(module: str) -> Extension:
    ext = importlib.import_module(module).EXTENSION
    assert isinstance(ext, Extension)
    return ext


def as_json(msg: Any) -> dict[str, Any]:
    """A config message as the filter reads it: proto field names, defaults left out."""
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def listener_config(issues: Issues, any_msg: Any, path: str) -> tuple[str, dict[str, Any]]:
    """An http_filters entry's typed_config of a listed type: the class and the checked config."""
    ext = extension(HTTP_FILTERS[any_msg.TypeName()])
    msg = ext.message()
    any_msg.Unpack(msg)
    ext.check(issues, msg, path)
    return (ext.choose(msg) if ext.choose is not None else ext.cls), as_json(msg)


def route_config(issues: Issues, any_msg: Any, path: str) -> tuple[bool, dict[str, Any] | None]:
    """A per-route config of a listed type: (turned off here, the config to merge or None)."""
    ext = extension(PER_ROUTE[any_msg.TypeName()])
    assert ext.route_message is not None and ext.route_check is not None
    msg = ext.route_message()
    any_msg.Unpack(msg)
    if ext.route_check(issues, msg, path):
        return True, None
    return False, as_json(msg)


def parsed(ext: Extension, config: dict[str, Any], route: bool = False) -> Any:
    """A config given as JSON (meshpy YAML, or as translated), parsed and checked again: ValueError
    naming every problem. The class calls it as it is made, so a config from either side is held to
    the same rules."""
    message = ext.route_message if route else ext.message
    assert message is not None
    msg = message()
    try:
        json_format.ParseDict(config, msg)
    except json_format.ParseError as err:
        raise ValueError(str(err)) from err
    issues = Issues()
    check = ext.route_check if route else ext.check
    assert check is not None
    check(issues, msg, "")
    if issues.items:
        raise ValueError("; ".join(f"{i.path}: {i.reason}" if i.path else i.reason for i in issues.items))
    return msg


def envoy_entry(name: str, cls: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The http_filters entry Envoy reads for a spec of an extension's class; None for other classes."""
    for module in HTTP_FILTERS.values():
        ext = extension(module)
        if cls.partition(":")[0] == module:
            return {"name": name, "typed_config": {"@type": ext.type_url, **config}}
    return None


def envoy_route_entry(cls: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """A per-route config of an extension's class as Envoy reads it; None for other classes."""
    for module in PER_ROUTE.values():
        ext = extension(module)
        if cls.partition(":")[0] == module and ext.route_message is not None:
            return {"@type": f"type.googleapis.com/{ext.route_message.DESCRIPTOR.full_name}", **config}
    return None


# The filters built in (one line each: module, config type, per-route config type).
register("meshpy.extensions.ext_authz", "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
         "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute")
register("meshpy.extensions.cors", "envoy.extensions.filters.http.cors.v3.Cors",
         "envoy.extensions.filters.http.cors.v3.CorsPolicy")
register("meshpy.extensions.compressor", "envoy.extensions.filters.http.compressor.v3.Compressor",
         "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute")
register("meshpy.extensions.decompressor", "envoy.extensions.filters.http.decompressor.v3.Decompressor")
register("meshpy.extensions.ratelimit", "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
         "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute")
register("meshpy.extensions.lua", "envoy.extensions.filters.http.lua.v3.Lua",
         "envoy.extensions.filters.http.lua.v3.LuaPerRoute")
register("meshpy.extensions.grpc_web", "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb")
register("meshpy.extensions.grpc_bridge", "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config")
register("meshpy.extensions.cache", "envoy.extensions.filters.http.cache.v3.CacheConfig")
