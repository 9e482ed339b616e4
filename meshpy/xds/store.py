"""What an xDS client holds: the resources accepted so far, and how they become one meshpy Config.

Pure and synchronous, so every rule is testable without a stream. An update is all or nothing: the
caller gets a new `XdsStore` (copy on write of the one type that changed) or a `ConfigError` whose
issues name each bad resource (`Cluster demo: connect_timeout: must be greater than 0`), which is
what goes back to the server as the NACK's error_detail. The old store is untouched either way.

Dependencies follow Envoy: listeners name RouteConfigurations (RDS) and EDS clusters name
ClusterLoadAssignments, so those two types are subscribed by name, the names being whatever the
current listeners and clusters need. A listener whose routes have not arrived is warming: its previous
version keeps serving, and a new listener waits, until they do (or the initial fetch time is over,
after which it serves with no routes: 404, as Envoy does). An EDS cluster with no assignment yet has
no endpoints (503), the same answer a warming cluster gives in Envoy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.check import check_references
from meshpy.model.routes import RouteConfig
from meshpy.model.runtime import Entry
from meshpy.model.secrets import SecretMaterial, filled
from meshpy.model.types import ADS_SOURCE, ApiSource, Cluster, Config, Endpoint, Listener, XdsSource
from meshpy.xds.config_sources import Fetch, Servers
from meshpy.xds.deps import (
    NO_ROUTES,
    Ref,
    any_routes,
    eds_ref,
    endpoints_or_none,
    fetches,
    rds_names,
    rds_refs,
    sds_names,
    sds_refs,
)
from meshpy.xds.secrets import SECRET, SecretMessage, material
from meshpy.xds.translate import (
    cluster_from_proto,
    endpoints_from_cla,
    listener_from_proto,
    route_config_from_proto,
)
from meshpy.xds.translate_base import Issues
from meshpy.xds.translate_runtime import runtime_from_proto

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
RUNTIME = _PREFIX + "envoy.service.runtime.v3.Runtime"  # RTDS: the bootstrap's rtds_layers, by name
WILDCARD = (CLUSTER, LISTENER)  # subscribed as a whole; RDS, EDS, SDS and RTDS by name
# Envoy's: what a type depends on comes first (and RTDS before all, as Envoy starts it first)
ORDER = (RUNTIME, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
KIND = {
    LISTENER: "Listener", ROUTE: "RouteConfiguration", CLUSTER: "Cluster", ENDPOINT: "ClusterLoadAssignment",
    SECRET: "Secret", RUNTIME: "Runtime",
}
MESSAGES: dict[str, Any] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: SecretMessage,
    RUNTIME: rtds_pb2.Runtime,
}
def resource_name(type_url: str, msg: Any) -> str:
    return str(msg.cluster_name if type_url == ENDPOINT else msg.name)


def _translated(
    type_url: str, fresh: dict[str, Any], removed: Iterable[str], models: dict[str, Any], translate: Any,
    issues: list[ConfigIssue],
) -> dict[str, Any]:
    for name in removed:
        models.pop(name, None)
    for name, msg in fresh.items():
        try:
            models[name] = translate(msg)
        except ConfigError as err:
            issues += _reject(type_url, name, err)
    return models


def _refs(type_url: str, msg: Any) -> list[Ref]:
    """What a listener or cluster names of `type_url` (RouteConfigurations, a ClusterLoadAssignment,
    Secrets)."""
    if type_url == ROUTE:
        return rds_refs(msg)
    if type_url == SECRET:
        return sds_refs(msg)
    ref = eds_ref(msg)
    return [ref] if ref is not None else []


def _reject(type_url: str, name: str, err: ConfigError) -> list[ConfigIssue]:
    prefix = f"{KIND[type_url]} {name}"
    return [ConfigIssue(f"{prefix}: {i.path}" if i.path else prefix, i.reason) for i in err.issues]


@dataclasses.dataclass(frozen=True, slots=True)
class XdsStore:
    """Accepted resources by type and name, with the models that need nothing else already made."""

    static: Config
    protos: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = dataclasses.field(default_factory=dict)
    endpoints: Mapping[str, tuple[Endpoint, ...]] = dataclasses.field(default_factory=dict)
    secrets: Mapping[str, SecretMaterial] = dataclasses.field(default_factory=dict)
    # RTDS resources' values by name (meshpy.runtime.Runtime takes them from here).
    runtimes: Mapping[str, Mapping[str, Entry]] = dataclasses.field(default_factory=dict)
    # The last cluster models served, by name: a cluster whose new secrets have not arrived keeps these.
    served_clusters: Mapping[str, Cluster] = dataclasses.field(default_factory=dict)
    # Secrets the proxy holds itself (its own identity, meshpy.identity.local): never asked of SDS, and
    # filled in by the app.
    local: frozenset[str] = frozenset()
    # The last listener models served, by name: a listener whose new routes have not arrived keeps these.
    served: Mapping[str, Listener] = dataclasses.field(default_factory=dict)
    # Static resources that depend on xDS (held among the protos): never replaced or removed by it.
    pinned: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    # Where dynamic resources come from, and the static clusters their config sources may name.
    source: XdsSource | None = None

    @classmethod
    def start(cls, static: Config, held: Iterable[tuple[str, str]] = (),
              local: frozenset[str] = frozenset(), source: XdsSource | None = None) -> XdsStore:
        """A store with the bootstrap's static resources that wait for RDS, EDS or SDS (proto JSON);
        `local`: the secrets the proxy holds itself; `source`: the xDS settings (else `static.xds`)."""
        protos: dict[str, dict[str, Any]] = {}
        for type_url, text in held:
            msg = json_format.Parse(text, MESSAGES[type_url]())
            protos.setdefault(type_url, {})[resource_name(type_url, msg)] = msg
        pinned = {t: frozenset(names) for t, names in protos.items()}
        return cls(static=static, protos=protos, pinned=pinned, local=local, source=source)

    def of(self, type_url: str) -> Mapping[str, Any]:
        return self.protos.get(type_url, {})

    def wanted(self, type_url: str, source: ApiSource | None = None) -> frozenset[str]:
        """The names RDS, EDS, SDS or RTDS must subscribe to, following the current listeners and clusters
        (and the bootstrap's RTDS layers); with `source`, those that come from it only."""
        if type_url not in (ROUTE, ENDPOINT, SECRET, RUNTIME):
            raise ValueError(f"{type_url} is subscribed by wildcard")
        return frozenset(n for n, f in self.needs(type_url).items() if source is None or f.source == source)

    def needs(self, type_url: str) -> dict[str, Fetch]:
        """The names of `type_url` (RDS, EDS, SDS, RTDS) needed now, with where each comes from. A name
        asked for from two sources is fetched from the first (in name order of what asks)."""
        if type_url == RUNTIME:
            xds = self.source or self.static.xds
            by_layer = dict(xds.runtime_sources) if xds is not None else {}
            return {n: Fetch(by_layer.get(n, ADS_SOURCE)) for n in sorted(self.static.runtime.rtds_names())}
        servers = self.servers()
        found: dict[str, Fetch] = {}
        kinds = {SECRET: (LISTENER, CLUSTER), ENDPOINT: (CLUSTER,)}.get(type_url, (LISTENER,))
        for kind in kinds:
            for name, msg in sorted(self.of(kind).items()):
                for n, fetch in fetches(_refs(type_url, msg), servers, self.parent(kind, name)):
                    if n not in found and not (type_url == SECRET and n in self.local):
                        found[n] = fetch
        return found

    def servers(self) -> Servers:
        """The static clusters that config sources of dynamic resources may name."""
        xds = self.source or self.static.xds
        return Servers(ads=True) if xds is None else Servers(ads=xds.ads, known=xds.servers)

    def parent(self, type_url: str, name: str) -> ApiSource | None:
        """Where the listener or cluster `name` came from (None: the bootstrap's own)."""
        if name in self.pinned.get(type_url, ()):
            return None
        xds = self.source or self.static.xds
        if xds is None:
            return ADS_SOURCE
        return xds.lds_source if type_url == LISTENER else xds.cds_source

    def fetch_timeout(self, listener: str, default: float | None) -> float | None:
        """How long the listener `listener` waits for its routes and secrets: `default`, or the longest
        initial_fetch_timeout written in their config sources (None: for ever)."""
        msg = self.of(LISTENER).get(listener)
        if msg is None:
            return default
        refs = [*rds_refs(msg), *sds_refs(msg)]
        found = fetches(refs, self.servers(), self.parent(LISTENER, listener))
        given = [f.timeout for _, f in found if f.given]
        if not given:
            return default
        return None if None in given else max(t for t in given if t is not None)

    def missing(self) -> frozenset[str]:
        """Names subscribed but not received yet, as `Kind name` (what keeps initialization waiting)."""
        gone = {f"RouteConfiguration {n}" for n in self.wanted(ROUTE) - self.routes.keys()}
        gone |= {f"ClusterLoadAssignment {n}" for n in self.wanted(ENDPOINT) - self.endpoints.keys()}
        gone |= {f"Secret {n}" for n in self.wanted(SECRET) - self.secrets.keys()}
        gone |= {f"Runtime {n}" for n in self.wanted(RUNTIME) - self.runtimes.keys()}
        return frozenset(gone)

    def update(
        self, type_url: str, received: Iterable[Any], removed: Iterable[str] = (), replace: bool = False
    ) -> XdsStore:
        """A store with `received` (decoded messages) added or replaced and `removed` gone. `replace`
        (state of the world for LDS and CDS) drops every resource of the type not in `received`."""
        issues: list[ConfigIssue] = []
        pinned = self.pinned.get(type_url, frozenset())
        removed = tuple(n for n in removed if n not in pinned)
        held = self.of(type_url)
        current = {n: m for n, m in held.items() if n in pinned} if replace else dict(held)
        for name in removed:
            current.pop(name, None)
        fresh: dict[str, Any] = {}
        for msg in received:
            name = resource_name(type_url, msg)
            if not name:
                issues.append(ConfigIssue(KIND[type_url], "a resource without a name"))
            elif name in fresh:
                issues.append(ConfigIssue(f"{KIND[type_url]} {name}", "sent twice in one response"))
            fresh[name] = msg
        routes, endpoints, secrets, runtimes = self.routes, self.endpoints, self.secrets, self.runtimes
        if type_url == ROUTE:
            routes = _translated(type_url, fresh, removed, dict(routes), route_config_from_proto, issues)
        elif type_url == ENDPOINT:
            endpoints = _translated(type_url, fresh, removed, dict(endpoints), endpoints_from_cla, issues)
        elif type_url == SECRET:
            secrets = _translated(type_url, fresh, removed, dict(secrets), material, issues)
        elif type_url == RUNTIME:
            runtimes = _translated(type_url, fresh, removed, dict(runtimes), runtime_from_proto, issues)
        else:
            for name, msg in fresh.items():
                try:
                    self._check(type_url, msg)
                except ConfigError as err:
                    issues += _reject(type_url, name, err)
                refs = [*rds_refs(msg), *sds_refs(msg)] if type_url == LISTENER else [
                    *([ref] if (ref := eds_ref(msg)) is not None else []), *sds_refs(msg)]
                found = Issues()
                fetches(refs, self.servers(), self.parent(type_url, name), found)
                if found.items:
                    issues += _reject(type_url, name, ConfigError(found.items))
                if name in pinned or any(x.name == name for x in self._static_of(type_url)):
                    issues.append(ConfigIssue(f"{KIND[type_url]} {name}", "a static resource has this name"))
        if issues:
            raise ConfigError(issues)
        current.update(fresh)
        protos = {**self.protos, type_url: current}
        store = dataclasses.replace(self, protos=protos, routes=routes, endpoints=endpoints, secrets=secrets,
                                    runtimes=runtimes)
        # Resources nothing asks for any more are dropped, as an unsubscribe does in Envoy. What is
        # wanted changes with the listeners and clusters only: an update of another type is checked
        # against it alone (an EDS push on a big mesh walks no cluster).
        kept: dict[str, Any] = {}
        for kind, field in ((ROUTE, "routes"), (ENDPOINT, "endpoints"), (SECRET, "secrets"),
                            (RUNTIME, "runtimes")):
            if type_url in WILDCARD or type_url == kind:
                wanted = store.wanted(kind)
                kept[field] = {n: m for n, m in getattr(store, field).items() if n in wanted}
        return dataclasses.replace(store, **kept)


    def with_static(self, static: Config) -> XdsStore:
        """The same dynamic resources beside a new static config (a reloaded file)."""
        clash = [ConfigIssue(f"{KIND[t]} {x.name}", "a dynamic resource has this name already")
                 for t in WILDCARD for x in XdsStore(static=static)._static_of(t) if x.name in self.of(t)]
        if clash:
            raise ConfigError(clash)
        return dataclasses.replace(self, static=static)

    def _check(self, type_url: str, msg: Any) -> None:
        if type_url == LISTENER:
            listener_from_proto(msg, "", any_routes())
        else:
            cluster_from_proto(msg, "", endpoints_or_none({}))

    def _static_of(self, type_url: str) -> tuple[Listener, ...] | tuple[Cluster, ...]:
        return self.static.listeners if type_url == LISTENER else self.static.clusters

    def assemble(self, expired: frozenset[str]) -> tuple[Config, XdsStore, frozenset[str]]:
        """The Config to serve: static resources, then dynamic ones in name order, the store that
        remembers the listeners served, and the listeners still warming. A listener in `expired` has
        waited out its fetch time and serves without the routes that did not come. Raises ConfigError
        (a NACK's detail) when the whole does not hold together, e.g. two listeners on one port."""
        eds = endpoints_or_none(self.endpoints)
        clusters: dict[str, Cluster] = {}
        for name, msg in sorted(self.of(CLUSTER).items()):
            if all(n in self.secrets or n in self.local for n in sds_names(msg)):
                clusters[name] = filled(cluster_from_proto(msg, "", eds), self.secrets)
            elif name in self.served_clusters:
                clusters[name] = self.served_clusters[name]  # warming on its secrets, as in Envoy
        listeners: dict[str, Listener] = {}
        warming: set[str] = set()
        for name, msg in sorted(self.of(LISTENER).items()):
            needs = rds_names(msg)
            has_secrets = all(n in self.secrets or n in self.local for n in sds_names(msg))
            if has_secrets and (all(n in self.routes for n in needs) or name in expired):
                routes = {n: self.routes.get(n, NO_ROUTES) for n in needs}
                listeners[name] = filled(listener_from_proto(msg, "", routes), self.secrets)
                continue
            warming.add(name)
            if name in self.served:
                listeners[name] = self.served[name]  # the previous version serves on meanwhile
        config = dataclasses.replace(
            self.static,
            listeners=self.static.listeners + tuple(listeners.values()),
            clusters=self.static.clusters + tuple(clusters.values()),
        )
        problems = check_references(config, clusters_required=False)
        if problems:
            raise ConfigError(_name_paths(config, problems))
        store = dataclasses.replace(self, served=listeners, served_clusters=clusters)
        return config, store, frozenset(warming)


def _name_paths(config: Config, problems: list[ConfigIssue]) -> list[ConfigIssue]:
    """Model paths (`listeners[3].address`) rewritten with the resource's name, which the server knows."""
    out = []
    for p in problems:
        head, _, rest = p.path.partition("]")
        kind, _, index = head.partition("[")
        path = p.path
        if kind in ("listeners", "clusters") and index.isdigit():
            items = config.listeners if kind == "listeners" else config.clusters
            name = items[int(index)].name
            path = f"{'Listener' if kind == 'listeners' else 'Cluster'} {name}: {rest.lstrip('.')}"
        out.append(ConfigIssue(path, p.reason))
    return out
