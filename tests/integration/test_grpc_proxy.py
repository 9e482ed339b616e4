"""gRPC through a real meshpy process, with a real grpcio client and server: every call shape, big
messages, deadlines, cancellation, statuses passed through, and errors made by the proxy as gRPC
statuses. Also HTTP/1.1 in and HTTP/2 out, with a second meshpy listener as the HTTP/2 upstream."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc_echo
import pytest
from kit import Proxy, RawUpstream, eventually, free_port, http

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: grpc
    address: 127.0.0.1:{port}
    access_log: stdout
    routes:
      - match: /echo.Echo/Flaky
        cluster: echo
        retry: {{retry_on: [unavailable], num_retries: 2}}
      - match: /echo.Echo/
        cluster: echo
        timeout: 0s
      - match: /down.Down/
        cluster: nowhere
  - name: plain
    address: 127.0.0.1:{plain}
    routes:
      - match: /
        cluster: h2-loop
  - name: h2-only
    address: 127.0.0.1:{h2only}
    protocol: http2
    routes:
      - match: /
        direct: {{status: 200, body: "over h2"}}
clusters:
  - name: echo
    protocol: http2
    endpoints: [127.0.0.1:{upstream}]
  - name: nowhere
    protocol: http2
    endpoints: [127.0.0.1:{closed}]
  - name: h2-loop
    protocol: http2
    endpoints: [127.0.0.1:{h2only}]
"""

BIG = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Proxy, int, int]]:
    up = free_port()
    server = grpc_echo.start(up)
    port, admin, plain, h2only = free_port(), free_port(), free_port(), free_port()
    p = Proxy(CONFIG.format(admin=admin, port=port, plain=plain, h2only=h2only, upstream=up,
                            closed=free_port()), admin).start()
    yield p, port, plain
    p.stop()
    server.stop(0)


@pytest.fixture
def channel(env: tuple[Proxy, int, int]) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{env[1]}", options=BIG)
    yield ch
    ch.close()


def test_every_call_shape(channel: grpc.Channel) -> None:
    reply, call = channel.unary_unary("/echo.Echo/Unary").with_call(b"hello", timeout=10)
    assert reply == b"hello"
    assert ("x-served-by", "grpc-echo") in tuple(call.trailing_metadata() or ())  # trailers pass
    assert list(channel.unary_stream("/echo.Echo/ServerStream")(b"5", timeout=10)) == \
        [b"part-%d" % i for i in range(5)]
    parts = [b"a" * 100, b"b" * 2000, b"c"]
    assert channel.stream_unary("/echo.Echo/ClientStream")(iter(parts), timeout=10) == \
        b"3 messages, 2101 bytes"
    assert list(channel.stream_stream("/echo.Echo/Bidi")(iter([b"x", b"yz"]), timeout=10)) == [b"X", b"YZ"]


def test_four_mib_messages_both_ways(channel: grpc.Channel) -> None:
    big = bytes(range(256)) * (4 * 4096)
    assert channel.unary_unary("/echo.Echo/Unary")(big, timeout=30) == big


