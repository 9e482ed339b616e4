"""Kubernetes Services and EndpointSlices -> Envoy Clusters and ClusterLoadAssignments.

Pure: objects in (the API's JSON, as dicts), resources out. Each TCP port of a Service becomes one EDS
Cluster named as Istio names it, `outbound|<port>||<service>.<namespace>.svc.<domain>`, so dashboards and
route configs written for Istio find the same names; its ClusterLoadAssignment has the same name and holds
the ready endpoints of the Service's EndpointSlices. Unless turned off, each port with a cluster IP also
gets the outbound listener (and routes) a sidecar hands the app's calls to that address to (see
kubernetes_listeners). A Service annotated security.meshpy.io/mtls is called over mutual TLS, its server
checked against the service accounts of its pods (see kubernetes_identity).

The objects stay dicts rather than kubernetes_asyncio models: a big cluster has thousands of slices, and
building a model object per field on every list and event costs more than the whole translation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control.sources.kubernetes_identity import (
    WAITING,
    Account,
    PodIndex,
    annotated_accounts,
    mtls_socket,
    spiffe_ids,
)
from control.sources.kubernetes_listeners import Memo, cluster_ips, listener_name, port_protocol

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# appProtocol values that mean HTTP/2 to the pods (kubernetes.io/h2c is the standard name for cleartext
# HTTP/2), and Istio's port-name prefixes for the same, which most meshed Services already use.
HTTP2_APP_PROTOCOLS = frozenset({"http2", "grpc", "kubernetes.io/h2c"})
HTTP2_NAME_PREFIXES = ("grpc", "http2")
# Envoy's own default, written out so that Envoy and meshpy (whose default differs) connect alike.
CONNECT_TIMEOUT_SECONDS = 5
IP_ADDRESS_TYPES = frozenset({"IPv4", "IPv6"})

Object = Mapping[str, Any]
Key = tuple[str, str]  # (namespace, name)


def key_of(obj: Object) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def cluster_name(port: int, service: str, namespace: str, domain: str) -> str:
    return f"outbound|{port}||{service}.{namespace}.svc.{domain}"


def speaks_http2(port: Object) -> bool:
    """The Service port's pods expect HTTP/2 (gRPC included), by appProtocol or by port name."""
    app = str(port.get("appProtocol") or "").lower()
    if app in HTTP2_APP_PROTOCOLS:
        return True
    name = str(port.get("name") or "").lower()
    return any(name == p or name.startswith(p + "-") for p in HTTP2_NAME_PREFIXES)


@dataclass(frozen=True)
class Translation:
    resources: dict[str, dict[str, Message]]  # CLUSTER and ENDPOINT (and LISTENER and ROUTE), by name
    # Why a Service or port has no cluster, one line each (the source logs each line once).
    skipped: tuple[str, ...] = field(default=())


def translate(services: Iterable[Object], slices: Iterable[Object], domain: str,
              listeners: bool = True, memo: Memo | None = None,
              trust_domain: str = "cluster.local", pods: Iterable[Object] | None = None) -> Translation:
    """The clusters and assignments of `services`; with `listeners`, their outbound listeners and routes
    too (built again unless a `memo` kept from the last call has them). A Service whose pods take mutual
    TLS (annotation security.meshpy.io/mtls) is called over it, with the identity of the mesh's CA in
    `trust_domain`, its server expected to prove the service account of one of its `pods` (the API's
    Pods, or what pod_shape keeps of them; see kubernetes_identity). Without `pods` (None: not known, as
    for files checked offline) only the annotation security.meshpy.io/serviceAccount names one."""
    memo = memo or Memo()
    by_service: dict[Key, list[Object]] = {}
    for s in slices:
        namespace, _ = key_of(s)
        owner = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and s.get("addressType") in IP_ADDRESS_TYPES:
            # FQDN slices are left out: an EDS endpoint is an IP address (Envoy resolves no names there).
            by_service.setdefault((namespace, str(owner)), []).append(s)
    clusters: dict[str, Message] = {}
    assignments: dict[str, Message] = {}
    lis: dict[str, Message] = {}
    routes: dict[str, Message] = {}
    owners: dict[str, str] = {}  # listener name -> the Service port that has it
    skipped: list[str] = []
    index: PodIndex | None = None  # built when the first Service needs it
    for svc in sorted(services, key=key_of):
        namespace, name = key_of(svc)
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            skipped.append(f"service {namespace}/{name}: type ExternalName (a DNS alias) is not served")
            continue
        own_slices = by_service.get((namespace, name), [])
        # Istio's auto mTLS sends mTLS to permissive pods too.
        secure = mtls_mode(svc, skipped) in ("strict", "permissive")
        named = annotated_accounts(svc) if secure else None
        if secure and pods is not None and index is None:
            index = PodIndex(pods)
        by_pods = index if secure and named is None else None
        for port in spec.get("ports") or ():
            number, protocol = port.get("port"), port.get("protocol") or "TCP"
            if protocol != "TCP":
                skipped.append(f"service {namespace}/{name} port {number}/{protocol}: only TCP is served")
                continue
            if not isinstance(number, int):
                continue
            cname = cluster_name(number, name, namespace, domain)
            http2 = speaks_http2(port)
            clusters[cname] = _cluster(cname, http2)
            port_name = str(port.get("name") or "")
            assignments[cname], accounts = _assignment(cname, port_name, own_slices, by_pods)
            if secure:
                expected = spiffe_ids(trust_domain, ((namespace, a) for a in named) if named else accounts)
                clusters[cname].transport_socket.CopyFrom(mtls_socket(expected))
            if not listeners:
                continue
            protocol = port_protocol(port, http2)
            for ip in cluster_ips(spec):
                lname, owner = listener_name(ip, number), f"service {namespace}/{name} port {number}"
                if lname in owners:
                    # The API never gives one address to two Services, but a copy restored from a backup
                    # might: the first in name order keeps it, and the result stays independent of order.
                    skipped.append(f"{owner}: no listener, {ip}:{number} is {owners[lname]}'s already")
                    continue
                owners[lname] = owner
                lis[lname], rc = memo.outbound(ip, number, protocol, cname, name, namespace, domain)
                if rc is not None:
                    routes[lname] = rc
    memo.done()
    resources: dict[str, dict[str, Message]] = {CLUSTER: clusters, ENDPOINT: assignments}
    if listeners:
        resources.update({LISTENER: lis, ROUTE: routes})
    return Translation(resources, tuple(skipped))


