"""meshpy YAML: connection limits on a listener and the proxy's overload protection.

    overload:                      # top level
      max_connections: 20000       # downstream connections, every listener together
      max_memory: 512MiB           # what the actions measure the proxy's resident memory against
      refresh_interval: 1s
      actions:                     # each on at this share of max_memory
        disable_keepalive: 0.8
        shed_requests: 0.9         # 503, flag OM
        stop_accepting_connections: 0.95
        reject_connections: 0.98
    listeners:
    - name: ingress
      max_connections: 5000
      max_connections_per_source_ip: 100
      buffer_limit: 1MiB
      max_connection_duration: 10m       # http listeners
      max_requests_per_connection: 1000
      headers_with_underscores: reject   # allow (default), reject (400) or drop
"""

from __future__ import annotations

from meshpy.model.limits import (
    OVERLOAD_ACTIONS,
    ConnectionLimits,
    HeadersWithUnderscores,
    HttpLimits,
    Overload,
    OverloadAction,
)
from meshpy.model.yaml_reader import (
    Fields,
    Reader,
    as_optional_timeout,
    as_positive_duration,
    as_positive_int,
)
from meshpy.model.yaml_values import parse_size

LISTENER_LIMIT_KEYS = ("max_connections", "max_connections_per_source_ip", "buffer_limit")
HTTP_LIMIT_KEYS = ("max_connection_duration", "max_requests_per_connection", "headers_with_underscores")
_OVERLOAD_KEYS = ("max_connections", "max_memory", "refresh_interval", "actions")
_ACTIONS = tuple(OVERLOAD_ACTIONS.values())
_UNDERSCORES: tuple[HeadersWithUnderscores, ...] = ("allow", "reject", "drop")


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be at least 1 byte")
    return size


def _share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"must be a share of max_memory, over 0 and at most 1 (0.9 is 90%), got {value!r}")
    return float(value)


def _underscores(value: object) -> HeadersWithUnderscores:
    for choice in _UNDERSCORES:
        if value == choice:
            return choice
    raise ValueError(f"must be allow, reject or drop, got {value!r}")


def listener_limits(f: Fields) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=f.get("max_connections", as_positive_int, None),
        max_connections_per_source_ip=f.get("max_connections_per_source_ip", as_positive_int, None),
        buffer_limit=f.get("buffer_limit", _positive_size, None),
    )


def http_limits(f: Fields) -> HttpLimits:
    return HttpLimits(
        max_connection_duration=f.get("max_connection_duration", as_optional_timeout, None),
        max_requests_per_connection=f.get("max_requests_per_connection", as_positive_int, None),
        headers_with_underscores=f.get("headers_with_underscores", _underscores, "allow"),
    )


def overload(r: Reader, node: object, path: str) -> Overload:
    f = r.mapping(node, path, _OVERLOAD_KEYS)
    if f is None:
        return Overload()
    actions: list[OverloadAction] = []
    if "actions" in f:
        a = r.mapping(f.raw("actions"), f.at("actions"), _ACTIONS)
        if a is not None:
            actions = [OverloadAction(action=name, threshold=a.get(name, _share, 1.0))
                       for name in _ACTIONS if name in a]
    max_memory = f.get("max_memory", _positive_size, None)
    if actions and max_memory is None and "max_memory" not in f:
        r.error(path, "actions need max_memory: the memory their thresholds are shares of")
    return Overload(
        max_connections=f.get("max_connections", as_positive_int, None),
        max_memory=max_memory,
        refresh_interval=f.get("refresh_interval", as_positive_duration, 1.0),
        actions=tuple(actions),
    )
