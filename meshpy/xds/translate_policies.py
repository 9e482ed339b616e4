"""Envoy's resilience settings -> the model: a cluster's circuit breakers (and, as they land, outlier
detection, health checks and balancers) and a route's retry policy, rate limit and faults.

Split from `translate_clusters` and `translate_routes` to keep each module short. Same rule as the rest
of the translator: a field meshpy does not act on is an issue naming it, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshpy.model.routes import RETRY_ON, HashPolicy, RetryPolicy
from meshpy.model.types import (
    DEFAULT_BREAKERS,
    DEFAULT_BUDGET,
    DEFAULT_LB,
    CircuitBreakers,
    HealthCheck,
    LbPolicy,
    LoadBalancing,
    OutlierDetection,
    RetryBudget,
    SlowStart,
)
from meshpy.model.yaml_values import is_field_name
from meshpy.xds.translate_base import (
    UNSUPPORTED,
    Issues,
    child,
    enum_name,
    item,
    positive_duration,
    seconds,
    timeout,
    wrapped,
)

_DEFAULT_PRIORITY = 0  # RoutingPriority.DEFAULT; meshpy has no route priorities, so HIGH is refused
# track_remaining only adds Envoy's remaining_* gauges; meshpy always exports how close each limit is.
_THRESHOLDS = frozenset(
    {"priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "track_remaining",
     "retry_budget"}
)


def circuit_breakers(issues: Issues, msg: Any, path: str) -> CircuitBreakers:
    """A Cluster's `circuit_breakers` (its DEFAULT-priority thresholds), with Envoy's defaults. HIGH
    thresholds are checked and left: no route of meshpy's has priority HIGH."""
    if not msg.HasField("circuit_breakers"):
        return DEFAULT_BREAKERS
    cb = msg.circuit_breakers
    cb_path = child(path, "circuit_breakers")
    issues.fields(cb, cb_path, {"thresholds"})
    found = DEFAULT_BREAKERS
    seen = False
    for i, t in enumerate(cb.thresholds):
        t_path = item(child(cb_path, "thresholds"), i)
        issues.fields(t, t_path, _THRESHOLDS)
        if t.priority != _DEFAULT_PRIORITY:
            # HIGH: the thresholds of routes of priority HIGH. meshpy refuses such routes (RouteAction
            # priority), so these can bound nothing here, as in an Envoy with no HIGH route.
            retry_budget(issues, t, t_path)
            continue
        if seen:
            issues.add(t_path, "a second DEFAULT threshold")
        seen = True
        d = DEFAULT_BREAKERS
        found = CircuitBreakers(
            max_connections=wrapped(t, "max_connections", d.max_connections),
            max_pending_requests=wrapped(t, "max_pending_requests", d.max_pending_requests),
            max_requests=wrapped(t, "max_requests", d.max_requests),
            max_retries=wrapped(t, "max_retries", d.max_retries),
            retry_budget=retry_budget(issues, t, t_path),
        )
    return found


