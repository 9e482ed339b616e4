"""Envoy Listener -> model Listener: one filter chain holding an HTTP connection manager or a TCP proxy,
or (protocol sniffing) an HTTP chain matching the http_inspector's application protocols beside a TCP
proxy chain; use_original_dst, bind_to_port and traffic_direction for a sidecar's interception.

Defaults follow Envoy, not meshpy's own YAML: `use_remote_address` and `preserve_external_request_id`
are false, `request_headers_timeout` is off, and the `server` header says "envoy" unless
`server_name` or `server_header_transformation: PASS_THROUGH` says otherwise. A bootstrap that runs
under Envoy then behaves the same under meshpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshpy.model.authz import NetworkRbac
from meshpy.model.limits import ConnectionLimits
from meshpy.model.routes import Fault, RouteConfig
from meshpy.model.tls import ANY_CONNECTION, FilterChain
from meshpy.model.types import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_STREAM_IDLE_TIMEOUT,
    DEFAULT_TCP_IDLE_TIMEOUT,
    AccessLog,
    Address,
    Direction,
    HttpOptions,
    Listener,
    TcpOptions,
)
from meshpy.xds import translate_protocols as protocols
from meshpy.xds.translate_access_log import access_logs
from meshpy.xds.translate_authz import NETWORK_RBAC, NetworkRbacConfig, network_rbac
from meshpy.xds.translate_base import Issues, child, item, socket_address, timeout, unpack, wrapped
from meshpy.xds.translate_client_cert import HCM_FIELDS as CLIENT_CERT_FIELDS
from meshpy.xds.translate_client_cert import client_cert
from meshpy.xds.translate_filters import http_filters
from meshpy.xds.translate_limits import COMMON_LIMIT_FIELDS, ConnectionLimit, connection_limit, http_limits
from meshpy.xds.translate_routes import route_config
from meshpy.xds.translate_tls import (
    DownstreamTlsContext,
    Secrets,
    connect_timeout,
    server_tls,
    transport_socket,
)
from meshpy.xds.translate_tls import (
    chain_match as tls_match,
)

HttpConnectionManager = http_connection_manager_pb2.HttpConnectionManager
TcpProxy = tcp_proxy_pb2.TcpProxy


def _by_name(*classes: Any) -> dict[str, Any]:
    return {cls.DESCRIPTOR.full_name: cls for cls in classes}


NETWORK_FILTERS = _by_name(HttpConnectionManager, TcpProxy)
OriginalDst = original_dst_pb2.OriginalDst
HttpInspector = http_inspector_pb2.HttpInspector
TlsInspector = tls_inspector_pb2.TlsInspector
LISTENER_FILTERS = _by_name(OriginalDst, HttpInspector, TlsInspector)
_RBAC = {NETWORK_RBAC: NetworkRbacConfig}

# `stat_prefix` and `metadata` name stats or feed filters meshpy does not have: nothing to act on.
_LISTENER = frozenset({"name", "address", "filter_chains", "stat_prefix", "metadata", "use_original_dst",
                       "bind_to_port", "traffic_direction", "listener_filters", "default_filter_chain",
                       "listener_filters_timeout", "continue_on_listener_filters_timeout",
                       "per_connection_buffer_limit_bytes", "ignore_global_conn_limit",
                       "bypass_overload_manager"})
_DIRECTIONS: dict[int, Direction] = {1: "inbound", 2: "outbound"}
# What the http_inspector reports for HTTP: the application_protocols an HTTP chain may match on (and
# what the control plane writes for a sniffing listener).
SNIFFED_HTTP = ("http/1.0", "http/1.1", "h2c")
_HTTP_PROTOCOLS = frozenset(SNIFFED_HTTP)
_HCM = frozenset(
    {
        "codec_type",
        "stat_prefix",
        "rds",
        "route_config",
        "http_filters",
        "use_remote_address",
        "xff_num_trusted_hops",
        "generate_request_id",
        "preserve_external_request_id",
        "stream_idle_timeout",
        "request_headers_timeout",
        "common_http_protocol_options",
        "max_request_headers_kb",
        "server_name",
        "server_header_transformation",
        "access_log",
        "http2_protocol_options",
        "http_protocol_options",
        "upgrade_configs",
        "add_user_agent",
        *CLIENT_CERT_FIELDS,
    }
)
_TCP_PROXY = frozenset({"stat_prefix", "cluster", "idle_timeout", "access_log"})
_SERVER_OVERWRITE, _SERVER_PASS_THROUGH = 0, 2
_MAX_HEADERS_KB = 8192  # Envoy's upper bound for max_request_headers_kb


def listener(
    issues: Issues, msg: Any, path: str, routes: Mapping[str, RouteConfig] | None = None,
    secrets: Secrets | None = None,
) -> Listener:
    """A Listener. An HCM using RDS needs `routes` (RouteConfigurations received over xDS, by name);
    TLS contexts may name the bootstrap's static `secrets`."""
    issues.fields(msg, path, _LISTENER)
    if msg.HasField("address"):
        address = socket_address(issues, msg.address, child(path, "address"), listening=True)
    else:
        issues.add(child(path, "address"), "is required")
        address = Address(host="", port=0)
    # Envoy names an unnamed listener itself; the address is a stable, readable stand-in.
    name = msg.name or str(address)
    placeholder = Listener(name=name, address=address, kind="tcp", tcp=TcpOptions(cluster=""))
    interception = dataclasses.replace(
        placeholder, original_destination=wrapped(msg, "use_original_dst", False),
        bind=wrapped(msg, "bind_to_port", True),
        direction=_DIRECTIONS.get(msg.traffic_direction, "unspecified"))
    limits = ConnectionLimits(buffer_limit=wrapped(msg, "per_connection_buffer_limit_bytes", None) or None,
                              global_exempt=msg.ignore_global_conn_limit or msg.bypass_overload_manager,
                              overload_exempt=msg.bypass_overload_manager)
    interception = dataclasses.replace(interception, limits=limits)
    sniffing, inspecting = listener_filters(issues, msg, path)
    limited: list[int] = []  # connection_limit filters' max_connections, one per chain at most
    chains = [(c, item(child(path, "filter_chains"), i)) for i, c in enumerate(msg.filter_chains)]
    if msg.HasField("default_filter_chain"):
        chains.append((msg.default_filter_chain, child(path, "default_filter_chain")))
    if inspecting or any(_general(c) for c, _ in chains) or len(chains) > 2:
        listener = _chains(issues, msg, path, chains, routes, secrets or {}, limited, interception)
        return _limited(dataclasses.replace(listener, inspect_tls=inspecting), limited)
    if len(chains) == 2:
        # An HTTP chain for what the http_inspector finds to be HTTP, and a TCP chain for the rest
        # (Istio's protocol sniffing): an http listener with a tcp fallback.
        (first, first_path), (second, second_path) = chains
        if not sniffing:
            issues.add(child(path, "listener_filters"), "two filter chains need the http_inspector to "
                       "pick one")
        rbac: list[NetworkRbac] = []
        found = [_chain(issues, first, first_path, routes, limited, True, authz=rbac),
                 _chain(issues, second, second_path, routes, limited)]
        http = next((f for f in found if isinstance(f, HttpOptions)), None)
        tcp = next((f for f in found if isinstance(f, TcpOptions)), None)
        if http is None or tcp is None:
            issues.add(child(path, "filter_chains"), "two chains must be one HTTP chain matching "
                       "application_protocols and one TCP proxy chain")
            return placeholder
        detect = _detect_timeout(issues, msg, path)
        interception = _limited(interception, limited)
        return dataclasses.replace(interception, kind="http", http=http, authz=rbac[0] if rbac else None,
                                   tcp=dataclasses.replace(tcp, detect_timeout=detect))
    if msg.HasField("listener_filters_timeout") or msg.continue_on_listener_filters_timeout:
        issues.add(child(path, "listener_filters_timeout"), "only applies to a listener that sniffs (an "
                   "HTTP chain and a TCP chain with the http_inspector)")
    if len(chains) != 1:
        issues.add(child(path, "filter_chains"), f"exactly one filter chain (or an HTTP chain and a TCP "
                   f"default_filter_chain) is supported, got {len(chains)}")
        return placeholder
    rbac = []
    one = _chain(issues, chains[0][0], chains[0][1], routes, limited, authz=rbac)
    interception = _limited(interception, limited)
    if rbac:
        interception = dataclasses.replace(interception, authz=rbac[0])
    if isinstance(one, HttpOptions):
        return dataclasses.replace(interception, kind="http", http=one, tcp=None)
    if isinstance(one, TcpOptions):
        return dataclasses.replace(interception, tcp=one)
    return placeholder


