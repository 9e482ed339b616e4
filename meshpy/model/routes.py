"""The routing half of the config model: how requests are matched, edited and sent on (routes, virtual
hosts, route configurations, retry policies, local rate limits, faults), as every config source
gives them (see meshpy.model.types for the rest of the model and its conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meshpy.model.filter_types import FilterOverride

StringMatchKind = Literal["exact", "prefix", "suffix", "contains", "regex", "present"]
PathMatchKind = Literal["prefix", "path", "regex"]
HeaderAppend = Literal["append", "add_if_absent", "overwrite", "overwrite_if_exists"]

DEFAULT_ROUTE_TIMEOUT = 15.0  # Envoy's route timeout default

# A route's or virtual host's metadata.filter_metadata, read by filters (Envoy's Lua filter's
# metadata()): (filter name, its Struct as JSON text), in the config's order.
FilterMetadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    """Match a header or query value. `present` ignores `value`."""

    kind: StringMatchKind
    value: str = ""
    ignore_case: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderMatch:
    name: str  # lower case; pseudo-headers `:method`, `:authority`, `:path`, `:scheme` are allowed
    match: StringMatch
    invert: bool = False
    # Envoy's `present_match: false` means "must be absent": modelled as present + invert.


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryMatch:
    name: str
    match: StringMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """Path semantics follow Envoy 1.40: `prefix`, `path` and `regex` all see the path with the query
    string removed (a prefix holding `?` never matches), and a regex must match the path whole."""

    path_kind: PathMatchKind = "prefix"
    path: str = "/"
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    methods: tuple[str, ...] = ()  # upper case; empty means any method
    # CONNECT requests (Envoy's connect_matcher): they match only such routes, and such routes only
    # them; the path fields do not apply (a CONNECT request has none).
    connect: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderValue:
    name: str  # lower case
    value: str
    append: HeaderAppend = "append"


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderEdits:
    """Headers removed, then added or set. Levels apply in the order route, virtual host, route
    config, so for `overwrite` the route-config level wins (Envoy's default,
    most_specific_header_mutations_wins: false). Values are literal: no %VAR% substitution."""

    add: tuple[HeaderValue, ...] = ()
    remove: tuple[str, ...] = ()  # lower case

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


NO_EDITS = HeaderEdits()


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegexRewrite:
    pattern: str
    substitution: str


# Envoy's retry_on conditions meshpy implements. HTTP/1: 5xx, gateway-error, reset, connect-failure,
# retriable-4xx (409), retriable-status-codes; refused-stream is an HTTP/2 reset (never seen on HTTP/1);
# the gRPC ones look at a grpc-status in the response head (a trailers-only gRPC answer).
RETRY_ON = (
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
)  # fmt: skip
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE")  # RFC 9110 9.2.2


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When and how a forwarded request is tried again (Envoy's RetryPolicy, with safer defaults where
    the text says so). Retries go to another host than the last attempt when there is one, wait a
    jittered exponential back-off (or the upstream's Retry-After), stay within the cluster's retry
    budget, and all fit in the route timeout."""

    retry_on: tuple[str, ...]  # from RETRY_ON
    num_retries: int = 1  # Envoy's default
    per_try_timeout: float | None = None
    retriable_status_codes: tuple[int, ...] = ()
    backoff_base: float = 0.025
    backoff_max: float = 0.25  # Envoy: 10 x base
    # meshpy: POST, PATCH (anything not idempotent) is not retried unless this says so.
    retry_non_idempotent: bool = False
    hedge_on_per_try_timeout: bool = False  # start another attempt at a per-try timeout, keep both
    buffer_limit: int = 64 * 1024  # a request body larger than this is not kept, and not retried
    attempt_count_header: bool = True  # x-envoy-attempt-count on upstream requests


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcTimeout:
    """A gRPC call's `grpc-timeout` header as its stream's duration limit (Envoy's route
    max_stream_duration.grpc_timeout_header_max and _offset): capped at `max` (None: no cap, Envoy's
    0s), less `offset`; at or below zero the call times out at once."""

    max: float | None = None
    offset: float = 0.0


