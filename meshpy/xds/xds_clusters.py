"""A static cluster of the bootstrap read as the way to an xDS server: the cluster an ADS config, a
per-type gRPC config source (envoy_grpc) or a REST config source (cluster_names) names.

Such a cluster carries the xDS conversation and nothing else in meshpy: it is read here (its one
address, its connect timeout, its TLS, whether it speaks HTTP/2) and kept out of the data plane's
clusters. Its transport_socket is read as any cluster's UpstreamTlsContext (meshpy.xds.ads_tls makes a
gRPC stream's TLS with it), except that its secrets cannot come over SDS: they would come over a stream
that needs them first.
"""

from __future__ import annotations

from typing import Any

from meshpy.model.types import DEFAULT_CONNECT_TIMEOUT, XdsServer
from meshpy.model.unix_address import grpc_target
from meshpy.xds.translate_base import Issues, child, item, positive_duration, socket_address
from meshpy.xds.translate_clusters import tcp_keepalive, upstream_tls
from meshpy.xds.translate_tls import UpstreamTlsContext

# What locates the server and what Envoy needs to reach it. circuit_breakers and
# max_requests_per_connection bound connections and requests: one stream on one connection fits any
# limit of 1 or more (a 0 is refused); tcp_keepalive is applied where meshpy makes the connection (TLS)
# and means nothing on a Unix socket, as in Envoy.
_FIELDS = frozenset(
    {"name", "type", "connect_timeout", "load_assignment", "typed_extension_protocol_options",
     "http2_protocol_options", "alt_stat_name", "transport_socket", "circuit_breakers",
     "max_requests_per_connection", "upstream_connection_options"}
)
_STATIC, _STRICT_DNS, _LOGICAL_DNS, _EDS = 0, 1, 2, 3
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def no_sds_reason(role: str) -> str:
    if role == "the ADS cluster":
        return ("the ADS cluster's secrets cannot come over SDS: SDS comes over the stream this cluster "
                "carries (give files, inline PEM or a static secret)")
    return (f"{role}'s secrets cannot come over SDS in meshpy: the stream that would bring them needs them "
            "first (give files, inline PEM or a static secret)")


def is_eds(cluster: Any) -> bool:
    return bool(cluster.type == _EDS)


def server(issues: Issues, bootstrap: Any, index: int, role: str) -> XdsServer | None:
    """static_resources.clusters[index] as an xDS server, or None (with issues) when it cannot be one.
    `role` names the cluster in the reasons ("the ADS cluster")."""
    cluster = bootstrap.static_resources.clusters[index]
    where = item("static_resources.clusters", index)
    before = len(issues.items)
    issues.fields(cluster, where, _FIELDS)
    secrets = {secret.name: secret for secret in bootstrap.static_resources.secrets}
    tls = upstream_tls(issues, cluster, where, secrets)
    if tls is not None:
        _no_sds(issues, cluster.transport_socket.typed_config, child(where, "transport_socket.typed_config"),
                role)
    timeout = positive_duration(issues, cluster, "connect_timeout", where, DEFAULT_CONNECT_TIMEOUT)
    if cluster.type not in (_STATIC, _STRICT_DNS, _LOGICAL_DNS):
        issues.add(child(where, "type"), f"{role} must be STATIC, STRICT_DNS or LOGICAL_DNS")
    hosts = [
        (lb.endpoint.address, child(item(child(item(child(where, "load_assignment.endpoints"), i),
                                                "lb_endpoints"), j), "endpoint.address"))
        for i, group in enumerate(cluster.load_assignment.endpoints)
        for j, lb in enumerate(group.lb_endpoints)
    ]
    if len(hosts) != 1:
        issues.add(child(where, "load_assignment"), f"{role} needs one endpoint, got {len(hosts)}")
        return None
    # A pipe (Istio's xds-grpc cluster, SPIRE's agent: a Unix socket) becomes a `unix:` gRPC target.
    address = socket_address(issues, *hosts[0])
    if address.path and cluster.type != _STATIC:
        issues.add(child(where, "type"), "a pipe address is not resolved by DNS: the cluster is STATIC")
    _one_stream_fits(issues, cluster, where, role)
    keepalive = tcp_keepalive(issues, cluster, where)
    if keepalive is not None and tls is None and not address.path:
        # Plaintext, gRPC's own socket carries the stream: no TCP option of meshpy's reaches it.
        issues.add(child(where, "upstream_connection_options.tcp_keepalive"),
                   f"on a plaintext connection of {role} over TCP is not supported by meshpy (it is over "
                   "TLS and on a Unix socket)")
    if len(issues.items) > before:
        return None
    return XdsServer(target=grpc_target(address), cluster=cluster.name, tls=tls, connect_timeout=timeout,
                     tcp_keepalive=keepalive if tls is not None else None, http2=_speaks_http2(cluster))


def _speaks_http2(cluster: Any) -> bool:
    if cluster.HasField("http2_protocol_options"):
        return True
    options = cluster.typed_extension_protocol_options.get(_HTTP_OPTIONS)
    if options is None:
        return False
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    msg = http_protocol_options_pb2.HttpProtocolOptions()
    return bool(options.Unpack(msg) and msg.explicit_http_config.HasField("http2_protocol_options"))


def _one_stream_fits(issues: Issues, cluster: Any, path: str, role: str) -> None:
    """The cluster's limits: any that lets one connection carry one stream changes nothing."""
    if cluster.HasField("max_requests_per_connection") and cluster.max_requests_per_connection.value == 0:
        issues.add(child(path, "max_requests_per_connection"), "must be at least 1")
    if cluster.HasField("circuit_breakers"):
        issues.fields(cluster.circuit_breakers, child(path, "circuit_breakers"), {"thresholds"})
    for i, t in enumerate(cluster.circuit_breakers.thresholds):
        at = item(child(path, "circuit_breakers.thresholds"), i)
        issues.fields(t, at, {"priority", "max_connections", "max_pending_requests", "max_requests",
                              "max_retries", "track_remaining"})
        for name in ("max_connections", "max_requests"):
            if t.HasField(name) and getattr(t, name).value == 0:
                stream = "the ADS stream" if role == "the ADS cluster" else "its xDS stream"
                issues.add(child(at, name), f"0 would stop {stream}")


def _no_sds(issues: Issues, typed_config: Any, path: str, role: str) -> None:
    """Refuse the secrets of the cluster's UpstreamTlsContext that would come over SDS (Envoy waits for
    them for ever, or crashes): each one named by its field."""
    context = UpstreamTlsContext()
    typed_config.Unpack(context)
    common, at = context.common_tls_context, child(path, "common_tls_context")
    refs = [(ref, item(child(at, "tls_certificate_sds_secret_configs"), i))
            for i, ref in enumerate(common.tls_certificate_sds_secret_configs)]
    if common.HasField("validation_context_sds_secret_config"):
        refs.append((common.validation_context_sds_secret_config,
                     child(at, "validation_context_sds_secret_config")))
    combined = common.combined_validation_context
    if combined.HasField("validation_context_sds_secret_config"):
        refs.append((combined.validation_context_sds_secret_config,
                     child(at, "combined_validation_context.validation_context_sds_secret_config")))
    for ref, where in refs:
        if not ref.HasField("sds_config"):
            continue
        if ref.sds_config.WhichOneof("config_source_specifier") in ("path", "path_config_source"):
            issues.add(child(where, "sds_config"), f"secrets from a file for {role} are not supported by "
                                                   "meshpy (give the certificate files, inline PEM or a "
                                                   "static secret)")
        else:
            issues.add(child(where, "sds_config"), no_sds_reason(role))
