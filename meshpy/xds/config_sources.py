"""Envoy's ConfigSource (where a type of xDS resource comes from) read into the model's ApiSource.

A ConfigSource says `ads: {}` (the ADS stream), `api_config_source` (a stream of its own per resource
type over GRPC or DELTA_GRPC, or REST polling of DiscoveryRequest JSON every refresh_delay), `path` or
`path_config_source` (a file holding a DiscoveryResponse, read again when it changes), or `self` (the
source the resource naming it came from). Envoy's checks come with Envoy's words: one gRPC service and
no cluster_names for gRPC, one cluster name and no gRPC service for REST, refresh_delay required for
REST, and the cluster named must be a static, non-EDS cluster of the bootstrap (`Servers`: such a
cluster is then read as the way to an xDS server, meshpy.xds.xds_clusters).

The same reader serves the bootstrap (lds_config, cds_config, an RTDS layer's rtds_config, the config
sources of static listeners and clusters) and the xDS client's store (the RDS, EDS and SDS config
sources of the resources a control plane sends), so that both refuse the same things.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshpy.model.types import ADS_SOURCE, ApiSource, XdsServer, XdsSource
from meshpy.xds import xds_clusters
from meshpy.xds.translate_base import Issues, child, item, positive_duration, seconds, wrapped

ENVOY_DEFAULT_FETCH_TIMEOUT = 15.0
REST, GRPC, DELTA_GRPC = 1, 2, 3  # ApiConfigSource.ApiType numbers
_AGGREGATED = {5: "AGGREGATED_GRPC", 6: "AGGREGATED_DELTA_GRPC"}  # xdstp:// collections
_AUTO, _V2, _V3 = 0, 1, 2  # ApiVersion: AUTO (left out) is V3 to Envoy now
_SOURCE_FIELDS = frozenset({"ads", "api_config_source", "path_config_source", "path", "self",
                            "resource_api_version", "initial_fetch_timeout"})
# refresh_delay and request_timeout mean something for REST only, rate_limit_settings and
# set_node_on_first_message_only for gRPC only: Envoy takes and ignores them on the other kind, as here.
_API_FIELDS = frozenset({"api_type", "transport_api_version", "cluster_names", "grpc_services",
                         "refresh_delay", "request_timeout", "rate_limit_settings",
                         "set_node_on_first_message_only"})
_GRPC_TYPES = "envoy.config.core.v3.ApiConfigSource::(AGGREGATED_)(DELTA_)GRPC"
_API = "envoy.config.core.v3.ApiConfigSource"
_DEFAULT_BACKOFF = (0.5, 30.0)
_ROLE = "a config source's cluster"  # how the reasons name a cluster that carries xDS


@dataclass(frozen=True, slots=True)
class Fetch:
    """A ConfigSource read: where from, and its initial_fetch_timeout (None: wait for ever)."""

    source: ApiSource
    timeout: float | None = ENVOY_DEFAULT_FETCH_TIMEOUT
    given: bool = False  # initial_fetch_timeout was written (else Envoy's default, 15 s)


class Servers:
    """The static clusters a config source may name. From a bootstrap (`of_bootstrap`) each is read when
    first named, with its issues reported then, and remembered as `named` (the data plane does not get
    it); in the xDS client's store (`known`) only those that read cleanly are there."""

    def __init__(self, ads: bool, bootstrap: Any | None = None, known: Iterable[XdsServer] = ()) -> None:
        self.ads = ads  # the bootstrap has an ADS stream for `ads: {}` sources
        self._bootstrap = bootstrap
        self._read: dict[str, XdsServer | None] = {s.cluster: s for s in known}
        self.named: set[str] = set()

    def find(self, issues: Issues, name: str, path: str, role: str = _ROLE) -> XdsServer | None:
        if self._bootstrap is None:
            found = self._read.get(name)
            if found is None:
                issues.add(path, f"{_API} must have a statically defined non-EDS cluster: '{name}' does not "
                                 "exist, was added via api, or is an EDS cluster (or meshpy cannot reach "
                                 "xDS through it: one endpoint, no SDS secrets)")
            return found
        if name in self._read:
            return self._read[name]
        for i, cluster in enumerate(self._bootstrap.static_resources.clusters):
            if cluster.name != name:
                continue
            self.named.add(name)
            if xds_clusters.is_eds(cluster):
                issues.add(path, f"{_API} must have a statically defined non-EDS cluster: '{name}' does "
                                 "not exist, was added via api, or is an EDS cluster")
                found = None
            else:
                found = xds_clusters.server(issues, self._bootstrap, i, role)
            self._read[name] = found
            return found
        issues.add(path, f"no static cluster named {name!r}")
        return None

    def candidates(self, every: bool = True) -> tuple[XdsServer, ...]:
        """The static clusters config sources have named; with `every`, also every other one that can
        carry xDS (what the config sources of dynamic resources may name)."""
        if self._bootstrap is None:
            return tuple(s for s in self._read.values() if s is not None)
        found = []
        for i, cluster in enumerate(self._bootstrap.static_resources.clusters):
            known, unread = self._read.get(cluster.name), cluster.name not in self._read
            if known is None and every and unread and not xds_clusters.is_eds(cluster):
                known = xds_clusters.server(Issues(), self._bootstrap, i, "")
            if known is not None:
                found.append(known)
        return tuple(found)


