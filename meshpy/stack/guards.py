"""What may stop or hold a request between routing and forwarding: the local rate limit (a token
bucket per route or per virtual host, Envoy's local_ratelimit) and injected faults (Envoy's fault
filter: a delay, then an abort, for a share of requests or, when enabled, as a request asks through
`x-envoy-fault-*` headers).

Compiled with the route table, so their state (tokens, faults in progress) lives as long as the
Snapshot that holds them; a request on a route without either pays one attribute check.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from meshpy.model.routes import Fault, HashPolicy, LocalRateLimit
from meshpy.stack.fault_runtime import runtime_plan
from meshpy.stack.headers import compile_edits
from meshpy.upstream.balancers import hash64

if TYPE_CHECKING:
    from meshpy.runtime import Runtime

DELAY_HEADER = b"x-envoy-fault-delay-request"  # milliseconds
DELAY_PERCENT_HEADER = b"x-envoy-fault-delay-request-percentage"
ABORT_HEADER = b"x-envoy-fault-abort-request"  # an HTTP status
ABORT_PERCENT_HEADER = b"x-envoy-fault-abort-request-percentage"
_FAULT_HEADERS = frozenset({DELAY_HEADER, DELAY_PERCENT_HEADER, ABORT_HEADER, ABORT_PERCENT_HEADER})


class TokenBucket:
    """Refilled lazily when asked, so an idle bucket costs nothing (no timer)."""

    __slots__ = ("_next_fill", "enabled", "enabled_key", "enforced", "enforced_key", "gated", "headers",
                 "interval", "max_tokens", "per_fill", "runtime", "status", "tokens")

    def __init__(self, limit: LocalRateLimit, runtime: Runtime | None = None) -> None:
        self.headers = compile_edits(limit.response_headers)  # on the answers of limited requests
        self.max_tokens = limit.max_tokens
        self.per_fill = limit.tokens_per_fill
        self.interval = limit.fill_interval
        self.status = limit.status
        self.tokens = limit.max_tokens
        self._next_fill = -1.0  # set by the first request, on the event loop's clock
        # filter_enabled / filter_enforced below 100% or read from the runtime: one draw each per request
        self.enabled, self.enforced = limit.enabled_percent, limit.enforced_percent
        self.enabled_key, self.enforced_key = limit.enabled_key, limit.enforced_key
        self.gated = self.enabled < 100 or self.enforced < 100 or bool(self.enabled_key or self.enforced_key)
        self.runtime = runtime  # Envoy's layered runtime (set by PolicyClaims)

    def share(self, key: str, percent: float) -> bool:
        """Whether this request is in the share a RuntimeFractionalPercent gives (Envoy's
        featureEnabled(key, default)): the runtime's value for `key` when it has one, else `percent`."""
        p = percent / 100
        runtime = self.runtime
        if key and runtime is not None and runtime.snapshot.values:
            p = runtime.snapshot.fraction(key, p)
        return p >= 1.0 or random.random() < p

    def take(self, now: float) -> bool:
        if self._next_fill < 0:
            self._next_fill = now + self.interval
        elif now >= self._next_fill:
            fills = int((now - self._next_fill) / self.interval) + 1
            self.tokens = min(self.max_tokens, self.tokens + fills * self.per_fill)
            self._next_fill += fills * self.interval
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False


class FaultPlan:
    """What one request gets: a delay (seconds) and/or an abort status."""

    __slots__ = ("abort", "delay")

    def __init__(self, delay: float | None, abort: int | None) -> None:
        self.delay = delay
        self.abort = abort


class CompiledFault:
    __slots__ = ("active", "fault", "runtime")

    def __init__(self, fault: Fault, runtime: Runtime | None = None) -> None:
        self.fault = fault
        self.active = 0  # requests held by a delay right now (for max_active)
        self.runtime = runtime  # Envoy's layered runtime, whose keys override the config (fault_runtime)

    def plan(self, headers: Sequence[tuple[bytes, bytes]]) -> FaultPlan | None:
        """The faults for a request with these headers, or None for none."""
        f = self.fault
        snap = self.runtime.snapshot if self.runtime is not None else None
        if snap is not None and not snap.values:
            snap = None  # no layered runtime, or nothing in it: the config alone
        max_active = f.max_active
        if max_active is not None and snap is not None:
            max_active = snap.get_int(f.keys.max_active, max_active)
        if max_active is not None and self.active >= max_active:
            return None
        delay, delay_pct = f.delay, f.delay_percent
        abort, abort_pct = f.abort_status, f.abort_percent
        if f.header_controlled:
            asked = {n: v for n, v in headers if n in _FAULT_HEADERS}
            if asked:
                delay = _number(asked.get(DELAY_HEADER), 1000.0, delay)
                abort = _status(asked.get(ABORT_HEADER), abort)
                delay_pct = _number(asked.get(DELAY_PERCENT_HEADER), 1.0, delay_pct) or 0.0
                abort_pct = _number(asked.get(ABORT_PERCENT_HEADER), 1.0, abort_pct) or 0.0
        if snap is not None:
            delay, abort = runtime_plan(f, snap, headers, delay, delay_pct, abort, abort_pct)
        else:
            if delay is not None and not _chance(delay_pct):
                delay = None
            if abort is not None and not _chance(abort_pct):
                abort = None
        if delay is None and abort is None:
            return None
        return FaultPlan(delay, abort)


def _chance(percent: float) -> bool:
    return percent >= 100.0 or random.random() * 100.0 < percent


def _number(value: bytes | None, divisor: float, default: float | None) -> float | None:
    if value is None:
        return default
    try:
        number = float(value) / divisor
    except ValueError:
        return default
    return number if number >= 0 else default


def _status(value: bytes | None, default: int | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return default
    status = int(value)
    return status if 200 <= status <= 599 else default


def request_hash(
    policies: Sequence[HashPolicy], headers: Sequence[tuple[bytes, bytes]], peer: str
) -> int | None:
    """The hash a ring_hash or maglev cluster places this request by: of the route's hash policies,
    the first the request has (a header, a cookie, the client address). None: it has none of them."""
    for p in policies:
        if p.header is not None:
            name = p.header.encode()
            for n, v in headers:
                if n == name:
                    return hash64(v)
        elif p.cookie is not None:
            prefix = p.cookie.encode() + b"="
            for n, v in headers:
                if n == b"cookie":
                    for crumb in v.split(b";"):
                        crumb = crumb.strip()
                        if crumb.startswith(prefix):
                            return hash64(crumb[len(prefix):])
        elif p.source_ip and peer:
            return hash64(peer.encode())
    return None
