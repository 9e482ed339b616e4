"""meshpy's connection limits in Envoy's words, for the listeners the control plane exports: a
listener's per_connection_buffer_limit_bytes, a connection_limit network filter in front of every
chain, and the HCM's common_http_protocol_options. (The overload manager is bootstrap-only in Envoy:
nothing of it goes over xDS.)"""

from __future__ import annotations

from typing import Any

from control.sources.export_policies import duration
from meshpy.model.limits import NO_HTTP_LIMITS, ConnectionLimits, HttpLimits

CONNECTION_LIMIT = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
_UNDERSCORES = {"allow": "ALLOW", "reject": "REJECT_REQUEST", "drop": "DROP_HEADER"}


def common_options(limits: HttpLimits) -> dict[str, Any]:
    """What to add to the HCM's common_http_protocol_options."""
    if limits == NO_HTTP_LIMITS:
        return {}
    out: dict[str, Any] = {"headers_with_underscores_action": _UNDERSCORES[limits.headers_with_underscores]}
    if limits.max_connection_duration is not None:
        out["max_connection_duration"] = duration(limits.max_connection_duration)
    if limits.max_requests_per_connection is not None:
        out["max_requests_per_connection"] = limits.max_requests_per_connection
    return out


def limit_listener(out: dict[str, Any], limits: ConnectionLimits, name: str, errors: list[str],
                   where: str) -> None:
    """Add `limits` to the exported listener `out` (its chains already built)."""
    if limits.buffer_limit is not None:
        out["per_connection_buffer_limit_bytes"] = limits.buffer_limit
    if limits.overload_exempt:
        out["bypass_overload_manager"] = True
    if limits.global_exempt and not limits.overload_exempt:  # (bypassing implies it, as read)
        out["ignore_global_conn_limit"] = True
    if limits.max_connections_per_source_ip is not None:
        errors.append(f"{where}.max_connections_per_source_ip: Envoy's API has no per-source connection "
                      "limit to carry it")
    if limits.max_connections is None:
        return
    chains = [*out.get("filter_chains", []), *([out["default_filter_chain"]] if "default_filter_chain" in out
                                                 else [])]
    for chain in chains:
        chain["filters"].insert(0, {"name": "envoy.filters.network.connection_limit", "typed_config": {
            "@type": CONNECTION_LIMIT, "stat_prefix": name, "max_connections": limits.max_connections}})
