"""The meshpy YAML format: a parsed document in, a `Config` out, or `ConfigError` with every issue.

The format is documented key by key in docs/config.md. It is meant to be written by people, so it has
short forms for the common cases (`admin: 127.0.0.1:9901`, `cluster: backend` on a listener, clusters
as a name -> endpoints mapping) and turns each into the same model the long form produces. Routing
(virtual hosts, routes, matches, header edits) lives in `meshpy_yaml_routes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from meshpy.errors import ConfigError
from meshpy.model.authz_yaml import read_network_authz
from meshpy.model.check import check_references
from meshpy.model.limits import NO_OVERLOAD
from meshpy.model.meshpy_yaml_access_log import read_access_logs
from meshpy.model.meshpy_yaml_client_cert import CLIENT_CERT_KEYS, client_cert
from meshpy.model.meshpy_yaml_filters import read_filters, with_listener_authz
from meshpy.model.meshpy_yaml_limits import (
    HTTP_LIMIT_KEYS,
    LISTENER_LIMIT_KEYS,
    http_limits,
    listener_limits,
    overload,
)
from meshpy.model.meshpy_yaml_policies import (
    circuit_breakers,
    health_check,
    load_balancing,
    outlier_detection,
    rate_limit,
)
from meshpy.model.meshpy_yaml_protocols import (
    direction,
    dns_family,
    http2_options,
    tcp_fallback,
    tcp_keepalive,
    upgrade_types,
    upstream_protocol,
)
from meshpy.model.meshpy_yaml_routes import edits_at, read_virtual_hosts
from meshpy.model.meshpy_yaml_tls import LISTENER_TLS_KEYS, client_tls, mesh_client, with_listener_tls
from meshpy.model.routes import RouteConfig
from meshpy.model.tls import ClientTls
from meshpy.model.types import (
    DEFAULT_BREAKERS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DNS_REFRESH,
    DEFAULT_HEADERS_TIMEOUT,
    DEFAULT_HTTP2,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LB,
    DEFAULT_STREAM_IDLE_TIMEOUT,
    DEFAULT_TCP_IDLE_TIMEOUT,
    AccessLog,
    Address,
    Admin,
    Cluster,
    Config,
    DiscoveryType,
    Endpoint,
    HttpCodec,
    HttpOptions,
    Lifecycle,
    Listener,
    TcpOptions,
    UpstreamProtocol,
)
from meshpy.model.unix_address import parse_unix_mapping
from meshpy.model.yaml_reader import (
    Fields,
    Reader,
    as_bool,
    as_duration,
    as_name,
    as_non_negative_int,
    as_optional_timeout,
    as_positive_duration,
    as_positive_int,
    as_str,
    child,
    is_off,
    item,
)
from meshpy.model.yaml_values import is_ip_literal, parse_address, parse_size

_TOP_KEYS = ("admin", "drain_time", "grace_time", "exit_when_idle", "overload", "listeners", "clusters")
_LISTENER_KEYS = ("name", "address", "protocol", "access_log", "idle_timeout", "original_destination", "bind",
                  "direction", *LISTENER_LIMIT_KEYS, *LISTENER_TLS_KEYS)
_HTTP_KEYS = (
    "use_remote_address",
    "envoy_headers",
    "accept_http_10",
    "xff_num_trusted_hops",
    "forwarded_proto",
    "generate_request_id",
    "preserve_external_request_id",
    "stream_idle_timeout",
    "request_headers_timeout",
    "max_request_headers",
    "max_request_headers_count",
    "max_request_body",
    "server_name",
    "ignore_port_in_host",
    "request_headers",
    "response_headers",
    "virtual_hosts",
    "routes",
    "rate_limit",
    "http2",
    "upgrades",
    "tcp_fallback",
    "filters",
    "authz",
    *HTTP_LIMIT_KEYS,
    *CLIENT_CERT_KEYS,
)
_TCP_KEYS = ("cluster", "authz")
# `protocol:` of a listener; http is the same as auto (HTTP/1.1 or HTTP/2, by the first bytes).
_CODECS: dict[str, HttpCodec] = {"http": "auto", "auto": "auto", "http1": "http1", "http2": "http2",
                                 "tcp": "auto"}
_HTTP_ONLY = dict.fromkeys((k for k in _HTTP_KEYS if k != "authz"), "only applies to http listeners")
_CLUSTER_KEYS = (
    "name",
    "endpoints",
    "type",
    "connect_timeout",
    "dns_refresh_rate",
    "dns_lookup_family",
    "max_connections_per_endpoint",
    "pool_idle_timeout",
    "lb_policy",
    "circuit_breakers",
    "outlier_detection",
    "health_check",
    "protocol",
    "http2",
    "tcp_keepalive",
    "tls",
    "mtls",
)
_DISCOVERY: tuple[DiscoveryType, ...] = ("static", "strict_dns", "logical_dns", "original_dst")
_MAX_HEADERS_KIB = 8192  # Envoy's upper bound for max_request_headers_kb


def load_meshpy(data: Mapping[str, Any], external: Callable[[str], object] | None = None) -> Config:
    """The model for a parsed meshpy YAML document; raises ConfigError listing every issue.
    `external` accepts cluster names that routes may use without defining them (see check.py)."""
    r = Reader()
    config = _read_config(r, data)
    for issue in check_references(config, external=external):
        path = r.to_yaml(issue.path)
        if not r.reported_near(path):
            r.error(path, issue.reason)
    if r.issues:
        raise ConfigError(r.issues)
    return config


def _read_config(r: Reader, data: object) -> Config:
    f = r.mapping(data, "", _TOP_KEYS)
    if f is None:
        return Config()
    listeners = [
        listener
        for i, node in enumerate(r.sequence(f.raw("listeners"), "listeners") if "listeners" in f else [])
        if (listener := _listener(r, node, item("listeners", i))) is not None
    ]
    return Config(
        listeners=tuple(listeners),
        clusters=_clusters(r, f.raw("clusters")) if "clusters" in f else (),
        admin=_admin(r, f.raw("admin")) if "admin" in f else Admin(),
        lifecycle=Lifecycle(
            drain_time=f.get("drain_time", as_duration, Lifecycle().drain_time),
            grace_time=f.get("grace_time", as_duration, Lifecycle().grace_time),
            exit_when_idle=f.get("exit_when_idle", as_bool, None),
        ),
        overload=overload(r, f.raw("overload"), "overload") if "overload" in f else NO_OVERLOAD,
        source_format="meshpy",
    )


def _bind_address(value: object) -> Address:
    """An address something listens on: port 0 picks a free port; a host name is refused because it
    may resolve to several addresses (Envoy refuses it too). A Unix socket is `unix:PATH`, or
    `{unix: PATH, mode: 0660}` to set its file's mode."""
    if isinstance(value, Mapping):
        return parse_unix_mapping(value)
    address = parse_address(value, allow_port_zero=True, allow_unix=True)
    if not address.path and not is_ip_literal(address.host):
        raise ValueError(f"{address.host!r} is a host name; listen on an IP address such as 127.0.0.1")
    return address


