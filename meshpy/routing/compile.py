"""Model -> Snapshot: everything the hot path reads, built once per config load.

`compile_snapshot` is pure with respect to its inputs: the cluster runtimes and access loggers it binds
are made by the app and passed in, so a failed compile leaves no trace. Listener configs are immutable;
the `ListenerSlot` (one per bound socket) is the one mutable cell a reload swaps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from meshpy.codec import h2session
from meshpy.codec.http1 import HttpDate
from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.limits import NO_HTTP_LIMITS, HttpLimits
from meshpy.model.routes import ForwardAction
from meshpy.model.types import AccessLog, Config, Listener
from meshpy.routing.compile_chains import compile_chains
from meshpy.routing.table import RouteTable
from meshpy.stack.authz import NetworkAuthz
from meshpy.stack.client_cert import ClientCertPolicy
from meshpy.stack.deadlines import Deadlines
from meshpy.stack.exchange import Exchange
from meshpy.stack.exchange_h2 import H2Exchange
from meshpy.stack.exchange_logged import LoggedExchange, LoggedH2Exchange
from meshpy.stack.filter_chain import ChainBuilder
from meshpy.stack.policy_runtime import PolicyClaims
from meshpy.telemetry.accesslog import AccessLogger
from meshpy.telemetry.metrics import ListenerStats, Metrics
from meshpy.upstream.cluster import ClusterRuntime

if TYPE_CHECKING:
    from meshpy.ports import Http1Exchange, ResponseWriter, StreamExchange
    from meshpy.transport.admission import Gate, Overload
    from meshpy.transport.chain_dispatch import ListenerChains
    from meshpy.transport.h2_stream import H2Stream


class Drainable(Protocol):
    def begin_drain(self) -> None: ...  # draining begins: say so to the client if the protocol can
    def start_drain(self) -> None: ...  # the listener stops: finish what is under way, then close
    def close(self) -> None: ...
    def idle(self) -> bool: ...  # nothing in flight: no request open, no tunnel, no TCP pair


class TcpListenerConfig:
    __slots__ = ("cluster", "detect_timeout", "idle_timeout", "loggers")

    def __init__(self, cluster: str, idle_timeout: float | None, loggers: tuple[AccessLogger, ...],
                 detect_timeout: float | None = None) -> None:
        self.cluster = cluster
        self.idle_timeout = idle_timeout
        self.loggers = loggers
        self.detect_timeout = detect_timeout  # as a sniffing listener's fallback (see TcpOptions)


class HttpListenerConfig:
    """What a connection on one listener needs, flattened into attributes for the hot path.
    A TCP listener uses the same class with `tcp` set and no route table."""

    __slots__ = (
        "body_limit",
        "client_cert",
        "clusters",
        "conn_authz",
        "conn_limited",
        "dispatch",
        "envoy_headers",
        "forwarded_proto",
        "generate_rid",
        "guarded",
        "headers_timeout",
        "http1_exchange",
        "http2_exchange",
        "http_limits",
        "idle_timeout",
        "listener_upgrades",
        "loggers",
        "max_header_bytes",
        "max_headers",
        "model",
        "name",
        "options",
        "overload",
        "refuse_http_10",
        "replace_rid",
        "runtime",
        "scheme",
        "server_name",
        "service_cluster",
        "stats",
        "stream_idle_timeout",
        "table",
        "tcp",
        "tcp_fallback",
        "timer_interval",
        "upgrades",
        "use_remote_address",
        "user_agent",
    )

    def __init__(
        self,
        model: Listener,
        clusters: Mapping[str, ClusterRuntime],
        stats: ListenerStats,
        loggers: tuple[AccessLogger, ...],
        policies: PolicyClaims | None = None,
        node: tuple[str, str] = ("", ""),
    ) -> None:
        """`node`: the proxy's service node and cluster (Config.service_node, .service_cluster)."""
        self.model = model
        self.name = model.name
        self.clusters = clusters
        self.stats = stats
        self.loggers = loggers
        # The exchange classes that serve the listener's requests: handed to the transports here, so
        # that they never import the stack (meshpy.ports).
        self.http1_exchange: Callable[[ResponseWriter, HttpListenerConfig], Http1Exchange] = Exchange
        self.http2_exchange: Callable[[H2Stream, HttpListenerConfig], StreamExchange] = H2Exchange
        if any(logger.needs_view for logger in loggers):
            # Envoy's log formats and filters read what these keep; without them nothing is kept.
            self.http1_exchange, self.http2_exchange = LoggedExchange, LoggedH2Exchange
        self.tcp: TcpListenerConfig | None = None
        self.scheme = b"https" if model.tls is not None else b"http"  # x-forwarded-proto
        # The chain's network RBAC filter: checked once per connection, once its TLS identity is known.
        self.conn_authz: NetworkAuthz | None = None
        if model.authz is not None:
            if model.authz.delay_deny is not None:
                raise ConfigError.at("authz.delay_deny", "not supported: a denied connection closes at once")
            self.conn_authz = NetworkAuthz(model.authz, "authz")
            self.conn_authz.bind(stats)
        # x-forwarded-client-cert: clients present certificates only where a validation context asks
        mutual = model.tls is not None and model.tls.validation is not None
        self.client_cert = ClientCertPolicy.of(model.http, mutual)
        # TLS or several filter chains: what picks a chain and terminates TLS for a new connection
        # (meshpy.transport.chain_dispatch); None for a plaintext listener of one chain.
        self.dispatch: ListenerChains | None = None
        # An http listener's TCP proxy for connections that turn out not to speak HTTP (sniffed).
        self.tcp_fallback: TcpListenerConfig | None = None
        # Limits (meshpy.model.limits), None when the listener sets none, and the proxy's overload
        # state when its actions reach requests (set by the app: see with_overload).
        self.http_limits: HttpLimits | None = None
        self.overload: Overload | None = None
        self.conn_limited = False  # count requests per connection (transport.admission.keep_alive_allowed)
        self.guarded = False  # the exchange asks stack.admission_guard.guard before routing
        # add_user_agent: (the service cluster, the service node) for the request headers (guard)
        self.user_agent: tuple[bytes, bytes] | None = None
        self.service_cluster = node[1]  # (the global rate limit's source_cluster descriptors)
        self.runtime = policies.runtime if policies is not None else None  # Envoy's layered runtime
        opts = model.http
        if opts is None:
            assert model.tcp is not None
            self.tcp = TcpListenerConfig(model.tcp.cluster, model.tcp.idle_timeout, loggers)
            self.table = RouteTable.__new__(RouteTable)  # never consulted for TCP
            self.timer_interval = None
            self.headers_timeout = self.idle_timeout = self.stream_idle_timeout = None
            self.body_limit = None
            self.max_headers = self.max_header_bytes = 0
            self.server_name = None
            self.upgrades: frozenset[bytes] = frozenset()
            self.listener_upgrades = self.upgrades
            self.generate_rid = self.replace_rid = self.use_remote_address = self.forwarded_proto = False
            self.envoy_headers = False
            self.refuse_http_10 = False
            return
        self.options = opts
        if model.tcp is not None:
            self.tcp_fallback = TcpListenerConfig(model.tcp.cluster, model.tcp.idle_timeout, loggers,
                                                  model.tcp.detect_timeout)
        claims = policies if policies is not None else PolicyClaims()
        chain = ChainBuilder(opts.filters, claims, model.name)  # errors: listeners[i].filters[j]
        try:
            self.table = RouteTable(opts.route_config, rate_limit=opts.rate_limit, policies=claims,
                                    scope=model.name, chain=chain)
        except ConfigError as err:
            raise ConfigError([ConfigIssue(f"route_config.{x.path}" if x.path else "route_config", x.reason)
                               for x in err.issues]) from err
        self.max_headers = opts.max_request_headers_count
        self.max_header_bytes = opts.max_request_headers_kb * 1024
        self.headers_timeout = opts.request_headers_timeout
        self.idle_timeout = opts.idle_timeout
        self.stream_idle_timeout = opts.stream_idle_timeout
        self.body_limit = opts.max_request_body_bytes
        if opts.limits != NO_HTTP_LIMITS:
            self.http_limits = opts.limits
        if opts.add_user_agent:
            self.user_agent = (node[1].encode(), node[0].encode())
        self.with_overload(None)
        self.server_name = opts.server_name.encode() if opts.server_name else None
        # Upgrades taken at the head: the listener's, and those a route turns on (a route then says
        # yes or no for its own requests: Exchange._upgrade_refused).
        self.listener_upgrades = frozenset(u.encode() for u in opts.upgrades)
        self.upgrades = self.listener_upgrades | frozenset(
            kind.encode() for vh in opts.route_config.virtual_hosts for r in vh.routes
            if isinstance(r.action, ForwardAction) for kind, on in r.action.upgrades if on)
        # As in Envoy: a client's x-request-id is replaced only on an edge request (use_remote_address)
        # with preserve_external_request_id off; behind another proxy it is kept. A missing one is made.
        self.generate_rid = opts.generate_request_id
        self.replace_rid = opts.generate_request_id and opts.use_remote_address and \
            not opts.preserve_external_request_id
        self.use_remote_address = opts.use_remote_address
        self.forwarded_proto = opts.forwarded_proto
        self.envoy_headers = opts.envoy_headers
        self.refuse_http_10 = not opts.accept_http_10
        # The connection timer ticks at the smaller of the two connection-level limits.
        limits = [t for t in (self.headers_timeout, self.idle_timeout) if t is not None]
        self.timer_interval = min(limits) if limits else None

    def with_overload(self, overload: Overload | None) -> None:
        """`overload`: the proxy's state, when one of its actions reaches requests (else None)."""
        self.overload = overload
        limits = self.http_limits
        self.conn_limited = overload is not None or (limits is not None and (
            limits.max_requests_per_connection is not None or limits.max_connection_duration is not None))
        self.guarded = overload is not None or self.user_agent is not None or (
            limits is not None and limits.headers_with_underscores != "allow")


