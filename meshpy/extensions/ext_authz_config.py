"""Envoy's external authorization filter's config (envoy.extensions.filters.http.ext_authz.v3): what
meshpy acts on, checked field by field. Everything else set is an issue naming it."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from meshpy.extensions.strings import check_list
from meshpy.xds.translate_base import Issues, child, enum_name

ExtAuthzConfig = ext_authz_pb2.ExtAuthz
ExtAuthzPerRoute = ext_authz_pb2.ExtAuthzPerRoute

_TOP = {"grpc_service", "http_service", "transport_api_version", "failure_mode_allow",
        "failure_mode_allow_header_add", "with_request_body", "status_on_error", "include_peer_certificate",
        "stat_prefix", "allowed_headers", "disallowed_headers", "filter_enabled",
        # Namespaces of dynamic metadata to send: no filter of meshpy's writes any, so they are empty
        # here as in an Envoy whose chain has no metadata-writing filter.
        "metadata_context_namespaces", "typed_metadata_context_namespaces"}


def check(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, _TOP)
    if enum_name(msg, "transport_api_version") not in ("AUTO", "V3"):
        issues.add(child(path, "transport_api_version"), "only V3 is supported (as by Envoy 1.40)")
    if msg.HasField("grpc_service") == msg.HasField("http_service"):
        issues.add(path, "exactly one of grpc_service and http_service is required")
    if msg.HasField("grpc_service"):
        check_grpc_service(issues, msg.grpc_service, child(path, "grpc_service"))
    if msg.HasField("http_service"):
        _check_http_service(issues, msg.http_service, child(path, "http_service"))
    if msg.HasField("with_request_body"):
        issues.fields(msg.with_request_body, child(path, "with_request_body"),
                      {"max_request_bytes", "allow_partial_message", "pack_as_bytes"})
        if msg.with_request_body.max_request_bytes == 0:
            issues.add(child(path, "with_request_body.max_request_bytes"), "must be greater than 0")
    for name in ("allowed_headers", "disallowed_headers"):
        if msg.HasField(name):
            check_list(issues, getattr(msg, name), child(path, name))
    if msg.HasField("status_on_error"):
        issues.fields(msg.status_on_error, child(path, "status_on_error"), {"code"})
    if msg.HasField("filter_enabled"):
        check_fraction(issues, msg.filter_enabled, child(path, "filter_enabled"))


def check_fraction(issues: Issues, fraction: Any, path: str) -> None:
    """A RuntimeFractionalPercent (its runtime key read per request: meshpy.extensions.runtime_flags)."""
    issues.fields(fraction, path, {"default_value", "runtime_key"})
    issues.fields(fraction.default_value, child(path, "default_value"), {"numerator", "denominator"})


def check_grpc_service(issues: Issues, svc: Any, path: str) -> None:
    issues.fields(svc, path, {"envoy_grpc", "google_grpc", "timeout", "initial_metadata"})
    if svc.HasField("envoy_grpc"):
        issues.fields(svc.envoy_grpc, child(path, "envoy_grpc"), {"cluster_name", "authority"})
        if not svc.envoy_grpc.cluster_name:
            issues.add(child(path, "envoy_grpc.cluster_name"), "must not be empty")
    elif svc.HasField("google_grpc"):
        g, where = svc.google_grpc, child(path, "google_grpc")
        # stat_prefix names Envoy's gRPC client stats; insecure credentials are the only ones built.
        issues.fields(g, where, {"target_uri", "stat_prefix"})
        if not g.target_uri:
            issues.add(child(where, "target_uri"), "must not be empty")
        elif target(g.target_uri) is None:
            issues.add(child(where, "target_uri"), f"{g.target_uri!r}: host:port, dns:///host:port or "
                                                   "unix:/path are supported")
    else:
        issues.add(path, "envoy_grpc or google_grpc is required")
    for i, md in enumerate(svc.initial_metadata):
        issues.fields(md, f"{path}.initial_metadata[{i}]", {"key", "value"})


def target(uri: str) -> tuple[str, int] | str | None:
    """A google_grpc target_uri: (host, port), or a Unix socket's path; None when not understood."""
    if uri.startswith("unix:"):
        rest = uri[len("unix:"):]
        return "/" + rest.lstrip("/") if rest.startswith("//") else rest or None
    if uri.startswith("dns:///"):
        uri = uri[len("dns:///"):]
    host, sep, port = uri.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _check_http_service(issues: Issues, svc: Any, path: str) -> None:
    issues.fields(svc, path, {"server_uri", "path_prefix", "authorization_request", "authorization_response"})
    uri = svc.server_uri
    issues.fields(uri, child(path, "server_uri"), {"uri", "cluster", "timeout"})
    if not uri.cluster:
        issues.add(child(path, "server_uri.cluster"), "is required")
    if svc.path_prefix and not svc.path_prefix.startswith("/"):
        issues.add(child(path, "path_prefix"), "must start with /")
    if svc.HasField("authorization_request"):
        req, where = svc.authorization_request, child(path, "authorization_request")
        issues.fields(req, where, {"allowed_headers", "headers_to_add"})
        if req.HasField("allowed_headers"):
            check_list(issues, req.allowed_headers, child(where, "allowed_headers"))
        for i, h in enumerate(req.headers_to_add):
            at = f"{where}.headers_to_add[{i}]"
            issues.fields(h, at, {"key", "value"})
            if "%" in h.value:
                issues.add(child(at, "value"),
                           "header formatters are not supported (write %% for a literal %)")
    if svc.HasField("authorization_response"):
        resp, where = svc.authorization_response, child(path, "authorization_response")
        lists = ("allowed_upstream_headers", "allowed_upstream_headers_to_append", "allowed_client_headers",
                 "allowed_client_headers_on_success")
        issues.fields(resp, where, lists)
        for name in lists:
            if resp.HasField(name):
                check_list(issues, getattr(resp, name), child(where, name))


def check_route(issues: Issues, msg: Any, path: str) -> bool:
    """ExtAuthzPerRoute: True when it turns the filter off on the route."""
    issues.fields(msg, path, {"disabled", "check_settings"})
    if msg.HasField("check_settings"):
        issues.fields(msg.check_settings, child(path, "check_settings"),
                      {"context_extensions", "disable_request_body_buffering"})
    return bool(msg.disabled)
