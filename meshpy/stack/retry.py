"""The retry state of one request: what was sent (to send it again), where it went, what is left.

An Exchange on a route with a retry policy carries one `RetryState`; a route without one pays nothing.
The decisions are Envoy's: which failures `retry_on` covers, at most `num_retries` more attempts, a
jittered exponential back-off (full jitter: uniform in [0, min(max, base * 2^n)]) or the upstream's
`Retry-After` when it sends one, and a retry is refused when the cluster's retry budget is spent (or,
with the budget off, `max_retries` retries are in flight). What meshpy adds by default: a request whose
body outgrew the replay buffer, or (unless the policy says otherwise) a method that is not idempotent,
is never retried once it may have reached the upstream, which may have acted on it; a failed connect
is retried for any method.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import TYPE_CHECKING, Protocol

from meshpy.model.routes import IDEMPOTENT_METHODS, RetryPolicy
from meshpy.ports import UpstreamSink

if TYPE_CHECKING:
    import asyncio

    from meshpy.ports import UpstreamStream
    from meshpy.upstream.cluster import ClusterRuntime, Host

# What went wrong with an attempt, as retry_on speaks of it.
STATUS, RESET, CONNECT, TIMEOUT = "status", "reset", "connect", "timeout"
_NO_RESPONSE = frozenset({"5xx", "gateway-error", "reset"})  # no answer at all: reset, per-try timeout
_CONNECT = _NO_RESPONSE | {"connect-failure"}
_GATEWAY = frozenset({502, 503, 504})
_GRPC = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
_IDEMPOTENT = frozenset(m.encode() for m in IDEMPOTENT_METHODS)
_MAX_RETRY_AFTER = 60.0  # a Retry-After longer than this is not waited for: the request fails instead


def retry_state(policy: RetryPolicy | None, method: bytes, grpc: bool = False) -> RetryState | None:
    """The state for a request on a route with `policy`, or None when it must never be retried.
    A gRPC call is always POST; as in gRPC's own retry design (gRFC A6) the method does not decide,
    the policy's conditions do (and the answer must not have begun, as for any retry here)."""
    if policy is None or not policy.retry_on:
        return None
    if method not in _IDEMPOTENT and not policy.retry_non_idempotent and not grpc:
        # A connect that failed sent nothing: that much is safe to try again whatever the method (and
        # Envoy, which knows no idempotency rule, retries it too).
        if not any(c in _CONNECT for c in policy.retry_on):
            return None
        return RetryState(policy, unsent_only=True)
    return RetryState(policy)


class RetryState:
    __slots__ = (
        "attempt", "body", "body_bytes", "budgeted", "policy", "replayable", "standbys", "timer", "tried",
        "try_deadline", "unsent_only",
    )  # fmt: skip

    def __init__(self, policy: RetryPolicy, unsent_only: bool = False) -> None:
        self.policy = policy
        self.unsent_only = unsent_only  # a method that is not idempotent: only a failed connect
        self.attempt = 1  # the attempt under way (1: the first, not a retry)
        self.tried: list[Host] = []
        self.body: list[bytes] = []  # the request body so far, to send again
        self.body_bytes = 0
        self.replayable = True
        self.budgeted = False  # holds one of the cluster's retries in flight (during its back-off)
        self.timer: asyncio.Handle | None = None  # the back-off before the next attempt
        self.try_deadline = 0.0  # when the attempt under way times out (0: no per-try timeout running)
        self.standbys: list[Standby] = []  # earlier attempts still running beside a hedged one

    def keep(self, data: bytes) -> None:
        """Keep a piece of the request body for a replay, unless the body outgrew the buffer."""
        if not self.replayable:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self.policy.buffer_limit:
            self.replayable = False
            self.body = []
        else:
            self.body.append(data)

    def covers(self, kind: str, status: int = 0, grpc_status: int | None = None) -> bool:
        """Whether retry_on asks for a retry after this failure."""
        on = self.policy.retry_on
        if self.unsent_only and kind != CONNECT:
            return False
        if kind == STATUS:
            if status >= 500 and "5xx" in on:
                return True
            if status in _GATEWAY and "gateway-error" in on:
                return True
            if status == 409 and "retriable-4xx" in on:
                return True
            if "retriable-status-codes" in on and status in self.policy.retriable_status_codes:
                return True
            return grpc_status is not None and any(_GRPC.get(c) == grpc_status for c in on)
        if kind == CONNECT:
            return any(c in _CONNECT for c in on)
        return any(c in _NO_RESPONSE for c in on)  # RESET, TIMEOUT

    def delay(self, retry_after: float | None) -> float:
        """The wait before the next attempt: the upstream's Retry-After if it gave one, else the
        jittered back-off for this retry (the first retry waits at most `backoff_base`)."""
        if retry_after is not None:
            return retry_after
        p = self.policy
        ceiling = min(p.backoff_max, p.backoff_base * 2 ** (self.attempt - 2))
        return random.uniform(0, ceiling)

    def next_host(self, cluster: ClusterRuntime) -> Host | None:
        """A host for the next attempt: one not tried yet when the cluster has one."""
        first = cluster.pick()
        host = first
        for _ in range(len(cluster.hosts)):
            if host is None or host not in self.tried:
                return host
            host = cluster.pick()
        return first


def retry_after_seconds(value: bytes | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: delay-seconds, or an HTTP date (RFC 9110 10.2.3) turned into
    the time left until it (`now`: wall-clock seconds, for tests). None when it is absent, malformed,
    or asks for more than a minute (the request then fails rather than wait that long)."""
    if value is None:
        return None
    text = value.strip().decode("latin-1")
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    return seconds if seconds <= _MAX_RETRY_AFTER else None


class Standby:
    """An attempt kept running after its per-try timeout while a hedged one goes out beside it (Envoy's
    hedge_on_per_try_timeout). Its connection reports here; the first good answer of any attempt
    wins. Once promoted (it answered first) it only passes the rest of the response through."""

    __slots__ = ("conn", "exchange", "host", "promoted")

    def __init__(self, exchange: Hedging, conn: UpstreamStream, host: Host) -> None:
        self.exchange = exchange
        self.conn = conn
        self.host = host
        self.promoted = False

    def up_head(self, status: int, fields: bytes, keep_alive: bool) -> None:
        if self.promoted:
            self.exchange.up_head(status, fields, keep_alive)
        else:
            self.exchange.standby_head(self, status, fields, keep_alive)

    def up_body(self, data: bytes) -> None:
        if self.promoted:
            self.exchange.up_body(data)

    def up_end(self, keep_alive: bool) -> None:
        if self.promoted:
            self.exchange.up_end(keep_alive)

    def up_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.promoted:
            self.exchange.up_trailers(trailers)

    def up_failed(self, exc: BaseException | None, protocol_error: bool) -> None:
        if self.promoted:
            self.exchange.up_failed(exc, protocol_error)
        else:
            self.exchange.standby_failed(self)

    def up_pause_writing(self) -> None:
        if self.promoted:
            self.exchange.up_pause_writing()

    def up_resume_writing(self) -> None:
        if self.promoted:
            self.exchange.up_resume_writing()

    def flush(self) -> None:
        self.exchange.flush()


class Hedging(UpstreamSink, Protocol):
    """What a Standby needs of its exchange: what any upstream connection needs, and two more."""

    def standby_head(self, standby: Standby, status: int, fields: bytes, keep_alive: bool) -> None: ...
    def standby_failed(self, standby: Standby) -> None: ...
