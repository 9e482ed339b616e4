"""The dynamic part of an Envoy bootstrap read into an `XdsSource`: `dynamic_resources` (the ADS stream,
and where listeners and clusters come from), `node`, the RTDS layers that do not take their Runtime over
ADS, and the static clusters that xDS servers are reached through.

lds_config and cds_config say `ads: {}` or give a config source of their own: a gRPC stream per type,
REST polling or a file (meshpy.xds.config_sources reads them). ads_config may be left out when nothing
comes over ADS. A bootstrap without dynamic_resources still has an XdsSource when one of its static
listeners or clusters fetches something (its secrets from an SDS server such as SPIRE's agent, its
routes over RDS) or an RTDS layer does: then there is no ADS stream, only those conversations.

The cluster named by ads_config's `envoy_grpc.cluster_name` (and any cluster a config source names)
carries xDS and nothing else: meshpy.xds.xds_clusters reads it, and it is kept out of the data plane's
clusters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.model.types import ADS_SOURCE, DEFAULT_CONNECT_TIMEOUT, ApiSource, XdsServer, XdsSource
from meshpy.xds.config_sources import (
    ENVOY_DEFAULT_FETCH_TIMEOUT,
    Fetch,
    Servers,
    grpc_service,
    rate_limit,
    read,
)
from meshpy.xds.translate_base import Issues, child, item

_DYNAMIC = frozenset({"ads_config", "lds_config", "cds_config"})
# `set_node_on_first_message_only` changes nothing here: meshpy always sends the node first only.
_API = frozenset({"api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only",
                  "rate_limit_settings"})
_GRPC, _DELTA_GRPC = 2, 3  # ApiConfigSource.ApiType numbers
_AUTO, _V3 = 0, 2  # ApiVersion: AUTO (left out) is V3 to Envoy now; V2 is refused there too


def servers_of(msg: Any) -> Servers:
    """The static clusters of the bootstrap `msg` as config sources name them."""
    return Servers(ads=msg.dynamic_resources.HasField("ads_config"), bootstrap=msg)


def xds_source(issues: Issues, msg: Any, servers: Servers | None = None) -> XdsSource | None:
    """The bootstrap's xDS settings, or None when nothing is fetched (static resources that fetch
    something add theirs with `with_held`; meshpy.xds.translate sets the `servers` they may name)."""
    servers = servers if servers is not None else servers_of(msg)
    # (An RTDS layer's need of a node is said by meshpy.xds.translate_runtime.)
    runtime = _runtime_sources(issues, msg, servers)
    if not msg.HasField("dynamic_resources"):
        if not runtime:
            return None
        return XdsSource(server="", lds=False, cds=False, node_json=_node_json(msg),
                         initial_fetch_timeout=_longest(f for _, f in runtime),
                         runtime_sources=_not_ads(runtime))
    dyn = msg.dynamic_resources
    path = "dynamic_resources"
    issues.fields(dyn, path, _DYNAMIC)
    lds, cds = (read(issues, getattr(dyn, name), child(path, name), servers) if dyn.HasField(name) else None
                for name in ("lds_config", "cds_config"))
    fetch = [f.timeout for f in (lds, cds) if f is not None and f.timeout != ENVOY_DEFAULT_FETCH_TIMEOUT]
    if not msg.node.id:
        issues.add("node.id", "required with dynamic_resources: the control plane knows proxies by it")
    else:
        _node_for(issues, msg, [f.source for f in (lds, cds) if f is not None])
    ads = _ads(issues, msg, servers) if dyn.HasField("ads_config") else _Ads()
    return XdsSource(
        server=ads.server.target if ads.server is not None else "",
        tls=ads.server.tls if ads.server is not None else None,
        connect_timeout=ads.server.connect_timeout if ads.server is not None else DEFAULT_CONNECT_TIMEOUT,
        tcp_keepalive=ads.server.tcp_keepalive if ads.server is not None else None,
        delta=ads.delta,
        node_json=_node_json(msg),
        lds=lds is not None,
        cds=cds is not None,
        initial_fetch_timeout=fetch[0] if fetch else ENVOY_DEFAULT_FETCH_TIMEOUT,
        backoff_base=ads.backoff[0],
        backoff_max=ads.backoff[1],
        initial_metadata=ads.metadata,
        rate_limit=ads.rate_limit,
        lds_source=lds.source if lds is not None else ADS_SOURCE,
        cds_source=cds.source if cds is not None else ADS_SOURCE,
        runtime_sources=_not_ads(runtime),
    )


def with_held(issues: Issues, msg: Any, xds: XdsSource | None, held: list[Fetch]) -> XdsSource:
    """`xds` (None: a bootstrap that fetched nothing so far) with the static resources that wait for
    what `held` says. Without dynamic_resources, initialization waits for them (their initial fetch
    timeouts: Envoy's server waits for each of its static resources' subscriptions)."""
    if xds is None or not msg.HasField("dynamic_resources") or msg.node.id:  # (no id: said already)
        _node_for(issues, msg, [f.source for f in held])
    if xds is None:
        return XdsSource(server="", lds=False, cds=False, node_json=_node_json(msg),
                         initial_fetch_timeout=_longest(held))
    if msg.HasField("dynamic_resources"):
        return xds
    timeout = _longest([*held, Fetch(ADS_SOURCE, xds.initial_fetch_timeout)])
    return replace(xds, initial_fetch_timeout=timeout)


def _node_json(msg: Any) -> str:
    return str(json_format.MessageToJson(msg.node, indent=None, sort_keys=True))


_NO_NODE = ("node 'id' and 'cluster' are required by a config source other than ADS (Envoy: \"Set it "
            "either in 'node' config or via --service-node and --service-cluster\")")


def _node_for(issues: Issues, msg: Any, sources: Iterable[ApiSource]) -> None:
    """Envoy wants the node's id and cluster for every subscription that is not over ADS (said once)."""
    said = any(i.reason == _NO_NODE for i in issues.items)
    if not (msg.node.id and msg.node.cluster) and any(s.protocol != "ads" for s in sources) and not said:
        issues.add("node", _NO_NODE)