def _admin(r: Reader, node: object) -> Admin:
    if is_off(node):
        return Admin()
    if isinstance(node, str):
        try:
            return Admin(address=_bind_address(node))
        except ValueError as exc:
            r.error("admin", str(exc))
            return Admin()
    f = r.mapping(node, "admin", ("address", "access_log"))
    if f is None:
        return Admin()
    logs = read_access_logs(r, f.raw("access_log"), f.at("access_log")) if "access_log" in f else ()
    return Admin(address=f.require("address", _bind_address, None), access_logs=logs)


# Listeners


def _listener(r: Reader, node: object, path: str) -> Listener | None:
    protocol = node.get("protocol", "http") if isinstance(node, Mapping) else "http"
    protocol = protocol.lower() if isinstance(protocol, str) else protocol
    if not isinstance(protocol, str) or protocol not in _CODECS:
        r.error(child(path, "protocol"), f"must be http, auto, http1, http2 or tcp, got {protocol!r}")
        protocol = "http"
    if protocol != "tcp":
        f = r.mapping(node, path, (*_LISTENER_KEYS, *_HTTP_KEYS, "cluster"))
    else:
        f = r.mapping(node, path, (*_LISTENER_KEYS, *_TCP_KEYS), _HTTP_ONLY)
    if f is None:
        return None
    address = f.require("address", _bind_address, Address(host="0.0.0.0", port=0))
    # Unnamed listeners are named like Istio names them, after where they listen.
    name = f.get("name", as_name, str(address) if address.path else f"{address.host}_{address.port}")
    logs = _access_logs(r, f.raw("access_log"), f.at("access_log")) if "access_log" in f else ()
    interception = Listener(name=name, address=address, kind="tcp",
                            original_destination=f.get("original_destination", as_bool, False),
                            bind=f.get("bind", as_bool, True),
                            direction=f.get("direction", direction, "unspecified"),
                            limits=listener_limits(f))
    if protocol == "tcp":
        r.alias(child(path, "tcp"), path)
        tcp = TcpOptions(
            cluster=f.get("cluster", as_name, "") if "sni" in f else f.require("cluster", as_name, ""),
            idle_timeout=f.get("idle_timeout", as_optional_timeout, DEFAULT_TCP_IDLE_TIMEOUT),
            access_logs=logs,
        )
        network = read_network_authz(r, f.raw("authz"), f.at("authz"), name) if "authz" in f else None
        return with_listener_tls(r, f, replace(interception, tcp=tcp, authz=network))
    http = _http_options(r, f, path, name, logs)
    http = replace(http, codec=_CODECS[protocol], upgrades=f.get("upgrades", upgrade_types, ("websocket",)),
                   http2=http2_options(r, f.raw("http2"), f.at("http2")) if "http2" in f else DEFAULT_HTTP2)
    fallback = None
    if "tcp_fallback" in f:
        r.alias(child(path, "tcp"), f.at("tcp_fallback"))
        fallback = tcp_fallback(r, f.raw("tcp_fallback"), f.at("tcp_fallback"), logs)
    listener = replace(interception, kind="http", http=replace(http, limits=http_limits(f)), tcp=fallback)
    return with_listener_tls(r, f, listener)


