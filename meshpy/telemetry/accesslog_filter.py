"""Envoy's access-log filters compiled into one predicate of a finished request: asked when it
completes, so that a request the filter leaves out is never queued. A log without a filter asks
nothing."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from meshpy.model.access_log import (
    AndFilter,
    DurationFilter,
    HeaderFilter,
    LogFilter,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    StatusFilter,
)
from meshpy.routing.matchers import HeaderMatcher, RequestView

Predicate = Callable[[Any, float], bool]  # (record, duration in seconds) -> log it?
_OPS: dict[str, Callable[[int, int], bool]] = {"eq": operator.eq, "ge": operator.ge, "le": operator.le,
                                               "ne": operator.ne}


def compile_filter(flt: LogFilter, path: str = "filter") -> Predicate:
    if isinstance(flt, StatusFilter):
        test, value = _OPS[flt.op], flt.value
        return lambda r, s: test(r.resp_status, value)
    if isinstance(flt, DurationFilter):
        test, value = _OPS[flt.op], flt.value
        return lambda r, s: test(int(s * 1000), value)
    if isinstance(flt, NotHealthCheckFilter):
        return lambda r, s: True  # no request is answered as a health check (no health_check filter)
    if isinstance(flt, ResponseFlagFilter):
        wanted = frozenset(flt.flags)
        if not wanted:
            return lambda r, s: bool(r.flag)
        return lambda r, s: bool(r.flag) and not wanted.isdisjoint(r.flag.split(","))
    if isinstance(flt, HeaderFilter):
        matcher = HeaderMatcher(flt.header, f"{path}.header")
        return lambda r, s: matcher.matches(_view(r))
    if isinstance(flt, AndFilter):
        parts = [compile_filter(f, path) for f in flt.filters]
        return lambda r, s: all(p(r, s) for p in parts)
    assert isinstance(flt, OrFilter)
    parts = [compile_filter(f, path) for f in flt.filters]
    return lambda r, s: any(p(r, s) for p in parts)


def _view(r: Any) -> RequestView:
    """The request as the operators see it, for a header matcher (what Envoy's header filter sees)."""
    return RequestView(r.log_request_header(b":authority") or "", r.log_request_header(b":path") or "",
                       r.log_request_header(b":method") or "", r.log_header_list())
