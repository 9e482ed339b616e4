"""Envoy Cluster and ClusterLoadAssignment -> model Cluster and Endpoints.

Defaults follow Envoy: connect_timeout 5 s, dns_refresh_rate 5 s, and an upstream connection idle
timeout of one hour (`common_http_protocol_options.idle_timeout`), which is longer than meshpy's own
YAML default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshpy.model.endpoints import EndpointGroup
from meshpy.model.tls import AUTO_ALPN, ClientTls
from meshpy.model.types import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DNS_REFRESH,
    DEFAULT_HTTP2,
    DEFAULT_LB,
    KEEPALIVE_MAX_PROBES,
    KEEPALIVE_MAX_SECONDS,
    Cluster,
    DiscoveryType,
    DnsLookupFamily,
    Endpoint,
    Http2Options,
    TcpKeepalive,
)
from meshpy.xds import translate_lb, translate_policies
from meshpy.xds import translate_protocols as protocols
from meshpy.xds.translate_base import (
    UNSUPPORTED,
    Issues,
    child,
    enum_name,
    item,
    positive_duration,
    socket_address,
    timeout,
    unpack,
    wrapped,
)
from meshpy.xds.translate_tls import Secrets, UpstreamTlsContext, client_tls, transport_socket

# `alt_stat_name` only renames stats; `metadata` is only read by filters and subset balancing.
_CLUSTER = frozenset(
    {
        "name",
        "alt_stat_name",
        "type",
        "eds_cluster_config",
        "connect_timeout",
        "dns_refresh_rate",
        "dns_lookup_family",
        "lb_policy",
        "load_balancing_policy",
        "common_lb_config",
        "least_request_lb_config",
        "ring_hash_lb_config",
        "maglev_lb_config",
        "round_robin_lb_config",
        "load_assignment",
        "typed_extension_protocol_options",
        "common_http_protocol_options",
        "http2_protocol_options",
        "metadata",
        "circuit_breakers",
        "outlier_detection",
        "health_checks",
        "upstream_connection_options",
        "transport_socket",
    }
)
# Cluster.DiscoveryType numbers, in proto order.
_DISCOVERY: dict[int, DiscoveryType] = {0: "static", 1: "strict_dns", 2: "logical_dns"}
_EDS = 3
_ORIGINAL_DST, _CLUSTER_PROVIDED = 4, 6  # Cluster.DiscoveryType and Cluster.LbPolicy numbers
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_TYPES = {
    _HTTP_OPTIONS_KEY: http_protocol_options_pb2.HttpProtocolOptions,
}
_ENVOY_POOL_IDLE_TIMEOUT = 3600.0  # Envoy's common_http_protocol_options.idle_timeout default
_HEALTH_USABLE = (0, 1)  # LbEndpoint health_status UNKNOWN and HEALTHY


def cluster(
    issues: Issues,
    msg: Any,
    path: str,
    eds_endpoints: Mapping[str, tuple[Endpoint, ...]] | None = None,
    secrets: Secrets | None = None,
) -> Cluster:
    """A Cluster. An EDS cluster needs `eds_endpoints` (ClusterLoadAssignments received over xDS,
    by service name) and becomes a static cluster holding those endpoints. A TLS transport socket may
    name the bootstrap's static `secrets`."""
    issues.fields(msg, path, _CLUSTER)
    if not msg.name:
        issues.add(child(path, "name"), "must not be empty")
    endpoints: tuple[Endpoint, ...] = ()
    if msg.HasField("load_assignment"):
        endpoints = endpoints_from(issues, msg.load_assignment, child(path, "load_assignment"))
    discovery = _DISCOVERY.get(msg.type)
    if msg.type == _ORIGINAL_DST:
        # Envoy's rule: the destination is the cluster's choice, so the policy must say so.
        discovery = "original_dst"
        if msg.lb_policy != _CLUSTER_PROVIDED and not translate_lb.cluster_provided(msg):
            issues.add(child(path, "lb_policy"), "an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED")
        if msg.HasField("load_assignment"):
            issues.add(child(path, "load_assignment"), "an ORIGINAL_DST cluster has no endpoints")
    elif msg.type == _EDS:
        discovery = "static"
        if msg.HasField("load_assignment"):
            issues.add(child(path, "load_assignment"), "cannot be used with type EDS")
        endpoints = _eds_endpoints(issues, msg, path, eds_endpoints)
    elif discovery is None:
        issues.add(child(path, "type"), f"{_type_name(msg)} is {UNSUPPORTED}")
        discovery = "static"
    elif msg.HasField("eds_cluster_config"):
        issues.add(child(path, "eds_cluster_config"), "only allowed with type EDS")
    elif translate_lb.cluster_provided(msg):
        issues.add(child(path, "load_balancing_policy"), "cluster provided LB specified but the cluster "
                   "does not provide one (only ORIGINAL_DST does)")
    _check_endpoints(issues, msg, path, discovery, endpoints)
    idle, http2, auto_at = _protocol_options(issues, msg, path)
    tls = upstream_tls(issues, msg, path, secrets or {})
    if auto_at is not None:
        if tls is None:
            # Envoy's words: "ALPN configured for cluster ... which has a non-ALPN transport socket".
            issues.add(auto_at, "ALPN chooses the protocol, so the cluster needs a transport_socket that "
                       "negotiates it (an UpstreamTlsContext)")
        elif not tls.alpn:
            tls = replace(tls, alpn=AUTO_ALPN)  # no alpn_protocols: Envoy offers both, HTTP/2 first
    return Cluster(
        name=msg.name,
        discovery=discovery,
        endpoints=endpoints,
        connect_timeout=positive_duration(issues, msg, "connect_timeout", path, DEFAULT_CONNECT_TIMEOUT),
        dns_refresh_rate=_dns_refresh_rate(issues, msg, path),
        # (read for DNS clusters only: Envoy ignores it elsewhere, and meshpy's model keeps its default)
        dns_lookup_family=_FAMILIES[msg.dns_lookup_family] if discovery in ("strict_dns", "logical_dns")
        else "all",
        load_balancing=DEFAULT_LB if discovery == "original_dst"
        else translate_lb.cluster_balancing(issues, msg, path),
        pool_idle_timeout=idle,
        protocol="auto" if auto_at is not None else "http2" if http2 is not None else "http1",
        http2=http2 or DEFAULT_HTTP2,
        circuit_breakers=translate_policies.circuit_breakers(issues, msg, path),
        outlier_detection=translate_policies.outlier_detection(issues, msg, path),
        health_check=translate_policies.health_check(issues, msg, path),
        tcp_keepalive=tcp_keepalive(issues, msg, path),
        tls=tls,
    )