def _detect_timeout(issues: Issues, msg: Any, path: str) -> float | None:
    """A sniffing listener's wait for the client's first bytes. meshpy then proxies the connection as
    TCP (Envoy's continue_on_listener_filters_timeout); 0s or unset waits (Envoy closes at 15 s)."""
    if not msg.HasField("listener_filters_timeout"):
        return None
    seconds = timeout(msg, "listener_filters_timeout", None)
    if seconds is None:
        return None
    if not msg.continue_on_listener_filters_timeout:
        issues.add(child(path, "continue_on_listener_filters_timeout"), "must be true: meshpy proxies a "
                   "connection still silent at listener_filters_timeout as TCP (or set 0s to wait)")
    return seconds


def _limited(listener: Listener, limits: list[int]) -> Listener:
    """With a connection_limit filter, the listener's limit (one count for the listener: the smallest
    of its chains' limits, where Envoy would count each chain's connections apart)."""
    if not limits:
        return listener
    limited = dataclasses.replace(listener.limits, max_connections=min(limits))
    return dataclasses.replace(listener, limits=limited)


def _general(chain: Any) -> bool:
    """Whether a chain needs the general path (chains chosen by match, TLS): a transport socket, or a
    filter_chain_match on more than the application protocols the http_inspector reports."""
    if chain.HasField("transport_socket"):
        return True
    m = chain.filter_chain_match
    return any(f.name != "application_protocols" for f, _ in m.ListFields()) if chain.HasField(
        "filter_chain_match") else False


