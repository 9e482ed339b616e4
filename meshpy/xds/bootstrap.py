"""The dynamic part of an Envoy bootstrap: `dynamic_resources.ads_config`, `node`, and the cluster
that reaches the ADS server, read into an `XdsSource`.

Only ADS is supported (`lds_config` and `cds_config` must say `ads: {}`), as with every control plane
of this field. The cluster named by `envoy_grpc.cluster_name` carries the gRPC stream and nothing
else: it is read here (its address, its connect timeout, its TLS) and kept out of the data plane's
clusters. Its transport_socket is read as any cluster's UpstreamTlsContext (meshpy.xds.ads_tls makes the
stream's TLS with it), except that its secrets cannot come over SDS: they would come over the stream
that needs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.model.tls import ClientTls
from meshpy.model.types import DEFAULT_CONNECT_TIMEOUT, XdsSource
from meshpy.xds.translate_base import Issues, child, item, positive_duration, seconds
from meshpy.xds.translate_clusters import upstream_tls
from meshpy.xds.translate_tls import UpstreamTlsContext

_DYNAMIC = frozenset({"ads_config", "lds_config", "cds_config"})
# `set_node_on_first_message_only` changes nothing here: meshpy always sends the node first only.
_API = frozenset({"api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"})
_CONFIG_SOURCE = frozenset({"ads", "resource_api_version", "initial_fetch_timeout"})
_GRPC, _DELTA_GRPC = 2, 3  # ApiConfigSource.ApiType numbers
_AUTO, _V3 = 0, 2  # ApiVersion: AUTO (left out) is V3 to Envoy now; V2 is refused there too
# Reading the cluster that carries the ADS stream: what locates it and what Envoy needs to reach it.
_ADS_CLUSTER = frozenset(
    {"name", "type", "connect_timeout", "load_assignment", "typed_extension_protocol_options",
     "http2_protocol_options", "alt_stat_name", "transport_socket"}
)
_NO_SDS = ("the ADS cluster's secrets cannot come over SDS: SDS comes over the stream this cluster carries "
           "(give files, inline PEM or a static secret)")
_STATIC, _STRICT_DNS, _LOGICAL_DNS = 0, 1, 2
ENVOY_DEFAULT_FETCH_TIMEOUT = 15.0


def ads_cluster_name(msg: Any) -> str | None:
    """The static cluster the bootstrap's ADS stream goes through, if it names one."""
    if not msg.HasField("dynamic_resources"):
        return None
    services = msg.dynamic_resources.ads_config.grpc_services
    if services and services[0].HasField("envoy_grpc"):
        return str(services[0].envoy_grpc.cluster_name)
    return None


def xds_source(issues: Issues, msg: Any) -> XdsSource | None:
    """The bootstrap's ADS settings, or None for a static bootstrap."""
    if not msg.HasField("dynamic_resources"):
        return None
    dyn = msg.dynamic_resources
    path = "dynamic_resources"
    issues.fields(dyn, path, _DYNAMIC)
    if not dyn.HasField("ads_config"):
        issues.add(child(path, "ads_config"), "required: meshpy takes dynamic resources over ADS only")
        return None
    lds = _config_source(issues, dyn, "lds_config", path)
    cds = _config_source(issues, dyn, "cds_config", path)
    fetch = [t for t in (lds[1], cds[1]) if t != ENVOY_DEFAULT_FETCH_TIMEOUT]
    ads = dyn.ads_config
    ads_path = child(path, "ads_config")
    issues.fields(ads, ads_path, _API)
    if ads.api_type not in (_GRPC, _DELTA_GRPC):
        issues.add(child(ads_path, "api_type"), "only GRPC and DELTA_GRPC are supported by meshpy")
    if ads.transport_api_version not in (_AUTO, _V3):
        issues.add(child(ads_path, "transport_api_version"), "must be V3 (or left out)")
    target, backoff = _grpc_service(issues, msg, ads_path)
    node_id = msg.node.id
    if not node_id:
        issues.add("node.id", "required with dynamic_resources: the control plane knows proxies by it")
    return XdsSource(
        server=target.server,
        tls=target.tls,
        connect_timeout=target.connect_timeout,
        delta=ads.api_type == _DELTA_GRPC,
        node_json=json_format.MessageToJson(msg.node, indent=None, sort_keys=True),
        lds=lds[0],
        cds=cds[0],
        initial_fetch_timeout=fetch[0] if fetch else ENVOY_DEFAULT_FETCH_TIMEOUT,
        backoff_base=backoff[0],
        backoff_max=backoff[1],
    )


