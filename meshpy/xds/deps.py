"""What a Listener or Cluster needs from xDS before it can serve: the RouteConfiguration names its
connection manager asks for over RDS, the ClusterLoadAssignment an EDS cluster asks for, the Secrets its
TLS contexts ask for over SDS. Shared by the bootstrap reader (static resources that depend on xDS)
and the xDS client's store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshpy.model.routes import RouteConfig
from meshpy.model.types import Endpoint

V = TypeVar("V")
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EDS = 3  # Cluster.DiscoveryType.EDS
NO_ROUTES = RouteConfig(name="", virtual_hosts=())


def rds_names(msg: Any) -> list[str]:
    """The RouteConfiguration names a Listener asks for through RDS."""
    names = []
    for chain in msg.filter_chains:
        for f in chain.filters:
            if f.typed_config.TypeName() == _HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    names.append(str(hcm.rds.route_config_name))
    return names


_TLS = {"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": tls_pb2.DownstreamTlsContext,
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": tls_pb2.UpstreamTlsContext}


def _sds_in(socket: Any) -> list[str]:
    cls = _TLS.get(socket.typed_config.TypeName())
    if cls is None:
        return []
    context = cls()
    if not socket.typed_config.Unpack(context):
        return []
    common = context.common_tls_context
    refs = [*common.tls_certificate_sds_secret_configs]
    if common.HasField("validation_context_sds_secret_config"):
        refs.append(common.validation_context_sds_secret_config)
    combined = common.combined_validation_context
    if combined.HasField("validation_context_sds_secret_config"):
        refs.append(combined.validation_context_sds_secret_config)
    return [str(r.name) for r in refs if r.HasField("sds_config")]


def sds_names(msg: Any) -> list[str]:
    """The Secret names a Listener's or Cluster's TLS contexts ask for over SDS (static secrets, named
    without an sds_config, are the bootstrap's own)."""
    if hasattr(msg, "filter_chains"):
        chains = [*msg.filter_chains]
        if msg.HasField("default_filter_chain"):
            chains.append(msg.default_filter_chain)
        return [n for c in chains if c.HasField("transport_socket") for n in _sds_in(c.transport_socket)]
    return _sds_in(msg.transport_socket) if msg.HasField("transport_socket") else []


def eds_name(msg: Any) -> str | None:
    """The ClusterLoadAssignment name an EDS Cluster asks for, or None for other clusters."""
    if msg.type != _EDS:
        return None
    return str(msg.eds_cluster_config.service_name or msg.name)


class Defaulting(Mapping[str, V]):
    """`known`, where every other name resolves to `default` and counts as present: lets a Listener or
    Cluster be translated before its routes or endpoints have arrived."""

    def __init__(self, known: Mapping[str, V], default: V) -> None:
        self._known = known
        self._default = default

    def __getitem__(self, key: str) -> V:
        return self._known.get(key, self._default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, key: object) -> bool:
        return True


def any_routes() -> Defaulting[RouteConfig]:
    return Defaulting({}, NO_ROUTES)


def endpoints_or_none(known: Mapping[str, tuple[Endpoint, ...]]) -> Defaulting[tuple[Endpoint, ...]]:
    """The assignments received so far; a name not received yet has no endpoints."""
    return Defaulting(known, ())