def _chains(issues: Issues, msg: Any, path: str, chains: list[tuple[Any, str]],
            routes: Mapping[str, RouteConfig] | None, secrets: Secrets, limited: list[int],
            base: Listener) -> Listener:
    """`base` with chains chosen by filter_chain_match, each with its own TLS (or none): the first
    is the listener's own, the rest go to `chains`."""
    found: list[FilterChain] = []
    for i, (chain, at) in enumerate(chains):
        rbac: list[NetworkRbac] = []
        options = _chain(issues, chain, at, routes, limited, general=True, authz=rbac)
        match = ANY_CONNECTION
        if chain.HasField("filter_chain_match"):
            match = tls_match(issues, chain.filter_chain_match, child(at, "filter_chain_match"))
        tls = None
        if chain.HasField("transport_socket"):
            config = transport_socket(issues, chain.transport_socket, child(at, "transport_socket"))
            if config is not None and not isinstance(config, DownstreamTlsContext):
                issues.add(child(at, "transport_socket"), "a listener's TLS is a DownstreamTlsContext")
            elif config is not None:
                tls = server_tls(issues, config, child(at, "transport_socket.typed_config"), secrets,
                                 connect_timeout(chain))
        elif chain.HasField("transport_socket_connect_timeout"):
            issues.add(child(at, "transport_socket_connect_timeout"), "only applies with TLS")
        name = chain.name or f"{msg.name or 'listener'}#{i}"
        http = options if isinstance(options, HttpOptions) else None
        tcp = options if isinstance(options, TcpOptions) else None
        if http is None and tcp is None:
            tcp = TcpOptions(cluster="")  # the chain's filters were refused: the issues say why
        found.append(FilterChain(name=name, match=match, tls=tls, kind="http" if http is not None else "tcp",
                                 http=http, tcp=tcp, authz=rbac[0] if rbac else None))
    first = found[0] if found else FilterChain(name="", kind="tcp", tcp=TcpOptions(cluster=""))
    return dataclasses.replace(base, kind=first.kind, http=first.http, tcp=first.tcp, tls=first.tls,
                               match=first.match, chains=tuple(found[1:]), authz=first.authz,
                               default_chain=msg.HasField("default_filter_chain"))