def upstream_tls(issues: Issues, msg: Any, path: str, secrets: Secrets) -> ClientTls | None:
    """A cluster's transport_socket (at `path`, the cluster's): its UpstreamTlsContext, None for plaintext."""
    if not msg.HasField("transport_socket"):
        return None
    at = child(path, "transport_socket")
    config = transport_socket(issues, msg.transport_socket, at)
    if config is None:
        return None
    if not isinstance(config, UpstreamTlsContext):
        issues.add(at, "a cluster's TLS is an UpstreamTlsContext")
        return None
    return client_tls(issues, config, child(at, "typed_config"), secrets)


def _type_name(msg: Any) -> str:
    return enum_name(msg, "type")


def _eds_endpoints(
    issues: Issues, msg: Any, path: str, eds_endpoints: Mapping[str, tuple[Endpoint, ...]] | None
) -> tuple[Endpoint, ...]:
    if eds_endpoints is None:
        issues.add(child(path, "type"), "EDS is not supported in a static bootstrap")
        return ()
    config_path = child(path, "eds_cluster_config")
    # eds_config says where to fetch endpoints from; whoever passes `eds_endpoints` already did.
    issues.fields(msg.eds_cluster_config, config_path, {"eds_config", "service_name"})
    service = msg.eds_cluster_config.service_name or msg.name
    if service not in eds_endpoints:
        issues.add(config_path, f"no ClusterLoadAssignment received for {service!r}")
        return ()
    return eds_endpoints[service]


def _check_endpoints(
    issues: Issues, msg: Any, path: str, discovery: DiscoveryType, endpoints: tuple[Endpoint, ...]
) -> None:
    # The same checks Envoy makes when it loads such a cluster.
    where = child(path, "load_assignment")
    if discovery == "logical_dns" and len(endpoints) != 1:
        issues.add(where, "a LOGICAL_DNS cluster needs exactly one endpoint")
    if discovery in ("strict_dns", "logical_dns") and any(e.address.path for e in endpoints):
        # Envoy takes it but resolves only socket_address: the cluster never has a host (503 UH).
        issues.add(where, "a pipe address is not resolved by DNS: a cluster of Unix sockets is STATIC")
    if discovery == "static" and msg.type != _EDS:
        for endpoint in endpoints:
            if endpoint.address.path:
                continue
            try:
                ipaddress.ip_address(endpoint.address.host)
            except ValueError:
                issues.add(where, f"a STATIC cluster needs IP addresses, got {endpoint.address.host!r}")