def _config_source(issues: Issues, dyn: Any, name: str, path: str) -> tuple[bool, float | None]:
    """(subscribed, initial fetch timeout) for lds_config or cds_config."""
    if not dyn.HasField(name):
        return False, ENVOY_DEFAULT_FETCH_TIMEOUT
    source = getattr(dyn, name)
    where = child(path, name)
    issues.fields(source, where, _CONFIG_SOURCE)
    if not source.HasField("ads"):
        issues.add(where, "only `ads: {}` is supported by meshpy")
    if source.resource_api_version not in (_AUTO, _V3):
        issues.add(child(where, "resource_api_version"), "must be V3 (or left out)")
    if not source.HasField("initial_fetch_timeout"):
        return True, ENVOY_DEFAULT_FETCH_TIMEOUT
    value = seconds(source.initial_fetch_timeout)
    return True, value if value > 0 else None


@dataclass(frozen=True, slots=True)
class _Target:
    server: str = ""  # host:port
    tls: ClientTls | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


def _grpc_service(issues: Issues, msg: Any, ads_path: str) -> tuple[_Target, tuple[float, float]]:
    """Where the ADS server is and how it is reached, and the reconnect back-off (base, max)."""
    services = msg.dynamic_resources.ads_config.grpc_services
    path = child(ads_path, "grpc_services")
    if len(services) != 1:
        issues.add(path, f"exactly one gRPC service is supported by meshpy, got {len(services)}")
        return _Target(), (0.5, 30.0)
    svc = services[0]
    path = item(path, 0)
    issues.fields(svc, path, {"envoy_grpc", "google_grpc"})
    if svc.HasField("google_grpc"):
        g = svc.google_grpc
        issues.fields(g, child(path, "google_grpc"), {"target_uri", "stat_prefix"})
        if not g.target_uri:
            issues.add(child(path, "google_grpc.target_uri"), "must not be empty")
        return _Target(str(g.target_uri)), (0.5, 30.0)
    if not svc.HasField("envoy_grpc"):
        issues.add(path, "envoy_grpc or google_grpc is required")
        return _Target(), (0.5, 30.0)
    eg = svc.envoy_grpc
    eg_path = child(path, "envoy_grpc")
    issues.fields(eg, eg_path, {"cluster_name", "retry_policy"})
    return _cluster_target(issues, msg, eg.cluster_name, child(eg_path, "cluster_name")), _backoff(
        issues, eg, child(eg_path, "retry_policy")
    )


def _backoff(issues: Issues, eg: Any, path: str) -> tuple[float, float]:
    if not eg.HasField("retry_policy"):
        return 0.5, 30.0
    policy = eg.retry_policy
    issues.fields(policy, path, {"retry_back_off"})
    off = policy.retry_back_off
    off_path = child(path, "retry_back_off")
    base = positive_duration(issues, off, "base_interval", off_path, 0.5)
    cap = positive_duration(issues, off, "max_interval", off_path, base * 10)
    if cap < base:
        issues.add(child(off_path, "max_interval"), "must be at least base_interval")
    return base, max(cap, base)


def _cluster_target(issues: Issues, msg: Any, name: str, path: str) -> _Target:
    """The static cluster `name`, which must have exactly one endpoint: host:port, TLS, connect timeout."""
    for i, cluster in enumerate(msg.static_resources.clusters):
        if cluster.name != name:
            continue
        where = item("static_resources.clusters", i)
        issues.fields(cluster, where, _ADS_CLUSTER)
        secrets = {secret.name: secret for secret in msg.static_resources.secrets}
        tls = upstream_tls(issues, cluster, where, secrets)
        if tls is not None:
            at = child(where, "transport_socket.typed_config")
            _no_sds(issues, cluster.transport_socket.typed_config, at)
        timeout = positive_duration(issues, cluster, "connect_timeout", where, DEFAULT_CONNECT_TIMEOUT)
        if cluster.type not in (_STATIC, _STRICT_DNS, _LOGICAL_DNS):
            issues.add(child(where, "type"), "the ADS cluster must be STATIC, STRICT_DNS or LOGICAL_DNS")
        hosts = [
            lb.endpoint.address.socket_address
            for group in cluster.load_assignment.endpoints
            for lb in group.lb_endpoints
        ]
        if len(hosts) != 1:
            reason = f"the ADS cluster needs one endpoint, got {len(hosts)}"
            issues.add(child(where, "load_assignment"), reason)
            return _Target()
        host, port = hosts[0].address, hosts[0].port_value
        return _Target(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", tls, timeout)
    issues.add(path, f"no static cluster named {name!r}")
    return _Target()


def _no_sds(issues: Issues, typed_config: Any, path: str) -> None:
    """Refuse the secrets of the ADS cluster's UpstreamTlsContext that would come over SDS (Envoy waits
    for them for ever, or crashes): each one named by its field."""
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
        if ref.HasField("sds_config"):
            issues.add(child(where, "sds_config"), _NO_SDS)


def short_form(server: str, node_id: str, node_cluster: str = "", delta: bool = False) -> XdsSource:
    """`meshpy run --xds HOST:PORT --node-id ID [--node-cluster NAME]` as an XdsSource."""
    node: dict[str, str] = {"id": node_id}
    if node_cluster:
        node["cluster"] = node_cluster
    return XdsSource(server=server, delta=delta, node_json=json.dumps(node, sort_keys=True))
