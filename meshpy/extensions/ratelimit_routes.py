"""The `rate_limits` of Envoy's routes (RouteAction) and virtual hosts, which only the global rate limit
filter reads (meshpy.extensions.ratelimit): checked where the route configuration is read, and carried
to the filter as an override of each route where some apply.

A route with rate limits of its own or of its virtual host gets an override of every filter of the
filter's class (`by_class`: whatever the filters' names) holding both lists and the route's
include_vh_rate_limits; where the route or its virtual host gives a RateLimitPerRoute under a filter's
name, that filter's override on the route carries them too (the most specific per-route config being
the one a filter reads). Routes without any rate limits get nothing, and the filter stays out of their
chains (HttpFilter.inert): they pay nothing for it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from envoy.config.route.v3 import route_components_pb2

from meshpy.extensions import as_json
from meshpy.extensions.ratelimit import CLASS, ROUTE_LIMITS
from meshpy.extensions.ratelimit_config import check_entry
from meshpy.model.filter_types import FilterOverride
from meshpy.model.meshpy_yaml_filters import canonical_config
from meshpy.model.routes import Route
from meshpy.xds.translate_base import Issues, child, item

_PER_ROUTE = "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
_FILTER_CONFIG = route_components_pb2.FilterConfig


def attach(issues: Issues, msg: Any, path: str, routes: tuple[Route, ...],
           vhost_filters: tuple[FilterOverride, ...]) -> tuple[Route, ...]:
    """`routes` (the VirtualHost `msg`'s, in order), with the rate limits that apply to each."""
    picks = [r.WhichOneof("action") == "route" and r.route.WhichOneof("cluster_specifier") != "cluster"
             for r in msg.routes]
    vhost = []
    for j, entry in enumerate(msg.rate_limits):
        check_entry(issues, entry, item(child(path, "rate_limits"), j), per_filter=False, weighted=any(picks))
        vhost.append(as_json(entry))
    named = _named(msg)
    out = []
    for i, (route, given) in enumerate(zip(routes, msg.routes, strict=True)):
        if given.WhichOneof("action") != "route":  # (Envoy's filter passes routes without a route action by)
            out.append(route)
            continue
        where = child(item(child(path, "routes"), i), "route")
        own = []
        for j, entry in enumerate(given.route.rate_limits):
            check_entry(issues, entry, item(child(where, "rate_limits"), j), per_filter=False,
                        weighted=picks[i])
            own.append(as_json(entry))
        if not own and not vhost:
            out.append(route)
            continue
        data = {"route": own, "vhost": vhost,
                "include_vh": bool(given.route.include_vh_rate_limits.value)}
        filters = _with(route, data, named | _named(given), vhost_filters)
        out.append(dataclasses.replace(route, filters=filters))
    return tuple(out)


def _with(route: Route, data: dict[str, Any], names: set[str],
          vhost_filters: tuple[FilterOverride, ...]) -> tuple[FilterOverride, ...]:
    filters = {(o.by_class, o.name): o for o in route.filters}
    for name in names:
        given = filters.get((False, name)) or \
            next((o for o in vhost_filters if o.name == name and not o.by_class), None)
        if given is not None and given.config is not None:
            merged = {**json.loads(given.config), ROUTE_LIMITS: data}
            filters[(False, name)] = FilterOverride(name=name, disabled=given.disabled,
                                                    config=canonical_config(merged))
    filters[(True, CLASS)] = FilterOverride(name=CLASS, by_class=True,
                                            config=canonical_config({ROUTE_LIMITS: data}))
    return tuple(sorted(filters.values(), key=lambda o: (o.name, o.by_class)))


def _named(msg: Any) -> set[str]:
    """The names under which a VirtualHost or Route gives a RateLimitPerRoute."""
    out = set()
    for key, any_msg in msg.typed_per_filter_config.items():
        if any_msg.TypeName() == _FILTER_CONFIG.DESCRIPTOR.full_name:
            wrapped = _FILTER_CONFIG()
            any_msg.Unpack(wrapped)
            any_msg = wrapped.config
        if any_msg.TypeName() == _PER_ROUTE:
            out.add(key)
    return out
