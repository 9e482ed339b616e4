"""The rate limit service's side of Envoy's global rate limit: the ShouldRateLimit call of
envoy.service.ratelimit.v3.RateLimitService (gRPC) the descriptors make, and its answer as Envoy 1.40
reads it.

- The request: the domain, each descriptor's entries, with its fixed limit override and its
  hits_addend where the entry gives them; the request's own hits_addend is 0 (Envoy's, unless a
  filter state says otherwise, which meshpy has none of).
- The answer: OVER_LIMIT is over the limit; any other overall code (OK, UNKNOWN) lets the request
  through; a call that fails (transport, timeout, a gRPC status other than OK, an unreadable answer)
  is an error.
- X-RateLimit-* (draft 03): of the statuses that have a current_limit, leaving out those of
  descriptors whose x_ratelimit_option is OFF, the one with the fewest requests left gives
  x-ratelimit-remaining and x-ratelimit-reset, and its limit opens x-ratelimit-limit, followed by each
  status's `<limit>;w=<window seconds>[;name="<name>"]` (the unit times its unit_multiplier; a status of
  an unknown unit has no window and is left out of the list).
- Retry-After (enable_retry_after_header): the largest duration_until_reset of the over-limit
  statuses, at least 1 second; none when the service said one itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError

from meshpy.upstream.side_calls import SideResponse

PATH = b"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OK, OVER_LIMIT, ERROR = "ok", "over_limit", "error"
Descriptor = tuple[list[tuple[str, str]], tuple[int, int] | None, int | None]  # entries, limit, hits_addend

_Response = rls_pb2.RateLimitResponse
_SECONDS = {_Response.RateLimit.SECOND: 1, _Response.RateLimit.MINUTE: 60, _Response.RateLimit.HOUR: 3600,
            _Response.RateLimit.DAY: 86400, _Response.RateLimit.WEEK: 7 * 86400,
            _Response.RateLimit.MONTH: 30 * 86400, _Response.RateLimit.YEAR: 365 * 86400}


@dataclass(slots=True)
class Answer:
    kind: str
    statuses: list[Any] = field(default_factory=list)  # RateLimitResponse.DescriptorStatus, in order
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


ERROR_ANSWER = Answer(ERROR)


def request(domain: str, descriptors: list[Descriptor]) -> bytes:
    """The call's message (SideClient.grpc frames it)."""
    msg = rls_pb2.RateLimitRequest(domain=domain)
    for entries, limit, hits in descriptors:
        d = msg.descriptors.add()
        for key, value in entries:
            d.entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value))
        if limit is not None:
            d.limit.requests_per_unit, d.limit.unit = limit
        if hits is not None:
            d.hits_addend.value = hits
    body: bytes = msg.SerializeToString()
    return body


def answer(response: SideResponse) -> Answer:
    status = next((v for k, v in (*response.trailers, *response.headers) if k == b"grpc-status"), None)
    body = response.body
    if response.status != 200 or status != b"0" or len(body) < 5 or body[0] != 0:
        return ERROR_ANSWER
    msg = _Response()
    try:
        msg.ParseFromString(body[5:5 + int.from_bytes(body[1:5], "big")])
    except DecodeError:
        return ERROR_ANSWER
    return Answer(OVER_LIMIT if msg.overall_code == _Response.OVER_LIMIT else OK, list(msg.statuses),
                  [(h.key.lower(), h.value) for h in msg.response_headers_to_add],
                  [(h.key.lower(), h.value) for h in msg.request_headers_to_add], msg.raw_body)


def rate_limit_headers(statuses: list[Any], off: frozenset[int]) -> list[tuple[str, str]]:
    """X-RateLimit-*; `off`: the indexes of the descriptors whose statuses are left out."""
    fewest = None
    policy = ""
    for i, s in enumerate(statuses):
        if i in off or not s.HasField("current_limit"):
            continue
        if fewest is None or s.limit_remaining < fewest.limit_remaining:
            fewest = s
        limit = s.current_limit
        multiplier = limit.unit_multiplier.value if limit.HasField("unit_multiplier") else 1
        window = _SECONDS.get(limit.unit, 0) * max(multiplier, 1)
        if window:
            policy += f", {limit.requests_per_unit};w={window}"
            if limit.name:
                policy += f';name="{limit.name}"'
    if fewest is None:
        return []
    return [("x-ratelimit-limit", f"{fewest.current_limit.requests_per_unit}{policy}"),
            ("x-ratelimit-remaining", str(fewest.limit_remaining)),
            ("x-ratelimit-reset", str(fewest.duration_until_reset.seconds))]


def retry_after(answer: Answer) -> str | None:
    if any(name == "retry-after" for name, _ in answer.response_headers):
        return None
    resets = [s.duration_until_reset.seconds for s in answer.statuses if s.code == _Response.OVER_LIMIT]
    return str(max(1, *resets)) if resets else None