def _http_options(r: Reader, f: Fields, path: str, name: str, logs: tuple[AccessLog, ...]) -> HttpOptions:
    route_config = RouteConfig(
        name=name,
        virtual_hosts=read_virtual_hosts(r, f, path, name),
        request_headers=edits_at(r, f, "request_headers"),
        response_headers=edits_at(r, f, "response_headers"),
        ignore_port_in_host=f.get("ignore_port_in_host", as_bool, True),
    )
    xfcc, xfcc_details = client_cert(r, f)
    return HttpOptions(
        route_config=route_config,
        use_remote_address=f.get("use_remote_address", as_bool, True),
        envoy_headers=f.get("envoy_headers", as_bool, False),
        accept_http_10=f.get("accept_http_10", as_bool, True),
        xff_num_trusted_hops=f.get("xff_num_trusted_hops", as_non_negative_int, 0),
        forwarded_proto=f.get("forwarded_proto", as_bool, True),
        generate_request_id=f.get("generate_request_id", as_bool, True),
        preserve_external_request_id=f.get("preserve_external_request_id", as_bool, True),
        stream_idle_timeout=f.get("stream_idle_timeout", as_optional_timeout, DEFAULT_STREAM_IDLE_TIMEOUT),
        idle_timeout=f.get("idle_timeout", as_optional_timeout, DEFAULT_IDLE_TIMEOUT),
        request_headers_timeout=f.get(
            "request_headers_timeout", as_optional_timeout, DEFAULT_HEADERS_TIMEOUT
        ),
        max_request_headers_kb=f.get("max_request_headers", _headers_kib, 60),
        max_request_headers_count=f.get("max_request_headers_count", as_positive_int, 100),
        max_request_body_bytes=f.get("max_request_body", _body_limit, None),
        access_logs=logs,
        server_name=f.get("server_name", _server_name, None),
        forward_client_cert=xfcc,
        client_cert_details=xfcc_details,
        rate_limit=rate_limit(r, f.raw("rate_limit"), f.at("rate_limit")) if "rate_limit" in f else None,
        filters=with_listener_authz(r, f, read_filters(r, f.raw("filters"), f.at("filters")) if "filters" in f
                                    else ()),
    )