def read(issues: Issues, msg: Any, path: str, servers: Servers, parent: ApiSource | None = None) -> Fetch:
    """A ConfigSource at `path`. `parent`: the source of the resource that names it (what `self` means);
    None in a bootstrap."""
    issues.fields(msg, path, _SOURCE_FIELDS)
    if msg.resource_api_version not in (_AUTO, _V3):
        issues.add(child(path, "resource_api_version"), "must be V3 (or left out)")
    timeout: float | None = ENVOY_DEFAULT_FETCH_TIMEOUT
    given = msg.HasField("initial_fetch_timeout")
    if given:
        value = seconds(msg.initial_fetch_timeout)
        if value < 0:
            issues.add(child(path, "initial_fetch_timeout"), "must not be negative")
        timeout = value if value > 0 else None  # 0: wait for ever, as Envoy
    return Fetch(_where_from(issues, msg, path, servers, parent), timeout, given)


def _where_from(issues: Issues, msg: Any, path: str, servers: Servers, parent: ApiSource | None) -> ApiSource:
    kind = msg.WhichOneof("config_source_specifier")
    if kind is None:
        issues.add(path, "Missing config source specifier in envoy::config::core::v3::ConfigSource")
        return ADS_SOURCE
    if kind == "ads":
        if not servers.ads:
            issues.add(child(path, "ads"), "ads: {} needs the bootstrap's dynamic_resources.ads_config")
        return ADS_SOURCE
    if kind == "self":
        issues.fields(msg.self, child(path, "self"), {"transport_api_version"})
        _transport_version(issues, msg.self, child(path, "self"))
        if parent is None:
            issues.add(child(path, "self"), "names where the resource came from: a static one came from "
                                            "no config source")
            return ADS_SOURCE
        return parent
    if kind == "path":
        return _file(issues, msg.path, "", child(path, "path"))
    if kind == "path_config_source":
        where = child(path, kind)
        pcs = msg.path_config_source
        issues.fields(pcs, where, {"path", "watched_directory"})
        watched = ""
        if pcs.HasField("watched_directory"):
            issues.fields(pcs.watched_directory, child(where, "watched_directory"), {"path"})
            watched = pcs.watched_directory.path
        return _file(issues, pcs.path, watched, where)
    return api_source(issues, msg.api_config_source, child(path, kind), servers)


def _file(issues: Issues, file: str, watched: str, path: str) -> ApiSource:
    # Envoy's words; it watches the file's directory, so the file must be there when it starts.
    if not file or not os.path.exists(file):
        issues.add(path, f"paths must refer to an existing path in the system: '{file}' does not exist")
    return ApiSource(protocol="path", path=file, watched_directory=watched)


