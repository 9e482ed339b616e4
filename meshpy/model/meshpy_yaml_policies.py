"""The resilience part of the meshpy YAML: a cluster's circuit breakers (and, as they land, outlier
detection, health checks and balancers) and a route's retry policy, rate limit and faults.

Same conventions as `meshpy_yaml_routes`: each function reads one YAML node, reports problems to the
`Reader` and returns a model value (or the default when the node was unusable; a recorded issue means
the value is never used). Names and defaults are Envoy's, so a reader of Envoy's docs knows them.
"""

from __future__ import annotations

import difflib
from typing import Literal, cast, get_args

from meshpy.model.routes import RETRY_ON, Fault, HashPolicy, LocalRateLimit, RetryPolicy
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
from meshpy.model.yaml_reader import (
    Reader,
    as_bool,
    as_duration,
    as_non_negative_int,
    as_optional_timeout,
    as_positive_duration,
    as_positive_int,
    as_str,
    is_off,
)
from meshpy.model.yaml_values import parse_size

_BREAKER_KEYS = ("max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget")


def circuit_breakers(r: Reader, node: object, path: str) -> CircuitBreakers:
    """`circuit_breakers: {max_connections: 100, max_pending_requests: 50, max_requests: 200,
    max_retries: 3}`; a key left out keeps Envoy's default."""
    f = r.mapping(node, path, _BREAKER_KEYS)
    if f is None:
        return DEFAULT_BREAKERS
    d = DEFAULT_BREAKERS
    return CircuitBreakers(
        max_connections=f.get("max_connections", as_positive_int, d.max_connections),
        max_pending_requests=f.get("max_pending_requests", as_positive_int, d.max_pending_requests),
        max_requests=f.get("max_requests", as_positive_int, d.max_requests),
        max_retries=f.get("max_retries", as_non_negative_int, d.max_retries),
        retry_budget=retry_budget(r, f.raw("retry_budget"), f.at("retry_budget"))
        if "retry_budget" in f else DEFAULT_BUDGET,
    )


# Istio's default conditions, for a `retry:` that does not say when: failures before any answer and
# 503, the answers that are safe to try again.
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
DEFAULT_RETRY_CODES = (503,)
_RETRY_KEYS = (
    "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "backoff",
    "retry_non_idempotent", "hedge_on_per_try_timeout", "buffer_limit", "attempt_count_header",
)  # fmt: skip


def retry_policy(r: Reader, node: object, path: str) -> RetryPolicy | None:
    """`retry: 2` (two retries on Istio's default conditions) or a mapping with Envoy's names:

        retry: {retry_on: [5xx, reset], num_retries: 3, per_try_timeout: 200ms,
                retriable_status_codes: [503], backoff: {base_interval: 25ms, max_interval: 250ms},
                retry_non_idempotent: false, hedge_on_per_try_timeout: false, buffer_limit: 64KiB}

    `retry: off` switches a virtual host's policy off for one route."""
    if is_off(node):
        return None
    if isinstance(node, int) and not isinstance(node, bool):
        node = {"num_retries": node}
    f = r.mapping(node, path, _RETRY_KEYS)
    if f is None:
        return None
    retry_on = tuple(f.get("retry_on", _conditions, DEFAULT_RETRY_ON))
    codes = tuple(f.get("retriable_status_codes", _status_codes,
                        () if "retry_on" in f else DEFAULT_RETRY_CODES))
    if codes and "retriable-status-codes" not in retry_on:
        r.error(f.at("retriable_status_codes"), "only used with retry_on: retriable-status-codes")
    base, cap = 0.025, None
    if "backoff" in f:
        g = r.mapping(f.raw("backoff"), f.at("backoff"), ("base_interval", "max_interval"))
        if g is not None:
            base = g.require("base_interval", as_positive_duration, base)
            cap = g.get("max_interval", as_positive_duration, None)
            if cap is not None and cap < base:
                r.error(g.at("max_interval"), "must be at least base_interval")
    return RetryPolicy(
        retry_on=retry_on,
        num_retries=f.get("num_retries", as_positive_int, 1),
        per_try_timeout=f.get("per_try_timeout", as_optional_timeout, None),
        retriable_status_codes=codes,
        backoff_base=base,
        backoff_max=cap if cap is not None else base * 10,
        retry_non_idempotent=f.get("retry_non_idempotent", as_bool, False),
        hedge_on_per_try_timeout=f.get("hedge_on_per_try_timeout", as_bool, False),
        buffer_limit=f.get("buffer_limit", parse_size, 64 * 1024),
        attempt_count_header=f.get("attempt_count_header", as_bool, True),
    )