def _longest(fetches: Iterable[Fetch]) -> float | None:
    """How long initialization waits: Envoy waits for each subscription its own initial fetch time."""
    times = [f.timeout for f in fetches]
    if not times or None in times:
        return None if times else ENVOY_DEFAULT_FETCH_TIMEOUT
    return max(t for t in times if t is not None)


def _not_ads(runtime: list[tuple[str, Fetch]]) -> tuple[tuple[str, ApiSource], ...]:
    return tuple((name, f.source) for name, f in runtime if f.source.protocol != "ads")


def _runtime_sources(issues: Issues, msg: Any, servers: Servers) -> list[tuple[str, Fetch]]:
    """Each RTDS layer's resource name and where it comes from (meshpy.xds.translate_runtime reads the
    rest of the layer)."""
    found = []
    for i, layer in enumerate(msg.layered_runtime.layers):
        if layer.HasField("rtds_layer"):
            at = f"{item('layered_runtime.layers', i)}.rtds_layer.rtds_config"
            found.append((layer.rtds_layer.name, read(issues, layer.rtds_layer.rtds_config, at, servers)))
    return found


class _Ads:
    """What ads_config says: the server, and how the stream runs."""

    def __init__(self, server: XdsServer | None = None, delta: bool = False,
                 metadata: tuple[tuple[str, str], ...] = (), backoff: tuple[float, float] = (0.5, 30.0),
                 rate_limit: tuple[int, float] | None = None) -> None:
        self.server, self.delta, self.metadata, self.backoff = server, delta, metadata, backoff
        self.rate_limit = rate_limit


def _ads(issues: Issues, msg: Any, servers: Servers) -> _Ads:
    ads = msg.dynamic_resources.ads_config
    path = "dynamic_resources.ads_config"
    issues.fields(ads, path, _API)
    if ads.api_type not in (_GRPC, _DELTA_GRPC):
        issues.add(child(path, "api_type"), "only GRPC and DELTA_GRPC are supported by meshpy")
    if ads.transport_api_version not in (_AUTO, _V3):
        issues.add(child(path, "transport_api_version"), "must be V3 (or left out)")
    limit = rate_limit(issues, ads, path)
    services = ads.grpc_services
    if len(services) != 1:
        issues.add(child(path, "grpc_services"),
                   f"exactly one gRPC service is supported by meshpy, got {len(services)}")
        return _Ads(rate_limit=limit)
    at = item(child(path, "grpc_services"), 0)
    server, metadata, backoff = grpc_service(issues, services[0], at, servers, "the ADS cluster")
    return _Ads(server, ads.api_type == _DELTA_GRPC, metadata, backoff, limit)


def ads_cluster_name(msg: Any) -> str | None:
    """The static cluster the bootstrap's ADS stream goes through, if it names one."""
    if not msg.HasField("dynamic_resources"):
        return None
    services = msg.dynamic_resources.ads_config.grpc_services
    if services and services[0].HasField("envoy_grpc"):
        return str(services[0].envoy_grpc.cluster_name)
    return None


def short_form(server: str, node_id: str, node_cluster: str = "", delta: bool = False) -> XdsSource:
    """`meshpy run --xds HOST:PORT --node-id ID [--node-cluster NAME]` as an XdsSource."""
    node: dict[str, str] = {"id": node_id}
    if node_cluster:
        node["cluster"] = node_cluster
    return XdsSource(server=server, delta=delta, node_json=json.dumps(node, sort_keys=True))
