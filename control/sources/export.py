"""meshpy's config model -> Envoy v3 resources, so the control plane can serve meshpy YAML over xDS.

The inverse of meshpy/xds: every field is written out explicitly (Envoy's defaults differ from meshpy's
in places, for example the route timeout and ignore_port_in_host_matching), so that model -> resources
-> model gives back the same model; tests check exactly that round trip. A static cluster becomes an
EDS cluster with its ClusterLoadAssignment, so endpoint changes travel alone. A setting Envoy's API
cannot carry is an ExportError naming it, never silently dropped.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

import meshpy.xds.translate  # noqa: F401  (registers the extension types that `@type` below names)
from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control.sources import export_authz, export_tls
from control.sources import export_policies as policies
from control.sources.envoy_dir import message_class
from control.sources.export_access_log import access_log
from control.sources.export_limits import common_options, limit_listener
from control.sources.export_policies import duration
from control.sources.export_protocols import cluster_protocol, http2_options
from meshpy.model.routes import (
    DirectResponseAction,
    ForwardAction,
    HeaderEdits,
    RedirectAction,
    Route,
    RouteConfig,
    RouteMatch,
)
from meshpy.model.types import DEFAULT_BREAKERS, Address, Cluster, Config, Listener, TcpOptions
from meshpy.xds.translate_listeners import SNIFFED_HTTP

ADS = {"ads": {}, "resource_api_version": "V3"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
REDIRECT_CODES = {
    301: "MOVED_PERMANENTLY",
    302: "FOUND",
    303: "SEE_OTHER",
    307: "TEMPORARY_REDIRECT",
    308: "PERMANENT_REDIRECT",
}
_string = export_authz.string_matcher
DEFAULT_POOL_SIZE = 1024  # Cluster.max_connections_per_endpoint's default: nothing in Envoy carries it


class ExportError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _address(address: Address) -> dict[str, Any]:
    if address.path:  # a Unix socket: Envoy's pipe (a mode only when one is set, as Envoy writes it)
        return {"pipe": {"path": address.path, **({"mode": address.mode} if address.mode else {})}}
    sock: dict[str, Any] = {"address": address.host, "port_value": address.port}
    if address.v4_compat:
        sock["ipv4_compat"] = True
    return {"socket_address": sock}


def _match(m: RouteMatch) -> dict[str, Any]:
    out: dict[str, Any]
    if m.connect:
        out = {"connect_matcher": {}}
    else:
        out = {"safe_regex": {"regex": m.path}} if m.path_kind == "regex" else {m.path_kind: m.path}
    out["case_sensitive"] = m.case_sensitive
    headers = [
        {
            "name": h.name,
            "invert_match": h.invert,
            **({"present_match": True} if h.match.kind == "present" else {"string_match": _string(h.match)}),
        }
        for h in m.headers
    ]
    if len(m.methods) == 1:
        headers.append({"name": ":method", "string_match": {"exact": m.methods[0]}})
    elif m.methods:
        headers.append(
            {"name": ":method", "string_match": {"safe_regex": {"regex": f"^({'|'.join(m.methods)})$"}}}
        )
    out["headers"] = headers
    out["query_parameters"] = [
        {
            "name": q.name,
            **({"present_match": True} if q.match.kind == "present" else {"string_match": _string(q.match)}),
        }
        for q in m.query
    ]
    return out


def _edits(e: HeaderEdits, direction: str) -> dict[str, Any]:
    return {f"{direction}_headers_to_add": policies.header_options(e),
            f"{direction}_headers_to_remove": list(e.remove)}


def _both_edits(request: HeaderEdits, response: HeaderEdits) -> dict[str, Any]:
    return {**_edits(request, "request"), **_edits(response, "response")}


def _route(r: Route, classes: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": r.name,
        "match": _match(r.match),
        **_both_edits(r.request_headers, r.response_headers),
    }
    a = r.action
    if isinstance(a, ForwardAction):
        fwd: dict[str, Any] = {"timeout": duration(a.timeout)}
        if r.match.connect:  # meshpy terminates CONNECT: Envoy's connect_config says the same
            fwd["upgrade_configs"] = [{"upgrade_type": "CONNECT", "connect_config": {}}]
        elif a.upgrades:
            fwd["upgrade_configs"] = [{"upgrade_type": kind, "enabled": on} for kind, on in a.upgrades]
        if a.mirrors:
            fwd["request_mirror_policies"] = [policies.mirror(m) for m in a.mirrors]
        if a.weighted:
            fwd["weighted_clusters"] = {
                "clusters": [{"name": w.name, "weight": w.weight} for w in a.weighted]
            }
        else:
            fwd["cluster"] = a.cluster
        if a.prefix_rewrite is not None:
            fwd["prefix_rewrite"] = a.prefix_rewrite
        if a.regex_rewrite is not None:
            fwd["regex_rewrite"] = {
                "pattern": {"regex": a.regex_rewrite.pattern},
                "substitution": a.regex_rewrite.substitution,
            }
        if a.host_rewrite is not None:
            fwd["host_rewrite_literal"] = a.host_rewrite
        if a.idle_timeout is not None:
            fwd["idle_timeout"] = duration(a.idle_timeout if a.idle_timeout > 0 else None)
        limits: dict[str, str] = {}
        if a.max_stream_duration is not None:
            limits["max_stream_duration"] = duration(a.max_stream_duration)
        if a.grpc_timeout is not None:  # (Envoy reads grpc-timeout only when this is set)
            limits["grpc_timeout_header_max"] = duration(a.grpc_timeout.max)
            if a.grpc_timeout.offset:
                limits["grpc_timeout_header_offset"] = duration(a.grpc_timeout.offset)
        if limits:
            fwd["max_stream_duration"] = limits
        fwd.update(policies.hash_policy(a.hash_policy))
        if a.retry is not None:
            fwd.update(policies.retry(a.retry))
            out.update(policies.retry_metadata(a.retry))
        out["route"] = fwd
    elif isinstance(a, RedirectAction):
        red: dict[str, Any] = {"response_code": REDIRECT_CODES[a.response_code], "strip_query": a.strip_query}
        for key, value in (
            ("scheme_redirect", a.scheme),
            ("host_redirect", a.host),
            ("port_redirect", a.port),
            ("path_redirect", a.path),
            ("prefix_rewrite", a.prefix_rewrite),
        ):
            if value is not None:
                red[key] = value
        out["redirect"] = red
    elif isinstance(a, DirectResponseAction):
        out["direct_response"] = {
            "status": a.status,
            **({"body": {"inline_string": a.body}} if a.body else {}),
        }
    out.update(policies.per_filter(r.fault, r.rate_limit, r.name or "route", r.filters, classes))
    _filter_metadata(out, r.metadata)
    return out


def _filter_metadata(out: dict[str, Any], metadata: tuple[tuple[str, str], ...]) -> None:
    """A route's or virtual host's filter_metadata (what Lua scripts read), beside meshpy's own."""
    if metadata:
        spaces = out.setdefault("metadata", {}).setdefault("filter_metadata", {})
        spaces.update((name, json.loads(struct)) for name, struct in metadata)