MTLS_ANNOTATION = "security.meshpy.io/mtls"
MTLS_MODES = ("strict", "permissive", "disable")  # the least strict last


def mtls_mode(svc: Object, skipped: list[str]) -> str | None:
    """The Service's security.meshpy.io/mtls (lower-cased), None when it has none. A value that is none
    of the modes is reported in `skipped` and read as `disable`, the mode of a Service without it."""
    annotations = (svc.get("metadata") or {}).get("annotations") or {}
    if MTLS_ANNOTATION not in annotations:
        return None
    mode = str(annotations[MTLS_ANNOTATION]).lower()
    if mode not in MTLS_MODES:
        namespace, name = key_of(svc)
        skipped.append(f"service {namespace}/{name}: {MTLS_ANNOTATION} must be strict, permissive or "
                       f"disable, not {mode!r}: called in the clear")
        return "disable"
    return mode


def _cluster(name: str, http2: bool) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = CONNECT_TIMEOUT_SECONDS
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    if http2:
        # The form Envoy requires since v1.21, and the one meshpy's translator reads (it refuses the
        # deprecated Cluster.http2_protocol_options beside it).
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Pack(options)
    return c


def slice_port(slice_: Object, port_name: str) -> int | None:
    """The slice's number for the Service port named `port_name`: matched by name, as kube-proxy does
    (the Service's targetPort may be a name that each pod resolves to its own number)."""
    for p in slice_.get("ports") or ():
        if str(p.get("name") or "") == port_name and (p.get("protocol") or "TCP") == "TCP":
            number = p.get("port")
            return number if isinstance(number, int) else None
    return None


def _assignment(name: str, port_name: str, slices: Iterable[Object],
                pods: PodIndex | None) -> tuple[endpoint_pb2.ClusterLoadAssignment, set[Account]]:
    """The assignment of the ready endpoints; with `pods`, the accounts of their pods too (an endpoint
    whose pod is not known yet is held back, see kubernetes_identity)."""
    by_zone: dict[str, set[tuple[str, int]]] = {}
    accounts: set[Account] = set()
    for s in slices:
        number = slice_port(s, port_name)
        if number is None:
            continue
        namespace, _ = key_of(s)
        for ep in s.get("endpoints") or ():
            addresses = ep.get("addresses") or ()
            # Not-ready endpoints (starting, failing readiness, terminating) are left out rather than sent
            # as UNHEALTHY or DRAINING: that is what kube-proxy and Istio do by default, Envoy would only
            # use them in panic mode, and meshpy refuses any health status but UNKNOWN and HEALTHY.
            # A missing `ready` means unknown, which the API says to treat as ready.
            if not addresses or (ep.get("conditions") or {}).get("ready") is False:
                continue
            if pods is not None:
                owner = pods.owner(ep, namespace)
                if owner is WAITING:
                    continue
                if isinstance(owner, tuple):
                    accounts.add(owner)
            # The addresses of one endpoint are the same pod; the API lets consumers use the first only.
            by_zone.setdefault(str(ep.get("zone") or ""), set()).add((str(addresses[0]), number))
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    seen: set[tuple[str, int]] = set()  # one pod in two slices (while slices are rebalanced) counts once
    for zone in sorted(by_zone):
        hosts = sorted(by_zone[zone] - seen)
        if not hosts:
            continue
        seen.update(hosts)
        group = cla.endpoints.add()
        if zone:
            group.locality.zone = zone
        # gRPC's xDS clients drop a locality without a weight; a zone weighs as much as its pods.
        group.load_balancing_weight.value = len(hosts)
        for host, number in hosts:
            address = group.lb_endpoints.add().endpoint.address.socket_address
            address.address, address.port_value = host, number
    return cla, accounts