def _transport_version(issues: Issues, msg: Any, path: str) -> None:
    if msg.transport_api_version == _V2:
        issues.add(child(path, "transport_api_version"), "V2 xDS transport protocol version is deprecated "
                                                          "(must be V3, or left out)")
    elif msg.transport_api_version not in (_AUTO, _V3):
        issues.add(child(path, "transport_api_version"), "must be V3 (or left out)")


def api_source(issues: Issues, api: Any, path: str, servers: Servers) -> ApiSource:
    """An ApiConfigSource (not the ADS one: bootstrap.xds_source reads that)."""
    issues.fields(api, path, _API_FIELDS)
    _transport_version(issues, api, path)
    kind = api.api_type
    if kind in _AGGREGATED:
        issues.add(child(path, "api_type"), f"Unsupported config source {_AGGREGATED[kind]} (xdstp:// "
                                            "collections are not supported by meshpy)")
        return ADS_SOURCE
    if kind not in (REST, GRPC, DELTA_GRPC):
        issues.add(child(path, "api_type"), "REST_LEGACY no longer a supported ApiConfigSource. Please "
                                            "specify an explicit supported api_type")
        return ADS_SOURCE
    if not api.cluster_names and not api.grpc_services:
        issues.add(path, "API configs must have either a gRPC service or a cluster name defined")
        return ADS_SOURCE
    if kind == REST:
        return _rest(issues, api, path, servers)
    if api.cluster_names:
        issues.add(child(path, "cluster_names"), f"{_GRPC_TYPES} must not have a cluster name specified")
    if len(api.grpc_services) > 1:
        issues.add(child(path, "grpc_services"), f"{_GRPC_TYPES} must have no more than 1 gRPC services "
                                                 "specified")
    if not api.grpc_services:
        return ADS_SOURCE
    where = item(child(path, "grpc_services"), 0)
    server, metadata, backoff = grpc_service(issues, api.grpc_services[0], where, servers)
    return ApiSource(protocol="delta" if kind == DELTA_GRPC else "grpc", server=server,
                     initial_metadata=metadata, backoff_base=backoff[0], backoff_max=backoff[1],
                     rate_limit=rate_limit(issues, api, path),
                     node_first_only=api.set_node_on_first_message_only)


def _rest(issues: Issues, api: Any, path: str, servers: Servers) -> ApiSource:
    if api.grpc_services:
        issues.add(child(path, "grpc_services"), f"{_API}, if not a gRPC type, must not have a gRPC service "
                                                 "specified")
    if len(api.cluster_names) != 1:
        issues.add(child(path, "cluster_names"), f"{_API} must have a singleton cluster name specified")
        return ADS_SOURCE
    if not api.HasField("refresh_delay"):
        issues.add(path, "refresh_delay is required for REST API configuration sources")
    delay = seconds(api.refresh_delay)
    if api.HasField("refresh_delay") and delay <= 0:
        # Envoy takes 0 and then divides by it to jitter the next poll.
        issues.add(child(path, "refresh_delay"), "must be greater than 0")
    where = item(child(path, "cluster_names"), 0)
    server = servers.find(issues, api.cluster_names[0], where)
    if server is not None and server.http2:
        issues.add(where, f"cluster {server.cluster!r} speaks HTTP/2: meshpy polls a REST config source over "
                          "HTTP/1.1 only")
    if server is not None and server.tls is not None:
        issues.add(where, f"cluster {server.cluster!r} has TLS: meshpy polls a REST config source in "
                          "plaintext only")
    timeout = positive_duration(issues, api, "request_timeout", path, 1.0)
    return ApiSource(protocol="rest", server=server, refresh_delay=max(delay, 0.0), request_timeout=timeout)


def rate_limit(issues: Issues, api: Any, path: str) -> tuple[int, float] | None:
    """rate_limit_settings: a bucket of `max_tokens`, refilled at `fill_rate` a second (Envoy's defaults:
    100 and 10)."""
    if not api.HasField("rate_limit_settings"):
        return None
    rl, where = api.rate_limit_settings, child(path, "rate_limit_settings")
    issues.fields(rl, where, {"max_tokens", "fill_rate"})
    fill = float(wrapped(rl, "fill_rate", 10.0))
    if fill <= 0:
        issues.add(child(where, "fill_rate"), "must be greater than 0")
    return max(1, int(wrapped(rl, "max_tokens", 100))), max(fill, 1e-3)