def route_configuration(rc: RouteConfig, name: str, classes: dict[str, str] | None = None) -> dict[str, Any]:
    """`classes`: the listener's Python filters' classes by filter name (built-in Envoy filters'
    per-route configs are exported as their Envoy type)."""
    classes = classes or {}
    bodies = [
        len(r.action.body.encode())
        for vh in rc.virtual_hosts
        for r in vh.routes
        if isinstance(r.action, DirectResponseAction)
    ]
    hosts = []
    for vh in rc.virtual_hosts:
        host: dict[str, Any] = {
            "name": vh.name,
            "domains": list(vh.domains),
            "routes": [_route(r, classes) for r in vh.routes],
            **_both_edits(vh.request_headers, vh.response_headers),
            **policies.per_filter(None, vh.rate_limit, vh.name, vh.filters, classes),
        }
        _filter_metadata(host, vh.metadata)
        hosts.append(host)
    return {
        "@type": ROUTE,
        "name": name,
        "ignore_port_in_host_matching": rc.ignore_port_in_host,
        "max_direct_response_body_size_bytes": max([4096, *bodies]),
        **_both_edits(rc.request_headers, rc.response_headers),
        "virtual_hosts": hosts,
    }


def _logs(logs: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [access_log(log) for log in logs]


def listener(lis: Listener, rds_name: str, errors: list[str], where: str,
             chain_rds: dict[str, str] | None = None) -> dict[str, Any]:
    """A Listener; `chain_rds`: the route configuration name of each further HTTP chain."""
    if lis.http is not None:
        h = lis.http
        if h.max_request_body_bytes is not None:
            errors.append(f"{where}.max_request_body: Envoy's API has no request body limit to carry it")
        config: dict[str, Any] = {
            "@type": HCM,
            "stat_prefix": lis.name,
            "codec_type": h.codec.upper(),
            "http2_protocol_options": http2_options(h.http2, downstream=True),
            "upgrade_configs": [{"upgrade_type": u} for u in h.upgrades],
            "rds": {"route_config_name": rds_name, "config_source": ADS},
            "http_filters": [*policies.chain_filters(h, lis.name),
                             {"name": "envoy.filters.http.router", "typed_config": {
                                 "@type": ROUTER, "suppress_envoy_headers": not h.envoy_headers}}],
            "use_remote_address": h.use_remote_address,
            "http_protocol_options": {"accept_http_10": h.accept_http_10},
            "xff_num_trusted_hops": h.xff_num_trusted_hops,
            "generate_request_id": h.generate_request_id,
            "preserve_external_request_id": h.preserve_external_request_id,
            "stream_idle_timeout": duration(h.stream_idle_timeout),
            "request_headers_timeout": duration(h.request_headers_timeout),
            "common_http_protocol_options": {
                "idle_timeout": duration(h.idle_timeout),
                "max_headers_count": h.max_request_headers_count,
                **common_options(h.limits),
            },
            "max_request_headers_kb": h.max_request_headers_kb,
            "server_header_transformation": "PASS_THROUGH" if h.server_name is None else "OVERWRITE",
            "access_log": _logs(h.access_logs),
        }
        if h.server_name is not None:
            config["server_name"] = h.server_name
        if h.forward_client_cert != "sanitize":  # (Envoy's default)
            config["forward_client_cert_details"] = h.forward_client_cert.upper()
        if h.client_cert_details:
            config["set_current_client_cert_details"] = dict.fromkeys(h.client_cert_details, True)
    out: dict[str, Any] = {
        "@type": LISTENER,
        "name": lis.name,
        "address": _address(lis.address),
    }
    if lis.http is None:
        assert lis.tcp is not None
        out["filter_chains"] = [{"filters": [tcp_proxy(lis.name, lis.tcp)]}]
    else:
        out["filter_chains"] = [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                              "typed_config": config}]}]
        if lis.tcp is not None:
            sniffing(out, tcp_proxy(lis.name, lis.tcp), lis.tcp.detect_timeout)
    if lis.original_destination:
        out["use_original_dst"] = True
        out.setdefault("listener_filters", []).insert(0, {"name": "envoy.filters.listener.original_dst",
                                                          "typed_config": {"@type": ORIGINAL_DST}})
    if not lis.bind:
        out["bind_to_port"] = False
    if lis.direction != "unspecified":
        out["traffic_direction"] = lis.direction.upper()
    limit_listener(out, lis.limits, lis.name, errors, where)
    rds = chain_rds or {}
    export_tls.with_chains(out, lis, lambda one, chain: listener(one, rds.get(chain, ""), errors, where))
    return out


