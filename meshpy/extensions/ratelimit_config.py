"""Envoy's global rate limit filter's config (envoy.extensions.filters.http.ratelimit.v3), the
per-route RateLimitPerRoute, and the rate limit entries of routes, virtual hosts and both of those
(envoy.config.route.v3.RateLimit): what meshpy acts on, checked field by field. Everything else set is
an issue naming it (meshpy.extensions.ratelimit says what each does)."""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.type.v3 import http_status_pb2

from meshpy.extensions.ext_authz_config import check_fraction, check_grpc_service
from meshpy.xds.translate_base import UNSUPPORTED, Issues, child, enum_name, item
from meshpy.xds.translate_matchers import header_match, string_match

RateLimitConfig = rate_limit_pb2.RateLimit
RateLimitPerRoute = rate_limit_pb2.RateLimitPerRoute

_TOP = {"domain", "stage", "request_type", "timeout", "failure_mode_deny",
        "rate_limited_as_resource_exhausted", "rate_limit_service", "enable_x_ratelimit_headers",
        "disable_x_envoy_ratelimited_header", "rate_limited_status", "response_headers_to_add",
        "status_on_error", "stat_prefix", "filter_enabled", "filter_enforced", "rate_limits",
        "enable_retry_after_header"}
# (metadata_namespace names where Envoy keeps the service's dynamic_metadata: meshpy keeps none.)
_ACTIONS = {"source_cluster", "destination_cluster", "request_headers", "query_parameters", "remote_address",
            "masked_remote_address", "generic_key", "header_value_match", "metadata", "extension",
            "query_parameter_value_match", "remote_address_match"}
_ENTRY = {"stage", "disable_key", "actions", "limit", "hits_addend", "apply_on_stream_done",
          "x_ratelimit_option"}
INPUTS = {"envoy.type.matcher.v3.HttpRequestHeaderMatchInput": "header_name",
          "envoy.type.matcher.v3.HttpRequestQueryParamMatchInput": "query_param"}
_STATUS_CODES = frozenset(http_status_pb2.StatusCode.values())


def check(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, _TOP)
    _defined(issues, msg, "enable_x_ratelimit_headers", path)
    if not msg.domain:
        issues.add(child(path, "domain"), "must not be empty")
    if msg.stage > 10:
        issues.add(child(path, "stage"), "must be at most 10")
    if msg.request_type not in ("", "internal", "external", "both"):
        issues.add(child(path, "request_type"), "must be internal, external or both")
    if not msg.HasField("rate_limit_service"):
        issues.add(child(path, "rate_limit_service"), "is required")
    else:
        svc, where = msg.rate_limit_service, child(path, "rate_limit_service")
        issues.fields(svc, where, {"grpc_service", "transport_api_version"})
        if enum_name(svc, "transport_api_version") not in ("AUTO", "V3"):
            issues.add(child(where, "transport_api_version"), "only V3 is supported (as by Envoy 1.40)")
        if not svc.HasField("grpc_service"):
            issues.add(child(where, "grpc_service"), "is required")
        else:
            # (the filter's own `timeout` bounds each call: the service's is not read)
            check_grpc_service(issues, svc.grpc_service, child(where, "grpc_service"))
            if svc.grpc_service.HasField("timeout"):
                issues.add(child(where, "grpc_service.timeout"),
                           f"is {UNSUPPORTED}: the filter's `timeout` bounds the call")
    for name in ("rate_limited_status", "status_on_error"):
        if msg.HasField(name):
            issues.fields(getattr(msg, name), child(path, name), {"code"})
            if getattr(msg, name).code not in _STATUS_CODES:
                issues.add(child(path, f"{name}.code"), "must be one of the HTTP statuses Envoy names")
    if len(msg.response_headers_to_add) > 10:
        issues.add(child(path, "response_headers_to_add"), "at most 10")
    for i, option in enumerate(msg.response_headers_to_add):
        at = item(child(path, "response_headers_to_add"), i)
        issues.fields(option, at, {"header", "append_action", "keep_empty_value"})
        _defined(issues, option, "append_action", at)
        issues.fields(option.header, child(at, "header"), {"key", "value"})
        if not option.header.key:
            issues.add(child(at, "header.key"), "must not be empty")
        if "%" in option.header.value:
            issues.add(child(at, "header.value"), f"format strings are {UNSUPPORTED}")
    for name in ("filter_enabled", "filter_enforced"):
        if msg.HasField(name):
            check_fraction(issues, getattr(msg, name), child(path, name))
    for i, entry in enumerate(msg.rate_limits):
        check_entry(issues, entry, item(child(path, "rate_limits"), i), per_filter=True)


