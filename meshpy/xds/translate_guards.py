"""Envoy's fault and local rate limit HTTP filters -> the model's Fault and LocalRateLimit.

Both are read where Envoy has them: as filters in the connection manager's chain (before the router:
they then apply to every route), and as `typed_per_filter_config` on a virtual host or a route, which
replaces the filter's own config there. The per-filter entry is recognised by its type, not by the
filter name it is keyed with. A local rate limit is in force only where `filter_enabled` and
`filter_enforced` are both 100% (Envoy's defaults are 0%: a bucket without them limits nothing).
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2

from meshpy.model.routes import NO_EDITS, Fault, FaultKeys, HeaderEdits, LocalRateLimit
from meshpy.xds.translate_base import Issues, child, item, positive_duration, seconds, wrapped
from meshpy.xds.translate_matchers import header_value

HTTPFault = fault_pb2.HTTPFault
LocalRateLimitConfig = local_rate_limit_pb2.LocalRateLimit
FAULT = HTTPFault.DESCRIPTOR.full_name
RATE_LIMIT = LocalRateLimitConfig.DESCRIPTOR.full_name
_DENOMINATORS = {0: 100.0, 1: 10_000.0, 2: 1_000_000.0}  # FractionalPercent.DenominatorType
# stat_prefix only names stats.
_LIMIT = frozenset({"stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
                    "response_headers_to_add"})


# The runtime keys an HTTPFault may rename (meshpy.model.routes.FaultKeys has Envoy's defaults).
_FAULT_KEYS = {"delay_percent_runtime": "delay_percent", "abort_percent_runtime": "abort_percent",
               "delay_duration_runtime": "delay_duration", "abort_http_status_runtime": "abort_status",
               "max_active_faults_runtime": "max_active"}
# Keys of a gRPC abort and of the response rate limit: meshpy refuses both, and without them Envoy never
# reads these keys either.
_INERT_KEYS = ("abort_grpc_status_runtime", "response_rate_limit_percent_runtime")


def percent(fraction: Any) -> float:
    """A FractionalPercent as a percentage (an unset one is 0%, as in Envoy)."""
    return 100.0 * float(fraction.numerator) / _DENOMINATORS.get(fraction.denominator, 100.0)


def fault(issues: Issues, msg: Any, path: str) -> Fault | None:
    """An HTTPFault; None when it injects nothing (an empty filter config that only lets routes
    configure their own)."""
    issues.fields(msg, path, {"delay", "abort", "max_active_faults", *_FAULT_KEYS, *_INERT_KEYS})
    delay, delay_pct, abort, abort_pct, headers = None, 0.0, None, 0.0, False
    if msg.HasField("delay"):
        d, d_path = msg.delay, child(path, "delay")
        issues.fields(d, d_path, {"fixed_delay", "header_delay", "percentage"})
        if d.HasField("fixed_delay"):
            delay = positive_duration(issues, d, "fixed_delay", d_path, 0.0) or None
        headers |= d.HasField("header_delay")
        delay_pct = percent(d.percentage)
    if msg.HasField("abort"):
        a, a_path = msg.abort, child(path, "abort")
        issues.fields(a, a_path, {"http_status", "header_abort", "percentage"})
        if a.http_status:
            if not 200 <= a.http_status <= 599:
                issues.add(child(a_path, "http_status"), "must be from 200 to 599")
            abort = a.http_status
        headers |= a.HasField("header_abort")
        abort_pct = percent(a.percentage)
    if delay is None and abort is None and not headers:
        return None
    keys = FaultKeys(**{ours: getattr(msg, field) for field, ours in _FAULT_KEYS.items()
                        if getattr(msg, field)})
    return Fault(delay=delay, delay_percent=delay_pct, abort_status=abort, abort_percent=abort_pct,
                 header_controlled=headers, max_active=wrapped(msg, "max_active_faults", None), keys=keys)


def rate_limit(issues: Issues, msg: Any, path: str) -> LocalRateLimit | None:
    """A LocalRateLimit config; None when it limits nothing."""
    issues.fields(msg, path, _LIMIT)
    if not msg.HasField("token_bucket"):
        return None
    enabled, enabled_key = _runtime_percent(issues, msg, "filter_enabled", path)
    enforced, enforced_key = _runtime_percent(issues, msg, "filter_enforced", path)
    if (enabled == 0.0 and not enabled_key) or (enforced == 0.0 and not enforced_key):
        return None  # Envoy's default: the filter counts nothing, or counts but lets everything pass
    tb, tb_path = msg.token_bucket, child(path, "token_bucket")
    issues.fields(tb, tb_path, {"max_tokens", "tokens_per_fill", "fill_interval"})
    if tb.max_tokens < 1:
        issues.add(child(tb_path, "max_tokens"), "must be at least 1")
    interval = seconds(tb.fill_interval)
    if interval < 0.05:
        issues.add(child(tb_path, "fill_interval"), "must be at least 50ms")
    status = msg.status.code if msg.HasField("status") and msg.status.code else 429
    added = tuple(header_value(issues, option, item(child(path, "response_headers_to_add"), i))
                  for i, option in enumerate(msg.response_headers_to_add))
    return LocalRateLimit(max_tokens=max(1, tb.max_tokens), tokens_per_fill=wrapped(tb, "tokens_per_fill", 1),
                          fill_interval=max(interval, 0.05), status=status,
                          response_headers=HeaderEdits(add=added) if added else NO_EDITS,
                          enabled_percent=enabled, enforced_percent=enforced, enabled_key=enabled_key,
                          enforced_key=enforced_key)


def _runtime_percent(issues: Issues, msg: Any, name: str, path: str) -> tuple[float, str]:
    """A RuntimeFractionalPercent: its default percent and its runtime key (read per request)."""
    if not msg.HasField(name):
        return 0.0, ""
    setting = getattr(msg, name)
    issues.fields(setting, child(path, name), {"default_value", "runtime_key"})
    return percent(setting.default_value), setting.runtime_key
