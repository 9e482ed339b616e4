"""Envoy's limits and overload manager -> the model's (meshpy.model.limits).

- the bootstrap's `overload_manager`: the `fixed_heap` resource monitor (its max_heap_size_bytes is
  what meshpy measures its resident memory against), the `global_downstream_max_connections` monitor,
  and threshold triggers of four actions on the heap monitor;
- a listener's `per_connection_buffer_limit_bytes` and the `connection_limit` network filter in front
  of its HCM or TCP proxy;
- the HCM's `common_http_protocol_options`: max_connection_duration, max_requests_per_connection and
  headers_with_underscores_action.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2

from meshpy.model.limits import OVERLOAD_ACTIONS, HeadersWithUnderscores, HttpLimits, Overload, OverloadAction
from meshpy.xds.translate_base import (
    UNSUPPORTED,
    Issues,
    child,
    item,
    positive_duration,
    timeout,
    unpack,
    wrapped,
)

ConnectionLimit = connection_limit_pb2.ConnectionLimit
FixedHeap = fixed_heap_pb2.FixedHeapConfig
DownstreamConnections = downstream_connections_pb2.DownstreamConnectionsConfig
_LIMIT_FILTER = {ConnectionLimit.DESCRIPTOR.full_name: ConnectionLimit}
_MONITORS = {cls.DESCRIPTOR.full_name: cls for cls in (FixedHeap, DownstreamConnections)}
_HEAP = "envoy.resource_monitors.fixed_heap"
_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
_ACTION_PREFIX = "envoy.overload_actions."
# HCM headers_with_underscores_action: ALLOW, REJECT_REQUEST, DROP_HEADER
_UNDERSCORES: tuple[HeadersWithUnderscores, ...] = ("allow", "reject", "drop")
_COMMON_LIMITS = ("max_connection_duration", "max_requests_per_connection", "headers_with_underscores_action")

__all__ = ["COMMON_LIMIT_FIELDS", "ConnectionLimit", "connection_limit", "http_limits", "overload_manager"]
COMMON_LIMIT_FIELDS = frozenset(_COMMON_LIMITS)


def overload_manager(issues: Issues, msg: Any, path: str = "overload_manager") -> Overload:
    issues.fields(msg, path, {"refresh_interval", "resource_monitors", "actions"})
    heap: int | None = None
    connections: int | None = None
    names: set[str] = set()
    for i, monitor in enumerate(msg.resource_monitors):
        at = item(child(path, "resource_monitors"), i)
        issues.fields(monitor, at, {"name", "typed_config"})
        config = unpack(issues, monitor.typed_config, child(at, "typed_config"), _MONITORS)
        names.add(monitor.name)
        if isinstance(config, FixedHeap):
            heap = config.max_heap_size_bytes
            if heap <= 0:
                issues.add(child(at, "typed_config.max_heap_size_bytes"), "must be greater than 0")
        elif isinstance(config, DownstreamConnections):
            connections = config.max_active_downstream_connections
            if connections <= 0:
                issues.add(child(at, "typed_config.max_active_downstream_connections"),
                           "must be greater than 0")
    actions = []
    for i, action in enumerate(msg.actions):
        at = item(child(path, "actions"), i)
        issues.fields(action, at, {"name", "triggers"})
        ours = OVERLOAD_ACTIONS.get(action.name.removeprefix(_ACTION_PREFIX))
        if ours is None or not action.name.startswith(_ACTION_PREFIX):
            issues.add(child(at, "name"), f"{action.name or 'an empty name'} is {UNSUPPORTED} (supported: "
                       f"{', '.join(_ACTION_PREFIX + a for a in OVERLOAD_ACTIONS)})")
            continue
        threshold = _trigger(issues, action, at, names)
        if threshold is not None:
            actions.append(OverloadAction(action=ours, threshold=threshold))
    return Overload(
        max_connections=connections,
        max_memory=heap,
        refresh_interval=positive_duration(issues, msg, "refresh_interval", path, 1.0),
        actions=tuple(actions),
    )


def _trigger(issues: Issues, action: Any, path: str, monitors: set[str]) -> float | None:
    if len(action.triggers) != 1:
        issues.add(child(path, "triggers"), "exactly one trigger (on the fixed_heap monitor) is supported")
        return None
    trigger, at = action.triggers[0], item(child(path, "triggers"), 0)
    issues.fields(trigger, at, {"name", "threshold"})
    if trigger.name != _HEAP or trigger.name not in monitors:
        issues.add(child(at, "name"), f"must name the {_HEAP} resource monitor, configured above")
        return None
    if not trigger.HasField("threshold"):
        issues.add(at, "a threshold is required (scaled triggers are not supported by meshpy)")
        return None
    value = float(trigger.threshold.value)
    if not 0 < value <= 1:
        issues.add(child(at, "threshold.value"), "must be over 0 and at most 1")
        return None
    return value


def connection_limit(issues: Issues, msg: Any, path: str) -> int | None:
    """The connection_limit network filter's max_connections (its runtime switch is not read)."""
    config = unpack(issues, msg.typed_config, child(path, "typed_config"), _LIMIT_FILTER)
    if config is None:
        return None
    at = child(path, "typed_config")
    issues.fields(config, at, {"stat_prefix", "max_connections"})
    limit = wrapped(config, "max_connections", 0)
    if limit < 1:
        issues.add(child(at, "max_connections"), "must be at least 1")
        return None
    return int(limit)


def http_limits(issues: Issues, common: Any, hcm: Any, path: str) -> HttpLimits:
    """common_http_protocol_options' connection limits, and the HCM's underscore rule."""
    count = wrapped(common, "max_requests_per_connection", 0)
    action = common.headers_with_underscores_action
    if not 0 <= action < len(_UNDERSCORES):
        issues.add(child(path, "headers_with_underscores_action"), f"unknown action {action}")
        action = 0
    return HttpLimits(
        max_connection_duration=timeout(common, "max_connection_duration", None),
        max_requests_per_connection=count or None,  # 0: no limit, as in Envoy
        headers_with_underscores=_UNDERSCORES[action],
    )