def grpc_service(issues: Issues, svc: Any, path: str, servers: Servers, role: str = _ROLE,
                 ) -> tuple[XdsServer | None, tuple[tuple[str, str], ...], tuple[float, float]]:
    """A GrpcService: the server (envoy_grpc's static cluster, or a google_grpc target), the metadata
    sent with the stream, and the reconnect back-off (base, max)."""
    issues.fields(svc, path, {"envoy_grpc", "google_grpc", "initial_metadata"})
    metadata = []
    for i, md in enumerate(svc.initial_metadata):
        at = item(child(path, "initial_metadata"), i)
        issues.fields(md, at, {"key", "value"})
        if not md.key or md.key != md.key.lower() or md.key.startswith(":"):
            issues.add(child(at, "key"), "must be a lower-case gRPC metadata key")
        metadata.append((md.key, md.value))
    if svc.HasField("google_grpc"):
        g = svc.google_grpc
        issues.fields(g, child(path, "google_grpc"), {"target_uri", "stat_prefix"})
        if not g.target_uri:
            issues.add(child(path, "google_grpc.target_uri"), "must not be empty")
        return XdsServer(target=str(g.target_uri)), tuple(metadata), _DEFAULT_BACKOFF
    if not svc.HasField("envoy_grpc"):
        issues.add(path, "envoy_grpc or google_grpc is required")
        return None, tuple(metadata), _DEFAULT_BACKOFF
    eg, eg_path = svc.envoy_grpc, child(path, "envoy_grpc")
    issues.fields(eg, eg_path, {"cluster_name", "retry_policy"})
    server = servers.find(issues, eg.cluster_name, child(eg_path, "cluster_name"), role)
    return server, tuple(metadata), _backoff(issues, eg, child(eg_path, "retry_policy"))


def _backoff(issues: Issues, eg: Any, path: str) -> tuple[float, float]:
    if not eg.HasField("retry_policy"):
        return _DEFAULT_BACKOFF
    policy = eg.retry_policy
    issues.fields(policy, path, {"retry_back_off"})
    off = policy.retry_back_off
    off_path = child(path, "retry_back_off")
    base = positive_duration(issues, off, "base_interval", off_path, 0.5)
    cap = positive_duration(issues, off, "max_interval", off_path, base * 10)
    if cap < base:
        issues.add(child(off_path, "max_interval"), "must be at least base_interval")
    return base, max(cap, base)


def summary(xds: XdsSource) -> str:
    """Where a bootstrap's xDS comes from, in a few words: `127.0.0.1:18000 (sotw)` for ADS, with the
    other config sources after it."""
    parts = []
    if xds.ads:
        tls = ", TLS" if xds.tls is not None else ""
        parts.append(f"{xds.server} ({'delta' if xds.delta else 'sotw'}{tls})")
    for what, source, on in (("listeners", xds.lds_source, xds.lds), ("clusters", xds.cds_source, xds.cds)):
        if on and source.protocol != "ads":
            parts.append(f"{what} over {describe(source)}")
    held = sorted({source for _, source in xds.runtime_sources}, key=describe)
    parts += [f"runtime over {describe(s)}" for s in held]
    if xds.static_resources:
        parts.append(f"{len(xds.static_resources)} static resources waiting for what they fetch")
    return ", ".join(parts) or "nowhere"


def describe(source: ApiSource) -> str:
    """How logs and admin name a source: `ADS`, `grpc xds_cluster`, `rest 127.0.0.1:8080`, `file PATH`."""
    if source.protocol == "ads":
        return "ADS"
    if source.protocol == "path":
        return f"file {source.path}"
    where = source.server.cluster or source.server.target if source.server is not None else "?"
    return f"{source.protocol} {where}"
