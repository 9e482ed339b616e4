"""Kubernetes Service ports -> the outbound listeners a sidecar hands the app's calls to.

A sidecar intercepts the app's outbound TCP on a `use_original_dst` listener, which passes each connection
to the listener bound (virtually: `bind_to_port: false`) to the address the app dialled. For a Service,
that address is its cluster IP and port, so each port of a Service with a cluster IP gets, as in Istio:

- a Listener named `<clusterIP>_<port>` at that address, `bind_to_port: false`, `traffic_direction:
  OUTBOUND`, whose chain depends on what the port speaks (`port_protocol`):
  - HTTP: an HTTP connection manager using RDS;
  - TCP: a TCP proxy;
  - unknown: sniffing, the HTTP chain for what the http_inspector finds to be HTTP and a TCP proxy
    default chain for the rest (so a port nobody described still works either way);
- for the HTTP and unknown ports, a RouteConfiguration of the same name sending every path to the
  Service's cluster for the names the app may use in its Host header (`orders`, `orders.shop`,
  `orders.shop.svc`, the FQDN, the cluster IP; each also with `:<port>`).

The routes are a resource of their own (RDS) rather than inline, so that a team can replace only the
RouteConfiguration from a directory (to add routes) and keep the generated listener.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from control.sources.export import ADS, HCM, ROUTER, sniffing, tcp_proxy
from meshpy.model.types import TcpOptions

HTTP, TCP, UNKNOWN = "http", "tcp", "unknown"
# appProtocol values (lower-cased) and Istio's port-name prefixes (`<prefix>` or `<prefix>-<anything>`,
# the rule the HTTP/2 detection uses too). `https`, `tls` and `kubernetes.io/wss` are TLS from the app,
# which the sidecar cannot read: TCP. MySQL, MongoDB, Redis and PostgreSQL are named because their
# servers speak first, which sniffing cannot serve (the http_inspector waits for the client's bytes).
HTTP_APP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws"})
TCP_APP_PROTOCOLS = frozenset({"tcp", "tls", "https", "kubernetes.io/wss", "mysql", "mongo", "mongodb",
                               "redis", "postgres", "postgresql"})
HTTP_NAME_PREFIXES = ("http", "http2", "grpc", "grpc-web")
TCP_NAME_PREFIXES = ("tcp", "tls", "https", "mysql", "mongo", "redis", "postgres")


def _named(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + "-") for p in prefixes)


def port_protocol(port: Mapping[str, Any], http2: bool) -> str:
    """HTTP, TCP or UNKNOWN for a Service port. `http2`: the port was found to speak HTTP/2 (its cluster
    is HTTP/2), which makes it HTTP whatever else it says. Then a known appProtocol decides, then the
    port's name; anything else is UNKNOWN and sniffed."""
    if http2:
        return HTTP
    app = str(port.get("appProtocol") or "").lower()
    if app in HTTP_APP_PROTOCOLS:
        return HTTP
    if app in TCP_APP_PROTOCOLS:
        return TCP
    name = str(port.get("name") or "").lower()
    if _named(name, HTTP_NAME_PREFIXES):
        return HTTP
    if _named(name, TCP_NAME_PREFIXES):
        return TCP
    return UNKNOWN


def cluster_ips(spec: Mapping[str, Any]) -> list[str]:
    """The Service's cluster IPs (both families of a dual-stack one); none for a headless Service (whose
    clients dial the pods' own addresses) or one not given an address yet."""
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    out = []
    for ip in ips:
        try:
            out.append(str(ipaddress.ip_address(str(ip))))
        except ValueError:  # "None" (headless), empty, absent
            continue
    return out


def listener_name(ip: str, port: int) -> str:
    return f"{ip}_{port}"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


Key = tuple[str, int, str, str, str, str, str]  # outbound's arguments
Built = tuple[listener_pb2.Listener, route_pb2.RouteConfiguration | None]


class Memo:
    """What `outbound` built for the last translation, by its arguments. Every change of any Service or
    slice translates them all again, and building a listener costs ~0.2 ms (ten thousand ports: two
    seconds per change), while they depend on nothing but these arguments. What the last translation
    did not use is forgotten, so the memo holds no more than the live Services."""

    def __init__(self) -> None:
        self._old: dict[Key, Built] = {}
        self._new: dict[Key, Built] = {}

    def outbound(self, *key: *Key) -> Built:
        found = self._new.get(key) or self._old.pop(key, None) or outbound(*key)
        self._new[key] = found
        return found

    def done(self) -> None:
        """End of a translation: what it did not ask for goes."""
        self._old, self._new = self._new, {}


def outbound(ip: str, port: int, protocol: str, cluster: str, service: str, namespace: str,
             domain: str) -> Built:
    """The listener for `ip:port`, and its routes unless the port is TCP."""
    name = listener_name(ip, port)
    tcp = tcp_proxy(name, TcpOptions(cluster=cluster))
    out: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": ip, "port_value": port}},
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
    }
    if protocol == TCP:
        out["filter_chains"] = [{"filters": [tcp]}]
        return json_format.ParseDict(out, listener_pb2.Listener()), None
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM,
        "stat_prefix": name,
        "rds": {"route_config_name": name, "config_source": ADS},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        # WebSocket passes as it would without the mesh (Istio allows it on every outbound listener).
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        # The app sees the Service's own `server` header, not the proxy's name.
        "server_header_transformation": "PASS_THROUGH",
    }}
    if protocol == HTTP:
        out["filter_chains"] = [{"filters": [hcm]}]
    else:
        out["filter_chains"] = [{"filters": [hcm]}]
        sniffing(out, tcp, None)  # waits for the client's first bytes
    hosts = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
             f"{service}.{namespace}.svc.{domain}", _host(ip)]
    routes = {
        "name": name,
        "virtual_hosts": [{
            "name": f"{service}.{namespace}.svc.{domain}:{port}",
            "domains": [d for h in hosts for d in (h, f"{h}:{port}")],
            # No route timeout, as Istio: a call that streams (gRPC, long polls) lasts as long as the
            # app lets it, as it would without the mesh; Envoy's default would end it at 15 s.
            "routes": [{"name": "default", "match": {"prefix": "/"},
                        "route": {"cluster": cluster, "timeout": "0s"}}],
        }],
    }
    return (json_format.ParseDict(out, listener_pb2.Listener()),
            json_format.ParseDict(routes, route_pb2.RouteConfiguration()))