HONOUR_GRPC_TIMEOUT = GrpcTimeout()  # meshpy YAML's default; an Envoy route without the fields ignores it


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardAction:
    """Send to one cluster, split by weight between several, or to the cluster a plugin names per
    request (exactly one of the three is set)."""

    cluster: str | None = None
    weighted: tuple[WeightedCluster, ...] = ()
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite: str | None = None
    timeout: float | None = DEFAULT_ROUTE_TIMEOUT  # None: no timeout (Envoy's 0s)
    # Per-route stream idle timeout. None: the listener's; 0: none for this route (Envoy's 0s).
    idle_timeout: float | None = None
    # The longest a stream may last from its request headers, whatever it is doing (Envoy's
    # max_stream_duration): answered 504 (408 while the request is arriving), DEADLINE_EXCEEDED for
    # gRPC; None: no limit.
    max_stream_duration: float | None = None
    # None: grpc-timeout is not read (it still goes upstream), as in an Envoy route that does not ask.
    grpc_timeout: GrpcTimeout | None = HONOUR_GRPC_TIMEOUT
    retry: RetryPolicy | None = None
    hash_policy: tuple[HashPolicy, ...] = ()  # for ring_hash and maglev clusters
    # This route's word on upgrades (Envoy's RouteAction.upgrade_configs): (type in lower case, on),
    # over the listener's `upgrades` for requests on this route. A type on here is taken by the
    # listener too (then refused, 403, on routes that do not allow it).
    upgrades: tuple[tuple[str, bool], ...] = ()
    mirrors: tuple[MirrorPolicy, ...] = ()
    cluster_plugin: LuaClusterSpecifier | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LuaClusterSpecifier:
    """The cluster chosen per request by a Lua script (Envoy's Lua cluster specifier plugin): its
    `envoy_on_route(route_handle)` returns the cluster's name, else (an error, no string) the request
    goes to `default_cluster`. A name that is no cluster is answered 503 (NC), as Envoy does."""

    source_code: str
    default_cluster: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedirectAction:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    response_code: int = 301
    strip_query: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectResponseAction:
    status: int
    body: str = ""


RouteAction = ForwardAction | RedirectAction | DirectResponseAction


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRateLimit:
    """A token bucket (Envoy's local rate limit): `max_tokens` at most, `tokens_per_fill` added every
    `fill_interval`. A request that finds it empty is answered `status` (429) with flag RL."""

    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    status: int = 429
    # Added to the answers of the requests it limits (Envoy's response_headers_to_add).
    response_headers: HeaderEdits = NO_EDITS
    # Envoy's filter_enabled and filter_enforced: the percent of requests the bucket sees, and of those
    # it finds empty the percent answered (the others pass); a runtime key, when given and set in the
    # layered runtime, overrides each (meshpy.runtime).
    enabled_percent: float = 100.0
    enforced_percent: float = 100.0
    enabled_key: str = ""
    enforced_key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultKeys:
    """The runtime keys the fault filter reads (Envoy's names, unless its HTTPFault names others): they
    override the percentages, the delay, the status and max_active while a layered runtime sets them."""

    delay_percent: str = "fault.http.delay.fixed_delay_percent"
    abort_percent: str = "fault.http.abort.abort_percent"
    delay_duration: str = "fault.http.delay.fixed_duration_ms"
    abort_status: str = "fault.http.abort.http_status"
    max_active: str = "fault.http.max_active_faults"


ENVOY_FAULT_KEYS = FaultKeys()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Faults injected into a share of requests (Envoy's fault filter): a delay, then an abort. With
    `header_controlled`, a request may ask for its own through Envoy's x-envoy-fault-* headers."""

    delay: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0
    header_controlled: bool = False
    max_active: int | None = None  # faults in progress at once (None: no limit)
    keys: FaultKeys = ENVOY_FAULT_KEYS  # read from the runtime (meshpy.runtime), when it has values


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str = ""
    match: RouteMatch = field(default_factory=RouteMatch)
    action: RouteAction
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    rate_limit: LocalRateLimit | None = None  # this route's own bucket
    fault: Fault | None = None
    filters: tuple[FilterOverride, ...] = ()  # what this route says of the listener's filters
    metadata: FilterMetadata = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    rate_limit: LocalRateLimit | None = None  # one bucket for every route of the host without its own
    filters: tuple[FilterOverride, ...] = ()
    metadata: FilterMetadata = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    request_headers: HeaderEdits = NO_EDITS
    response_headers: HeaderEdits = NO_EDITS
    ignore_port_in_host: bool = True  # strip ":port" from Host before matching domains


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorPolicy:
    """A copy of a route's requests sent to another cluster, its answer dropped (Envoy's
    request_mirror_policies): to `cluster`, or to the cluster the request header `cluster_header`
    names; for `percent` of the requests; the copy's authority gets "-shadow" unless `host_suffix`
    is off (Envoy's disable_shadow_host_suffix_append)."""

    cluster: str = ""
    cluster_header: str = ""  # lower case
    percent: float = 100.0
    runtime_key: str = ""  # its value in the layered runtime, when set, over `percent`
    host_suffix: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class HashPolicy:
    """What a request is hashed on for ring_hash and maglev (Envoy's route hash_policy): the first
    of these the request has. `header` and `cookie` name one; `source_ip` uses the client address."""

    header: str | None = None
    cookie: str | None = None
    source_ip: bool = False