# previous_hosts is what meshpy always does (a retry goes to another host when there is one).
_HOST_PREDICATES = {"envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
_RETRY = frozenset(
    {"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
     "retry_host_predicate", "host_selection_retry_max_attempts"}
)
_ENVOY_BUFFER_LIMIT = 1024 * 1024  # Envoy's per-connection buffer limit, its default for replays


@dataclass(frozen=True, slots=True)
class RetryContext:
    """What a virtual host gives its routes' retry policies."""

    policy: Any = None  # the virtual host's RetryPolicy proto, if any
    hedge: Any = None  # its HedgePolicy proto, if any
    attempt_count: bool = False  # include_request_attempt_count
    buffer_limit: int | None = None  # per_request_buffer_limit_bytes


def retry_context(issues: Issues, vhost: Any, path: str) -> RetryContext:
    hedge = _hedge(issues, vhost, path)
    return RetryContext(
        policy=vhost.retry_policy if vhost.HasField("retry_policy") else None,
        hedge=hedge,
        attempt_count=vhost.include_request_attempt_count,
        buffer_limit=wrapped(vhost, "per_request_buffer_limit_bytes", None),
    )


def _hedge(issues: Issues, msg: Any, path: str) -> Any:
    if not msg.HasField("hedge_policy"):
        return None
    where = child(path, "hedge_policy")
    issues.fields(msg.hedge_policy, where, {"hedge_on_per_try_timeout"})
    return msg.hedge_policy


def route_retry(issues: Issues, action: Any, route: Any, path: str, ctx: RetryContext) -> RetryPolicy | None:
    """The retry policy of a RouteAction (`action`, at `path`), or else of its virtual host. Envoy
    retries every method, so a policy from Envoy config does too (meshpy YAML does not by default)."""
    policy, where = ctx.policy, "the virtual host's retry_policy"
    if action.HasField("retry_policy"):
        policy, where = action.retry_policy, child(path, "retry_policy")
    hedge = _hedge(issues, action, path) if action.HasField("hedge_policy") else ctx.hedge
    if policy is None:
        return None
    if action.HasField("retry_policy"):
        issues.fields(policy, where, _RETRY)
        _host_predicates(issues, policy, where)
    conditions = [c.strip() for c in policy.retry_on.split(",") if c.strip()]
    for c in conditions:
        if c not in RETRY_ON:
            issues.add(child(where, "retry_on") if action.HasField("retry_policy") else where,
                       f"retry condition {c!r} is {UNSUPPORTED}")
    base, cap = 0.025, 0.25
    if policy.HasField("retry_back_off"):
        off = policy.retry_back_off
        off_path = child(where, "retry_back_off")
        base = positive_duration(issues, off, "base_interval", off_path, base)
        cap = positive_duration(issues, off, "max_interval", off_path, base * 10)
    buffer_limit = wrapped(route, "per_request_buffer_limit_bytes", ctx.buffer_limit)
    extra = _meshpy_metadata(route)
    return RetryPolicy(
        retry_on=tuple(c for c in conditions if c in RETRY_ON),
        num_retries=wrapped(policy, "num_retries", 1),
        per_try_timeout=timeout(policy, "per_try_timeout", None),
        retriable_status_codes=tuple(policy.retriable_status_codes),
        backoff_base=base,
        backoff_max=max(cap, base),
        retry_non_idempotent=extra.get("retry_non_idempotent", True),
        hedge_on_per_try_timeout=bool(hedge is not None and hedge.hedge_on_per_try_timeout),
        buffer_limit=buffer_limit if buffer_limit is not None else _ENVOY_BUFFER_LIMIT,
        attempt_count_header=extra.get("attempt_count_header", ctx.attempt_count),
    )


def _meshpy_metadata(route: Any) -> dict[str, bool]:
    """Retry settings Envoy's API has no field for, as route metadata in the `meshpy` namespace (what
    meshpy's control plane sends; Envoy ignores it)."""
    found = route.metadata.filter_metadata.get("meshpy") if route.HasField("metadata") else None
    if found is None:
        return {}
    return {k: bool(v.bool_value) for k, v in found.fields.items()
            if k in ("retry_non_idempotent", "attempt_count_header") and v.HasField("bool_value")}


def _host_predicates(issues: Issues, policy: Any, path: str) -> None:
    for i, pred in enumerate(policy.retry_host_predicate):
        where = item(child(path, "retry_host_predicate"), i)
        issues.fields(pred, where, {"name", "typed_config"})
        if pred.typed_config.TypeName() not in _HOST_PREDICATES:
            name = pred.typed_config.TypeName() or pred.name
            issues.add(child(where, "typed_config"), f"{name} is {UNSUPPORTED}")


def retry_budget(issues: Issues, t: Any, path: str) -> RetryBudget | None:
    """A threshold's retry_budget; without one meshpy keeps its default budget (on, unlike Envoy)."""
    if not t.HasField("retry_budget"):
        return DEFAULT_BUDGET
    b = t.retry_budget
    issues.fields(b, child(path, "retry_budget"), {"budget_percent", "min_retry_concurrency"})
    percent = b.budget_percent.value if b.HasField("budget_percent") else DEFAULT_BUDGET.percent
    least = wrapped(b, "min_retry_concurrency", DEFAULT_BUDGET.min_concurrency)
    return RetryBudget(percent=percent, min_concurrency=least)


_OUTLIER_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")
_OUTLIER_WRAPPED = (
    "consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
    "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure", "enforcing_success_rate", "success_rate_minimum_hosts",
    "success_rate_request_volume", "success_rate_stdev_factor", "failure_percentage_threshold",
    "enforcing_failure_percentage", "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
)  # fmt: skip


def outlier_detection(issues: Issues, msg: Any, path: str) -> OutlierDetection | None:
    """A Cluster's `outlier_detection`, with Envoy's defaults for what it leaves unset."""
    if not msg.HasField("outlier_detection"):
        return None
    od, where = msg.outlier_detection, child(path, "outlier_detection")
    issues.fields(od, where, {*_OUTLIER_DURATIONS, *_OUTLIER_WRAPPED, "split_external_local_origin_errors"})
    d = OutlierDetection()
    values: dict[str, Any] = {
        key: positive_duration(issues, od, key, where, getattr(d, key)) for key in _OUTLIER_DURATIONS
    }
    for key in _OUTLIER_WRAPPED:
        values[key] = type(getattr(d, key))(wrapped(od, key, getattr(d, key)))
    values["split_external_local_origin_errors"] = od.split_external_local_origin_errors
    return OutlierDetection(**values)


_LB_POLICIES: dict[int, LbPolicy] = {
    0: "round_robin", 1: "least_request", 2: "ring_hash", 3: "random", 5: "maglev",
}  # fmt: skip
# Each *_lb_config and the policy it configures.
_LB_CONFIGS = {
    "least_request_lb_config": "least_request", "ring_hash_lb_config": "ring_hash",
    "maglev_lb_config": "maglev", "round_robin_lb_config": "round_robin",
}  # fmt: skip


def load_balancing(issues: Issues, msg: Any, path: str) -> LoadBalancing:
    """A Cluster's lb_policy and its *_lb_config (peak_ewma has no Envoy counterpart)."""
    policy = _LB_POLICIES.get(msg.lb_policy)
    if policy is None:
        name = enum_name(msg, "lb_policy")
        issues.add(child(path, "lb_policy"), f"{name} is {UNSUPPORTED}")
        return DEFAULT_LB
    d = DEFAULT_LB
    choice, ring, table, slow = d.choice_count, d.ring_size, d.table_size, None
    if msg.HasField("least_request_lb_config"):
        c, where = msg.least_request_lb_config, child(path, "least_request_lb_config")
        issues.fields(c, where, {"choice_count", "slow_start_config"})
        choice = wrapped(c, "choice_count", choice)
        slow = _slow_start(issues, c, where)
    if msg.HasField("round_robin_lb_config"):
        c, where = msg.round_robin_lb_config, child(path, "round_robin_lb_config")
        issues.fields(c, where, {"slow_start_config"})
        slow = _slow_start(issues, c, where)
    if msg.HasField("ring_hash_lb_config"):
        c, where = msg.ring_hash_lb_config, child(path, "ring_hash_lb_config")
        # hash_function XX_HASH (the default) or MURMUR_HASH_2 only place hosts on the ring: any hash
        # keeps keys on hosts; meshpy's own is a stable 64-bit blake2b.
        issues.fields(c, where, {"minimum_ring_size", "maximum_ring_size", "hash_function"})
        ring = wrapped(c, "minimum_ring_size", ring)
        most = wrapped(c, "maximum_ring_size", 8 * 1024 * 1024)
        if ring > most:  # Envoy refuses the cluster, with these words
            issues.add(where, f"minimum_ring_size ({ring}) > maximum_ring_size ({most})")
    if msg.HasField("maglev_lb_config"):
        c, where = msg.maglev_lb_config, child(path, "maglev_lb_config")
        issues.fields(c, where, {"table_size"})
        table = wrapped(c, "table_size", table)
    for name, wanted in _LB_CONFIGS.items():
        if msg.HasField(name) and wanted != policy:
            issues.add(child(path, name), f"does not apply to lb_policy {policy.upper()}")
    return LoadBalancing(policy=policy, choice_count=choice, ring_size=ring, table_size=table,
                         slow_start=slow)


def _slow_start(issues: Issues, msg: Any, path: str) -> SlowStart | None:
    if not msg.HasField("slow_start_config"):
        return None
    c, where = msg.slow_start_config, child(path, "slow_start_config")
    issues.fields(c, where, {"slow_start_window", "aggression", "min_weight_percent"})
    window = positive_duration(issues, c, "slow_start_window", where, 0.0)
    aggression = c.aggression.default_value if c.HasField("aggression") else 1.0
    minimum = c.min_weight_percent.value if c.HasField("min_weight_percent") else 10.0
    return SlowStart(window=window, aggression=aggression, min_weight_percent=minimum) if window else None


def hash_policies(issues: Issues, action: Any, path: str) -> tuple[HashPolicy, ...]:
    """A RouteAction's hash_policy list (header, cookie by name, source IP)."""
    out = []
    for i, hp in enumerate(action.hash_policy):
        where = item(child(path, "hash_policy"), i)
        issues.fields(hp, where, {"header", "cookie", "connection_properties"})
        if hp.HasField("header"):
            issues.fields(hp.header, child(where, "header"), {"header_name"})
            name = hp.header.header_name.lower()
            if not is_field_name(name):  # (read as latin-1 bytes from requests)
                issues.add(child(where, "header.header_name"), f"{name!r} is not a valid header name")
            out.append(HashPolicy(header=name))
        elif hp.HasField("cookie"):
            # A ttl would make Envoy set the cookie when it is missing: not done by meshpy.
            issues.fields(hp.cookie, child(where, "cookie"), {"name"})
            out.append(HashPolicy(cookie=hp.cookie.name))
        elif hp.HasField("connection_properties"):
            issues.fields(hp.connection_properties, child(where, "connection_properties"), {"source_ip"})
            out.append(HashPolicy(source_ip=hp.connection_properties.source_ip))
    return tuple(out)


_HEALTH = frozenset({"timeout", "interval", "interval_jitter", "unhealthy_threshold", "healthy_threshold",
                     "http_health_check", "tcp_health_check", "grpc_health_check", "no_traffic_interval",
                     "no_traffic_healthy_interval"})
_NO_TRAFFIC_INTERVAL = 60.0  # Envoy's default: a cluster that has never opened a connection is checked slowly


def health_check(issues: Issues, msg: Any, path: str) -> HealthCheck | None:
    """A Cluster's health_checks: one HTTP, TCP or gRPC check."""
    if not msg.health_checks:
        return None
    where = child(path, "health_checks")
    if len(msg.health_checks) > 1:
        issues.add(where, f"one health check is supported by meshpy, got {len(msg.health_checks)}")
    hc, where = msg.health_checks[0], item(where, 0)
    issues.fields(hc, where, _HEALTH)
    d = HealthCheck()
    for name in ("timeout", "interval", "unhealthy_threshold", "healthy_threshold"):
        if not hc.HasField(name):
            issues.add(child(where, name), "is required")
    common: dict[str, Any] = {
        "interval": positive_duration(issues, hc, "interval", where, d.interval),
        "timeout": positive_duration(issues, hc, "timeout", where, d.timeout),
        "interval_jitter": seconds(hc.interval_jitter),
        "healthy_threshold": wrapped(hc, "healthy_threshold", d.healthy_threshold),
        "unhealthy_threshold": wrapped(hc, "unhealthy_threshold", d.unhealthy_threshold),
    }
    # In the model None means "as the interval before it": what meshpy YAML has, and so kept.
    idle = positive_duration(issues, hc, "no_traffic_interval", where, _NO_TRAFFIC_INTERVAL)
    idle_healthy = positive_duration(issues, hc, "no_traffic_healthy_interval", where, idle)
    common["no_traffic_interval"] = None if idle == common["interval"] else idle
    common["no_traffic_healthy_interval"] = None if idle_healthy == idle else idle_healthy
    if hc.HasField("tcp_health_check"):
        issues.fields(hc.tcp_health_check, child(where, "tcp_health_check"), ())
        return HealthCheck(kind="tcp", **common)
    if hc.HasField("grpc_health_check"):
        g, g_where = hc.grpc_health_check, child(where, "grpc_health_check")
        issues.fields(g, g_where, {"service_name", "authority"})
        return HealthCheck(kind="grpc", service=g.service_name, host=g.authority or None, **common)
    if not hc.HasField("http_health_check"):
        issues.add(where, "http_health_check, tcp_health_check or grpc_health_check is required")
        return None
    h, h_where = hc.http_health_check, child(where, "http_health_check")
    issues.fields(h, h_where, {"host", "path", "expected_statuses"})
    if not h.path:
        issues.add(child(h_where, "path"), "is required")
    ranges = tuple((r.start, r.end) for r in h.expected_statuses) or d.expected_statuses
    return HealthCheck(kind="http", path=h.path or "/", host=h.host or None, expected_statuses=ranges,
                       **common)
