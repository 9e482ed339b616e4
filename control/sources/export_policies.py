"""Model -> Envoy resources for the resilience settings: retry policies, faults and local rate limits.

Split from `export` to keep it short. Faults and rate limits travel as Envoy has them: a fault filter
and a local rate limit filter in the connection manager (before the router), with each route's and
virtual host's own config in `typed_per_filter_config`; a listener-wide bucket is the rate limit
filter's own config. What Envoy has no field for travels as route metadata in the `meshpy` namespace.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from control.sources import export_authz
from meshpy import extensions
from meshpy.model.endpoints import DEFAULT_GROUP, DEFAULT_LOCALITY_BALANCING
from meshpy.model.filter_types import FilterOverride, effective_chain
from meshpy.model.routes import (
    Fault,
    HashPolicy,
    HeaderEdits,
    LocalRateLimit,
    MirrorPolicy,
    RetryPolicy,
    Route,
    VirtualHost,
)
from meshpy.model.types import Cluster, HealthCheck, HttpOptions, LoadBalancing, OutlierDetection
from meshpy.xds.translate_filters import PYTHON_FILTER, python_filter_entry

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
FAULT_FILTER = "envoy.filters.http.fault"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
TYPED_STRUCT_TYPE = "type.googleapis.com/xds.type.v3.TypedStruct"
LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
_ALWAYS = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def duration(seconds: float | None) -> str:
    """A Duration in proto JSON; None (no limit) is Envoy's 0s."""
    return "0s" if seconds is None else f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def retry(p: RetryPolicy) -> dict[str, Any]:
    """The RouteAction fields of a retry policy."""
    policy: dict[str, Any] = {
        "retry_on": ",".join(p.retry_on),
        "num_retries": p.num_retries,
        "retry_back_off": {"base_interval": duration(p.backoff_base),
                           "max_interval": duration(p.backoff_max)},
    }
    if p.per_try_timeout is not None:
        policy["per_try_timeout"] = duration(p.per_try_timeout)
    if p.retriable_status_codes:
        policy["retriable_status_codes"] = list(p.retriable_status_codes)
    out: dict[str, Any] = {"retry_policy": policy}
    if p.hedge_on_per_try_timeout:
        out["hedge_policy"] = {"hedge_on_per_try_timeout": True}
    return out


def retry_metadata(p: RetryPolicy) -> dict[str, Any]:
    """The Route fields for what Envoy's RetryPolicy cannot say (read back by meshpy's translator)."""
    return {
        "metadata": {"filter_metadata": {"meshpy": {
            "retry_non_idempotent": p.retry_non_idempotent, "attempt_count_header": p.attempt_count_header}}},
        "per_request_buffer_limit_bytes": p.buffer_limit,
    }


def fault(f: Fault) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": FAULT_TYPE}
    if f.delay is not None or f.header_controlled:
        delay: dict[str, Any] = {"percentage": _percent(f.delay_percent)}
        if f.delay is not None:
            delay["fixed_delay"] = duration(f.delay)
        else:
            delay["header_delay"] = {}
        out["delay"] = delay
    if f.abort_status is not None or f.header_controlled:
        abort: dict[str, Any] = {"percentage": _percent(f.abort_percent)}
        if f.abort_status is not None:
            abort["http_status"] = f.abort_status
        else:
            abort["header_abort"] = {}
        out["abort"] = abort
    if f.max_active is not None:
        out["max_active_faults"] = f.max_active
    return out


def _percent(value: float) -> dict[str, Any]:
    return {"numerator": round(value * 10_000), "denominator": "MILLION"}


APPEND = {
    "append": "APPEND_IF_EXISTS_OR_ADD",
    "add_if_absent": "ADD_IF_ABSENT",
    "overwrite": "OVERWRITE_IF_EXISTS_OR_ADD",
    "overwrite_if_exists": "OVERWRITE_IF_EXISTS",
}


def mirror(m: MirrorPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"cluster": m.cluster} if m.cluster else {"cluster_header": m.cluster_header}
    if m.percent < 100.0 or m.runtime_key:
        out["runtime_fraction"] = {"default_value": _percent(m.percent),
                                   **({"runtime_key": m.runtime_key} if m.runtime_key else {})}
    if not m.host_suffix:
        out["disable_shadow_host_suffix_append"] = True
    return out