def sniffing(listener: dict[str, Any], tcp_filter: dict[str, Any], detect_timeout: float | None) -> None:
    """Make a listener of one HTTP chain sniff, as Envoy spells it: the http_inspector tells HTTP from
    the rest, the HTTP chain matches its verdict, and everything else takes `tcp_filter` in the default
    chain. meshpy waits for a silent client, or proxies it as TCP after `detect_timeout`; Envoy's
    default (close it after 15 s) would differ, so the wait is always written out."""
    listener["filter_chains"][0]["filter_chain_match"] = {"application_protocols": list(SNIFFED_HTTP)}
    listener["default_filter_chain"] = {"filters": [tcp_filter]}
    listener["listener_filters"] = [{"name": "envoy.filters.listener.http_inspector",
                                     "typed_config": {"@type": HTTP_INSPECTOR}}]
    listener["listener_filters_timeout"] = duration(detect_timeout)
    if detect_timeout is not None:
        listener["continue_on_listener_filters_timeout"] = True


def tcp_proxy(name: str, t: TcpOptions) -> dict[str, Any]:
    """A tcp_proxy network filter for the listener `name`."""
    return {"name": TCP_PROXY_NAME, "typed_config": {
        "@type": TCP_PROXY,
        "stat_prefix": name,
        "cluster": t.cluster,
        "idle_timeout": duration(t.idle_timeout),
        "access_log": _logs(t.access_logs),
    }}


