"""What a Listener or Cluster needs from xDS before it can serve: the RouteConfiguration names its
connection manager asks for over RDS, the ClusterLoadAssignment an EDS cluster asks for, the Secrets its
TLS contexts ask for over SDS, each with the ConfigSource that says where it comes from. Shared by the
bootstrap reader (static resources that depend on xDS) and the xDS client's store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshpy.model.routes import RouteConfig
from meshpy.model.types import ApiSource, Endpoint
from meshpy.xds.config_sources import Fetch, Servers, read
from meshpy.xds.translate_base import Issues, child

V = TypeVar("V")
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EDS = 3  # Cluster.DiscoveryType.EDS
NO_ROUTES = RouteConfig(name="", virtual_hosts=())


class Ref(NamedTuple):
    """A resource named by a Listener or Cluster, with the ConfigSource to fetch it from and where that
    ConfigSource is in the resource (a path relative to it)."""

    name: str
    source: Any  # envoy.config.core.v3.ConfigSource
    path: str


def _chains(msg: Any) -> list[tuple[Any, str]]:
    chains = [(c, f"filter_chains[{i}]") for i, c in enumerate(msg.filter_chains)]
    if msg.HasField("default_filter_chain"):
        chains.append((msg.default_filter_chain, "default_filter_chain"))
    return chains


def rds_refs(msg: Any) -> list[Ref]:
    """The RouteConfigurations a Listener asks for through RDS."""
    refs = []
    for i, chain in enumerate(msg.filter_chains):
        at = f"filter_chains[{i}]"
        for j, f in enumerate(chain.filters):
            if f.typed_config.TypeName() == _HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                if f.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    refs.append(Ref(str(hcm.rds.route_config_name), hcm.rds.config_source,
                                    f"{at}.filters[{j}].typed_config.rds.config_source"))
    return refs


def rds_names(msg: Any) -> list[str]:
    """The RouteConfiguration names a Listener asks for through RDS."""
    return [r.name for r in rds_refs(msg)]


_TLS = {"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": tls_pb2.DownstreamTlsContext,
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": tls_pb2.UpstreamTlsContext}


def _sds_in(socket: Any, path: str) -> list[Ref]:
    cls = _TLS.get(socket.typed_config.TypeName())
    if cls is None:
        return []
    context = cls()
    if not socket.typed_config.Unpack(context):
        return []
    common, at = context.common_tls_context, f"{path}.typed_config.common_tls_context"
    refs = [(r, f"{at}.tls_certificate_sds_secret_configs[{i}]")
            for i, r in enumerate(common.tls_certificate_sds_secret_configs)]
    if common.HasField("validation_context_sds_secret_config"):
        refs.append((common.validation_context_sds_secret_config,
                     f"{at}.validation_context_sds_secret_config"))
    combined = common.combined_validation_context
    if combined.HasField("validation_context_sds_secret_config"):
        refs.append((combined.validation_context_sds_secret_config,
                     f"{at}.combined_validation_context.validation_context_sds_secret_config"))
    return [Ref(str(r.name), r.sds_config, f"{where}.sds_config")
            for r, where in refs if r.HasField("sds_config")]


def sds_refs(msg: Any) -> list[Ref]:
    """The Secrets a Listener's or Cluster's TLS contexts ask for over SDS (static secrets, named
    without an sds_config, are the bootstrap's own)."""
    if hasattr(msg, "filter_chains"):
        return [r for c, at in _chains(msg) if c.HasField("transport_socket")
                for r in _sds_in(c.transport_socket, f"{at}.transport_socket")]
    return _sds_in(msg.transport_socket, "transport_socket") if msg.HasField("transport_socket") else []


def sds_names(msg: Any) -> list[str]:
    """The Secret names a Listener's or Cluster's TLS contexts ask for over SDS."""
    return [r.name for r in sds_refs(msg)]


def eds_ref(msg: Any) -> Ref | None:
    """The ClusterLoadAssignment an EDS Cluster asks for, or None for other clusters."""
    if msg.type != _EDS:
        return None
    return Ref(str(msg.eds_cluster_config.service_name or msg.name), msg.eds_cluster_config.eds_config,
               "eds_cluster_config.eds_config")


def eds_name(msg: Any) -> str | None:
    """The ClusterLoadAssignment name an EDS Cluster asks for, or None for other clusters."""
    ref = eds_ref(msg)
    return None if ref is None else ref.name


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


def fetches(refs: Iterable[Ref], servers: Servers, parent: ApiSource | None, issues: Issues | None = None,
            at: str = "") -> list[tuple[str, Fetch]]:
    """Each ref's name with where it comes from; `parent`: where the resource naming them came from
    (None for a static one). The refs' problems go to `issues`, with the refs' paths under `at`."""
    into = issues if issues is not None else Issues()
    return [(r.name, read(into, r.source, child(at, r.path), servers, parent)) for r in refs]