def header_options(e: HeaderEdits) -> list[dict[str, Any]]:
    """Headers to add, as HeaderValueOptions (values are literal: `%` escaped for Envoy's formatter)."""
    return [{"header": {"key": h.name, "value": h.value.replace("%", "%%")},
             "append_action": APPEND[h.append]} for h in e.add]


def rate_limit(limit: LocalRateLimit, prefix: str) -> dict[str, Any]:
    return {
        **({"response_headers_to_add": header_options(limit.response_headers)}
           if limit.response_headers else {}),
        "@type": LIMIT_TYPE,
        "stat_prefix": prefix,
        "status": {"code": limit.status},
        "token_bucket": {"max_tokens": limit.max_tokens, "tokens_per_fill": limit.tokens_per_fill,
                         "fill_interval": duration(limit.fill_interval)},
        "filter_enabled": _ALWAYS,
        "filter_enforced": _ALWAYS,
    }


def per_filter(fault_: Fault | None, limit: LocalRateLimit | None, prefix: str,
               given: tuple[FilterOverride, ...] = (),
               classes: dict[str, str] | None = None) -> dict[str, Any]:
    """A route's or virtual host's `typed_per_filter_config` (nothing when it has neither)."""
    configs: dict[str, Any] = {}
    if fault_ is not None:
        configs[FAULT_FILTER] = fault(fault_)
    if limit is not None:
        configs[LIMIT_FILTER] = rate_limit(limit, prefix)
    configs.update(overrides(given, classes or {}))
    return {"typed_per_filter_config": configs} if configs else {}


def chain_filters(h: HttpOptions, prefix: str) -> list[dict[str, Any]]:
    """A listener's http_filters before its router, in the order meshpy runs them: the fault and rate
    limit filters where some route uses them, and Python filters as meshpy reads them back."""
    hosts: tuple[VirtualHost, ...] = h.route_config.virtual_hosts
    routes: list[Route] = [r for vh in hosts for r in vh.routes]
    filters: list[dict[str, Any]] = []
    listed = {s.name for s in h.filters}
    for spec in effective_chain(h.filters):
        entry: dict[str, Any] | None = None
        if spec.kind == "fault" and any(r.fault is not None for r in routes):
            entry = {"name": FAULT_FILTER, "typed_config": {"@type": FAULT_TYPE}}
        elif spec.kind == "rate_limit" and (h.rate_limit is not None or any(vh.rate_limit for vh in hosts)
                                            or any(r.rate_limit for r in routes)):
            own = rate_limit(h.rate_limit, prefix) if h.rate_limit is not None else {"@type": LIMIT_TYPE,
                                                                                      "stat_prefix": prefix}
            entry = {"name": LIMIT_FILTER, "typed_config": own}
        elif spec.kind == "python":
            entry = (extensions.envoy_entry(spec.name, spec.python_class, json.loads(spec.config))
                     or python_filter_entry(spec.name, spec.python_class, spec.config))
        elif spec.kind == "authz":
            names = export_authz.names_of(spec)
            said = [o for vh in hosts for o in vh.filters] + [o for r in routes for o in r.filters]
            entry = export_authz.rbac_filter_entry(spec, any(o.name in names for o in said))
        if entry is None:
            continue
        if spec.name in listed:  # a listed built-in keeps its name: routes may name it
            entry["name"] = spec.name
        if spec.disabled:
            entry["disabled"] = True
        filters.append(entry)
    return filters


def overrides(given: tuple[FilterOverride, ...], classes: dict[str, str]) -> dict[str, Any]:
    """A virtual host's or route's word on filters by name, as typed_per_filter_config entries."""
    out: dict[str, Any] = {}
    for o in given:
        if (replacement := export_authz.per_route(o)) is not None:
            out[o.name] = replacement
            continue
        if o.config is not None and (own := extensions.envoy_route_entry(classes.get(o.name, ""),
                                                                         json.loads(o.config))) is not None:
            out[o.name] = own  # a built-in Envoy filter's per-route config, as Envoy reads it
            continue
        # is_optional: Envoy has no such filter config; it passes over what it does not know.
        fc: dict[str, Any] = {"@type": FILTER_CONFIG_TYPE, "is_optional": True}
        if o.disabled is not None:
            fc["disabled"] = o.disabled
        if o.config is not None or o.disabled is False:
            # Envoy refuses a FilterConfig that turns a filter on with no config: an empty value says
            # "on, with the listener's config" to meshpy.
            value = {"config": json.loads(o.config)} if o.config is not None else {}
            fc["config"] = {"@type": TYPED_STRUCT_TYPE, "type_url": PYTHON_FILTER, "value": value}
        out[o.name] = fc
    return out


