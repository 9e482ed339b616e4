"""Kubernetes Services annotated security.meshpy.io/mtls -> the inbound listener of their pods' sidecars.

What Istio generates for a sidecar from PeerAuthentication: one listener, `virtualInbound`, on the port
`meshpy iptables` redirects a pod's incoming connections to (15006), that finds where each connection
was going (original_dst) and serves it by a filter chain per destination port, handing it on to the app
at that same address (ORIGINAL_DST clusters: nothing here knows the pods' addresses):

- HTTP ports (`port_protocol`, as for the outbound listeners): an HTTP connection manager that sets
  x-forwarded-client-cert from the caller's certificate and removes one a caller wrote itself
  (SANITIZE_SET with the URI, as Istio), to the cluster `inbound|<port>||` (`inbound|<port>|http2|`
  for a port that speaks HTTP/2); TCP and unknown ports: a TCP proxy to `inbound|<port>||`; any other
  port: a TCP proxy to `InboundPassthroughCluster`. The clusters go to every node (they hold no
  endpoints, and the same name is the same cluster for every workload), so that the sets of the
  workloads differ from every node's by the one listener;
- by mode: `strict` serves each of these only over mutual TLS with a client certificate of the mesh's
  CA (the SDS secrets `default` and `ROOTCA`, which meshpy sidecars fill in themselves and Envoy nodes
  get from the control plane); `permissive` serves both, told apart by the first bytes (tls_inspector,
  filter_chain_match transport_protocol `tls` / `raw_buffer`); `disable` serves plaintext.

Which sidecars get it: `meshpy inject` names a sidecar's node `<pod>.<namespace>`, with the node cluster
the value of the pod's label app.kubernetes.io/name (else app). A Service selects its pods by labels, so
the workload it serves is the value of the same label in its selector (else the Service's own name).
Each workload (namespace, name) that an annotated Service selects gets one set, a NodeSelector on the
node cluster and the node id's namespace: nodes of the same name in another namespace are not its.
The ports of every Service that selects the workload are served (annotated or not), in the strictest
mode any of them asks for. A set per workload rather than one shared listener with a chain per pod
address: a pod's churn changes nobody's listener, and a sidecar has its listener from its first
connection, before its pod is in any EndpointSlice.

A Service without the annotation makes nothing here: its pods keep what the directory gives every node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from control.cache import LISTENER, NodeSelector, Resources, Snapshot, make_snapshot
from control.sources.export import HCM, ORIGINAL_DST, ROUTER, tcp_proxy
from control.sources.export_tls import TLS, TLS_INSPECTOR
from control.sources.kubernetes_listeners import HTTP, port_protocol
from control.sources.kubernetes_resources import (
    HTTP_OPTIONS_KEY,
    IP_ADDRESS_TYPES,
    MTLS_MODES,
    SERVICE_NAME_LABEL,
    Key,
    Object,
    key_of,
    mtls_mode,
    slice_port,
    speaks_http2,
)
from control.sources.nodes import Layers
from meshpy.model.types import TcpOptions

log = logging.getLogger("meshpy.control")

INBOUND_LISTENER = "virtualInbound"
PASSTHROUGH = "InboundPassthroughCluster"
# `meshpy iptables --inbound-port`'s default, which `meshpy inject` uses: where a pod's incoming
# connections arrive.
INBOUND_PORT = 15006
# The app is in the same pod: a connection that is not made in a second is not coming (the shipped
# ConfigMap's inbound_app says the same).
APP_CONNECT_TIMEOUT = "1s"
# A client that has not finished its handshake by then is closed (meshpy YAML's default for `mtls:`).
HANDSHAKE_TIMEOUT = "10s"
TCP, HTTP1, HTTP2 = "tcp", "http1", "http2"
WORKLOAD_LABELS = ("app.kubernetes.io/name", "app")  # meshpy inject's node cluster, in its order
_STRICTNESS = {mode: rank for rank, mode in enumerate(reversed(MTLS_MODES))}

Workloads = Mapping[NodeSelector, Resources]


def workload_of(svc: Object) -> str:
    """The node cluster of the sidecars of the Service's pods."""
    selector = (svc.get("spec") or {}).get("selector") or {}
    for label in WORKLOAD_LABELS:
        if selector.get(label):
            return str(selector[label])
    return key_of(svc)[1]