def _chain(issues: Issues, chain: Any, chain_path: str, routes: Mapping[str, RouteConfig] | None,
           max_connections: list[int], sniffed: bool = False, general: bool = False,
           authz: list[NetworkRbac] | None = None) -> HttpOptions | TcpOptions | None:
    """One filter chain's HTTP or TCP options. `sniffed`: the chain may match HTTP application
    protocols (what the http_inspector reports), its only supported filter_chain_match; `general`:
    the caller reads the match and the transport socket. A network RBAC filter before the last
    filter goes to `authz`, a connection_limit's limit to `max_connections`."""
    if general:
        issues.fields(chain, chain_path, {"name", "filters", "filter_chain_match", "transport_socket",
                                          "transport_socket_connect_timeout"})
    else:
        issues.fields(chain, chain_path, {"name", "filters", "filter_chain_match"})
    if chain.HasField("filter_chain_match") and not general:
        m, m_path = chain.filter_chain_match, child(chain_path, "filter_chain_match")
        issues.fields(m, m_path, {"application_protocols"} if sniffed else ())
        wanted = set(m.application_protocols)
        if sniffed and not wanted <= _HTTP_PROTOCOLS:
            issues.add(child(m_path, "application_protocols"), f"only {sorted(_HTTP_PROTOCOLS)} are known")
    filters_path = child(chain_path, "filters")
    filters = list(enumerate(chain.filters))
    leading = {ConnectionLimit.DESCRIPTOR.full_name, NETWORK_RBAC}
    while len(filters) > 1 and filters[0][1].typed_config.TypeName() in leading:
        i, first = filters.pop(0)
        if first.typed_config.TypeName() == NETWORK_RBAC:
            at = item(filters_path, i)
            issues.fields(first, at, {"name", "typed_config"})
            config = unpack(issues, first.typed_config, child(at, "typed_config"), _RBAC)
            if authz is None or authz:
                issues.add(at, "one network RBAC filter per chain is supported")
            elif config is not None:
                authz.append(network_rbac(issues, config, child(at, "typed_config")))
            continue
        limit = connection_limit(issues, first, item(filters_path, i))
        if limit is not None:
            max_connections.append(limit)
    if len(filters) != 1:
        reason = ("exactly one filter (http_connection_manager or tcp_proxy), after any connection_limit "
                  "and rbac, is supported")
        issues.add(filters_path, f"{reason}, got {len(chain.filters)}")
        return None
    index, network_filter = filters[0]
    filter_path = item(filters_path, index)
    issues.fields(network_filter, filter_path, {"name", "typed_config"})
    config_path = child(filter_path, "typed_config")
    if not network_filter.HasField("typed_config"):
        issues.add(config_path, "is required")
        return None
    # The type of typed_config picks the extension (as in Envoy 1.40); the filter's name is a label.
    config = unpack(issues, network_filter.typed_config, config_path, NETWORK_FILTERS)
    if isinstance(config, HttpConnectionManager):
        return _http_options(issues, config, config_path, routes)
    if isinstance(config, TcpProxy):
        return _tcp_options(issues, config, config_path)
    return None


def listener_filters(issues: Issues, msg: Any, path: str) -> tuple[bool, bool]:
    """Check the listener filters; whether the http_inspector and the tls_inspector are among them.
    original_dst is what meshpy does for every use_original_dst listener, so it is accepted and needs
    no setting."""
    sniffing = inspecting = False
    for i, lf in enumerate(msg.listener_filters):
        at = item(child(path, "listener_filters"), i)
        issues.fields(lf, at, {"name", "typed_config"})
        if lf.HasField("typed_config"):
            config = unpack(issues, lf.typed_config, child(at, "typed_config"), LISTENER_FILTERS)
            sniffing = sniffing or isinstance(config, HttpInspector)
            inspecting = inspecting or isinstance(config, TlsInspector)
        else:
            issues.add(child(at, "typed_config"), "is required")
    return sniffing, inspecting