@dataclass(eq=False)
class ListenerSlot:
    """One bound listener. `current` is swapped by a reload; connections read it per request.

    A listener with more filter chains than its own has a slot per further chain (`chain_slot`),
    whose `current` is that chain's config; they share the listener's connections, gate and clock, so
    limits and draining see the listener whole."""

    current: HttpListenerConfig
    deadlines: Deadlines  # shared by every slot of one loop
    draining: bool = False
    date: HttpDate = field(default_factory=HttpDate)
    connections: set[Drainable] = field(default_factory=set)
    gate: Gate | None = None  # admission (meshpy.transport.admission); None admits everything
    chains: dict[str, ListenerSlot] = field(default_factory=dict)

    def chain_slot(self, name: str, cfg: HttpListenerConfig) -> ListenerSlot:
        slot = self.chains.get(name)
        if slot is None:
            slot = ListenerSlot(current=cfg, deadlines=self.deadlines, draining=self.draining, date=self.date,
                                connections=self.connections, gate=self.gate)
            self.chains[name] = slot
        return slot

    def refresh_chains(self) -> None:
        """After a reload: each chain slot takes its chain's new config; the slot of a chain that is
        gone drains (its connections finish what they are doing on the old config)."""
        dispatch = self.current.dispatch
        new = {c.name: c.cfg for c in dispatch.chains[1:]} if dispatch is not None else {}
        for name, slot in list(self.chains.items()):
            cfg = new.get(name)
            if cfg is None:
                slot.draining = True
                del self.chains[name]
            else:
                slot.current = cfg

    def set_draining(self) -> None:
        self.draining = True
        for slot in self.chains.values():
            slot.draining = True