def _target_ports(port: Object, slices: Iterable[Object]) -> set[int]:
    """The pods' port numbers behind a Service port: its targetPort (the port itself when unset), or for
    a named one (which each pod resolves itself) the numbers its EndpointSlices hold."""
    target = port.get("targetPort")
    if target is None or target == "":
        target = port.get("port")
    if isinstance(target, int):
        return {target}
    if str(target).isdigit():
        return {int(str(target))}
    return {n for s in slices if (n := slice_port(s, str(port.get("name") or ""))) is not None}


@dataclass
class _Workload:
    mode: str = "disable"
    annotated: bool = False
    ports: dict[int, str] = field(default_factory=dict)  # pod port -> TCP, HTTP1 or HTTP2
    said: dict[int, str] = field(default_factory=dict)  # pod port -> the Service port that set it


def _gather(services: Iterable[Object], slices: Iterable[Object], skipped: list[str]) -> dict[Key, _Workload]:
    by_service: dict[Key, list[Object]] = {}
    for s in slices:
        owner = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and s.get("addressType") in IP_ADDRESS_TYPES:
            by_service.setdefault((key_of(s)[0], str(owner)), []).append(s)
    workloads: dict[Key, _Workload] = {}
    for svc in sorted(services, key=key_of):
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue  # no pods
        namespace, name = key_of(svc)
        w = workloads.setdefault((namespace, workload_of(svc)), _Workload())
        mode = mtls_mode(svc, [])  # a bad value is reported once, by the clusters' translation
        if mode is not None:
            w.annotated = True
            if _STRICTNESS[mode] > _STRICTNESS[w.mode]:
                w.mode = mode
        for port in spec.get("ports") or ():
            if (port.get("protocol") or "TCP") != "TCP" or not isinstance(port.get("port"), int):
                continue
            http2 = speaks_http2(port)
            kind = (HTTP2 if http2 else HTTP1) if port_protocol(port, http2) == HTTP else TCP
            for number in sorted(_target_ports(port, by_service.get((namespace, name), ()))):
                before = w.ports.get(number)
                where = f"service {namespace}/{name} port {port.get('port')}"
                if before is not None and before != kind:
                    # The bytes are the same whoever describes them: a TCP proxy carries any of them.
                    skipped.append(f"{where}: pod port {number} is {kind} here but {before} for "
                                   f"{w.said[number]}: served as TCP")
                    kind = TCP
                w.ports[number], w.said[number] = kind, w.said.get(number, where)
    return {key: w for key, w in workloads.items() if w.annotated}