def outlier_detection(od: OutlierDetection) -> dict[str, Any]:
    """A Cluster's outlier_detection, every field written out (the model holds Envoy's defaults)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(od):
        value = getattr(od, f.name)
        if f.name in ("interval", "base_ejection_time", "max_ejection_time"):
            out[f.name] = duration(value)
        elif isinstance(value, float):
            out[f.name] = round(value)
        else:
            out[f.name] = value
    return out


_LB_ENUM = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM",
            "ring_hash": "RING_HASH", "maglev": "MAGLEV"}


def load_balancing(lb: LoadBalancing, errors: list[str], where: str) -> dict[str, Any]:
    """A Cluster's lb_policy and *_lb_config fields."""
    if lb.locality != DEFAULT_LOCALITY_BALANCING:  # (only an Envoy config sets them: not exported yet)
        errors.append(f"{where}.load_balancing.locality: common_lb_config is not exported")
    if lb.policy not in _LB_ENUM:
        errors.append(f"{where}.lb_policy: Envoy has no {lb.policy} balancer")
        return {}
    out: dict[str, Any] = {"lb_policy": _LB_ENUM[lb.policy]}
    slow = None
    if lb.slow_start is not None:
        s = lb.slow_start
        slow = {"slow_start_window": duration(s.window), "aggression": {"default_value": s.aggression,
                                                                     "runtime_key": "meshpy.slow_start"},
                "min_weight_percent": {"value": s.min_weight_percent}}
    if lb.policy == "least_request":
        out["least_request_lb_config"] = {"choice_count": lb.choice_count, **({"slow_start_config": slow}
                                                                               if slow else {})}
    elif lb.policy == "round_robin" and slow:
        out["round_robin_lb_config"] = {"slow_start_config": slow}
    elif lb.policy == "ring_hash":
        out["ring_hash_lb_config"] = {"minimum_ring_size": lb.ring_size}
    elif lb.policy == "maglev":
        out["maglev_lb_config"] = {"table_size": lb.table_size}
    return out


def endpoint_details(c: Cluster, errors: list[str], where: str) -> None:
    """Priorities, localities and endpoint health targets come from Envoy configs only, and are not
    exported yet: refused rather than dropped."""
    for i, e in enumerate(c.endpoints):
        if e.group != DEFAULT_GROUP or e.hostname or e.health_target is not None:
            errors.append(f"{where}.endpoints[{i}]: priority, locality, hostname and health_check_config "
                          "are not exported")
            return


def hash_policy(policies: tuple[HashPolicy, ...]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for p in policies:
        if p.header is not None:
            out.append({"header": {"header_name": p.header}})
        elif p.cookie is not None:
            out.append({"cookie": {"name": p.cookie}})
        else:
            out.append({"connection_properties": {"source_ip": p.source_ip}})
    return {"hash_policy": out} if out else {}


def health_checks(hc: HealthCheck) -> dict[str, Any]:
    check: dict[str, Any] = {
        "timeout": duration(hc.timeout), "interval": duration(hc.interval),
        "unhealthy_threshold": hc.unhealthy_threshold, "healthy_threshold": hc.healthy_threshold,
    }
    if hc.interval_jitter:
        check["interval_jitter"] = duration(hc.interval_jitter)
    # Envoy's own default for a cluster without traffic is 60 s; the model's None is the interval.
    idle = hc.no_traffic_interval if hc.no_traffic_interval is not None else hc.interval
    check["no_traffic_interval"] = duration(idle)
    if hc.no_traffic_healthy_interval is not None:
        check["no_traffic_healthy_interval"] = duration(hc.no_traffic_healthy_interval)
    if hc.kind == "tcp":
        check["tcp_health_check"] = {}
    elif hc.kind == "grpc":
        grpc: dict[str, Any] = {"service_name": hc.service}
        if hc.host is not None:
            grpc["authority"] = hc.host
        check["grpc_health_check"] = grpc
    else:
        ranges = [{"start": a, "end": b} for a, b in hc.expected_statuses]
        http: dict[str, Any] = {"path": hc.path, "expected_statuses": ranges}
        if hc.host is not None:
            http["host"] = hc.host
        check["http_health_check"] = http
    return {"health_checks": [check]}