def check_route(issues: Issues, msg: Any, path: str) -> bool:
    """RateLimitPerRoute (never turns the filter off). `override_option` is not implemented by Envoy
    1.40 (its proto says so): read by nothing there, nor here."""
    issues.fields(msg, path, {"vh_rate_limits", "override_option", "rate_limits", "domain"})
    _defined(issues, msg, "vh_rate_limits", path)
    _defined(issues, msg, "override_option", path)
    for i, entry in enumerate(msg.rate_limits):
        check_entry(issues, entry, item(child(path, "rate_limits"), i), per_filter=True)
    return False


def check_entry(issues: Issues, msg: Any, path: str, per_filter: bool, weighted: bool = False) -> None:
    """A RateLimit entry: a route's or virtual host's (`per_filter` False), or one of the filter's or a
    RateLimitPerRoute's, where Envoy takes hits_addend and apply_on_stream_done but not stage and
    disable_key. `weighted`: it applies to a route that picks among clusters."""
    issues.fields(msg, path, _ENTRY)
    _defined(issues, msg, "x_ratelimit_option", path)
    if per_filter and (msg.HasField("stage") or msg.disable_key):
        issues.add(path, "stage and disable_key are not taken here (Envoy refuses them too)")
    if msg.stage.value > 10:
        issues.add(child(path, "stage"), "must be at most 10")
    if not msg.actions:
        issues.add(child(path, "actions"), "at least one action is required")
    for i, action in enumerate(msg.actions):
        _check_action(issues, action, item(child(path, "actions"), i), weighted)
    if msg.HasField("limit"):
        where = child(path, "limit")
        issues.fields(msg.limit, where, {"dynamic_metadata", "rate_limit"})
        if msg.limit.HasField("dynamic_metadata"):
            issues.fields(msg.limit.dynamic_metadata, child(where, "dynamic_metadata"), {"metadata_key"})
        elif msg.limit.HasField("rate_limit"):
            issues.fields(msg.limit.rate_limit, child(where, "rate_limit"), {"requests_per_unit", "unit"})
            _defined(issues, msg.limit.rate_limit, "unit", child(where, "rate_limit"))
        else:
            issues.add(where, "dynamic_metadata or rate_limit is required")
    if msg.HasField("hits_addend") and per_filter:
        where = child(path, "hits_addend")
        issues.fields(msg.hits_addend, where, {"number"})  # (format: a formatter, which meshpy has not)
        if msg.hits_addend.HasField("number") == bool(msg.hits_addend.format):
            issues.add(where, "exactly one of number and format is required")
        elif msg.hits_addend.number.value > 1_000_000_000:
            issues.add(child(where, "number"), "must be at most 1000000000")
    # Of a route's or virtual host's entry, Envoy 1.40 reads no hits_addend, and neither does meshpy.
    # x_ratelimit_option: OFF leaves the descriptor's status out of the x-ratelimit-* headers;
    # DRAFT_VERSION_03 adds nothing to where the filter emits them anyway (and emits none elsewhere).