def _headers_kib(value: object) -> int:
    size = parse_size(value)
    if size % 1024:
        raise ValueError(f"must be a whole number of KiB (e.g. 60KiB), got {size} bytes")
    if not 1 <= size // 1024 <= _MAX_HEADERS_KIB:
        raise ValueError(f"must be between 1KiB and {_MAX_HEADERS_KIB}KiB")
    return size // 1024


def _body_limit(value: object) -> int | None:
    if is_off(value):
        return None
    size = parse_size(value)
    if size == 0:
        raise ValueError("must be at least 1 byte; use off for no limit")
    return size


def _server_name(value: object) -> str | None:
    return None if value is None else as_name(value)


def _access_logs(r: Reader, node: object, path: str) -> tuple[AccessLog, ...]:
    """`stdout`, `stderr`, `off`, a file path, a mapping with a format, or a list of those
    (meshpy.model.meshpy_yaml_access_log)."""
    return read_access_logs(r, node, path)


# Clusters


def _clusters(r: Reader, node: object) -> tuple[Cluster, ...]:
    clusters: list[Cluster] = []
    if isinstance(node, Mapping):
        # Short form: `clusters: {name: endpoints-or-mapping}`; issues point at `clusters.<name>`.
        for name, value in node.items():
            at = child("clusters", str(name))
            r.alias(item("clusters", len(clusters)), at)
            cluster = _cluster(r, value, at, name)
            if cluster is not None:
                clusters.append(cluster)
        return tuple(clusters)
    for i, value in enumerate(r.sequence(node, "clusters")):
        r.alias(item("clusters", len(clusters)), item("clusters", i))
        cluster = _cluster(r, value, item("clusters", i), None)
        if cluster is not None:
            clusters.append(cluster)
    return tuple(clusters)


def _cluster(r: Reader, node: object, path: str, key: object) -> Cluster | None:
    if key is not None and not isinstance(node, Mapping):
        node = {"endpoints": node}  # `backend: [127.0.0.1:9000]` or `backend: 127.0.0.1:9000`
    in_mapping = {"name": "the name is the key in the clusters mapping"} if key is not None else {}
    f = r.mapping(node, path, _CLUSTER_KEYS, in_mapping)
    if f is None:
        return None
    if key is not None:
        try:
            name = as_name(key)
        except ValueError as exc:
            r.error(path, str(exc))
            name = ""
    else:
        name = f.require("name", as_name, "")
    discovery = f.get("type", _discovery, None)
    endpoints = _endpoints(r, f, discovery)
    if discovery is None:
        # No type given: a cluster of IP addresses is static, anything with a host name resolves DNS.
        all_ips = all(is_ip_literal(e.address.host) or e.address.path for e, _ in endpoints)
        discovery = "static" if all_ips else "strict_dns"
    for endpoint, at in endpoints:
        if endpoint.address.path and discovery != "static":
            r.error(at, "a Unix socket is not resolved by DNS: its cluster is static (as in Envoy)")
        elif discovery == "static" and not is_ip_literal(endpoint.address.host) and not endpoint.address.path:
            r.error(
                at,
                f"{endpoint.address.host!r} is a host name; static clusters need IP addresses "
                "(use type: strict_dns)",
            )
    if discovery == "original_dst" and "endpoints" in f:
        r.error(f.at("endpoints"), "an original_dst cluster has no endpoints: each connection goes where "
                "it was going before it was redirected")
    if discovery == "original_dst" and "lb_policy" in f:
        r.error(f.at("lb_policy"), "does not apply to original_dst clusters (the destination is the "
                "connection's own)")
    if discovery == "logical_dns" and len(endpoints) > 1:
        r.error(f.at("endpoints"), "a logical_dns cluster has exactly one endpoint")
    for key in ("dns_refresh_rate", "dns_lookup_family"):
        if discovery in ("static", "original_dst") and key in f:
            r.error(f.at(key), "only applies to strict_dns and logical_dns clusters")
    protocol: UpstreamProtocol = f.get("protocol", upstream_protocol, "http1")
    if protocol == "auto" and not f.present("tls", "mtls"):
        r.error(f.at("protocol"), "auto lets TLS's ALPN choose HTTP/2 or HTTP/1.1, so the cluster needs "
                "tls: or mtls: (without TLS, say http1 or http2)")
    return Cluster(
        name=name,
        discovery=discovery,
        endpoints=tuple(e for e, _ in endpoints),
        connect_timeout=f.get("connect_timeout", as_positive_duration, DEFAULT_CONNECT_TIMEOUT),
        dns_refresh_rate=f.get("dns_refresh_rate", as_positive_duration, DEFAULT_DNS_REFRESH),
        dns_lookup_family=f.get("dns_lookup_family", dns_family, "all"),
        max_connections_per_endpoint=f.get("max_connections_per_endpoint", as_positive_int, 1024),
        pool_idle_timeout=f.get("pool_idle_timeout", as_optional_timeout, 60.0),
        protocol=protocol,
        http2=http2_options(r, f.raw("http2"), f.at("http2")) if "http2" in f else DEFAULT_HTTP2,
        tcp_keepalive=tcp_keepalive(r, f.raw("tcp_keepalive"), f.at("tcp_keepalive"))
        if "tcp_keepalive" in f else None,
        tls=_cluster_tls(r, f),
        circuit_breakers=circuit_breakers(r, f.raw("circuit_breakers"), f.at("circuit_breakers"))
        if "circuit_breakers" in f else DEFAULT_BREAKERS,
        outlier_detection=outlier_detection(r, f.raw("outlier_detection"), f.at("outlier_detection"))
        if "outlier_detection" in f else None,
        load_balancing=load_balancing(r, f.raw("lb_policy"), f.at("lb_policy"))
        if "lb_policy" in f else DEFAULT_LB,
        health_check=health_check(r, f.raw("health_check"), f.at("health_check"))
        if "health_check" in f else None,
    )