@pytest.mark.parametrize("code", ["NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"])
def test_upstream_statuses_pass_through(channel: grpc.Channel, code: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/echo.Echo/Fail")(f"{code}:said the server".encode(), timeout=10)
    assert caught.value.code() == grpc.StatusCode[code]
    assert caught.value.details() == "said the server"


def test_deadline_exceeded_by_the_proxy(env: tuple[Proxy, int, int], channel: grpc.Channel) -> None:
    p = env[0]
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/echo.Echo/Sleep")(b"3000", timeout=0.4)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The proxy timed the call out from grpc-timeout (the stream's duration: no flag, as Envoy), at
    # about the same time as the client (which may cancel first: DC).
    eventually(lambda: '"path":"/echo.Echo/Sleep"' in p.logs(), "the call is logged")
    line = [x for x in p.logs().splitlines() if '"path":"/echo.Echo/Sleep"' in x][-1]
    assert '"response_flags":"-"' in line or '"response_flags":"DC"' in line, line


def test_cancellation_reaches_the_proxy(env: tuple[Proxy, int, int], channel: grpc.Channel) -> None:
    p = env[0]
    future = channel.unary_unary("/echo.Echo/Sleep").future(b"2000", timeout=10)
    eventually(lambda: p.metric("meshpy_upstream_rq_active", cluster="echo") == 1, "the call is upstream")
    future.cancel()
    eventually(lambda: p.metric("meshpy_upstream_rq_active", cluster="echo") == 0, "the upstream stream ends")
    with pytest.raises(grpc.FutureCancelledError):
        future.result()


def test_proxy_errors_are_grpc_statuses(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/no.Such/Method")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # no route
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/down.Down/Call")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # connect failure


def test_http1_in_http2_out(env: tuple[Proxy, int, int]) -> None:
    p, _, plain = env
    r = http(plain, path="/anything")
    assert (r.status, r.body) == (200, b"over h2")
    assert p.metric("meshpy_upstream_cx_active", cluster="h2-loop") == 1
    for _ in range(20):  # one multiplexed connection serves them all
        assert http(plain, path="/again").status == 200
    assert p.metric("meshpy_upstream_cx_total", cluster="h2-loop") == 1


def test_retry_on_grpc_status(env: tuple[Proxy, int, int], channel: grpc.Channel) -> None:
    p = env[0]
    before = p.metric("meshpy_upstream_rq_retry_total", cluster="echo")
    for i in range(3):  # each first try fails UNAVAILABLE; the retry succeeds
        assert channel.unary_unary("/echo.Echo/Flaky")(b"key-%d" % i, timeout=10) == b"at last"
    assert p.metric("meshpy_upstream_rq_retry_total", cluster="echo") == before + 3


def test_grpc_metrics_by_method_and_status(env: tuple[Proxy, int, int], channel: grpc.Channel) -> None:
    p = env[0]

    def calls(method: str, status: int, service: str = "echo.Echo") -> float:
        return p.metric("meshpy_grpc_requests_total", listener="grpc", grpc_service=service,
                        grpc_method=method, grpc_status=str(status))

    before_ok, before_nf = calls("Unary", 0), calls("Fail", 5)
    for _ in range(3):
        channel.unary_unary("/echo.Echo/Unary")(b"x", timeout=10)
    with pytest.raises(grpc.RpcError):
        channel.unary_unary("/echo.Echo/Fail")(b"NOT_FOUND:no", timeout=10)
    with pytest.raises(grpc.RpcError):
        channel.unary_unary("/no.Such/Thing")(b"x", timeout=10)
    eventually(lambda: calls("Unary", 0) == before_ok + 3, "three OK calls counted")
    assert calls("Fail", 5) == before_nf + 1
    assert calls("Thing", 12, "no.Such") >= 1  # answered by meshpy: UNIMPLEMENTED
    assert p.metric("meshpy_grpc_request_duration_seconds_count", listener="grpc", grpc_service="echo.Echo",
                    grpc_method="Unary") >= 3


HC_CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: grpc
    address: 127.0.0.1:{port}
    routes:
      - match: /
        cluster: echo
clusters:
  - name: echo
    protocol: http2
    endpoints: [127.0.0.1:{a}, 127.0.0.1:{b}]
    health_check: {{type: grpc, service: echo.Echo, interval: 200ms, timeout: 1s, unhealthy_threshold: 1,
                   healthy_threshold: 1}}
"""


def test_grpc_health_check() -> None:
    a, b = free_port(), free_port()
    health_b: dict[str, int] = {}
    servers = [grpc_echo.start(a), grpc_echo.start(b, health_b)]
    port, admin = free_port(), free_port()
    p = Proxy(HC_CONFIG.format(admin=admin, port=port, a=a, b=b), admin).start()
    try:
        def unhealthy() -> float:
            return p.metric("meshpy_upstream_hosts_unhealthy", cluster="echo")

        eventually(lambda: p.metric("meshpy_upstream_health_transitions_total", cluster="echo",
                                    state="unhealthy") == 0 and unhealthy() == 0, "both serving")
        health_b["echo.Echo"] = 2  # NOT_SERVING
        eventually(lambda: unhealthy() == 1, "the endpoint that is not serving leaves")
        health_b["echo.Echo"] = 1
        eventually(lambda: unhealthy() == 0, "and comes back")
        servers[1].stop(0)
        eventually(lambda: unhealthy() == 1, "a stopped server fails its check")
    finally:
        p.stop()
        for s in servers:
            s.stop(0)


KEEPALIVE_CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /
        cluster: silent
        timeout: 10s
clusters:
  - name: silent
    protocol: http2
    endpoints: [127.0.0.1:{upstream}]
    http2: {{connection_keepalive: {{interval: 200ms, timeout: 300ms}}}}
"""


def test_keepalive_notices_a_silent_upstream() -> None:
    """An upstream that accepts and then says nothing (a peer gone without a FIN looks the same): the
    unanswered keepalive PING closes the connection, and the request fails long before its timeout."""
    def silent(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    with RawUpstream(silent) as up:
        port, admin = free_port(), free_port()
        p = Proxy(KEEPALIVE_CONFIG.format(admin=admin, port=port, upstream=up.port), admin).start()
        try:
            t0 = time.monotonic()
            r = http(port, path="/x")
            assert r.status == 503 and time.monotonic() - t0 < 3
            assert "no PING answer" in p.logs()
        finally:
            p.stop()


GOAWAY_BACK = """
admin: 127.0.0.1:{admin}
drain_time: 3s
listeners:
  - name: back
    address: 127.0.0.1:{port}
    protocol: http2
    routes:
      - match: /slow
        direct: {{status: 200, body: "slow"}}
        fault: {{delay: 700ms}}
      - match: /
        direct: {{status: 200, body: "fast"}}
"""
GOAWAY_FRONT = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: front
    address: 127.0.0.1:{port}
    routes:
      - match: /
        cluster: back
clusters:
  - name: back
    protocol: http2
    endpoints: [127.0.0.1:{back}]
"""


def test_upstream_goaway_lets_streams_finish_and_new_ones_use_a_new_connection() -> None:
    back_port, back_admin, port, admin = free_port(), free_port(), free_port(), free_port()
    back = Proxy(GOAWAY_BACK.format(admin=back_admin, port=back_port), back_admin).start()
    front = Proxy(GOAWAY_FRONT.format(admin=admin, port=port, back=back_port), admin).start()
    try:
        assert http(port, path="/warm").body == b"fast"  # one connection to `back`, kept
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(http, port, "GET", "/slow")
            time.sleep(0.3)  # the slow stream is open on that connection
            back.signal(signal.SIGTERM)  # `back` drains: GOAWAY, and it keeps accepting for 3 s
            eventually(lambda: "GOAWAY" in back.logs() or front.metric(
                "meshpy_upstream_cx_active", cluster="back") >= 1, "the drain began")
            time.sleep(0.1)
            r = http(port, path="/after")
            assert (r.status, r.body) == (200, b"fast")
            assert slow.result().body == b"slow"  # the stream in flight finished on the old connection
        assert front.metric("meshpy_upstream_cx_total", cluster="back") == 2  # the new one went anew
    finally:
        front.stop()
        back.stop()


def test_more_connections_when_the_streams_are_full() -> None:
    """The upstream allows 2 streams per connection: 6 requests at once need 3 connections."""
    back_port, back_admin, port, admin = free_port(), free_port(), free_port(), free_port()
    back = Proxy(GOAWAY_BACK.format(admin=back_admin, port=back_port)
                 .replace("protocol: http2", "protocol: http2\n    http2: {max_concurrent_streams: 2}"),
                 back_admin).start()
    front = Proxy(GOAWAY_FRONT.format(admin=admin, port=port, back=back_port), admin).start()
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _i: http(port, path="/slow"), range(6)))
        assert [r.body for r in results] == [b"slow"] * 6
        assert front.metric("meshpy_upstream_cx_total", cluster="back") == 3
    finally:
        front.stop()
        back.stop()
