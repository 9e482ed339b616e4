"""Envoy RouteConfiguration -> model RouteConfig: virtual hosts, routes and their actions.

Matchers and header edits live in `translate_matchers`. Defaults follow Envoy, not meshpy's own YAML,
so that a route configuration behaves the same under both proxies (for example
`ignore_port_in_host_matching` is false unless set, and a route timeout of 0 means none).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from google.protobuf import json_format

from meshpy.model.filter_types import FilterOverride
from meshpy.model.routes import (
    DEFAULT_ROUTE_TIMEOUT,
    DirectResponseAction,
    FilterMetadata,
    ForwardAction,
    GrpcTimeout,
    LuaClusterSpecifier,
    MirrorPolicy,
    RedirectAction,
    RegexRewrite,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from meshpy.model.yaml_values import is_authority
from meshpy.xds.translate_base import UNSUPPORTED, Issues, child, item, regex, timeout, wrapped
from meshpy.xds.translate_filters import per_filter
from meshpy.xds.translate_guards import percent
from meshpy.xds.translate_matchers import header_edits, route_match
from meshpy.xds.translate_policies import RetryContext, hash_policies, retry_context, route_retry

# `validate_clusters` asks Envoy to check cluster references, which meshpy always does for a
# bootstrap; `metadata` is only read by filters meshpy does not have.
_ROUTE_CONFIG = frozenset(
    {
        "name",
        "virtual_hosts",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "ignore_port_in_host_matching",
        "validate_clusters",
        "max_direct_response_body_size_bytes",
        "metadata",
        "cluster_specifier_plugins",
    }
)
_VIRTUAL_HOST = frozenset(
    {
        "name",
        "domains",
        "routes",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "metadata",
        "retry_policy",
        "hedge_policy",
        "include_request_attempt_count",
        "per_request_buffer_limit_bytes",
        "typed_per_filter_config",
        "cors",  # deprecated, still read by Envoy's CORS filter (meshpy.extensions.cors)
        "rate_limits",  # read by Envoy's global rate limit filter (meshpy.extensions.ratelimit_routes)
    }
)
_ROUTE = frozenset(
    {
        "name",
        "match",
        "route",
        "redirect",
        "direct_response",
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
        "metadata",
        "per_request_buffer_limit_bytes",
        "typed_per_filter_config",
    }
)
_FORWARD = frozenset(
    {
        "cluster",
        "weighted_clusters",
        "prefix_rewrite",
        "regex_rewrite",
        "host_rewrite_literal",
        "timeout",
        "idle_timeout",
        "retry_policy",
        "hedge_policy",
        "hash_policy",
        "max_stream_duration",
        "cors",
        "request_mirror_policies",
        "inline_cluster_specifier_plugin",
        "cluster_specifier_plugin",
        "rate_limits",  # (as a virtual host's)
        "include_vh_rate_limits",
    }
)
_REDIRECT = frozenset(
    {
        "https_redirect",
        "scheme_redirect",
        "host_redirect",
        "port_redirect",
        "path_redirect",
        "prefix_rewrite",
        "response_code",
        "strip_query",
    }
)
# A route configuration's cluster specifier plugins by name (None: one that did not translate).
Plugins = dict[str, "LuaClusterSpecifier | None"]
# RedirectAction.RedirectResponseCode numbers, in proto order.
_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
_DEFAULT_MAX_DIRECT_BODY = 4096  # Envoy's max_direct_response_body_size_bytes default


def route_config(issues: Issues, msg: Any, path: str) -> RouteConfig:
    issues.fields(msg, path, _ROUTE_CONFIG)
    max_body = (
        msg.max_direct_response_body_size_bytes.value
        if msg.HasField("max_direct_response_body_size_bytes")
        else _DEFAULT_MAX_DIRECT_BODY
    )
    plugins = _plugins(issues, msg, path)
    hosts = tuple(
        _virtual_host(issues, vhost, item(child(path, "virtual_hosts"), i), max_body, plugins)
        for i, vhost in enumerate(msg.virtual_hosts)
    )
    _check_unique_domains(issues, hosts, path)
    return RouteConfig(
        name=msg.name,
        virtual_hosts=hosts,
        request_headers=header_edits(issues, msg, path, "request"),
        response_headers=header_edits(issues, msg, path, "response"),
        # Envoy matches `host:port` against the domains unless this is set; meshpy's own default
        # differs, so the Envoy value is always carried over.
        ignore_port_in_host=msg.ignore_port_in_host_matching,
    )


def _check_unique_domains(issues: Issues, hosts: tuple[VirtualHost, ...], path: str) -> None:
    # Envoy rejects a route configuration where two virtual hosts (or one twice) claim a domain.
    seen: set[str] = set()
    for i, vhost in enumerate(hosts):
        for j, domain in enumerate(vhost.domains):
            if domain in seen:
                where = item(child(item(child(path, "virtual_hosts"), i), "domains"), j)
                issues.add(where, f"duplicate domain {domain!r}")
            seen.add(domain)


def _virtual_host(issues: Issues, msg: Any, path: str, max_body: int, plugins: Plugins | None = None,
                  ) -> VirtualHost:
    issues.fields(msg, path, _VIRTUAL_HOST)
    if not msg.name:
        issues.add(child(path, "name"), "must not be empty")
    if not msg.domains:
        issues.add(child(path, "domains"), "at least one domain is required")
    for i, domain in enumerate(msg.domains):
        if not domain:
            issues.add(item(child(path, "domains"), i), "must not be empty")
    ctx = retry_context(issues, msg, path)
    routes = tuple(
        _route(issues, route, item(child(path, "routes"), i), max_body, ctx, plugins)
        for i, route in enumerate(msg.routes)
    )
    vhost_fault, vhost_limit, vhost_filters = per_filter(issues, msg, path)
    if msg.HasField("cors"):
        vhost_filters = (*vhost_filters, _cors(issues, msg.cors, child(path, "cors")))
    if vhost_fault is not None:  # a fault on the host is every route's that has none of its own
        routes = tuple(r if r.fault else dataclasses.replace(r, fault=vhost_fault) for r in routes)
    if msg.rate_limits or any(r.WhichOneof("action") == "route" and r.route.rate_limits for r in msg.routes):
        routes = _rate_limits(issues, msg, path, routes, vhost_filters)
    return VirtualHost(
        name=msg.name,
        # Host matching is case-insensitive in Envoy; the model keeps domains in lower case.
        domains=tuple(domain.lower() for domain in msg.domains),
        routes=routes,
        request_headers=header_edits(issues, msg, path, "request"),
        response_headers=header_edits(issues, msg, path, "response"),
        rate_limit=vhost_limit,
        filters=vhost_filters,
        metadata=_filter_metadata(msg),
    )


def _route(issues: Issues, msg: Any, path: str, max_body: int, ctx: RetryContext,
           plugins: Plugins | None = None) -> Route:
    issues.fields(msg, path, _ROUTE)
    match_path = child(path, "match")
    if msg.HasField("match"):
        match = route_match(issues, msg.match, match_path)
    else:
        issues.add(match_path, "is required")
        match = RouteMatch()
    kind = msg.WhichOneof("action")
    action: RouteAction
    if kind == "route":
        action = _forward(issues, msg.route, child(path, "route"), match, plugins)
        retry = route_retry(issues, msg.route, msg, child(path, "route"), ctx)
        hashing = hash_policies(issues, msg.route, child(path, "route"))
        if retry is not None or hashing:
            action = dataclasses.replace(action, retry=retry, hash_policy=hashing)
    elif kind == "redirect":
        action = _redirect(issues, msg.redirect, child(path, "redirect"))
    elif kind == "direct_response":
        action = _direct(issues, msg.direct_response, child(path, "direct_response"), max_body)
    else:
        if kind is None:  # a set but unsupported action was already reported by `fields`
            issues.add(path, "one of route, redirect or direct_response is required")
        action = DirectResponseAction(status=404)
    route_fault, route_limit, route_filters = per_filter(issues, msg, path)
    if kind == "route" and msg.route.HasField("cors"):
        route_filters = (*route_filters, _cors(issues, msg.route.cors, child(path, "route.cors")))
    return Route(
        name=msg.name,
        match=match,
        action=action,
        request_headers=header_edits(issues, msg, path, "request"),
        response_headers=header_edits(issues, msg, path, "response"),
        rate_limit=route_limit,
        fault=route_fault,
        filters=route_filters,
        metadata=_filter_metadata(msg),
    )


def _filter_metadata(msg: Any) -> FilterMetadata:
    """A route's or virtual host's metadata.filter_metadata, for the filters that read it (Envoy's
    Lua filter's metadata()); typed_filter_metadata is read by none of meshpy's filters. The `meshpy`
    namespace carries settings of meshpy's own, read into the route's policies (translate_policies)."""
    if not msg.HasField("metadata"):
        return ()
    return tuple((name, json.dumps(json_format.MessageToDict(struct), sort_keys=True))
                 for name, struct in sorted(msg.metadata.filter_metadata.items()) if name != "meshpy")


def _rate_limits(issues: Issues, msg: Any, path: str, routes: tuple[Route, ...],
                 vhost_filters: tuple[FilterOverride, ...]) -> tuple[Route, ...]:
    """The rate_limits of a virtual host and its routes: overrides for Envoy's global rate limit filter
    on the routes they apply to."""
    from meshpy.extensions import ratelimit_routes  # (imported where a config has some, as extensions are)

    return ratelimit_routes.attach(issues, msg, path, routes, vhost_filters)


def _cors(issues: Issues, msg: Any, path: str) -> FilterOverride:
    """A deprecated `cors` policy: an override for the listener's CORS filters, whatever their names
    (resolved as each route's chain is built, meshpy.stack.filter_chain)."""
    from meshpy.extensions import cors  # (imported where a config has one, as every extension is)

    return cors.legacy_override(issues, msg, path)


def _forward(issues: Issues, msg: Any, path: str, match: RouteMatch, plugins: Plugins | None = None,
             ) -> ForwardAction:
    issues.fields(msg, path, _FORWARD | {"upgrade_configs"})
    if match.connect:
        _connect_upgrade(issues, msg, path)
        upgrades: tuple[tuple[str, bool], ...] = (("connect", True),)
    else:
        upgrades = _route_upgrades(issues, msg, path)
    cluster: str | None = None
    weighted: tuple[WeightedCluster, ...] = ()
    plugin: LuaClusterSpecifier | None = None
    kind = msg.WhichOneof("cluster_specifier")
    if kind == "cluster":
        cluster = msg.cluster
        if not cluster:
            issues.add(child(path, "cluster"), "must not be empty")
    elif kind == "weighted_clusters":
        weighted = _weighted(issues, msg.weighted_clusters, child(path, "weighted_clusters"))
    elif kind == "inline_cluster_specifier_plugin":
        plugin = _cluster_plugin(issues, msg.inline_cluster_specifier_plugin,
                                 child(path, "inline_cluster_specifier_plugin"))
    elif kind == "cluster_specifier_plugin":
        name = msg.cluster_specifier_plugin
        if plugins is None or name not in plugins:
            issues.add(child(path, "cluster_specifier_plugin"),
                       f"unknown cluster specifier plugin name: {name} is used in the route")
        else:
            plugin = plugins[name]
    elif kind is None:
        issues.add(path, "one of cluster or weighted_clusters is required")
    rewrite = None
    if msg.HasField("regex_rewrite"):
        rewrite_path = child(path, "regex_rewrite")
        issues.fields(msg.regex_rewrite, rewrite_path, {"pattern", "substitution"})
        pattern = regex(issues, msg.regex_rewrite.pattern, child(rewrite_path, "pattern"))
        rewrite = RegexRewrite(pattern=pattern, substitution=msg.regex_rewrite.substitution)
        if msg.prefix_rewrite:
            issues.add(path, "prefix_rewrite and regex_rewrite cannot both be set")
    if msg.prefix_rewrite and match.path_kind == "regex":
        # Envoy then replaces the whole path, a meaning the model's prefix_rewrite does not have.
        issues.add(
            child(path, "prefix_rewrite"), f"with a safe_regex match is {UNSUPPORTED} (use regex_rewrite)"
        )
    idle = timeout(msg, "idle_timeout", None)
    if msg.HasField("idle_timeout") and idle is None:
        idle = 0.0  # Envoy's 0 turns the stream idle timeout off for this route; so does the model's
    if msg.host_rewrite_literal and not is_authority(msg.host_rewrite_literal):
        # Written into Host as it is (a fuzzed `h€st` crashed the route table's latin-1 encoding).
        host = msg.host_rewrite_literal
        issues.add(child(path, "host_rewrite_literal"), f"{host!r} is not a host or host:port")
    duration, grpc_timeout = _stream_duration(issues, msg, path)
    return ForwardAction(
        cluster=cluster,
        weighted=weighted,
        prefix_rewrite=msg.prefix_rewrite or None,
        regex_rewrite=rewrite,
        host_rewrite=msg.host_rewrite_literal or None,
        timeout=timeout(msg, "timeout", DEFAULT_ROUTE_TIMEOUT),
        idle_timeout=idle,
        max_stream_duration=duration,
        grpc_timeout=grpc_timeout,
        upgrades=upgrades,
        mirrors=tuple(_mirror(issues, m, item(child(path, "request_mirror_policies"), i))
                      for i, m in enumerate(msg.request_mirror_policies)),
        cluster_plugin=plugin,
    )


def _cluster_plugin(issues: Issues, msg: Any, path: str) -> LuaClusterSpecifier | None:
    """A ClusterSpecifierPlugin: its extension, which meshpy has for Envoy's Lua cluster specifier."""
    issues.fields(msg, path, {"extension", "is_optional"})
    from meshpy.extensions import lua_cluster  # (imported where a config has one)

    return lua_cluster.translate(issues, msg.extension, child(path, "extension"))


def _plugins(issues: Issues, msg: Any, path: str) -> Plugins:
    """The route configuration's cluster_specifier_plugins, by name, for routes that name one."""
    return {plugin.extension.name: _cluster_plugin(issues, plugin,
                                                   item(child(path, "cluster_specifier_plugins"), i))
            for i, plugin in enumerate(msg.cluster_specifier_plugins)}


def _mirror(issues: Issues, msg: Any, path: str) -> MirrorPolicy:
    """A RequestMirrorPolicy. trace_sampled only marks the copy's trace span (meshpy traces nothing)."""
    issues.fields(msg, path, {"cluster", "cluster_header", "runtime_fraction", "trace_sampled",
                              "disable_shadow_host_suffix_append"})
    if bool(msg.cluster) == bool(msg.cluster_header):
        issues.add(path, "exactly one of cluster and cluster_header is required")
    share, key = 100.0, ""
    if msg.HasField("runtime_fraction"):
        fraction = msg.runtime_fraction
        issues.fields(fraction, child(path, "runtime_fraction"), {"default_value", "runtime_key"})
        share, key = percent(fraction.default_value), fraction.runtime_key
    return MirrorPolicy(cluster=msg.cluster, cluster_header=msg.cluster_header.lower(), percent=share,
                        runtime_key=key, host_suffix=not msg.disable_shadow_host_suffix_append)


def _route_upgrades(issues: Issues, msg: Any, path: str) -> tuple[tuple[str, bool], ...]:
    """RouteAction.upgrade_configs on a route that is not a CONNECT route: each type on (`enabled`,
    true by default) or off here, whatever the listener says."""
    out: dict[str, bool] = {}
    for i, u in enumerate(msg.upgrade_configs):
        where = item(child(path, "upgrade_configs"), i)
        issues.fields(u, where, {"upgrade_type", "enabled"})
        kind = u.upgrade_type.lower()
        if not kind:
            issues.add(child(where, "upgrade_type"), "must not be empty")
        elif kind == "connect":
            issues.add(child(where, "upgrade_type"), "CONNECT is for routes with a connect_matcher")
        else:
            out[kind] = bool(wrapped(u, "enabled", True))
    return tuple(out.items())


def _stream_duration(issues: Issues, msg: Any, path: str) -> tuple[float | None, GrpcTimeout | None]:
    """RouteAction.max_stream_duration. As in Envoy, grpc-timeout is read only when
    grpc_timeout_header_max is set (0s: no cap); without it the header is not the proxy's business."""
    if not msg.HasField("max_stream_duration"):
        return None, None  # (the model's default reads grpc-timeout; an Envoy route does not)
    m = msg.max_stream_duration
    issues.fields(m, child(path, "max_stream_duration"),
                  {"max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"})
    duration = timeout(m, "max_stream_duration", None)
    if not m.HasField("grpc_timeout_header_max"):
        return duration, None
    offset = timeout(m, "grpc_timeout_header_offset", None) or 0.0
    return duration, GrpcTimeout(max=timeout(m, "grpc_timeout_header_max", None), offset=offset)


def _connect_upgrade(issues: Issues, msg: Any, path: str) -> None:
    """A connect_matcher route: meshpy terminates CONNECT (opens TCP to the cluster's endpoint and
    tunnels), which in Envoy is `upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]`.
    Forwarding the CONNECT request itself upstream (no connect_config) is not supported."""
    where = child(path, "upgrade_configs")
    configs = list(msg.upgrade_configs)
    ok = len(configs) == 1 and configs[0].upgrade_type.upper() == "CONNECT" and \
        configs[0].HasField("connect_config")
    if not ok:
        issues.add(where, "a connect_matcher route needs [{upgrade_type: CONNECT, connect_config: {}}] "
                          "(meshpy terminates CONNECT)")
        return
    issues.fields(configs[0], item(where, 0), {"upgrade_type", "connect_config"})
    issues.fields(configs[0].connect_config, child(item(where, 0), "connect_config"), ())


def _weighted(issues: Issues, msg: Any, path: str) -> tuple[WeightedCluster, ...]:
    issues.fields(msg, path, {"clusters"})
    clusters = []
    for i, weight in enumerate(msg.clusters):
        weight_path = item(child(path, "clusters"), i)
        issues.fields(weight, weight_path, {"name", "weight"})
        if not weight.name:
            issues.add(child(weight_path, "name"), "must not be empty")
        if not weight.HasField("weight"):
            issues.add(child(weight_path, "weight"), "is required")
        clusters.append(WeightedCluster(name=weight.name, weight=weight.weight.value))
    if not clusters:
        issues.add(child(path, "clusters"), "at least one cluster is required")
    elif sum(c.weight for c in clusters) == 0:
        issues.add(child(path, "clusters"), "the weights must not all be 0")
    return tuple(clusters)


def _redirect(issues: Issues, msg: Any, path: str) -> RedirectAction:
    issues.fields(msg, path, _REDIRECT)
    scheme: str | None = None
    if msg.WhichOneof("scheme_rewrite_specifier") == "https_redirect":
        scheme = "https" if msg.https_redirect else None
    elif msg.scheme_redirect:
        scheme = msg.scheme_redirect.lower()
    if msg.port_redirect > 65535:
        issues.add(child(path, "port_redirect"), f"must be at most 65535, got {msg.port_redirect}")
    return RedirectAction(
        scheme=scheme,
        host=msg.host_redirect or None,
        port=msg.port_redirect or None,
        path=msg.path_redirect or None,
        prefix_rewrite=msg.prefix_rewrite or None,
        response_code=_REDIRECT_CODES.get(msg.response_code, 301),
        strip_query=msg.strip_query,
    )


def _direct(issues: Issues, msg: Any, path: str, max_body: int) -> DirectResponseAction:
    issues.fields(msg, path, {"status", "body"})
    if not 200 <= msg.status < 600:
        issues.add(child(path, "status"), f"must be from 200 to 599, got {msg.status}")
    body = ""
    if msg.HasField("body"):
        body_path = child(path, "body")
        issues.fields(msg.body, body_path, {"inline_string", "inline_bytes"})
        kind = msg.body.WhichOneof("specifier")
        if kind == "inline_string":
            body = msg.body.inline_string
        elif kind == "inline_bytes":
            try:
                body = msg.body.inline_bytes.decode()
            except UnicodeDecodeError:
                issues.add(child(body_path, "inline_bytes"), "must be UTF-8 (the model keeps text bodies)")
        if len(body.encode()) > max_body:
            issues.add(body_path, f"is larger than max_direct_response_body_size_bytes ({max_body})")
    return DirectResponseAction(status=msg.status, body=body)