def _endpoints(c: Cluster) -> dict[str, Any]:
    return {
        "cluster_name": c.name,
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {"address": _address(e.address)},
                        "load_balancing_weight": e.weight,
                    }
                    for e in c.endpoints
                ]
            }
        ],
    }


def cluster(c: Cluster, errors: list[str], where: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(Cluster, its ClusterLoadAssignment for a static cluster, else None)."""
    if c.max_connections_per_endpoint != DEFAULT_POOL_SIZE:
        errors.append(f"{where}.max_connections_per_endpoint: Envoy's API has no per-endpoint pool size")
    out: dict[str, Any] = {
        "@type": CLUSTER,
        "name": c.name,
        "connect_timeout": duration(c.connect_timeout),
        "dns_refresh_rate": duration(c.dns_refresh_rate),
        "typed_extension_protocol_options": {
            HTTP_OPTIONS_KEY: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS_KEY,
                **cluster_protocol(c, errors, where),
                "common_http_protocol_options": {"idle_timeout": duration(c.pool_idle_timeout)},
            }
        },
    }
    out.update(policies.load_balancing(c.load_balancing, errors, where))
    policies.endpoint_details(c, errors, where)
    if c.health_check is not None:
        out.update(policies.health_checks(c.health_check))
    if c.outlier_detection is not None:
        out["outlier_detection"] = policies.outlier_detection(c.outlier_detection)
    if (ka := c.tcp_keepalive) is not None:
        given = {"keepalive_probes": ka.probes, "keepalive_time": ka.time, "keepalive_interval": ka.interval}
        keepalive = {name: int(value) for name, value in given.items() if value is not None}
        out["upstream_connection_options"] = {"tcp_keepalive": keepalive}
    if c.circuit_breakers != DEFAULT_BREAKERS:
        cb = c.circuit_breakers
        out["circuit_breakers"] = {"thresholds": [{
            "max_connections": cb.max_connections, "max_pending_requests": cb.max_pending_requests,
            "max_requests": cb.max_requests, "max_retries": cb.max_retries}]}
    if c.tls is not None:
        out["transport_socket"] = export_tls.upstream(c.tls)
    if c.discovery == "original_dst":
        out.update(type="ORIGINAL_DST", lb_policy="CLUSTER_PROVIDED")
        for key in ("dns_refresh_rate", "ring_hash_lb_config", "maglev_lb_config", "least_request_lb_config",
                    "round_robin_lb_config"):
            out.pop(key, None)
        return out, None
    if c.discovery == "static":
        out.update(type="EDS", eds_cluster_config={"eds_config": ADS})
        del out["dns_refresh_rate"]
        return out, {"@type": ENDPOINT, **_endpoints(c)}
    out.update(type=c.discovery.upper(), load_assignment=_endpoints(c),
               dns_lookup_family=c.dns_lookup_family.upper())
    return out, None


def export(config: Config) -> dict[str, dict[str, Message]]:
    """Every listener, route configuration, cluster and assignment of `config`, by type URL and name."""
    errors: list[str] = []
    dicts: dict[str, dict[str, dict[str, Any]]] = {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}}
    for i, lis in enumerate(config.listeners):
        rds: dict[str, str] = {}  # chain name -> its route configuration's name
        for fc in lis.all_chains():
            if fc.http is not None:
                name = fc.http.route_config.name or f"{lis.name}-routes"
                rc = route_configuration(fc.http.route_config, name,
                                         {s.name: s.python_class for s in fc.http.filters})
                if name in dicts[ROUTE] and dicts[ROUTE][name] != rc:
                    errors.append(f"listeners[{i}].routes: another listener has other routes named {name!r}")
                dicts[ROUTE][name] = rc
                rds[fc.name] = name
        dicts[LISTENER][lis.name] = listener(lis, rds.get(lis.name, ""), errors, f"listeners[{i}]", rds)
    for i, c in enumerate(config.clusters):
        cdict, cla = cluster(c, errors, f"clusters[{i}]")
        dicts[CLUSTER][c.name] = cdict
        if cla is not None:
            dicts[ENDPOINT][c.name] = cla
    if errors:
        raise ExportError(errors)
    out: dict[str, dict[str, Message]] = {}
    for type_url, items in dicts.items():
        out[type_url] = {}
        for name, d in items.items():
            msg = message_class(type_url)()
            json_format.ParseDict({k: v for k, v in d.items() if k != "@type"}, msg)
            out[type_url][name] = msg
    return out