def _cluster(name: str, http2: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                           "connect_timeout": APP_CONNECT_TIMEOUT}
    if http2:
        out["typed_extension_protocol_options"] = {HTTP_OPTIONS_KEY: {
            "@type": "type.googleapis.com/" + HTTP_OPTIONS_KEY,
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return out


def _hcm(port: int, cluster: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM,
        "stat_prefix": f"inbound_0.0.0.0_{port}",
        # Inline: the routes are the listener's own, one per port, and a team that wants other ones
        # replaces the listener (see InboundSets).
        "route_config": {"name": cluster, "virtual_hosts": [{
            "name": f"inbound|http|{port}", "domains": ["*"],
            # No route timeout: the app answers in its own time, as it would without the mesh.
            "routes": [{"name": "default", "match": {"prefix": "/"},
                        "route": {"cluster": cluster, "timeout": "0s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        # The app learns who called: the caller's SPIFFE ID over mutual TLS; a header a caller wrote
        # itself (plaintext, or another hop's) never reaches it.
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True},
        # The caller is the connection's peer (what the shipped ConfigMap's inbound listener says).
        "use_remote_address": True,
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "server_header_transformation": "PASS_THROUGH",  # the app's own `server` header
    }}


def _mutual_tls(alpn: tuple[str, ...]) -> dict[str, Any]:
    sds = {"ads": {}, "resource_api_version": "V3"}
    common: dict[str, Any] = {
        "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds}],
        # Any identity the mesh's CA signed: who may call is authorization's business, not the handshake's.
        "combined_validation_context": {"default_validation_context": {},
                                        "validation_context_sds_secret_config": {"name": "ROOTCA",
                                                                                 "sds_config": sds}}}
    if alpn:
        common["alpn_protocols"] = list(alpn)
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": f"{TLS}.DownstreamTlsContext", "common_tls_context": common,
        "require_client_certificate": True}}


def _chains(mode: str, name: str, match: dict[str, Any], filters: list[dict[str, Any]],
            http: bool) -> list[dict[str, Any]]:
    """The chains of one destination (`match`) in `mode`."""
    if mode == "disable":
        return [{"name": name, "filters": filters, **({"filter_chain_match": match} if match else {})}]
    chains: list[dict[str, Any]] = [{
        "name": f"{name}|mtls", "filter_chain_match": {**match, "transport_protocol": "tls"},
        "transport_socket": _mutual_tls(("h2", "http/1.1") if http else ()),
        "transport_socket_connect_timeout": HANDSHAKE_TIMEOUT, "filters": filters}]
    if mode == "permissive":
        chains.append({"name": f"{name}|plaintext", "filters": filters,
                       "filter_chain_match": {**match, "transport_protocol": "raw_buffer"}})
    return chains


def cluster_of(port: int, kind: str) -> str:
    return f"inbound|{port}|http2|" if kind == HTTP2 else f"inbound|{port}||"


def inbound_cluster(name: str) -> cluster_pb2.Cluster:
    """An ORIGINAL_DST cluster: each connection or request goes to the address it was made to."""
    return json_format.ParseDict(_cluster(name, "|http2|" in name), cluster_pb2.Cluster())


def inbound_listener(mode: str, ports: Mapping[int, str]) -> listener_pb2.Listener:
    """The listener for pods taking `mode` with these ports (pod port -> kind), which hands connections
    to the clusters `cluster_of` names and PASSTHROUGH."""
    chains: list[dict[str, Any]] = []
    for number, kind in sorted(ports.items()):
        cluster = cluster_of(number, kind)
        http = kind != TCP
        filters = [_hcm(number, cluster) if http else
                   tcp_proxy(f"inbound_0.0.0.0_{number}", TcpOptions(cluster=cluster))]
        chains += _chains(mode, f"inbound|{number}", {"destination_port": number}, filters, http)
    chains += _chains(mode, "passthrough", {}, [tcp_proxy(PASSTHROUGH, TcpOptions(cluster=PASSTHROUGH))],
                      False)
    filters = [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": ORIGINAL_DST}}]
    if mode != "disable":  # plaintext for every chain: the first bytes need not be waited for
        filters.append({"name": "envoy.filters.listener.tls_inspector",
                        "typed_config": {"@type": TLS_INSPECTOR}})
    listener = {
        "name": INBOUND_LISTENER,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": INBOUND_PORT}},
        # meshpy reads the original destination for use_original_dst listeners only; Envoy hands the
        # connection to another listener only if one has that address, which no generated one has.
        "use_original_dst": True,
        "traffic_direction": "INBOUND",
        "listener_filters": filters,
        "filter_chains": chains,
    }
    return json_format.ParseDict(listener, listener_pb2.Listener())


_MemoKey = tuple[str, tuple[tuple[int, str], ...]] | str  # (mode, ports) of a listener; a cluster's name


class InboundMemo:
    """What the last translation built, by its arguments: most workloads do not change when one does,
    and keeping the same messages lets their snapshots share the work of packing and checking them."""

    def __init__(self) -> None:
        self._old: dict[_MemoKey, Message] = {}
        self._new: dict[_MemoKey, Message] = {}

    def listener(self, mode: str, ports: Mapping[int, str]) -> Message:
        return self._get((mode, tuple(sorted(ports.items()))), lambda: inbound_listener(mode, ports))

    def cluster(self, name: str) -> Message:
        return self._get(name, lambda: inbound_cluster(name))

    def _get(self, key: _MemoKey, build: Callable[[], Message]) -> Message:
        found = self._new.get(key) or self._old.pop(key, None) or build()
        self._new[key] = found
        return found

    def done(self) -> None:
        self._old, self._new = self._new, {}


@dataclass(frozen=True)
class InboundTranslation:
    workloads: dict[NodeSelector, Resources]  # each workload's nodes: its inbound listener
    clusters: dict[str, Message]  # every node's: the clusters those listeners hand connections to
    skipped: tuple[str, ...] = ()  # why a port is served otherwise than its Service says


def inbound(services: Iterable[Object], slices: Iterable[Object],
            memo: InboundMemo | None = None) -> InboundTranslation:
    """The inbound listener of each workload of an annotated Service, by its node selector."""
    memo = memo or InboundMemo()
    skipped: list[str] = []
    workloads: dict[NodeSelector, Resources] = {}
    clusters: dict[str, Message] = {}
    for (namespace, name), w in sorted(_gather(services, slices, skipped).items()):
        workloads[NodeSelector(cluster=name, namespace=namespace)] = {
            LISTENER: {INBOUND_LISTENER: memo.listener(w.mode, w.ports)}}
        for cluster in (PASSTHROUGH, *(cluster_of(n, kind) for n, kind in w.ports.items())):
            clusters[cluster] = memo.cluster(cluster)
    memo.done()
    return InboundTranslation(workloads, dict(sorted(clusters.items())), tuple(skipped))


def _binds(lis: Message) -> int | None:
    """The port a listener binds (None: it binds none)."""
    assert isinstance(lis, listener_pb2.Listener)
    if lis.HasField("bind_to_port") and not lis.bind_to_port.value:
        return None
    return lis.address.socket_address.port_value or None


def _bound_ports(listeners: Mapping[str, Message]) -> dict[int, list[str]]:
    """The listeners binding each port."""
    out: dict[int, list[str]] = {}
    for name, lis in listeners.items():
        port = _binds(lis)
        if port is not None:
            out.setdefault(port, []).append(name)
    return out


Merge = Callable[[Resources, Resources], Resources]


class InboundSets:
    """The snapshots of the workloads' nodes: the directory's set for the node cluster (its
    node-cluster/<name>/ files, else the shared ones) merged with Kubernetes' as for any node, and the
    generated inbound listener. A listener the directory gives that node cluster itself, of the same name
    or binding the same port, wins over the generated one; a shared one (every node's inbound listener,
    as the shipped ConfigMap's) gives way to it. Node-id sets are the directory's alone."""

    def __init__(self) -> None:
        self.workloads: Workloads = {}
        self._logged: set[str] = set()

    def snapshots(self, layers: Layers, kube: Resources, merge: Merge,
                  shared: Snapshot) -> dict[NodeSelector, Snapshot]:
        """`shared`: every node's snapshot (the shared layer merged with `kube`), which most of each
        set's resources are: made like it, a set costs what it adds."""
        bases: dict[str | None, tuple[Resources, dict[int, list[str]]]] = {}
        out: dict[NodeSelector, Snapshot] = {}
        for selector, generated in self.workloads.items():
            own = layers.by_cluster.get(selector.cluster or "")
            key = selector.cluster if own is not None else None
            if key not in bases:
                # Without files of its own, the node cluster's set is every node's: the snapshot's own
                # mappings, which make_snapshot recognizes without looking into them.
                base = merge(own, kube) if own is not None else shared.resources
                bases[key] = base, _bound_ports(base.get(LISTENER, {}))
            base, ports = bases[key]
            listeners = self._listeners(selector.describe(), generated, base, ports, own, layers.shared)
            out[selector] = make_snapshot({**base, LISTENER: listeners}, shared)
        return out

    def _listeners(self, who: str, generated: Resources, base: Resources, ports: Mapping[int, list[str]],
                   own: Resources | None, shared: Resources) -> dict[str, Message]:
        listeners = dict(base.get(LISTENER, {}))
        every = shared.get(LISTENER, {})
        mine = {n: lis for n, lis in (own or {}).get(LISTENER, {}).items() if every.get(n) != lis}
        for name, lis in generated.get(LISTENER, {}).items():
            port = _binds(lis)
            clash = sorted(n for n, other in mine.items() if n == name or (port and _binds(other) == port))
            if clash:
                self._once(f"{who}: the directory's listener {clash[0]!r} replaces the generated {name!r}")
                continue
            for n in sorted({name} & listeners.keys() | set(ports.get(port or 0, ()))):
                self._once(f"{who}: the generated listener {name!r} replaces the directory's {n!r}")
                del listeners[n]
            listeners[name] = lis
        return listeners

    def _once(self, line: str) -> None:
        if line not in self._logged:
            self._logged.add(line)
            log.info("%s", line)