def _protocol_options(issues: Issues, msg: Any,
                      path: str) -> tuple[float | None, Http2Options | None, str | None]:
    """(pool idle timeout, HTTP/2 settings when the cluster may speak HTTP/2, the path of its
    auto_config when ALPN chooses), from the cluster's protocol options extension or from the
    deprecated fields on the cluster itself (Envoy refuses both at once)."""
    options = None
    http2: Http2Options | None = None
    auto_at: str | None = None
    legacy = msg.common_http_protocol_options if msg.HasField("common_http_protocol_options") else None
    if legacy is not None:
        _check_common_options(issues, legacy, child(path, "common_http_protocol_options"))
        options = legacy
    if msg.HasField("http2_protocol_options"):
        legacy_path = child(path, "http2_protocol_options")
        http2 = protocols.http2_options(issues, msg.http2_protocol_options, legacy_path)
    ext_path = child(path, "typed_extension_protocol_options")
    for key in sorted(msg.typed_extension_protocol_options):
        key_path = f"{ext_path}[{key}]"
        if key != _HTTP_OPTIONS_KEY:
            issues.add(key_path, UNSUPPORTED)
            continue
        http = unpack(issues, msg.typed_extension_protocol_options[key], key_path, _HTTP_OPTIONS_TYPES)
        if http is None:
            continue
        common, h2 = _http_options(issues, http, key_path)
        if http.HasField("auto_config"):
            auto_at = child(key_path, "auto_config")
        if common is not None:
            if legacy is not None:
                issues.add(child(path, "common_http_protocol_options"), f"cannot be used with {key}")
            options = common
        if h2 is not None:
            if http2 is not None:
                issues.add(child(path, "http2_protocol_options"), f"cannot be used with {key}")
            http2 = h2
    if options is None:
        return _ENVOY_POOL_IDLE_TIMEOUT, http2, auto_at
    return timeout(options, "idle_timeout", _ENVOY_POOL_IDLE_TIMEOUT), http2, auto_at


def _http_options(issues: Issues, msg: Any, path: str) -> tuple[Any | None, Http2Options | None]:
    """An upstreams.http.v3.HttpProtocolOptions: (its common options if set, HTTP/2 settings if the
    explicit protocol is HTTP/2 or ALPN may choose it). use_downstream_protocol_config is refused."""
    issues.fields(msg, path, {"common_http_protocol_options", "explicit_http_config", "auto_config"})
    http2 = None
    if msg.HasField("auto_config"):
        http2 = _auto_config(issues, msg.auto_config, child(path, "auto_config"))
    elif msg.HasField("explicit_http_config"):
        explicit_path = child(path, "explicit_http_config")
        explicit = msg.explicit_http_config
        kind = explicit.WhichOneof("protocol_config")
        if kind == "http_protocol_options":
            # Every HTTP/1 knob (header case, absolute URLs, trailers, ...) changes behaviour.
            issues.fields(explicit.http_protocol_options, child(explicit_path, kind), ())
        elif kind == "http2_protocol_options":
            opts = explicit.http2_protocol_options
            http2 = protocols.http2_options(issues, opts, child(explicit_path, kind))
        else:
            issues.fields(explicit, explicit_path, ())
    if not msg.HasField("common_http_protocol_options"):
        return None, http2
    common = msg.common_http_protocol_options
    _check_common_options(issues, common, child(path, "common_http_protocol_options"))
    return common, http2


def _auto_config(issues: Issues, msg: Any, path: str) -> Http2Options:
    """An AutoHttpConfig: HTTP/2 or HTTP/1.1 by ALPN. HTTP/3 (and the alternate protocols cache that
    finds it) are refused by field; the HTTP/1 options only empty, as in explicit_http_config."""
    issues.fields(msg, path, {"http_protocol_options", "http2_protocol_options"})
    if msg.HasField("http_protocol_options"):
        issues.fields(msg.http_protocol_options, child(path, "http_protocol_options"), ())
    if not msg.HasField("http2_protocol_options"):
        return DEFAULT_HTTP2
    return protocols.http2_options(issues, msg.http2_protocol_options, child(path, "http2_protocol_options"))


def _check_common_options(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"idle_timeout"})


