"""The HTTP/2 header checks and translations (meshpy.codec.http2) and the gRPC helpers
(meshpy.codec.grpc), without sockets."""

from __future__ import annotations

import pytest

from meshpy.codec import grpc
from meshpy.codec.http2 import Malformed, read_request, read_trailers, response_fields
from meshpy.transport.upstream_h2_stream import h2_request_headers

BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p?q=1"), (b":authority", b"a.example")]


def test_request_head_as_http1_sees_it() -> None:
    head = read_request([*BASE, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2"),
                         (b"host", b"ignored.example")])
    assert (head.method, head.path, head.authority) == (b"GET", b"/p?q=1", b"a.example")
    # :authority wins over Host; cookie crumbs are joined (RFC 9113 8.2.3 and 8.3.1).
    assert head.fields == [(b"accept", b"*/*"), (b"host", b"a.example"), (b"cookie", b"a=1; b=2")]


def test_host_stands_in_for_a_missing_authority() -> None:
    head = read_request([*BASE[:3], (b"host", b"h.example")])
    assert head.authority == b"h.example" and (b"host", b"h.example") in head.fields


@pytest.mark.parametrize("headers", [
    BASE[1:],  # no :method
    [BASE[0], BASE[2]],  # no :scheme
    [*BASE, (b":method", b"POST")],  # repeated
    [*BASE, (b"te", b"gzip")],  # te other than trailers
    [*BASE, (b"transfer-encoding", b"chunked")],
    [*BASE, (b"X-Upper", b"1")],
    [*BASE, (b"x", b"a\x00b")],
    [(b":method", b"CONNECT"), (b":path", b"/"), (b":authority", b"a:443")],  # CONNECT with a path
])
def test_malformed_requests(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Malformed):
        read_request(headers)


def test_trailers_and_response_fields() -> None:
    assert read_trailers([(b"grpc-status", b"0")]) == [(b"grpc-status", b"0")]
    with pytest.raises(Malformed):
        read_trailers([(b":status", b"200")])
    fields = response_fields(204, [(b"connection", b"close"), (b"x", b"1")])
    assert fields == [(b":status", b"204"), (b"x", b"1")]


def test_upstream_request_from_the_http1_head() -> None:
    fields = [(b"host", b"up"), (b"te", b"trailers"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")]
    assert h2_request_headers(b"POST", b"/svc/M", fields) == [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/M"), (b":authority", b"up"),
        (b"te", b"trailers"), (b"x-a", b"1")]


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1S", 1.0), (b"250m", 0.25), (b"3M", 180.0), (b"2H", 7200.0), (b"100u", 1e-4), (b"5n", 5e-9)])
def test_grpc_timeout(value: bytes, seconds: float) -> None:
    assert grpc.timeout_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"123456789S", b"1x", b"-1S", b"1.5S"])
def test_bad_grpc_timeout(value: bytes) -> None:
    assert grpc.timeout_seconds(value) is None


def test_grpc_status_of_local_answers() -> None:
    assert grpc.status_for(404, "NR") == grpc.UNIMPLEMENTED
    assert grpc.status_for(503, "UF") == grpc.UNAVAILABLE
    assert grpc.status_for(503, "UO") == grpc.UNAVAILABLE
    assert grpc.status_for(429, "RL") == grpc.UNAVAILABLE
    assert grpc.status_for(504, "UT") == grpc.DEADLINE_EXCEEDED
    assert grpc.status_for(418, "FI") == grpc.UNKNOWN
    assert grpc.percent_encode(b"100% done\n") == b"100%25 done"
