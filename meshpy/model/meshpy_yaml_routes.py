"""The HTTP routing part of the meshpy YAML: virtual hosts, routes, matches, actions, header edits.

Split from `meshpy_yaml` to keep each module readable on its own; see docs/config.md for the format.
Every function reads one YAML node, reports problems to the `Reader` and returns a model value (or a
placeholder when the node was unusable; a recorded issue guarantees the placeholder is never used).
"""

from __future__ import annotations

import dataclasses
import re

from meshpy.model.meshpy_yaml_filters import read_overrides, with_route_authz
from meshpy.model.meshpy_yaml_matches import absolute_path, compile_regex, header_name, read_match
from meshpy.model.meshpy_yaml_policies import fault, hash_policy, rate_limit, retry_policy
from meshpy.model.routes import (
    DEFAULT_ROUTE_TIMEOUT,
    HONOUR_GRPC_TIMEOUT,
    DirectResponseAction,
    ForwardAction,
    GrpcTimeout,
    HeaderAppend,
    HeaderEdits,
    HeaderValue,
    RedirectAction,
    RegexRewrite,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from meshpy.model.yaml_reader import (
    Fields,
    Reader,
    as_bool,
    as_duration,
    as_int,
    as_name,
    as_optional_timeout,
    as_positive_int,
    as_route_idle_timeout,
    as_str,
    child,
    item,
)
from meshpy.model.yaml_values import is_authority

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
_DOMAIN_CHARS = re.compile(r"[a-z0-9.\-_:\[\]*]+")

# Header edit sections and the model's append mode for each.
_EDIT_MODES: dict[str, HeaderAppend] = {
    "add": "append",
    "set": "overwrite",
    "add_if_absent": "add_if_absent",
    "set_if_present": "overwrite_if_exists",
}
_EDIT_KEYS = (*_EDIT_MODES, "remove")

_ACTIONS = ("cluster", "split", "redirect", "direct")
_FORWARD_ONLY = (
    "prefix_rewrite", "regex_rewrite", "host_rewrite", "timeout", "idle_timeout", "retry", "hash_policy",
    "max_stream_duration", "grpc_timeout",
)  # fmt: skip
_ROUTE_KEYS = (
    "name", "match", *_ACTIONS, *_FORWARD_ONLY, "request_headers", "response_headers", "rate_limit", "fault",
    "filters", "authz",
)  # fmt: skip
_MATCH_ONLY = "belongs under match: (e.g. match: {prefix: /api})"
_ROUTE_MISPLACED = {
    "prefix": _MATCH_ONLY,
    "path": _MATCH_ONLY,
    "regex": _MATCH_ONLY,
    "methods": _MATCH_ONLY,
    "query": _MATCH_ONLY,
    "headers": "to match headers put them under match:, to edit them use request_headers/response_headers",
}
_VHOST_KEYS = (
    "name", "domains", "routes", "cluster", "request_headers", "response_headers", "retry", "rate_limit",
    "filters", "authz",
)  # fmt: skip
_PLACEHOLDER_ACTION = DirectResponseAction(status=500)


def domain(value: object) -> str:
    """A virtual host domain under Envoy's wildcard rules: `*` alone, `*suffix` or `prefix*`."""
    text = as_name(value).lower()
    if not _DOMAIN_CHARS.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid domain")
    if "*" in text and text != "*" and (text.count("*") > 1 or not (text[0] == "*" or text[-1] == "*")):
        raise ValueError(f"{text!r}: a wildcard is only allowed alone, at the start or at the end")
    return text


# Header edits


def read_header_edits(r: Reader, value: object, path: str) -> HeaderEdits:
    f = r.mapping(value, path, _EDIT_KEYS)
    if f is None:
        return HeaderEdits()
    added: list[HeaderValue] = []
    for key in f.present(*_EDIT_MODES):
        section = r.mapping(f.raw(key), f.at(key), None)
        if section is None:
            continue
        for name, text in section.data.items():
            at = child(f.at(key), str(name))
            try:
                value = _header_value(text)
                added.append(HeaderValue(name=_editable(name), value=value, append=_EDIT_MODES[key]))
            except ValueError as exc:
                r.error(at, str(exc))
    removed: list[str] = []
    if "remove" in f:
        for i, name in enumerate(r.sequence(f.raw("remove"), f.at("remove"), allow_single=True)):
            try:
                removed.append(_editable(name))
            except ValueError as exc:
                r.error(item(f.at("remove"), i), str(exc))
    return HeaderEdits(add=tuple(added), remove=tuple(removed))


def _editable(name: object) -> str:
    # Envoy refuses edits to pseudo-headers and Host; we do the same so that configs carry across.
    text = as_str(name).lower()
    if text.startswith(":"):
        raise ValueError(f"pseudo-header {text!r} cannot be edited")
    if text == "host":
        raise ValueError("'host' cannot be edited (use host_rewrite on a route to change the host)")
    return header_name(text)


def _host(value: object) -> str:
    """A host_rewrite: written into the Host header as it is, so a host or host:port and nothing else
    (a fuzzed `h€st` crashed the route table's latin-1 encoding; `a b` would be a Host no reader
    agrees on)."""
    host = as_name(value)
    if not is_authority(host):
        raise ValueError(f"{host!r} is not a host or host:port")
    return host


def _header_value(value: object) -> str:
    text = as_str(value)
    if any(ch in text for ch in "\r\n\0"):
        raise ValueError("header values must not contain CR, LF or NUL")
    return text


# Virtual hosts and the short forms around them


def read_virtual_hosts(r: Reader, f: Fields, model_path: str, listener_name: str) -> tuple[VirtualHost, ...]:
    """The virtual hosts of an http listener written as `virtual_hosts`, `routes` or `cluster`."""
    forms = f.present("virtual_hosts", "routes", "cluster")
    if len(forms) != 1:
        reason = "needs one of virtual_hosts, routes or cluster"
        r.error(f.path, reason if not forms else f"has {' and '.join(forms)}; use only one")
        return ()
    if forms[0] != "virtual_hosts":
        # One catch-all virtual host named after the listener; its model path is aliased to the
        # listener itself so that cross-reference issues point at what was written.
        vh_model = item(child(model_path, "virtual_hosts"), 0)
        r.alias(vh_model, f.path)
        routes = with_retry(_routes_or_cluster(r, f, vh_model), None)
        return (VirtualHost(name=listener_name, domains=("*",), routes=routes),)
    nodes = r.sequence(f.raw("virtual_hosts"), f.at("virtual_hosts"))
    if f.raw("virtual_hosts") == []:
        r.error(f.at("virtual_hosts"), "must not be empty")
    vhosts: list[VirtualHost] = []
    for i, node in enumerate(nodes):
        vh_model = item(child(model_path, "virtual_hosts"), len(vhosts))
        at = item(f.at("virtual_hosts"), i)
        r.alias(vh_model, at)
        vhost = _virtual_host(r, node, at, vh_model)
        if vhost is not None:
            vhosts.append(vhost)
    return tuple(vhosts)


def _virtual_host(r: Reader, node: object, path: str, model_path: str) -> VirtualHost | None:
    f = r.mapping(node, path, _VHOST_KEYS)
    if f is None:
        return None
    domains = _domains(r, f) if "domains" in f else ["*"]
    forms = f.present("routes", "cluster")
    if len(forms) != 1:
        r.error(path, "needs one of routes or cluster" if not forms else "has both routes and cluster")
        return None
    # The virtual host's retry policy, for its routes that have none of their own.
    policy = retry_policy(r, f.raw("retry"), f.at("retry")) if "retry" in f else None
    routes = with_retry(_routes_or_cluster(r, f, model_path), policy)
    return VirtualHost(
        name=f.get("name", as_name, domains[0] if domains else ""),
        domains=tuple(domains),
        routes=routes,
        request_headers=edits_at(r, f, "request_headers"),
        response_headers=edits_at(r, f, "response_headers"),
        rate_limit=rate_limit(r, f.raw("rate_limit"), f.at("rate_limit")) if "rate_limit" in f else None,
        filters=with_route_authz(r, f, read_overrides(r, f)),
    )


# A route that says nothing about retries takes its virtual host's policy; `retry: off` says "none".
_UNSET_RETRY = RetryPolicy(retry_on=())


def with_retry(routes: tuple[Route, ...], policy: RetryPolicy | None) -> tuple[Route, ...]:
    """`routes` with the virtual host's retry `policy` where a route has not set its own."""
    out = []
    for route in routes:
        action = route.action
        if isinstance(action, ForwardAction) and action.retry is _UNSET_RETRY:
            route = dataclasses.replace(route, action=dataclasses.replace(action, retry=policy))
        out.append(route)
    return tuple(out)


def _domains(r: Reader, f: Fields) -> list[str]:
    domains: list[str] = []
    for i, value in enumerate(r.sequence(f.raw("domains"), f.at("domains"), allow_single=True)):
        try:
            domains.append(domain(value))
        except ValueError as exc:
            r.error(item(f.at("domains"), i), str(exc))
    if f.raw("domains") == []:
        r.error(f.at("domains"), "must not be empty (use ['*'] to match every host)")
    return domains


def edits_at(r: Reader, f: Fields, key: str) -> HeaderEdits:
    """The header edits under `key` of `f` (none when the key is absent)."""
    return read_header_edits(r, f.raw(key), f.at(key)) if key in f else HeaderEdits()


def _routes_or_cluster(r: Reader, f: Fields, vh_model: str) -> tuple[Route, ...]:
    if "cluster" in f:
        # Short form: one route for every path. Aliased so that `...routes[0].cluster` reads
        # `<owner>.cluster` in issues.
        r.alias(item(child(vh_model, "routes"), 0), f.path)
        return (Route(action=ForwardAction(cluster=f.get("cluster", as_name, ""))),)
    routes: list[Route] = []
    nodes = r.sequence(f.raw("routes"), f.at("routes"))
    if f.raw("routes") == []:
        r.error(f.at("routes"), "must not be empty")
    for i, node in enumerate(nodes):
        route_model = item(child(vh_model, "routes"), len(routes))
        at = item(f.at("routes"), i)
        r.alias(route_model, at)
        route = read_route(r, node, at, route_model)
        if route is not None:
            routes.append(route)
    return tuple(routes)


# Routes


def read_route(r: Reader, node: object, path: str, model_path: str) -> Route | None:
    f = r.mapping(node, path, _ROUTE_KEYS, _ROUTE_MISPLACED)
    if f is None:
        return None
    actions = f.present(*_ACTIONS)
    action: RouteAction = _PLACEHOLDER_ACTION
    if len(actions) != 1:
        r.error(
            path,
            "needs one of cluster, split, redirect or direct"
            if not actions
            else f"has {' and '.join(actions)}; a route has exactly one action",
        )
    elif actions[0] in ("cluster", "split"):
        action = _forward(r, f, model_path)
    else:
        for key in f.present(*_FORWARD_ONLY):
            r.error(f.at(key), "only applies to routes with cluster or split")
        action = _redirect(r, f) if actions[0] == "redirect" else _direct(r, f)
    match = read_match(r, f.raw("match"), f.at("match")) if "match" in f else RouteMatch()
    if isinstance(action, ForwardAction) and action.prefix_rewrite is not None and match.path_kind == "regex":
        r.error(f.at("prefix_rewrite"), "needs a prefix or path match; use regex_rewrite with a regex match")
    return Route(
        name=f.get("name", as_name, ""),
        match=match,
        action=action,
        request_headers=edits_at(r, f, "request_headers"),
        response_headers=edits_at(r, f, "response_headers"),
        rate_limit=rate_limit(r, f.raw("rate_limit"), f.at("rate_limit")) if "rate_limit" in f else None,
        fault=fault(r, f.raw("fault"), f.at("fault")) if "fault" in f else None,
        filters=with_route_authz(r, f, read_overrides(r, f)),
    )


def _forward(r: Reader, f: Fields, model_path: str) -> ForwardAction:
    weighted: list[WeightedCluster] = []
    if "split" in f:
        split = r.mapping(f.raw("split"), f.at("split"), None)
        for name, weight in split.data.items() if split else ():
            at = child(f.at("split"), str(name))
            try:
                weighted.append(WeightedCluster(name=as_name(name), weight=as_positive_int(weight)))
            except ValueError as exc:
                r.error(at, str(exc))
                continue
            r.alias(item(child(model_path, "weighted"), len(weighted) - 1), at)
        if split is not None and not split.data:
            r.error(f.at("split"), "must name at least one cluster with its weight")
    if "prefix_rewrite" in f and "regex_rewrite" in f:
        r.error(f.path, "has both prefix_rewrite and regex_rewrite; use only one")
    return ForwardAction(
        cluster=f.get("cluster", as_name, "") if "cluster" in f else None,
        weighted=tuple(weighted),
        prefix_rewrite=f.get("prefix_rewrite", as_str, None),
        regex_rewrite=_regex_rewrite(r, f.raw("regex_rewrite"), f.at("regex_rewrite"))
        if "regex_rewrite" in f
        else None,
        host_rewrite=f.get("host_rewrite", _host, None),
        timeout=f.get("timeout", as_optional_timeout, DEFAULT_ROUTE_TIMEOUT),
        idle_timeout=f.get("idle_timeout", as_route_idle_timeout, None),
        max_stream_duration=f.get("max_stream_duration", as_optional_timeout, None),
        grpc_timeout=_grpc_timeout(r, f.raw("grpc_timeout"), f.at("grpc_timeout"))
        if "grpc_timeout" in f else HONOUR_GRPC_TIMEOUT,
        retry=retry_policy(r, f.raw("retry"), f.at("retry")) if "retry" in f else _UNSET_RETRY,
        hash_policy=hash_policy(r, f.raw("hash_policy"), f.at("hash_policy")) if "hash_policy" in f else (),
    )


def _grpc_timeout(r: Reader, node: object, path: str) -> GrpcTimeout | None:
    """`grpc_timeout: ignore`, or `{max: 30s, offset: 50ms}` (both optional): how a gRPC call's own
    deadline limits its stream. Left out: honoured as it is."""
    if node == "ignore":
        return None
    f = r.mapping(node, path, ("max", "offset"))
    if f is None:
        return HONOUR_GRPC_TIMEOUT
    return GrpcTimeout(max=f.get("max", as_optional_timeout, None), offset=f.get("offset", as_duration, 0.0))


def _regex_rewrite(r: Reader, node: object, path: str) -> RegexRewrite | None:
    f = r.mapping(node, path, ("pattern", "substitution"))
    if f is None:
        return None
    pattern = f.require("pattern", compile_regex, "")
    substitution = f.require("substitution", as_str, "")
    # Python's re.sub and Envoy both write group references as \1; a reference past the last group
    # would only fail on the first matching request, so catch it here.
    groups = re.compile(pattern).groups if pattern else 0
    for ref in re.findall(r"\\(\d+)", substitution):
        if int(ref) > groups:
            r.error(child(path, "substitution"), f"refers to group \\{ref} but the pattern has {groups}")
    return RegexRewrite(pattern=pattern, substitution=substitution)


def _redirect(r: Reader, f: Fields) -> RedirectAction:
    keys = ("scheme", "host", "port", "path", "prefix_rewrite", "code", "strip_query")
    g = r.mapping(f.raw("redirect"), f.at("redirect"), keys)
    if g is None:
        return RedirectAction()
    if "path" in g and "prefix_rewrite" in g:
        r.error(g.path, "has both path and prefix_rewrite; use only one")
    if not g.present("scheme", "host", "port", "path", "prefix_rewrite", "strip_query"):
        r.error(g.path, "needs at least one of scheme, host, port, path, prefix_rewrite, strip_query")
    return RedirectAction(
        scheme=g.get("scheme", _scheme, None),
        host=g.get("host", as_name, None),
        port=g.get("port", _port, None),
        path=g.get("path", absolute_path, None),
        prefix_rewrite=g.get("prefix_rewrite", as_str, None),
        response_code=g.get("code", _redirect_code, 301),
        strip_query=g.get("strip_query", as_bool, False),
    )


def _direct(r: Reader, f: Fields) -> DirectResponseAction:
    node = f.raw("direct")
    if isinstance(node, int) and not isinstance(node, bool):
        return DirectResponseAction(status=f.get("direct", _status, 200))  # short form: `direct: 204`
    g = r.mapping(node, f.at("direct"), ("status", "body"))
    if g is None:
        return _PLACEHOLDER_ACTION
    return DirectResponseAction(status=g.require("status", _status, 200), body=g.get("body", as_str, ""))


def _scheme(value: object) -> str:
    text = as_str(value).lower()
    if not _SCHEME.fullmatch(text):
        raise ValueError(f"{text!r} is not a URL scheme")
    return text


def _port(value: object) -> int:
    port = as_int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port


def _redirect_code(value: object) -> int:
    code = as_int(value)
    if code not in (301, 302, 303, 307, 308):
        raise ValueError(f"redirect code {code} is not one of 301, 302, 303, 307, 308")
    return code


def _status(value: object) -> int:
    # Envoy accepts 200-599 for direct responses: a 1xx is not a final answer and would hang the client.
    status = as_int(value)
    if not 200 <= status <= 599:
        raise ValueError(f"status {status} is out of range (200-599)")
    return status