def _endpoints(r: Reader, f: Fields, discovery: DiscoveryType | None) -> list[tuple[Endpoint, str]]:
    """The endpoints with the path each was written at (for errors found once the type is known).
    `discovery`: the type as written (None if not written, or not valid: reported already)."""
    if "endpoints" not in f:
        if discovery != "original_dst":
            r.error(f.path, "missing required key 'endpoints'")
        return []
    node = f.raw("endpoints")
    values = r.sequence(node, f.at("endpoints"), allow_single=isinstance(node, str | Mapping))
    # An empty list is a mistake, unless the type says it is meant: a static cluster without
    # endpoints refuses everything sent to it (Istio's BlackHoleCluster, for REGISTRY_ONLY); an
    # original_dst one has none to list (said below).
    if node == [] and discovery not in ("static", "original_dst"):
        r.error(f.at("endpoints"), "needs at least one endpoint (a cluster meant to refuse everything "
                "says type: static)")
    found: list[tuple[Endpoint, str]] = []
    for i, value in enumerate(values):
        at = item(f.at("endpoints"), i) if isinstance(node, list) else f.at("endpoints")
        if isinstance(value, Mapping):
            g = r.mapping(value, at, ("address", "weight"))
            if g is not None and "address" in g:
                address = g.get("address", _endpoint_address, None)
                if address is not None:
                    found.append((Endpoint(address=address, weight=g.get("weight", as_positive_int, 1)), at))
            elif g is not None:
                r.error(at, "missing required key 'address'")
            continue
        try:
            found.append((Endpoint(address=_endpoint_address(value)), at))
        except ValueError as exc:
            r.error(at, str(exc))
    return found


def _endpoint_address(value: object) -> Address:
    return parse_address(value, allow_unix=True)


def _discovery(value: object) -> DiscoveryType:
    text = as_str(value).lower()
    for kind in _DISCOVERY:
        if text == kind:
            return kind
    raise ValueError(f"must be one of {', '.join(_DISCOVERY)}, got {text!r}")


def _cluster_tls(r: Reader, f: Fields) -> ClientTls | None:
    if "mtls" in f:
        if "tls" in f:
            r.error(f.at("mtls"), "give either tls: or mtls:")
        return mesh_client(r, f.raw("mtls"), f.at("mtls"), f.raw("protocol"))
    return client_tls(r, f.raw("tls"), f.at("tls"), f.raw("protocol")) if "tls" in f else None