def _conditions(value: object) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a list of conditions, e.g. [5xx, reset]")
    out = []
    for x in items:
        name = str(x).strip()
        if name not in RETRY_ON:
            close = difflib.get_close_matches(name, RETRY_ON, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; one of {', '.join(RETRY_ON)}"
            raise ValueError(f"unknown retry condition {name!r}{hint}")
        out.append(name)
    return out


def _status_codes(value: object) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a list of status codes, e.g. [503]")
    codes = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int) or not 100 <= x <= 599:
            raise ValueError(f"{x!r} is not an HTTP status code")
        codes.append(x)
    return codes


def retry_budget(r: Reader, node: object, path: str) -> RetryBudget | None:
    """`retry_budget: {percent: 20, min_concurrency: 3}`, or `off` (then max_retries applies)."""
    if is_off(node):
        return None
    f = r.mapping(node, path, ("percent", "min_concurrency"))
    if f is None:
        return DEFAULT_BUDGET
    percent = f.get("percent", float_percent, DEFAULT_BUDGET.percent)
    least = f.get("min_concurrency", as_non_negative_int, DEFAULT_BUDGET.min_concurrency)
    return RetryBudget(percent=percent, min_concurrency=least)


def float_percent(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError("expected a percentage from 0 to 100")
    return float(value)


def rate_limit(r: Reader, node: object, path: str) -> LocalRateLimit | None:
    """`rate_limit: {max_tokens: 100, tokens_per_fill: 10, fill_interval: 1s, status: 429}`, or the short
    form `rate_limit: 100/s` (a bucket of 100 refilled whole every second; also /m and /h)."""
    if isinstance(node, str):
        count, _, unit = node.partition("/")
        seconds = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip())
        if not count.strip().isdigit() or seconds is None or int(count) < 1:
            r.error(path, "expected N/s, N/m or N/h (e.g. 100/s), or a mapping with max_tokens")
            return None
        return LocalRateLimit(max_tokens=int(count), tokens_per_fill=int(count), fill_interval=seconds)
    f = r.mapping(node, path, ("max_tokens", "tokens_per_fill", "fill_interval", "status"))
    if f is None:
        return None
    most = f.require("max_tokens", as_positive_int, 1)
    interval = f.get("fill_interval", as_positive_duration, 1.0)
    if interval < 0.05:
        r.error(f.at("fill_interval"), "must be at least 50ms (as in Envoy)")
    return LocalRateLimit(max_tokens=most, tokens_per_fill=f.get("tokens_per_fill", as_positive_int, most),
                          fill_interval=interval, status=f.get("status", _error_status, 429))


def fault(r: Reader, node: object, path: str) -> Fault | None:
    """`fault: {delay: 100ms, delay_percent: 10, abort: 503, abort_percent: 1, headers: true,
    max_active: 100}`; `headers: true` lets requests ask for their own faults with Envoy's
    x-envoy-fault-delay-request / x-envoy-fault-abort-request headers (for chaos tests)."""
    f = r.mapping(node, path, ("delay", "delay_percent", "abort", "abort_percent", "headers", "max_active"))
    if f is None:
        return None
    found = Fault(
        delay=f.get("delay", as_positive_duration, None),
        delay_percent=f.get("delay_percent", float_percent, 100.0),
        abort_status=f.get("abort", _error_status, None),
        abort_percent=f.get("abort_percent", float_percent, 100.0),
        header_controlled=f.get("headers", as_bool, False),
        max_active=f.get("max_active", as_positive_int, None),
    )
    if found.delay is None and found.abort_status is None and not found.header_controlled:
        r.error(path, "needs a delay, an abort or headers: true")
    return found


