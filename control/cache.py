"""Versioned, consistency-checked snapshots of xDS resources, per node, and the wake-ups that push them.

A snapshot is one complete set of Listeners, RouteConfigurations, Clusters, ClusterLoadAssignments and
Secrets.
It is checked before it is published (every route's cluster exists, every EDS cluster has its
assignment, every listener's RDS name has its route configuration), so a client never receives a
half-wired set. Its version is a content hash: the same resources always get the same version, also
across control-plane restarts.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# A client must know a cluster before its endpoints, and both before the routes that use them; secrets
# are asked for by name once a listener or cluster names them.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# Types whose empty subscription means "everything" (state of the world).
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

Resources = Mapping[str, Mapping[str, Message]]  # type URL -> resource name -> message


class InconsistentSnapshot(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


# gRPC clients refuse a message over 4 MiB by default (Envoy's own limit is larger), and a state-of-the-
# world response carries every resource of its type: a type over this is refused, not pushed.
MAX_TYPE_BYTES = 4 * 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class Snapshot:
    """Also holds each resource packed in an Any and its own version (a hash of its bytes), made once
    here instead of once per connected client."""

    version: str
    resources: Resources
    packed: Mapping[str, Mapping[str, any_pb2.Any]]
    versions: Mapping[str, Mapping[str, str]]
    # A version per type: a change of endpoints re-sends EDS alone, not all four types to every node
    # (the scale benchmark measured 4 pushes and ACKs per node per change before this).
    type_versions: Mapping[str, str]
    # The snapshot this one was made `like` (see make_snapshot), and the types it took from it whole:
    # what `check` need not look at again.
    like: Snapshot | None = field(default=None, compare=False, repr=False)
    same_types: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    checked: list[list[str]] = field(default_factory=list, compare=False, repr=False)  # check's answer

    def of(self, type_url: str) -> Mapping[str, Message]:
        return self.resources.get(type_url, {})


def make_snapshot(resources: Resources, like: Snapshot | None = None) -> Snapshot:
    """The snapshot of `resources`. With `like`, a snapshot whose resources are mostly the same message
    objects (a node set that adds a listener to every node's): what they share is neither packed nor
    checked again, which makes a set per workload cost what it adds, not what every node has."""
    packed: dict[str, Mapping[str, any_pb2.Any]] = {}
    versions: dict[str, Mapping[str, str]] = {}
    type_versions: dict[str, str] = {}
    same: set[str] = set()
    for type_url in PUSH_ORDER:
        items = resources.get(type_url, {})
        before = like.resources.get(type_url, {}) if like is not None else {}
        if like is not None and (items is before or (len(items) == len(before) and all(
                before.get(n) is m for n, m in items.items()))):
            packed[type_url], versions[type_url] = like.packed[type_url], like.versions[type_url]
            type_versions[type_url] = like.type_versions[type_url]
            same.add(type_url)
            continue
        packed_here: dict[str, any_pb2.Any] = {}
        versions_here: dict[str, str] = {}
        type_digest = hashlib.sha256()
        for name, msg in sorted(items.items()):
            if like is not None and before.get(name) is msg:
                any_msg, version = like.packed[type_url][name], like.versions[type_url][name]
            else:
                data = msg.SerializeToString(deterministic=True)
                any_msg = any_pb2.Any(type_url=type_url, value=data)
                version = hashlib.sha256(data).hexdigest()[:16]
            packed_here[name], versions_here[name] = any_msg, version
            # The type's version hashes each resource's, not its bytes again.
            type_digest.update(name.encode() + b"\0" + version.encode() + b"\0")
        packed[type_url], versions[type_url] = packed_here, versions_here
        type_versions[type_url] = type_digest.hexdigest()[:16]
    digest = hashlib.sha256("".join(f"{t}\0{v}\0" for t, v in type_versions.items()).encode())
    full = {t: dict(resources.get(t, {})) for t in PUSH_ORDER}
    return Snapshot(digest.hexdigest()[:16], full, packed, versions, type_versions, like, frozenset(same))


def _route_clusters(rc: route_pb2.RouteConfiguration) -> Iterable[tuple[str, str]]:
    for vh in rc.virtual_hosts:
        for i, route in enumerate(vh.routes):
            where = f"RouteConfiguration '{rc.name}' virtual host '{vh.name}' route {i}"
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                yield where, action.cluster
            for wc in action.weighted_clusters.clusters:
                yield where, wc.name


def _listener_rds(lis: listener_pb2.Listener) -> Iterable[str]:
    chains = list(lis.filter_chains)
    if lis.HasField("default_filter_chain"):
        chains.append(lis.default_filter_chain)
    configs = [f.typed_config for chain in chains for f in chain.filters]
    if lis.HasField("api_listener"):
        configs.append(lis.api_listener.api_listener)
    for any_msg in configs:
        if any_msg.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
            hcm = hcm_pb2.HttpConnectionManager()
            any_msg.Unpack(hcm)
            if hcm.HasField("rds"):
                yield hcm.rds.route_config_name


def check(snap: Snapshot) -> list[str]:
    """Why `snap` cannot be published; empty when it can. For a snapshot made like a good one, only what
    differs from it is looked at (the rest was found good there, against the same resources)."""
    if snap.checked:
        return list(snap.checked[0])
    like = snap.like if snap.like is not None and not check(snap.like) else None
    same = snap.same_types if like is not None else frozenset()
    errors: list[str] = []
    for type_url, packed in snap.packed.items():
        if type_url in same:
            continue  # as big as in `like`
        size = sum(len(a.value) for a in packed.values())
        if size > MAX_TYPE_BYTES:
            kind = type_url.rsplit(".", 1)[-1]
            errors.append(f"{kind} resources total {size / 2**20:.1f} MiB, over the "
                          f"{MAX_TYPE_BYTES / 2**20:.2f} MiB one response may carry")
    clusters = snap.of(CLUSTER)
    if not {ROUTE, CLUSTER} <= same:
        for rc in snap.of(ROUTE).values():
            assert isinstance(rc, route_pb2.RouteConfiguration)
            for where, name in _route_clusters(rc):
                if name not in clusters:
                    errors.append(f"{where}: cluster '{name}' does not exist")
    if not {CLUSTER, ENDPOINT} <= same:
        for name, c in clusters.items():
            assert isinstance(c, cluster_pb2.Cluster)
            if c.type == cluster_pb2.Cluster.EDS:
                wanted = c.eds_cluster_config.service_name or name
                if wanted not in snap.of(ENDPOINT):
                    errors.append(f"Cluster '{name}': no ClusterLoadAssignment '{wanted}' for its endpoints")
    known = like.of(LISTENER) if like is not None and ROUTE in same else {}
    for name, lis in snap.of(LISTENER).items():
        assert isinstance(lis, listener_pb2.Listener)
        if known.get(name) is lis:
            continue  # the same listener, checked against the same routes
        for rds in _listener_rds(lis):
            if rds not in snap.of(ROUTE):
                errors.append(f"Listener '{name}': no RouteConfiguration '{rds}'")
    snap.checked.append(errors)
    return list(errors)


@dataclass(frozen=True)
class NodeSelector:
    """Nodes of one Envoy `node.cluster` (when set) whose `node.metadata` holds all of `metadata`, and
    (when `namespace` is set) whose `node.id` ends in `.<namespace>`: `meshpy inject` names a sidecar
    `<pod>.<namespace>`, and a Kubernetes namespace has no dot, so this tells apart the workloads of two
    namespaces that share a name."""

    cluster: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None

    def matches(self, cluster: str, metadata: Mapping[str, str], node_id: str = "") -> bool:
        if self.cluster is not None and cluster != self.cluster:
            return False
        if self.namespace is not None:
            _, dot, namespace = node_id.rpartition(".")
            if not dot or namespace != self.namespace:
                return False
        return all(metadata.get(k) == v for k, v in self.metadata)

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace is not None else ""
        return f"node cluster {self.cluster}{where}"


class SnapshotCache:
    """The snapshot each node gets: its own when one was set for its id, else the one of the first
    selector it matches (in the order they were first set), else the default."""

    def __init__(self) -> None:
        self._default: Snapshot | None = None
        self._by_node: dict[str, Snapshot] = {}
        self._by_selector: dict[NodeSelector, Snapshot] = {}
        self._watchers: set[asyncio.Event] = set()

    def set(self, snap: Snapshot, node_id: str | None = None, selector: NodeSelector | None = None) -> None:
        """Publish `snap` (raises InconsistentSnapshot, and keeps the old one, if it fails the check)."""
        errors = check(snap)
        if errors:
            raise InconsistentSnapshot(errors)
        if node_id is not None:
            self._by_node[node_id] = snap
        elif selector is not None:
            self._by_selector[selector] = snap
        else:
            self._default = snap
        for event in self._watchers:
            event.set()  # every stream looks again; those whose snapshot did not change send nothing

    def publish(self, shared: Snapshot, by_node: Mapping[str, Snapshot] | None = None,
                by_selector: Mapping[NodeSelector, Snapshot] | None = None) -> None:
        """Replace every snapshot at once (what a source with per-node sets does). All are checked
        first; one inconsistent set raises InconsistentSnapshot naming it, and nothing changes."""
        errors = check(shared)
        for node, snap in (by_node or {}).items():
            errors += [f"node {node}: {e}" for e in check(snap)]
        for selector, snap in (by_selector or {}).items():
            errors += [f"{selector.describe()}: {e}" for e in check(snap)]
        if errors:
            raise InconsistentSnapshot(errors)
        self._default = shared
        self._by_node = dict(by_node or {})
        self._by_selector = dict(by_selector or {})
        for event in self._watchers:
            event.set()

    @property
    def ready(self) -> bool:
        """Some config has been published (what /ready reports)."""
        return self._default is not None or bool(self._by_node) or bool(self._by_selector)

    def get(self, node_id: str, cluster: str = "",
            metadata: Mapping[str, str] | None = None) -> Snapshot | None:
        found = self._by_node.get(node_id)
        if found is not None:
            return found
        for selector, snap in self._by_selector.items():
            if selector.matches(cluster, metadata or {}, node_id):
                return snap
        return self._default

    def watch(self, event: asyncio.Event) -> None:
        self._watchers.add(event)

    def poke(self) -> None:
        """Every stream looks again (something beside the snapshots changed: an identity's key pair)."""
        for event in self._watchers:
            event.set()

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)
