"""The rate limit service protocol as the filter speaks it: the ShouldRateLimit request the descriptors
make, the answer read (an error for anything but a readable OK gRPC answer), and the X-RateLimit-* and
Retry-After headers made of the statuses (the differential test checks them against Envoy)."""

from __future__ import annotations

from typing import Any

from envoy.service.ratelimit.v3 import rls_pb2

from meshpy.extensions import ratelimit_calls as calls
from meshpy.upstream.side_calls import SideResponse

Response = rls_pb2.RateLimitResponse


def framed(msg: Any) -> bytes:
    body: bytes = msg.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def status(code: int, limit: int, unit: int, remaining: int, reset: int, name: str = "",
           multiplier: int | None = None) -> Any:
    s = Response.DescriptorStatus(code=code, limit_remaining=remaining)
    s.current_limit.requests_per_unit, s.current_limit.unit, s.current_limit.name = limit, unit, name
    if multiplier is not None:
        s.current_limit.unit_multiplier.value = multiplier
    s.duration_until_reset.seconds = reset
    return s


def test_the_request_carries_the_domain_the_entries_the_limit_and_the_hits() -> None:
    msg = rls_pb2.RateLimitRequest()
    msg.ParseFromString(calls.request("web", [([("a", "1"), ("b", "2")], (7, 2), None), ([], None, 0)]))
    assert msg.domain == "web" and msg.hits_addend == 0
    first, second = msg.descriptors
    assert [(e.key, e.value) for e in first.entries] == [("a", "1"), ("b", "2")]
    assert (first.limit.requests_per_unit, first.limit.unit) == (7, 2) and not first.HasField("hits_addend")
    assert not second.entries and second.HasField("hits_addend") and second.hits_addend.value == 0


def test_the_answer_over_the_limit_and_otherwise() -> None:
    over = Response(overall_code=Response.OVER_LIMIT, raw_body=b"slow down")
    over.response_headers_to_add.add(key="X-Said", value="v")
    over.request_headers_to_add.add(key="x-up", value="u")
    ok_trailers = [(b"grpc-status", b"0")]
    got = calls.answer(SideResponse(200, [(b"content-type", b"application/grpc")], framed(over), ok_trailers))
    assert (got.kind, got.body, got.response_headers, got.request_headers) == (
        calls.OVER_LIMIT, b"slow down", [("x-said", "v")], [("x-up", "u")])
    unknown = Response(overall_code=Response.UNKNOWN)
    assert calls.answer(SideResponse(200, [], framed(unknown), ok_trailers)).kind == calls.OK


def test_a_failed_call_is_an_error() -> None:
    body = framed(Response(overall_code=Response.OK))
    for response in (SideResponse(200, [], body, [(b"grpc-status", b"14")]),  # a gRPC error
                     SideResponse(503, [], body, [(b"grpc-status", b"0")]),  # not HTTP 200
                     SideResponse(200, [(b"grpc-status", b"0")], b""),  # trailers-only, no message
                     SideResponse(200, [], b"\x00\x00\x00\x00\x05junk!", [(b"grpc-status", b"0")])):
        assert calls.answer(response) is calls.ERROR_ANSWER


def test_the_x_ratelimit_headers_take_the_fewest_left_and_list_every_window() -> None:
    statuses = [status(Response.OK, 100, Response.RateLimit.MINUTE, 40, 10, "a"),
                status(Response.OK, 5, Response.RateLimit.HOUR, 2, 99, multiplier=3),
                status(Response.OK, 9, Response.RateLimit.UNKNOWN, 1, 5),
                Response.DescriptorStatus(code=Response.OK)]  # no current_limit: not counted
    assert calls.rate_limit_headers(statuses, frozenset()) == [
        ("x-ratelimit-limit", '9, 100;w=60;name="a", 5;w=10800'),  # (the unknown unit: no window)
        ("x-ratelimit-remaining", "1"), ("x-ratelimit-reset", "5")]
    assert calls.rate_limit_headers(statuses, frozenset({1, 2})) == [
        ("x-ratelimit-limit", '100, 100;w=60;name="a"'), ("x-ratelimit-remaining", "40"),
        ("x-ratelimit-reset", "10")]
    assert calls.rate_limit_headers(statuses[3:], frozenset()) == []


def test_retry_after_is_the_longest_wait_of_the_over_limit_statuses() -> None:
    statuses = [status(Response.OVER_LIMIT, 1, Response.RateLimit.SECOND, 0, 0),
                status(Response.OK, 1, Response.RateLimit.SECOND, 0, 500),
                status(Response.OVER_LIMIT, 1, Response.RateLimit.SECOND, 0, 30)]
    assert calls.retry_after(calls.Answer(calls.OVER_LIMIT, statuses)) == "30"
    assert calls.retry_after(calls.Answer(calls.OVER_LIMIT, statuses[:1])) == "1"  # at least 1
    assert calls.retry_after(calls.Answer(calls.OVER_LIMIT, statuses[1:2])) is None
    said = calls.Answer(calls.OVER_LIMIT, statuses, [("retry-after", "7")])
    assert calls.retry_after(said) is None  # the service's own stays