@dataclass(frozen=True, eq=False)
class Snapshot:
    version: str
    loaded_at: float
    config: Config
    listeners: Mapping[str, HttpListenerConfig]
    clusters: Mapping[str, ClusterRuntime]
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


LoggerFactory = Callable[[AccessLog], AccessLogger]


def compile_snapshot(
    config: Config,
    clusters: Mapping[str, ClusterRuntime],
    metrics: Metrics,
    loggers: LoggerFactory,
    version: str,
    source: str = "",
    policies: PolicyClaims | None = None,
) -> Snapshot:
    """Compile every listener; raise ConfigError with all problems found (paths as in the model).
    `policies`: the live policy state to claim from (meshpy.stack.policy_runtime); the caller commits
    it once the Snapshot is live."""
    issues: list[ConfigIssue] = []
    listeners: dict[str, HttpListenerConfig] = {}

    def listener_config(model: Listener) -> HttpListenerConfig:
        """A listener's own chain, or (with the listener's name) one of its further chains."""
        logs = model.http.access_logs if model.http is not None else (
            model.tcp.access_logs if model.tcp is not None else ())
        bound = tuple(loggers(a) for a in logs)
        return HttpListenerConfig(model, clusters, metrics.listener(model.name), bound, policies,
                                  (config.service_node, config.service_cluster))

    for i, lm in enumerate(config.listeners):
        try:
            own = listeners[lm.name] = listener_config(lm)
            own.dispatch = compile_chains(lm, own, listener_config, metrics.tls)
        except ConfigError as err:
            where = f"listeners[{i}]"
            issues.extend(ConfigIssue(f"{where}.{x.path}" if x.path else where, x.reason) for x in err.issues)
        except OSError as err:
            issues.append(ConfigIssue(f"listeners[{i}].access_log", f"cannot open: {err}"))
    issues.extend(_codec_issues(config))
    if issues:
        raise ConfigError(issues)
    return Snapshot(
        version=version,
        loaded_at=time.time(),
        config=config,
        listeners=listeners,
        clusters=clusters,
        source=source,
    )


def _codec_issues(config: Config) -> list[ConfigIssue]:
    """`http2.codec: nghttp2` where libnghttp2 cannot load is refused up front, not on the first
    connection (auto falls back to h2 instead)."""
    named = [(f"listeners[{i}].http2.codec", lm.http.http2.codec) for i, lm in enumerate(config.listeners)
             if lm.http is not None]
    named += [(f"clusters[{i}].http2.codec", c.http2.codec) for i, c in enumerate(config.clusters)]
    issues = []
    for path, name in named:
        if name == "nghttp2":
            try:
                h2session.resolve(name)
            except h2session.CodecUnavailable as err:
                issues.append(ConfigIssue(path, str(err)))
    return issues
