"""RetryState's decisions: which failures retry_on covers, the back-off, Retry-After, replay limits,
methods that are not retried."""

from __future__ import annotations

import email.utils

import pytest

from meshpy.model.routes import RetryPolicy
from meshpy.stack.retry import CONNECT, RESET, STATUS, TIMEOUT, RetryState, retry_after_seconds, retry_state


def state(*on: str, **kw: object) -> RetryState:
    rs = retry_state(RetryPolicy(retry_on=on, **kw), b"GET")  # type: ignore[arg-type]
    assert rs is not None
    return rs


def test_conditions() -> None:
    assert state("5xx").covers(STATUS, 500) and state("5xx").covers(STATUS, 599)
    assert not state("5xx").covers(STATUS, 429)
    assert state("gateway-error").covers(STATUS, 503) and not state("gateway-error").covers(STATUS, 500)
    assert state("retriable-4xx").covers(STATUS, 409) and not state("retriable-4xx").covers(STATUS, 404)
    codes = state("retriable-status-codes", retriable_status_codes=(429,))
    assert codes.covers(STATUS, 429) and not codes.covers(STATUS, 503)
    assert state("unavailable").covers(STATUS, 200, grpc_status=14)
    assert not state("unavailable").covers(STATUS, 200, grpc_status=13)
    for kind in (RESET, TIMEOUT):
        assert state("5xx").covers(kind) and state("reset").covers(kind)
        assert not state("connect-failure").covers(kind)
    assert state("connect-failure").covers(CONNECT) and state("gateway-error").covers(CONNECT)
    assert not state("retriable-4xx").covers(CONNECT)


def test_methods_and_empty_policies() -> None:
    # A POST: only a failed connect (nothing sent) is retried, unless the policy takes every failure.
    post = retry_state(RetryPolicy(retry_on=("5xx",)), b"POST")
    assert post is not None and post.covers(CONNECT)
    assert not post.covers(RESET) and not post.covers(TIMEOUT) and not post.covers(STATUS, 503)
    assert retry_state(RetryPolicy(retry_on=("retriable-4xx",)), b"POST") is None  # no connect condition
    every = retry_state(RetryPolicy(retry_on=("5xx",), retry_non_idempotent=True), b"POST")
    assert every is not None and every.covers(STATUS, 503)
    assert retry_state(RetryPolicy(retry_on=()), b"GET") is None
    assert retry_state(None, b"GET") is None


def test_backoff_is_jittered_and_capped() -> None:
    rs = state("5xx", backoff_base=0.1, backoff_max=0.3)
    for attempt, ceiling in ((2, 0.1), (3, 0.2), (4, 0.3), (9, 0.3)):
        rs.attempt = attempt
        delays = [rs.delay(None) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays) and max(delays) > ceiling / 2
    assert rs.delay(1.5) == 1.5  # Retry-After wins


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after_seconds(b"3") == 3.0
    assert retry_after_seconds(b" 0 ") == 0.0
    assert retry_after_seconds(b"600") is None  # more than a minute: not waited for
    assert retry_after_seconds(b"soon") is None and retry_after_seconds(None) is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 5, usegmt=True).encode()
    assert retry_after_seconds(date, now=now) == pytest.approx(5.0)
    past = email.utils.formatdate(now - 5, usegmt=True).encode()
    assert retry_after_seconds(past, now=now) == 0.0


def test_replay_buffer_limit() -> None:
    rs = state("5xx", buffer_limit=10)
    rs.keep(b"12345")
    rs.keep(b"67890")
    assert rs.replayable and rs.body == [b"12345", b"67890"]
    rs.keep(b"x")
    assert not rs.replayable and rs.body == []
