"""Limits and overload protection in the config model: what a listener takes, how long a connection
lives, and what the proxy does when its memory runs short (Envoy's overload manager).

Every field is off by default, and a listener or a proxy without limits costs nothing on its paths:
the checks read one attribute per connection or per request and find nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HeadersWithUnderscores = Literal["allow", "reject", "drop"]

# Envoy's overload action names (envoy.overload_actions.*) and meshpy's words for the same.
OVERLOAD_ACTIONS = {
    # listeners pause: clients wait in the kernel backlog
    "stop_accepting_connections": "stop_accepting_connections",
    "reject_incoming_connections": "reject_connections",  # accepted and closed at once
    "disable_http_keepalive": "disable_keepalive",  # Connection: close, GOAWAY after the answer
    "stop_accepting_requests": "shed_requests",  # new requests get 503 with flag OM
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """Per listener. `max_connections`: Envoy's connection_limit network filter (and its listener
    connection limit): connections over it are closed when accepted. `max_connections_per_source_ip`
    is meshpy's own (Envoy has none): one client address cannot take the whole listener.
    `buffer_limit`: Envoy's per_connection_buffer_limit_bytes, the bytes a connection may have queued
    for writing before the proxy stops reading its other side; None keeps the event loop's 64 KiB."""

    max_connections: int | None = None
    max_connections_per_source_ip: int | None = None
    buffer_limit: int | None = None
    # Out of the proxy-wide limits (Envoy's listener flags, set on Istio's admin-side listeners):
    # `global_exempt`, the global connection limit (ignore_global_conn_limit; its connections are not
    # counted in it either); `overload_exempt`, every overload action too (bypass_overload_manager).
    global_exempt: bool = False
    overload_exempt: bool = False

    @property
    def any(self) -> bool:
        return self != NO_LIMITS


NO_LIMITS = ConnectionLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """Per HTTP listener (Envoy's HCM common_http_protocol_options)."""

    max_connection_duration: float | None = None  # then the connection drains (close / GOAWAY)
    max_requests_per_connection: int | None = None  # the last one's answer closes it (or GOAWAY)
    headers_with_underscores: HeadersWithUnderscores = "allow"


NO_HTTP_LIMITS = HttpLimits()


@dataclass(frozen=True, slots=True, kw_only=True)
class OverloadAction:
    action: str  # a value of OVERLOAD_ACTIONS
    threshold: float  # of the memory limit, 0 < threshold <= 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Overload:
    """Proxy-wide. `max_connections`: downstream connections over every listener (Envoy's
    global_downstream_max_connections resource monitor): over it, new ones are closed when accepted.
    `max_memory`: the memory the actions are measured against, in bytes of resident set (Envoy's
    fixed_heap monitor, which measures its heap; a Python process's heap is its RSS), read every
    `refresh_interval`. Each action is on while memory is at or over its threshold of `max_memory`."""

    max_connections: int | None = None
    max_memory: int | None = None
    refresh_interval: float = 1.0  # Envoy's default
    actions: tuple[OverloadAction, ...] = field(default=())

    def threshold(self, action: str) -> float | None:
        return next((a.threshold for a in self.actions if a.action == action), None)


NO_OVERLOAD = Overload()