def _check_action(issues: Issues, msg: Any, path: str, weighted: bool) -> None:
    kind = msg.WhichOneof("action_specifier")
    if kind == "dynamic_metadata":
        issues.add(child(path, kind), "is deprecated, and refused by Envoy 1.40 (use metadata)")
        return
    issues.fields(msg, path, _ACTIONS)
    if kind is None:
        issues.add(path, "one action is required")
        return
    where, body = child(path, kind), getattr(msg, kind)
    if kind in ("source_cluster", "remote_address"):
        issues.fields(body, where, ())
    elif kind == "destination_cluster":
        issues.fields(body, where, ())
        if weighted:
            issues.add(where, f"on a route of weighted_clusters is {UNSUPPORTED} (meshpy picks the cluster "
                              "after the filters)")
    elif kind == "request_headers":
        issues.fields(body, where, {"header_name", "descriptor_key", "skip_if_absent"})
        _required(issues, body, where, "header_name", "descriptor_key")
    elif kind == "query_parameters":
        issues.fields(body, where, {"query_parameter_name", "descriptor_key", "skip_if_absent"})
        _required(issues, body, where, "query_parameter_name", "descriptor_key")
    elif kind == "masked_remote_address":
        issues.fields(body, where, {"v4_prefix_mask_len", "v6_prefix_mask_len"})
        if body.v4_prefix_mask_len.value > 32 or body.v6_prefix_mask_len.value > 128:
            issues.add(where, "the prefix lengths are at most 32 (IPv4) and 128 (IPv6)")
    elif kind == "generic_key":
        issues.fields(body, where, {"descriptor_value", "descriptor_key", "default_value"})
        _required(issues, body, where, "descriptor_value")
    elif kind in ("header_value_match", "query_parameter_value_match"):
        _check_match(issues, kind, body, where)
    elif kind == "metadata":
        issues.fields(body, where, {"descriptor_key", "metadata_key", "default_value", "source",
                                    "skip_if_absent"})
        _required(issues, body, where, "descriptor_key")
        if body.source not in (body.DYNAMIC, body.ROUTE_ENTRY):
            source = enum_name(body, "source")
            issues.add(child(where, "source"), f"{source} is {UNSUPPORTED} (it keeps no metadata of clusters "
                                               "and localities)")
        _check_metadata_key(issues, body, where)
    elif kind == "remote_address_match":
        issues.fields(body, where, {"descriptor_value", "descriptor_key", "default_value", "address_matcher"})
        if "%" in body.descriptor_value:  # (a format string there in Envoy 1.40, whatever the runtime says)
            issues.add(child(where, "descriptor_value"), f"format strings are {UNSUPPORTED}")
        _required(issues, body, where, "descriptor_value")
        issues.fields(body.address_matcher, child(where, "address_matcher"), {"ranges"})
        for i, r in enumerate(body.address_matcher.ranges):
            at = item(child(where, "address_matcher.ranges"), i)
            issues.fields(r, at, {"address_prefix", "prefix_len"})
            try:
                ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len.value}", strict=False)
            except ValueError as err:
                issues.add(at, str(err))
    else:  # extension
        issues.fields(body, where, {"name", "typed_config"})
        input_type = body.typed_config.TypeName()
        if input_type not in INPUTS:
            issues.add(child(where, "typed_config"), f"{input_type or 'an empty typed_config'} is "
                       f"{UNSUPPORTED} (the request header and query parameter inputs are)")
        elif not body.name:
            issues.add(child(where, "name"), "must not be empty (it is the entry's key)")


def _check_match(issues: Issues, kind: str, body: Any, where: str) -> None:
    listed = "headers" if kind == "header_value_match" else "query_parameters"
    issues.fields(body, where, {"descriptor_value", "descriptor_key", "default_value", "expect_match",
                                listed})
    _required(issues, body, where, "descriptor_value")
    if not getattr(body, listed):
        issues.add(child(where, listed), "at least one is required")
    for i, m in enumerate(getattr(body, listed)):
        at = item(child(where, listed), i)
        if kind == "header_value_match":
            header_match(issues, m, at)
            continue
        issues.fields(m, at, {"name", "string_match", "present_match"})
        if m.HasField("string_match"):
            string_match(issues, m.string_match, child(at, "string_match"))
        elif m.HasField("present_match") and not m.present_match:
            issues.add(child(at, "present_match"), f"false (parameter absent) is {UNSUPPORTED}")
        if not m.name:
            issues.add(child(at, "name"), "must not be empty")


def _defined(issues: Issues, msg: Any, field: str, path: str) -> None:
    """Envoy takes only the values an enum defines (proto3's are open: a number may come)."""
    if enum_name(msg, field).startswith("value "):
        issues.add(child(path, field), f"{enum_name(msg, field)} is not one the enum defines")


def _required(issues: Issues, msg: Any, path: str, *names: str) -> None:
    for name in names:
        if not getattr(msg, name):
            issues.add(child(path, name), "must not be empty")


def _check_metadata_key(issues: Issues, msg: Any, path: str) -> None:
    key = msg.metadata_key
    issues.fields(key, child(path, "metadata_key"), {"key", "path"})
    if not key.key:
        issues.add(child(path, "metadata_key.key"), "must not be empty")
    if not key.path:
        issues.add(child(path, "metadata_key.path"), "at least one segment is required")
    for i, segment in enumerate(key.path):
        at = item(child(path, "metadata_key.path"), i)
        issues.fields(segment, at, {"key"})
        if not segment.key:
            issues.add(child(at, "key"), "must not be empty")
