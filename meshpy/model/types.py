"""The one config model every source turns into: meshpy YAML, an Envoy bootstrap, and (later) xDS.

Frozen, slotted, keyword-only dataclasses with tuple fields, so a model can be shared between the old
and the new Snapshot during a reload and compared with `==` to find what changed. Durations are floats
in seconds; `None` means "no limit" where Envoy uses 0 for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from meshpy.model.access_log import AccessLog as AccessLog  # (re-exported: where it always was)
from meshpy.model.endpoints import (
    DEFAULT_GROUP,
    DEFAULT_LOCALITY_BALANCING,
    NO_LOCALITY,
    EndpointGroup,
    HealthTarget,
    Locality,
    LocalityBalancing,
)
from meshpy.model.filter_types import HttpFilterSpec
from meshpy.model.limits import NO_HTTP_LIMITS, NO_LIMITS, NO_OVERLOAD, ConnectionLimits, HttpLimits, Overload
from meshpy.model.process import NO_PROCESS_OPTIONS, ProcessOptions
from meshpy.model.routes import LocalRateLimit, RouteConfig
from meshpy.model.runtime import NO_RUNTIME, LayeredRuntime
from meshpy.model.tls import ANY_CONNECTION, ChainMatch, ClientTls, FilterChain, ServerTls

if TYPE_CHECKING:
    from meshpy.model.authz import NetworkRbac

DiscoveryType = Literal["static", "strict_dns", "logical_dns", "original_dst"]
# Which of a name's addresses a DNS cluster uses (Envoy's dns_lookup_family): `auto`, IPv6 ones if
# there are any, else IPv4 ones (Envoy's default); `v4_preferred` the other way round; `all` both.
DnsLookupFamily = Literal["auto", "v4_only", "v6_only", "v4_preferred", "all"]
LbPolicy = Literal["round_robin", "least_request", "random", "ring_hash", "maglev", "peak_ewma"]
HASHED_POLICIES = ("ring_hash", "maglev")
ListenerKind = Literal["http", "tcp"]
# Envoy's traffic_direction: a sidecar drains its inbound listeners first (see App._shutdown).
Direction = Literal["unspecified", "inbound", "outbound"]

DEFAULT_CONNECT_TIMEOUT = 5.0  # Envoy's cluster connect_timeout default
DEFAULT_STREAM_IDLE_TIMEOUT = 300.0  # Envoy's HCM stream_idle_timeout default (5 minutes)
DEFAULT_TCP_IDLE_TIMEOUT = 3600.0  # Envoy's tcp_proxy idle_timeout default (1 hour)
DEFAULT_HEADERS_TIMEOUT = 10.0  # slowloris guard: whole request head must arrive within this
DEFAULT_IDLE_TIMEOUT = 3600.0  # Envoy's HCM common_http_protocol_options.idle_timeout default
DEFAULT_DNS_REFRESH = 5.0  # Envoy's dns_refresh_rate default


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A TCP address, or with `path` a Unix socket (Envoy's pipe; host and port unused, `mode` the
    permission bits of a listening socket's file): meshpy.model.unix_address."""

    host: str
    port: int
    path: str = ""
    mode: int = 0
    # A listening IPv6 socket that takes IPv4 too (IPv4-mapped peers; Envoy's ipv4_compat).
    v4_compat: bool = False

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# The admin address of a proxy whose config does not say (`meshpy run --xds ...` without a file), and
# the one `meshpy wait` and `meshpy drain` ask by default: the sidecar's (config/sidecar.yaml, the
# image's health check, `meshpy inject`), as Istio's sidecars have it.
DEFAULT_ADMIN = Address(host="127.0.0.1", port=15000)


