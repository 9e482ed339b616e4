"""Connection limits and overload protection end to end, on real sockets: a listener's and the proxy's
connection limits, per source address, connection lifetime and requests per connection, header names
with underscores, and the memory actions (shed, keep-alive off, listeners paused and resumed)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from h2peer import H2Peer, request_headers
from kit import DemoUpstream, Proxy, eventually, free_port, http, is_closed, request_bytes


def config(admin: int, port: int, demo: int, listener: str = "", top: str = "") -> str:
    return f"""
admin: 127.0.0.1:{admin}
{top}
listeners:
- name: web
  address: 127.0.0.1:{port}
{listener}
  routes: [{{match: /, cluster: demo}}]
clusters:
  demo: {{endpoints: [127.0.0.1:{demo}]}}
"""


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A client connection, closed after the test."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    _OPEN.append(s)
    return s


def served(s: socket.socket, headers: list[tuple[str, str]] | None = None) -> int:
    """The status of one request on `s`, or 0 when the proxy closed the connection without one."""
    try:
        return http(0, path="/", headers=headers, sock=s).status
    except (OSError, ValueError, AssertionError):
        return 0


@pytest.fixture
def proxy(request: pytest.FixtureRequest, ports: tuple[int, int], demo: DemoUpstream) -> Iterator[Proxy]:
    admin, port = ports
    listener, top = request.param
    p = Proxy(config(admin, port, demo.port, listener, top), admin).start()
    try:
        yield p
    finally:
        p.stop()


LISTENER_LIMIT = ("  max_connections: 3", "")


@pytest.mark.parametrize("proxy", [LISTENER_LIMIT], indirect=True)
def test_a_listener_takes_max_connections_and_closes_the_rest(proxy: Proxy, ports: tuple[int, int]) -> None:
    port = ports[1]
    held = [connect(port) for _ in range(3)]
    assert all(served(s) == 200 for s in held)
    extra = connect(port)
    assert served(extra) == 0  # closed at accept, no answer
    assert proxy.metric("meshpy_downstream_cx_overflow_total", listener="web") == 1
    held.pop().close()
    eventually(lambda: proxy.metric("meshpy_downstream_cx_active", listener="web") == 2, "a place freed")
    assert served(connect(port)) == 200
    assert all(served(s) == 200 for s in held)  # the connections inside were never touched


@pytest.mark.parametrize("proxy", [("  max_connections_per_source_ip: 2", "")], indirect=True)
def test_one_source_address_cannot_take_the_listener(proxy: Proxy, ports: tuple[int, int]) -> None:
    port = ports[1]
    mine = [connect(port) for _ in range(2)]
    assert all(served(s) == 200 for s in mine)
    assert served(connect(port)) == 0
    assert served(connect(port, "127.0.0.2")) == 200  # another client is still served
    assert proxy.metric("meshpy_downstream_cx_source_overflow_total", listener="web") == 1


@pytest.mark.parametrize("proxy", [("", "overload: {max_connections: 2}")], indirect=True)
def test_the_proxy_wide_limit(proxy: Proxy, ports: tuple[int, int]) -> None:
    held = [connect(ports[1]) for _ in range(2)]
    assert all(served(s) == 200 for s in held)
    assert served(connect(ports[1])) == 0
    assert proxy.metric("meshpy_downstream_cx_overload_rejected_total", listener="web") == 1
    assert proxy.metric("meshpy_overload_cx_rejected_total") == 1
    assert proxy.metric("meshpy_overload_downstream_cx_active") == 2


@pytest.mark.parametrize("proxy", [("  max_requests_per_connection: 2\n  max_connection_duration: 1s", "")],
                         indirect=True)
def test_requests_per_connection_and_lifetime(proxy: Proxy, ports: tuple[int, int]) -> None:
    s = connect(ports[1])
    first = http(0, sock=s)
    assert first.status == 200 and first.header("connection") is None
    second = http(0, sock=s)
    assert second.status == 200 and second.header("connection") == "close"
    assert is_closed(s)
    assert proxy.metric("meshpy_downstream_cx_max_requests_reached_total", listener="web") == 1
    idle = connect(ports[1])
    assert http(0, sock=idle).status == 200
    t0 = time.monotonic()
    assert is_closed(idle, timeout=3)  # an idle connection goes at its max duration
    assert 0.5 < time.monotonic() - t0 < 2.5
    assert proxy.metric("meshpy_downstream_cx_max_duration_reached_total", listener="web") == 1


@pytest.mark.parametrize("proxy", [("  headers_with_underscores: reject", "")], indirect=True)
def test_underscore_headers_rejected(proxy: Proxy, ports: tuple[int, int]) -> None:
    assert http(ports[1], headers=[("x_user", "admin")]).status == 400
    assert http(ports[1], headers=[("x-user", "admin")]).status == 200
    assert proxy.metric("meshpy_downstream_rq_rejected_underscore_headers_total", listener="web") == 1


@pytest.mark.parametrize("proxy", [("  headers_with_underscores: drop", "")], indirect=True)
def test_underscore_headers_dropped(proxy: Proxy, ports: tuple[int, int]) -> None:
    r = http(ports[1], headers=[("x_user", "admin"), ("x-user", "guest")])
    seen = json.loads(r.body)["headers"]
    assert r.status == 200 and "x_user" not in seen and seen["x-user"] == "guest"
    assert proxy.metric("meshpy_downstream_dropped_underscore_headers_total", listener="web") == 1


# A memory limit far under any Python process's RSS: the actions are on from the first reading.
SQUEEZED = "overload: {{max_memory: 1MiB, refresh_interval: 0.1s, actions: {{{}: 0.5}}}}"


@pytest.mark.parametrize("proxy", [("", SQUEEZED.format("shed_requests"))], indirect=True)
def test_shed_requests_under_memory_pressure(proxy: Proxy, ports: tuple[int, int]) -> None:
    eventually(lambda: proxy.metric("meshpy_overload_action_active", action="shed_requests") == 1, "on")
    r = http(ports[1])
    assert (r.status, r.body) == (503, b"overloaded")
    assert proxy.metric("meshpy_downstream_rq_overload_total", listener="web") >= 1
    assert "overload: shed_requests on" in proxy.logs()
    assert proxy.admin("/ready")[0] == 200  # the admin still answers


@pytest.mark.parametrize("proxy", [("", SQUEEZED.format("disable_keepalive"))], indirect=True)
def test_keep_alive_off_under_memory_pressure(proxy: Proxy, ports: tuple[int, int]) -> None:
    eventually(lambda: proxy.metric("meshpy_overload_action_active", action="disable_keepalive") == 1, "on")
    s = connect(ports[1])
    r = http(0, sock=s)
    assert r.status == 200 and r.header("connection") == "close"
    assert is_closed(s)


@pytest.mark.parametrize("proxy", [("", SQUEEZED.format("stop_accepting_connections"))], indirect=True)
def test_listeners_pause_and_resume(proxy: Proxy, ports: tuple[int, int], demo: DemoUpstream) -> None:
    """Paused, a client waits in the backlog (connect succeeds, no answer); a config with room for
    the memory resumes the listener, and the waiting request is answered."""
    admin, port = ports
    eventually(lambda: "listeners stop accepting" in proxy.logs(), "paused")
    waiting = connect(port)
    waiting.sendall(request_bytes("GET", "/", "example.com", None, None, "1.1"))
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        waiting.recv(1)
    proxy.rewrite(config(admin, port, demo.port, "", "overload: {max_memory: 64GiB, actions: "
                                                          "{stop_accepting_connections: 0.9}}"))
    waiting.settimeout(5)
    assert waiting.recv(12) == b"HTTP/1.1 200"
    assert "overload: listeners accept again" in proxy.logs()


@pytest.mark.parametrize("proxy", [("  max_requests_per_connection: 2\n  max_connection_duration: 1s", "")],
                         indirect=True)
def test_http2_goaway_at_the_limits(proxy: Proxy, ports: tuple[int, int]) -> None:
    """HTTP/2: the last request a connection may take is answered after a GOAWAY naming it; a connection
    at its max duration gets a GOAWAY too, and streams open then still finish."""
    port = ports[1]
    peer = H2Peer(port)
    try:
        first = peer.request(request_headers(port))
        assert peer.response(first)[0] == 200
        assert peer.goaway() is None
        second = peer.request(request_headers(port))
        assert peer.response(second)[0] == 200
        ended = peer.goaway()
        assert ended is not None and ended.last_stream_id == second
    finally:
        peer.close()
    assert proxy.metric("meshpy_downstream_cx_max_requests_reached_total", listener="web") == 1
    aging = H2Peer(port)
    try:
        sid = aging.request(request_headers(port, "/delay/1500"))
        assert aging.wait(lambda events: aging.goaway() is not None, 3)
        assert aging.response(sid)[0] == 200  # opened before the GOAWAY: finished
    finally:
        aging.close()
    assert proxy.metric("meshpy_downstream_cx_max_duration_reached_total", listener="web") == 1


@pytest.mark.parametrize("proxy", [("  max_connection_duration: 1s", "")], indirect=True)
def test_a_busy_connection_closes_after_its_answer(proxy: Proxy, ports: tuple[int, int]) -> None:
    s = connect(ports[1])
    slow = http(0, path="/delay/1600", sock=s)  # in flight when the second is up
    assert slow.status == 200
    t0 = time.monotonic()
    assert is_closed(s, timeout=2)
    assert time.monotonic() - t0 < 1.0
    assert proxy.metric("meshpy_downstream_cx_max_duration_reached_total", listener="web") == 1