def tcp_keepalive(issues: Issues, msg: Any, path: str) -> TcpKeepalive | None:
    """upstream_connection_options.tcp_keepalive; the other connection options (a local interface
    name, happy eyeballs) are refused. Envoy takes any uint32 and then fails each connect whose
    setsockopt the kernel refuses; meshpy refuses such values here instead."""
    if not msg.HasField("upstream_connection_options"):
        return None
    options, where = msg.upstream_connection_options, child(path, "upstream_connection_options")
    issues.fields(options, where, {"tcp_keepalive"})
    if not options.HasField("tcp_keepalive"):
        return None
    ka, where = options.tcp_keepalive, child(where, "tcp_keepalive")
    values: list[int | None] = []
    for name, limit in (("keepalive_probes", KEEPALIVE_MAX_PROBES), ("keepalive_time", KEEPALIVE_MAX_SECONDS),
                        ("keepalive_interval", KEEPALIVE_MAX_SECONDS)):
        value = wrapped(ka, name, None)
        if value is not None and not 1 <= value <= limit:
            issues.add(child(where, name), f"must be from 1 to {limit}, got {value}")
        values.append(value)
    probes, time, interval = values
    return TcpKeepalive(probes=probes, time=None if time is None else float(time),
                        interval=None if interval is None else float(interval))


def endpoints_from(issues: Issues, cla: Any, path: str) -> tuple[Endpoint, ...]:
    """A ClusterLoadAssignment's endpoints in one tuple, each with its group (priority, locality and
    its weight, the assignment's overprovisioning factor: meshpy.model.endpoints)."""
    issues.fields(cla, path, {"cluster_name", "endpoints", "policy"})
    overprovisioning = translate_lb.assignment_overprovisioning(issues, cla, path)
    endpoints = []
    for i, locality in enumerate(cla.endpoints):
        locality_path = item(child(path, "endpoints"), i)
        issues.fields(locality, locality_path,
                      {"lb_endpoints", "locality", "load_balancing_weight", "priority"})
        group = translate_lb.endpoint_group(issues, locality, locality_path, overprovisioning)
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            endpoint = _lb_endpoint(issues, lb_endpoint, item(child(locality_path, "lb_endpoints"), j), group)
            if endpoint is not None:
                endpoints.append(endpoint)
    return tuple(endpoints)


def _lb_endpoint(issues: Issues, msg: Any, path: str, group: EndpointGroup) -> Endpoint | None:
    issues.fields(msg, path, {"endpoint", "health_status", "load_balancing_weight", "metadata"})
    if msg.health_status not in _HEALTH_USABLE:
        # Envoy keeps unhealthy hosts for panic routing and degraded ones as a fallback; meshpy has
        # no host health in the model, so only hosts that are usable as they are can be accepted.
        issues.add(child(path, "health_status"), "only UNKNOWN and HEALTHY are supported by meshpy")
    if not msg.HasField("endpoint"):
        issues.add(child(path, "endpoint"), "is required")
        return None
    endpoint_path = child(path, "endpoint")
    issues.fields(msg.endpoint, endpoint_path, {"address", "hostname", "health_check_config"})
    hostname, target = translate_lb.endpoint_details(issues, msg.endpoint, endpoint_path)
    address_path = child(endpoint_path, "address")
    if not msg.endpoint.HasField("address"):
        issues.add(address_path, "is required")
        return None
    address = socket_address(issues, msg.endpoint.address, address_path)
    if msg.endpoint.address.HasField("pipe"):
        if not address.path:
            return None  # (said by socket_address)
    elif address.port == 0:
        issues.add(child(address_path, "socket_address.port_value"), "must be set")
    weight = 1
    if msg.HasField("load_balancing_weight"):
        weight = msg.load_balancing_weight.value
        if weight < 1:
            issues.add(child(path, "load_balancing_weight"), "must be at least 1")
            weight = 1
    return Endpoint(address=address, weight=weight, group=group, hostname=hostname, health_target=target)


# Cluster.DnsLookupFamily by number (AUTO, left out, is Envoy's default: IPv6 first).
_FAMILIES: tuple[DnsLookupFamily, ...] = ("auto", "v4_only", "v6_only", "v4_preferred", "all")


def _dns_refresh_rate(issues: Issues, msg: Any, path: str) -> float:
    """Envoy's rule is `gt: 1ms`, not just positive: a refresh every microsecond is a DNS flood."""
    rate: float = positive_duration(issues, msg, "dns_refresh_rate", path, DEFAULT_DNS_REFRESH)
    if 0 < rate <= 0.001:
        issues.add(child(path, "dns_refresh_rate"), "must be greater than 1ms")
        return DEFAULT_DNS_REFRESH
    return rate