def _http_options(
    issues: Issues, msg: Any, path: str, routes: Mapping[str, RouteConfig] | None
) -> HttpOptions:
    issues.fields(msg, path, _HCM)
    codec = protocols.codec(issues, msg, path)
    http2 = protocols.http2_options(issues, msg.http2_protocol_options, child(path, "http2_protocol_options"),
                                    downstream=True)
    filters, listener_fault, listener_limit, envoy_headers = http_filters(
        issues, msg, child(path, "http_filters"))
    max_kb = wrapped(msg, "max_request_headers_kb", 60)
    if not 0 < max_kb <= _MAX_HEADERS_KB:
        issues.add(child(path, "max_request_headers_kb"), f"must be from 1 to {_MAX_HEADERS_KB}")
    common = msg.common_http_protocol_options
    common_path = child(path, "common_http_protocol_options")
    issues.fields(common, common_path, {"max_headers_count", "idle_timeout", *COMMON_LIMIT_FIELDS})
    max_count = wrapped(common, "max_headers_count", 100)
    if max_count < 1:
        issues.add(child(common_path, "max_headers_count"), "must be at least 1")
    rc = _routes(issues, msg, path, routes)
    xfcc, xfcc_details = client_cert(issues, msg, path)
    # HTTP/1.0 gets 426 unless accept_http_10, as in Envoy (its other options change what meshpy lacks)
    issues.fields(msg.http_protocol_options, child(path, "http_protocol_options"), {"accept_http_10"})
    if listener_fault is not None:  # the filter's own config: every route's that has none
        rc = with_fault(rc, listener_fault)
    return HttpOptions(
        route_config=rc,
        rate_limit=listener_limit,
        use_remote_address=bool(wrapped(msg, "use_remote_address", False)),
        xff_num_trusted_hops=msg.xff_num_trusted_hops,
        generate_request_id=bool(wrapped(msg, "generate_request_id", True)),
        envoy_headers=envoy_headers,
        accept_http_10=msg.http_protocol_options.accept_http_10,
        preserve_external_request_id=msg.preserve_external_request_id,
        stream_idle_timeout=timeout(msg, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT),
        idle_timeout=timeout(common, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
        request_headers_timeout=timeout(msg, "request_headers_timeout", None),
        max_request_headers_kb=max_kb,
        max_request_headers_count=max_count,
        access_logs=_access_logs(issues, msg.access_log, child(path, "access_log")),
        server_name=_server_name(issues, msg, path),
        forward_client_cert=xfcc,
        client_cert_details=xfcc_details,
        codec=codec,
        http2=http2,
        upgrades=protocols.upgrades(issues, msg, path),
        filters=filters,
        limits=http_limits(issues, common, msg, common_path),
        add_user_agent=bool(wrapped(msg, "add_user_agent", False)),
    )


def _routes(issues: Issues, msg: Any, path: str, routes: Mapping[str, RouteConfig] | None) -> RouteConfig:
    kind = msg.WhichOneof("route_specifier")
    if kind == "route_config":
        return route_config(issues, msg.route_config, child(path, "route_config"))
    if kind == "rds":
        rds_path = child(path, "rds")
        if routes is None:
            issues.add(rds_path, "rds is not supported in a static bootstrap yet")
        else:
            # config_source says where to fetch the routes from; whoever passes `routes` already did.
            issues.fields(msg.rds, rds_path, {"config_source", "route_config_name"})
            found = routes.get(msg.rds.route_config_name)
            if found is not None:
                return found
            issues.add(child(rds_path, "route_config_name"), "no RouteConfiguration received by this name")
    elif kind is None:
        issues.add(path, "route_config is required")
    return RouteConfig(name="", virtual_hosts=())


def with_fault(rc: RouteConfig, fault: Fault) -> RouteConfig:
    """`rc` with `fault` on every route that has no fault of its own."""
    hosts = tuple(
        dataclasses.replace(vh, routes=tuple(
            r if r.fault is not None else dataclasses.replace(r, fault=fault) for r in vh.routes))
        for vh in rc.virtual_hosts
    )
    return dataclasses.replace(rc, virtual_hosts=hosts)


def _server_name(issues: Issues, msg: Any, path: str) -> str | None:
    if msg.server_header_transformation == _SERVER_PASS_THROUGH:
        return None
    if msg.server_header_transformation != _SERVER_OVERWRITE:
        reason = "only OVERWRITE and PASS_THROUGH are supported"
        issues.add(child(path, "server_header_transformation"), reason)
    return msg.server_name or "envoy"


def _tcp_options(issues: Issues, msg: Any, path: str) -> TcpOptions:
    issues.fields(msg, path, _TCP_PROXY)
    if not msg.cluster and msg.WhichOneof("cluster_specifier") in (None, "cluster"):
        issues.add(child(path, "cluster"), "is required")
    return TcpOptions(
        cluster=msg.cluster,
        idle_timeout=timeout(msg, "idle_timeout", DEFAULT_TCP_IDLE_TIMEOUT),
        access_logs=_access_logs(issues, msg.access_log, child(path, "access_log")),
    )


def _access_logs(issues: Issues, logs: Any, path: str) -> tuple[AccessLog, ...]:
    """File, stdout and stderr loggers with Envoy's formats and filters (meshpy.xds.translate_access_log);
    one without a format writes Envoy's default line."""
    return access_logs(issues, logs, path)