H2CodecName = Literal["auto", "nghttp2", "h2"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Http2Options:
    """HTTP/2 settings of one side of a connection (Envoy's http2_protocol_options, same names).

    The windows bound what a peer may send before the proxy has passed it on: meshpy opens them again
    only as the other side takes the bytes, so together they cap the memory one connection can hold.
    Envoy's defaults (256 MiB windows, no stream limit) let one connection hold far too much; the
    RFC's 64 KiB stream window (Envoy's advice for an edge) stalls a fast stream every 32 KiB on a
    window update. 256 KiB per stream is what one socket read brings: measured with make bench-h2,
    server streaming went from 0.70x to over 1x Envoy's MB/s (64 KiB windows: ~1,150 MB/s; 256 KiB:
    ~2,000; 512 KiB and 1 MiB fell back to ~1,000, with twice the CPU per byte, as two reads gather
    per loop iteration and the bytes in flight outgrow the CPU's cache)."""

    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 256 * 1024
    initial_connection_window_size: int = 2 * 1024 * 1024
    # PING every `keepalive_interval` seconds (None: never); no answer within `keepalive_timeout`
    # closes the connection, so a peer that vanished without a FIN is noticed (Envoy's
    # connection_keepalive). Used on upstream connections.
    keepalive_interval: float | None = None
    keepalive_timeout: float = 5.0
    # A listener's: extended CONNECT (RFC 8441, WebSocket over HTTP/2) is announced in SETTINGS and
    # taken. Envoy's allow_connect, off unless an Envoy config sets it; on in meshpy YAML. (A plain
    # CONNECT is HTTP/2's own and is taken either way, where a CONNECT route allows it.)
    allow_connect: bool = True
    # The HTTP/2 codec (meshpy.codec.h2session): auto is the process default (`meshpy run
    # --http2-codec`), which is nghttp2 where libnghttp2 loads, else h2. meshpy YAML only.
    codec: H2CodecName = "auto"


DEFAULT_HTTP2 = Http2Options()
H2_MIN_WINDOW, H2_MAX_WINDOW = 65535, 2**31 - 1  # RFC 9113 6.9.2; smaller starting windows stall peers

# Which wire protocol a listener speaks: auto decides per connection from its first bytes.
HttpCodec = Literal["auto", "http1", "http2"]
# x-forwarded-client-cert: Envoy's forward_client_cert_details, lower case (meshpy.stack.client_cert).
ForwardClientCert = Literal["sanitize", "forward_only", "append_forward", "sanitize_set",
                            "always_forward_only"]
FORWARD_CLIENT_CERT: tuple[ForwardClientCert, ...] = (
    "sanitize", "forward_only", "append_forward", "sanitize_set", "always_forward_only")  # Envoy's enum order
# What set_current_client_cert_details adds to an element, in the order Envoy writes them.
ClientCertDetail = Literal["cert", "chain", "subject", "uri", "dns"]
CLIENT_CERT_DETAILS: tuple[ClientCertDetail, ...] = ("cert", "chain", "subject", "uri", "dns")
# What a cluster speaks to its endpoints: auto is whichever of HTTP/2 and HTTP/1.1 TLS's ALPN agrees
# on with each connection (Envoy's auto_config), so it needs TLS; the loaders then offer AUTO_ALPN
# (meshpy.model.tls) unless the cluster's TLS lists its own.
UpstreamProtocol = Literal["http1", "http2", "auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    route_config: RouteConfig
    use_remote_address: bool = True  # append the peer address to x-forwarded-for
    xff_num_trusted_hops: int = 0
    forwarded_proto: bool = True  # set x-forwarded-proto when the client did not send one
    # Envoy's router headers: x-envoy-upstream-service-time on proxied responses, and upstream
    # x-envoy-expected-rq-timeout-ms and x-envoy-original-path or -host (after a rewrite). On for an Envoy
    # config unless the router says suppress_envoy_headers; off in meshpy YAML unless asked for.
    envoy_headers: bool = False
    # HTTP/1.0 requests are proxied; when false they get 426 Upgrade Required, as from Envoy without
    # http_protocol_options.accept_http_10 (the default for an Envoy config).
    accept_http_10: bool = True
    generate_request_id: bool = True
    preserve_external_request_id: bool = True
    stream_idle_timeout: float | None = DEFAULT_STREAM_IDLE_TIMEOUT
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  # a keep-alive connection with no request open
    request_headers_timeout: float | None = DEFAULT_HEADERS_TIMEOUT
    max_request_headers_kb: int = 60
    max_request_headers_count: int = 100
    max_request_body_bytes: int | None = None  # None: unlimited (streamed)
    access_logs: tuple[AccessLog, ...] = ()
    server_name: str | None = None  # None: the upstream's `server` header passes through
    rate_limit: LocalRateLimit | None = None  # one bucket for the listener's routes without their own
    codec: HttpCodec = "auto"
    http2: Http2Options = DEFAULT_HTTP2
    # Upgrade types (lowercase) proxied as tunnels after a 101; others are proxied as plain requests.
    upgrades: tuple[str, ...] = ("websocket",)
    # The HTTP filters in order, before the router. The built-in ones not listed run first, in the
    # order of BUILTIN_FILTERS: rate limit, then faults.
    filters: tuple[HttpFilterSpec, ...] = ()
    limits: HttpLimits = NO_HTTP_LIMITS
    forward_client_cert: ForwardClientCert = "sanitize"  # a client's x-forwarded-client-cert, by mode
    # What an adding mode (append_forward, sanitize_set) writes besides By and Hash, in Envoy's order.
    client_cert_details: tuple[ClientCertDetail, ...] = ()
    # Envoy's add_user_agent: requests get x-envoy-downstream-service-cluster (and user-agent where they
    # have none) from Config.service_cluster, and x-envoy-downstream-service-node from
    # Config.service_node when it is set.
    add_user_agent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpOptions:
    cluster: str
    idle_timeout: float | None = DEFAULT_TCP_IDLE_TIMEOUT
    access_logs: tuple[AccessLog, ...] = ()
    # As an http listener's fallback: a client that has sent nothing after this long is taken for one
    # whose server speaks first (MySQL, SMTP) and proxied as TCP (None: wait for its first bytes).
    detect_timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """`kind` says what the listener speaks. An http listener may have `tcp` too: its fallback for
    connections whose first bytes are not HTTP (sniffed, as Istio's protocol detection).

    Transparent interception (a sidecar): a listener with `original_destination` hands each connection
    to the listener whose address is where the connection was going before iptables redirected it
    (exact address first, then 0.0.0.0 or [::] on that port), and keeps it when none matches (Envoy's
    use_original_dst). Such target listeners usually have `bind` off (Envoy's bind_to_port): they
    own no socket and only serve connections handed to them."""

    name: str
    address: Address
    kind: ListenerKind
    http: HttpOptions | None = None
    tcp: TcpOptions | None = None
    original_destination: bool = False
    bind: bool = True
    direction: Direction = "unspecified"
    limits: ConnectionLimits = NO_LIMITS
    # TLS and filter chains (meshpy.model.tls). The fields above are the listener's own chain, which
    # terminates `tls` and serves what `match` allows; `chains` are more, and a connection goes to the
    # most specific match among all of them (closed when none matches).
    tls: ServerTls | None = None
    match: ChainMatch = ANY_CONNECTION
    chains: tuple[FilterChain, ...] = ()
    inspect_tls: bool = False  # Envoy's tls_inspector: SNI and ALPN read before a chain is chosen
    default_chain: bool = False  # the last of `chains` is Envoy's default_filter_chain (may repeat a match)
    authz: NetworkRbac | None = None  # the own chain's network RBAC filter (connections, not requests)

    def own_chain(self) -> FilterChain:
        """The listener's own chain as a FilterChain, to walk all chains alike."""
        return FilterChain(name=self.name, match=self.match, tls=self.tls, kind=self.kind, http=self.http,
                           tcp=self.tcp, authz=self.authz)

    def all_chains(self) -> tuple[FilterChain, ...]:
        return (self.own_chain(), *self.chains)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    address: Address
    weight: int = 1
    # Its priority and locality (meshpy.model.endpoints), the name Envoy's endpoint `hostname` gives it,
    # and where its health checks go when not to `address`.
    group: EndpointGroup = DEFAULT_GROUP
    hostname: str = ""
    health_target: HealthTarget | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """Retries in flight may be at most `percent` of the cluster's active requests, and always
    `min_concurrency`. On by default in meshpy (Envoy has it off), so that a failing upstream cannot
    set off a retry storm."""

    percent: float = 20.0
    min_concurrency: int = 3


DEFAULT_BUDGET = RetryBudget()


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakers:
    """Limits over the whole cluster (Envoy's DEFAULT-priority thresholds, with Envoy's defaults).
    Past max_requests or max_pending_requests a request is answered 503 at once (flag UO); past
    max_connections it waits for a connection (still, a host always gets one). max_retries bounds
    retries in flight."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3  # retries in flight, when the retry budget is off
    retry_budget: RetryBudget | None = DEFAULT_BUDGET  # None: off (then max_retries bounds retries)


DEFAULT_BREAKERS = CircuitBreakers()


@dataclass(frozen=True, slots=True, kw_only=True)
class SlowStart:
    """A host that just joined gets traffic in proportion to how long it has been there (Envoy's
    slow_start_config): weight x max(min_weight_percent, (age / window) ^ (1 / aggression))."""

    window: float
    aggression: float = 1.0
    min_weight_percent: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancing:
    """How a cluster picks an endpoint. `ring_hash` and `maglev` hash what the route's hash_policy
    names (without one, or when the request lacks it, they pick at random); `peak_ewma` is Linkerd's
    latency-aware balancer: of two random endpoints, the one with the lower peak-weighted moving
    average latency times its requests in flight."""

    policy: LbPolicy = "round_robin"
    choice_count: int = 2  # least_request: how many random endpoints are compared
    ring_size: int = 1024  # ring_hash: minimum ring size (Envoy's minimum_ring_size)
    table_size: int = 65537  # maglev: a prime
    decay: float = 10.0  # peak_ewma: seconds over which old latencies fade
    slow_start: SlowStart | None = None  # round_robin and least_request
    # Priorities, panic threshold, locality weights, zone-aware routing (meshpy.upstream.priority).
    locality: LocalityBalancing = DEFAULT_LOCALITY_BALANCING


DEFAULT_LB = LoadBalancing()


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    """Passive health: endpoints that fail are ejected from the balancer for a while (Envoy's outlier
    detection, same names and defaults). The ejection time is base_ejection_time times the number of
    times the endpoint was ejected (capped by max_ejection_time); at most max_ejection_percent of the
    endpoints are out at once, but always at least one may be."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    split_external_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    enforcing_consecutive_5xx: float = 100.0
    enforcing_consecutive_gateway_failure: float = 0.0
    enforcing_consecutive_local_origin_failure: float = 100.0
    enforcing_success_rate: float = 100.0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900  # thousandths: 1900 is 1.9 standard deviations
    enforcing_failure_percentage: float = 0.0
    failure_percentage_threshold: float = 85.0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """Active health checking (Envoy's, same names and meaning): every `interval` (plus up to
    `interval_jitter`) each endpoint is checked; `unhealthy_threshold` failures in a row take it out of
    the balancer, `healthy_threshold` successes bring it back. An HTTP check passes on a status in
    `expected_statuses` (half-open ranges, 200 by default); a TCP check on a completed connect; a gRPC
    check (grpc.health.v1.Health/Check over HTTP/2) on the answer SERVING for `service`."""

    kind: Literal["http", "tcp", "grpc"] = "http"
    path: str = "/"
    host: str | None = None  # the Host header (gRPC: :authority); the cluster's name when unset (as Envoy)
    service: str = ""  # gRPC: the service asked about ("": the server as a whole)
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)
    interval: float = 5.0
    timeout: float = 1.0
    interval_jitter: float = 0.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    # While the cluster has never opened a connection (Envoy's no_traffic_interval, 60 s in an Envoy
    # config), and for endpoints that pass their checks meanwhile (no_traffic_healthy_interval, else
    # the former). None: `interval`.
    no_traffic_interval: float | None = None
    no_traffic_healthy_interval: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpKeepalive:
    """TCP keepalive on upstream connections (Envoy's upstream_connection_options.tcp_keepalive): when a
    cluster has one, SO_KEEPALIVE is on and each field given sets its socket option (TCP_KEEPCNT,
    TCP_KEEPIDLE, TCP_KEEPINTVL); a field left None keeps the kernel's default. Whole seconds, as in
    Envoy."""

    probes: int | None = None
    time: float | None = None  # idle seconds before the first probe
    interval: float | None = None  # seconds between probes


# Linux refuses larger values (MAX_TCP_KEEPCNT, MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL): a config must not
# load only to fail every connect.
KEEPALIVE_MAX_PROBES, KEEPALIVE_MAX_SECONDS = 127, 32767


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    name: str
    discovery: DiscoveryType = "static"
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    dns_refresh_rate: float = DEFAULT_DNS_REFRESH
    dns_lookup_family: DnsLookupFamily = "all"
    load_balancing: LoadBalancing = DEFAULT_LB
    max_connections_per_endpoint: int = 1024  # pool size limit; requests beyond it wait
    pool_idle_timeout: float | None = 60.0  # idle pooled connections are closed after this
    circuit_breakers: CircuitBreakers = DEFAULT_BREAKERS
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    protocol: UpstreamProtocol = "http1"  # what meshpy speaks to the endpoints
    http2: Http2Options = DEFAULT_HTTP2  # for http2, and for auto's connections that agree on h2
    tcp_keepalive: TcpKeepalive | None = None
    tls: ClientTls | None = None  # TLS to the endpoints (Envoy's UpstreamTlsContext)


@dataclass(frozen=True, slots=True, kw_only=True)
class Admin:
    address: Address | None = None  # None: no admin listener
    # Requests to the admin, logged as Envoy logs them (its admin.access_log and access_log_path).
    access_logs: tuple[AccessLog, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Lifecycle:
    drain_time: float = 5.0  # after SIGTERM: listeners keep accepting this long, keep-alives get closed
    grace_time: float = 30.0  # then requests in flight get at most this long to finish
    # Stop before drain_time ends once nothing is in flight. None: yes, unless an outbound listener is
    # there (a sidecar: its app may still call out while it shuts down, after the proxy went idle).
    exit_when_idle: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class XdsServer:
    """A server of xDS reached through a static cluster of the bootstrap (envoy_grpc, or a REST config
    source's cluster_names) or a google_grpc target: where it is and how to connect to it."""

    target: str = ""  # a gRPC target: host:port, or unix:PATH (a pipe)
    cluster: str = ""  # the static cluster that names it ("" for google_grpc)
    tls: ClientTls | None = None  # the cluster's UpstreamTlsContext
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    tcp_keepalive: TcpKeepalive | None = None
    http2: bool = False  # the cluster speaks HTTP/2 (what a REST config source's requests go over)


# Where resources of a type come from (Envoy's ConfigSource): the ADS stream, a gRPC stream of their own
# (state of the world or delta), REST polling, or a file watched for changes.
ApiProtocol = Literal["ads", "grpc", "delta", "rest", "path"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSource:
    """One ConfigSource, as meshpy's xDS client follows it. Equal sources share one conversation per
    resource type (Envoy opens one per subscription: the same resources come either way)."""

    protocol: ApiProtocol = "ads"
    server: XdsServer | None = None  # grpc, delta, rest
    path: str = ""  # path: the file holding a DiscoveryResponse
    watched_directory: str = ""  # path: reload when this directory changes (path_config_source)
    initial_metadata: tuple[tuple[str, str], ...] = ()  # gRPC metadata sent with the stream
    backoff_base: float = 0.5  # reconnect back-off of a gRPC stream (its envoy_grpc retry_policy)
    backoff_max: float = 30.0
    rate_limit: tuple[int, float] | None = None  # gRPC: rate_limit_settings (max tokens, per second)
    node_first_only: bool = False  # gRPC: set_node_on_first_message_only (else the node is in every request)
    refresh_delay: float = 0.0  # rest: seconds between polls
    request_timeout: float = 1.0  # rest: each poll's deadline (Envoy's default 1 s)


ADS_SOURCE = ApiSource()


@dataclass(frozen=True, slots=True, kw_only=True)
class XdsSource:
    """Where dynamic resources come from: one ADS server (Envoy's `ads_config`), and the other config
    sources the bootstrap names (per-type gRPC streams, REST, files: `lds_source`, `cds_source`, ...).

    `node_json` is the node identity in proto JSON (envoy.config.core.v3.Node), sent to the server as
    written: the server may select config by any of its fields, so none is dropped on the way."""

    server: str  # a gRPC target: host:port, or a Unix socket (unix:PATH, unix-abstract:NAME)
    delta: bool = False  # DELTA_GRPC (incremental) instead of GRPC (state of the world)
    node_json: str = "{}"
    lds: bool = True  # subscribe to listeners (lds_config: {ads: {}})
    cds: bool = True  # subscribe to clusters (cds_config: {ads: {}})
    initial_fetch_timeout: float | None = 15.0  # Envoy's default; None waits for ever (Envoy's 0s)
    backoff_base: float = 0.5  # reconnect back-off (Envoy's xDS defaults), jittered, doubling to the cap
    backoff_max: float = 30.0
    # TLS to the server, as the bootstrap's ADS cluster says it (its UpstreamTlsContext; no SDS secrets),
    # and that cluster's connect timeout. None: plaintext, or `meshpy run --xds-ca`.
    tls: ClientTls | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # TCP keepalive on the stream's connection (the ADS cluster's tcp_keepalive; applied where meshpy
    # makes the connection: over TLS).
    tcp_keepalive: TcpKeepalive | None = None
    # gRPC metadata sent with the stream (the gRPC service's initial_metadata).
    initial_metadata: tuple[tuple[str, str], ...] = ()
    # A token bucket on the requests sent (ads_config.rate_limit_settings): (max tokens, per second).
    rate_limit: tuple[int, float] | None = None
    # Static listeners whose routes come over RDS and static EDS clusters: they can only be built once
    # the ADS server has sent what they need, so the xDS client holds them, as (type URL, proto JSON).
    static_resources: tuple[tuple[str, str], ...] = ()
    # Where listeners and clusters come from when not over ADS (lds_config, cds_config).
    lds_source: ApiSource = ADS_SOURCE
    cds_source: ApiSource = ADS_SOURCE
    # The static clusters a config source may name (envoy_grpc, REST cluster_names), by their name: the
    # dynamic resources' RDS, EDS and SDS config sources are resolved against these. Not compared: any
    # single-endpoint static cluster may be one, and a reload that edits one must not read as a change
    # of the xDS settings (the client keeps those it started with, as Envoy keeps its bootstrap's).
    servers: tuple[XdsServer, ...] = field(default=(), compare=False)
    # RTDS layers whose Runtime comes from elsewhere than ADS: (resource name, source).
    runtime_sources: tuple[tuple[str, ApiSource], ...] = ()

    @property
    def ads(self) -> bool:
        """An ADS stream is configured (`server` is "" for a bootstrap without ads_config)."""
        return bool(self.server)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    admin: Admin = field(default_factory=Admin)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    overload: Overload = NO_OVERLOAD
    source_format: Literal["meshpy", "envoy"] = "meshpy"
    xds: XdsSource | None = None  # static parts above are served beside what the ADS server sends
    runtime: LayeredRuntime = NO_RUNTIME  # Envoy's layered_runtime (meshpy.runtime reads it)
    process: ProcessOptions = NO_PROCESS_OPTIONS  # log format, outlier event log (Envoy bootstraps)
    # The bootstrap's node.id and node.cluster (Envoy's --service-node and --service-cluster win).
    service_node: str = ""
    service_cluster: str = ""
    # The bootstrap's node.locality (Envoy's --service-zone sets its zone): with
    # process.local_cluster, what zone-aware routing needs.
    service_locality: Locality = NO_LOCALITY