def _error_status(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ValueError("expected an HTTP status code from 200 to 599")
    return value


_OUTLIER_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")
_OUTLIER_PERCENTS = (
    "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure", "enforcing_success_rate", "enforcing_failure_percentage",
    "failure_percentage_threshold",
)  # fmt: skip
_OUTLIER_COUNTS = (
    "consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
    "success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor",
    "failure_percentage_minimum_hosts", "failure_percentage_request_volume",
)  # fmt: skip


def outlier_detection(r: Reader, node: object, path: str) -> OutlierDetection | None:
    """`outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, ...}` with
    Envoy's names and defaults; `outlier_detection: {}` turns it on with the defaults."""
    keys = (*_OUTLIER_DURATIONS, *_OUTLIER_PERCENTS, *_OUTLIER_COUNTS, "split_external_local_origin_errors")
    f = r.mapping(node, path, keys)
    if f is None:
        return None
    d = OutlierDetection()
    values: dict[str, object] = {}
    for key in _OUTLIER_DURATIONS:
        values[key] = f.get(key, as_positive_duration, getattr(d, key))
    for key in _OUTLIER_PERCENTS:
        values[key] = float(f.get(key, _int_percent, getattr(d, key)))
    for key in _OUTLIER_COUNTS:
        values[key] = f.get(key, as_positive_int, getattr(d, key))
    values["split_external_local_origin_errors"] = f.get("split_external_local_origin_errors", as_bool, False)
    return OutlierDetection(**values)  # type: ignore[arg-type]


def _int_percent(value: object) -> int:
    """A whole percentage (Envoy's outlier detection has no fractions)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError("expected a whole percentage from 0 to 100")
    return value


_LB_KEYS = ("policy", "choice_count", "ring_size", "table_size", "decay", "slow_start")


def load_balancing(r: Reader, node: object, path: str) -> LoadBalancing:
    """`lb_policy: least_request`, or `lb_policy: {policy: least_request, choice_count: 2,
    slow_start: {window: 30s, aggression: 1.0, min_weight_percent: 10}}`; ring_hash takes
    `ring_size`, maglev `table_size` (a prime), peak_ewma `decay`."""
    if isinstance(node, str):
        node = {"policy": node}
    f = r.mapping(node, path, _LB_KEYS)
    if f is None:
        return DEFAULT_LB
    policy: LbPolicy = f.get("policy", _lb_policy, "round_robin")
    slow = None
    if "slow_start" in f:
        g = r.mapping(f.raw("slow_start"), f.at("slow_start"), ("window", "aggression", "min_weight_percent"))
        if g is not None:
            slow = SlowStart(window=g.require("window", as_positive_duration, 1.0),
                             aggression=g.get("aggression", _positive_float, 1.0),
                             min_weight_percent=g.get("min_weight_percent", float_percent, 10.0))
        if policy not in ("round_robin", "least_request"):
            r.error(f.at("slow_start"), "only applies to round_robin and least_request")
    table = f.get("table_size", as_positive_int, 65537)
    if "table_size" in f and not _is_prime(table):
        r.error(f.at("table_size"), "must be a prime number (Maglev's table)")
    return LoadBalancing(
        policy=policy,
        choice_count=f.get("choice_count", as_positive_int, 2),
        ring_size=f.get("ring_size", as_positive_int, 1024),
        table_size=table,
        decay=f.get("decay", as_positive_duration, 10.0),
        slow_start=slow,
    )


def _lb_policy(value: object) -> LbPolicy:
    text = str(value).strip().lower()
    for p in get_args(LbPolicy):
        if p == text:
            return cast(LbPolicy, p)
    raise ValueError(f"must be one of {', '.join(get_args(LbPolicy))}, got {value!r}")


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("expected a number greater than 0")
    return float(value)


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, int(n**0.5) + 1))


_HASH_KEYS = ("header", "cookie", "source_ip")


def hash_policy(r: Reader, node: object, path: str) -> tuple[HashPolicy, ...]:
    """`hash_policy: [{header: x-user}, {cookie: session}, {source_ip: true}]` (one mapping works too):
    the first the request has is hashed, for ring_hash and maglev clusters."""
    items = node if isinstance(node, list) else [node]
    out = []
    for i, item_node in enumerate(items):
        at = f"{path}[{i}]" if isinstance(node, list) else path
        f = r.mapping(item_node, at, _HASH_KEYS)
        if f is None:
            continue
        if len(f.present(*_HASH_KEYS)) != 1:
            r.error(at, "needs exactly one of header, cookie or source_ip")
            continue
        out.append(HashPolicy(header=f.get("header", _lower_name, None), cookie=f.get("cookie", as_str, None),
                              source_ip=f.get("source_ip", as_bool, False)))
    return tuple(out)


def _lower_name(value: object) -> str:
    return as_str(value).lower()


_HC_KEYS = ("type", "path", "host", "service", "expected_statuses", "interval", "timeout", "interval_jitter",
            "healthy_threshold", "unhealthy_threshold")


def health_check(r: Reader, node: object, path: str) -> HealthCheck | None:
    """`health_check: {path: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3,
    healthy_threshold: 1, expected_statuses: [200, [200, 300]], host: app.local}`, or
    `health_check: {type: tcp, interval: 5s}`, or `health_check: {type: grpc, service: pkg.Svc}`."""
    f = r.mapping(node, path, _HC_KEYS)
    if f is None:
        return None
    kind: Literal["http", "tcp", "grpc"] = f.get("type", _hc_kind, "http")
    if kind == "tcp":
        for key in f.present("path", "host", "expected_statuses"):
            r.error(f.at(key), "only applies to http health checks")
    if kind == "grpc":
        for key in f.present("path", "expected_statuses"):
            r.error(f.at(key), "only applies to http health checks")
    elif "service" in f:
        r.error(f.at("service"), "only applies to grpc health checks")
    check_path = f.get("path", as_str, "/")
    if not check_path.startswith("/"):
        r.error(f.at("path"), "must start with /")
    d = HealthCheck()
    return HealthCheck(
        kind=kind,
        path=check_path,
        host=f.get("host", as_str, None),
        service=f.get("service", as_str, ""),
        expected_statuses=f.get("expected_statuses", _status_ranges, d.expected_statuses),
        interval=f.get("interval", as_positive_duration, d.interval),
        timeout=f.get("timeout", as_positive_duration, d.timeout),
        interval_jitter=f.get("interval_jitter", as_duration, 0.0),
        healthy_threshold=f.get("healthy_threshold", as_positive_int, d.healthy_threshold),
        unhealthy_threshold=f.get("unhealthy_threshold", as_positive_int, d.unhealthy_threshold),
    )


def _hc_kind(value: object) -> Literal["http", "tcp", "grpc"]:
    text = str(value).lower()
    if text == "http":
        return "http"
    if text == "tcp":
        return "tcp"
    if text == "grpc":
        return "grpc"
    raise ValueError(f"must be http, tcp or grpc, got {value!r}")


def _status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """`[200, 204, [300, 400]]`: single codes, or half-open [start, end) ranges as Envoy has them."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a list of status codes or [start, end) ranges")
    out = []
    for x in value:
        ranged = isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) for v in x)
        if ranged and 100 <= x[0] < x[1] <= 600:
            out.append((x[0], x[1]))
        elif isinstance(x, int) and not isinstance(x, bool) and 100 <= x <= 599:
            out.append((x, x + 1))
        else:
            raise ValueError(f"{x!r} is neither a status code nor a [start, end) range")
    return tuple(out)
