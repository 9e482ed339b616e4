"""Sidecar listeners that need no iptables, through a real meshpy process on loopback.

- Protocol sniffing: an http listener with `tcp_fallback` routes HTTP/1.1 and HTTP/2 (prior knowledge)
  and proxies anything else (TLS-looking bytes, an SSH banner, binary) as TCP to its fallback cluster,
  byte for byte; the verdict waits for enough bytes (one at a time still works).
- `original_destination` reached directly (nothing redirected it): an original_dst cluster has no host,
  so HTTP answers 503 UH and TCP closes, and the connection never loops back into meshpy.
- `bind: false`: no socket of its own, and a reload may flip it on and off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2peer import H2Peer, request_headers
from kit import (
    DemoUpstream,
    Proxy,
    RawUpstream,
    eventually,
    free_port,
    http,
    needs_curl,
    read_response,
    request_bytes,
)

from meshpy.codec.http2 import PREFACE


def echo(conn: socket.socket) -> None:
    """Sends back every byte, until the client half-closes; then closes."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


@dataclass
class Env:
    proxy: Proxy
    ports: dict[str, int]
    echo: RawUpstream
    demo: DemoUpstream
    access_log: Path

    def log_lines(self) -> list[dict[str, object]]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]


def config(admin: int, ports: dict[str, int], demo: int, echo_port: int, access_log: Path) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
grace_time: 1s
listeners:
  - name: sniff
    address: 127.0.0.1:{ports["sniff"]}
    access_log: {access_log}
    routes: [{{match: /, cluster: demo}}]
    tcp_fallback: echo
  - name: sniff1
    address: 127.0.0.1:{ports["sniff1"]}
    protocol: http1
    routes: [{{match: /, cluster: demo}}]
    tcp_fallback: {{cluster: echo, idle_timeout: 10s}}
  - name: plain
    address: 127.0.0.1:{ports["plain"]}
    routes: [{{match: /, cluster: demo}}]
  - name: od-http
    address: 127.0.0.1:{ports["od-http"]}
    original_destination: true
    direction: outbound
    routes: [{{match: /, cluster: passthrough}}]
    tcp_fallback: passthrough
  - name: od-tcp
    address: 127.0.0.1:{ports["od-tcp"]}
    protocol: tcp
    original_destination: true
    direction: outbound
    cluster: passthrough
    access_log: {access_log}
  - name: hidden
    address: 127.0.0.1:{ports["hidden"]}
    bind: false
    direction: outbound
    routes: [{{match: /, cluster: demo}}]
clusters:
  demo: 127.0.0.1:{demo}
  echo: 127.0.0.1:{echo_port}
  passthrough: {{type: original_dst}}
"""


NAMES = ("sniff", "sniff1", "plain", "od-http", "od-tcp", "hidden")


@pytest.fixture(scope="module")
def env(loop_name: str, demo: DemoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    access_log = tmp_path_factory.mktemp("sniff") / "access.log"
    with RawUpstream(echo) as up:
        admin = free_port()
        ports = {n: free_port() for n in NAMES}
        p = Proxy(config(admin, ports, demo.port, up.port, access_log), admin, loop=loop_name).start()
        try:
            yield Env(p, ports, up, demo, access_log)
        finally:
            assert p.stop() == 0, p.logs()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_all(s: socket.socket) -> bytes:
    out = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(262144):
            out += chunk
    return bytes(out)


def through(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, and read until the other side closes."""
    with connect(port) as s:
        with contextlib.suppress(OSError):  # a proxy that refuses the connection may be gone already
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def demo_json(body: bytes) -> dict[str, object]:
    return dict(json.loads(body))


# -- sniffing -------------------------------------------------------------------------------------------


def test_http1_requests_are_routed(env: Env) -> None:
    r = http(env.ports["sniff"], path="/sniffed?x=1")
    assert r.status == 200
    assert r.header("x-upstream") == "demo"
    assert demo_json(r.body)["path"] == "/sniffed?x=1"
    # Keep-alive: the second request on the same connection is HTTP too (no sniffing any more).
    with connect(env.ports["sniff"]) as s:
        for path in ("/one", "/two"):
            r = http(0, path=path, sock=s, method="POST", body=b"abc")
            assert r.status == 200
            assert demo_json(r.body)["path"] == path
            assert demo_json(r.body)["body_bytes"] == 3


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_every_method_is_sniffed_as_http(env: Env, method: str) -> None:
    r = http(env.ports["sniff"], method=method, path="/m", body=b"" if method in ("POST", "PUT") else None)
    assert r.status == 200
    assert r.header("x-upstream") == "demo"
    if method != "HEAD":
        assert demo_json(r.body)["method"] == method


def test_http2_prior_knowledge_is_routed(env: Env) -> None:
    peer = H2Peer(env.ports["sniff"])
    try:
        sid = peer.request(request_headers(env.ports["sniff"], "/over-h2"))
        status, headers, body = peer.response(sid)
        assert status == 200
        assert (b"x-upstream", b"demo") in headers
        assert demo_json(body)["path"] == "/over-h2"
    finally:
        peer.close()


@needs_curl
def test_http2_prior_knowledge_with_curl(env: Env) -> None:
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                          f"http://127.0.0.1:{env.ports['sniff']}/curl"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "2 200"
    assert json.loads(body)["path"] == "/curl"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4, id="tls-hello"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n" + b"\x00\x00\x05\xdc\x0a\x14" * 50, id="ssh"),
        pytest.param(b"\x00" + os.urandom(300_000), id="binary"),
        pytest.param(b"get / HTTP/1.1\r\nHost: x\r\n\r\n", id="lowercase-method"),
        pytest.param(b"GETX / HTTP/1.1\r\nHost: x\r\n\r\n", id="GETX"),
        pytest.param(b"PRIX", id="almost-preface"),
        pytest.param(b"\r\n\r\n", id="blank-lines"),
        pytest.param(b"X", id="one-byte"),
    ],
)
def test_what_is_not_http_goes_through_as_tcp(env: Env, data: bytes) -> None:
    before = env.echo.connections
    assert through(env.ports["sniff"], data) == data
    assert env.echo.connections == before + 1


def test_bytes_one_at_a_time_still_detect_http(env: Env) -> None:
    with connect(env.ports["sniff"]) as s:
        request = request_bytes("GET", "/slowly")
        for i in range(4):  # "G", "E", "T", " ": each could still be the start of a request line
            s.sendall(request[i:i + 1])
            time.sleep(0.05)
        s.sendall(request[4:])
        r = read_response(s)
    assert r.status == 200
    assert demo_json(r.body)["path"] == "/slowly"


def test_bytes_one_at_a_time_still_detect_tcp(env: Env) -> None:
    before = env.echo.connections
    with connect(env.ports["sniff"]) as s:
        for b in b"POS":
            s.sendall(bytes([b]))
            time.sleep(0.05)
        assert env.echo.connections == before  # no verdict yet: "POS" may still become "POST "
        s.sendall(b"X and the rest")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"POSX and the rest"
    assert env.echo.connections == before + 1


class SlowPreface(H2Peer):
    """An HTTP/2 client that sends the connection preface one byte at a time."""

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data.startswith(PREFACE):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(PREFACE)):
                self.sock.sendall(data[i:i + 1])
                time.sleep(0.01)
            data = data[len(PREFACE):]
        if data:
            self.sock.sendall(data)


def test_preface_one_byte_at_a_time_is_http2(env: Env) -> None:
    """The HTTP/2 preface starts with "PRI " (not a method): it must not be taken for TCP half-way."""
    before = env.echo.connections
    peer = SlowPreface(env.ports["sniff"])
    try:
        sid = peer.request(request_headers(env.ports["sniff"], "/after-slow-preface"))
        status, _, body = peer.response(sid)
        assert status == 200
        assert demo_json(body)["path"] == "/after-slow-preface"
    finally:
        peer.close()
    assert env.echo.connections == before


def test_tcp_fallback_session_in_metrics_and_access_log(env: Env) -> None:
    p = env.proxy
    cx_before = p.metric("meshpy_upstream_cx_total", cluster="echo")
    payload = b"\x01metrics-and-log\x02"
    assert through(env.ports["sniff"], payload) == payload
    eventually(lambda: p.metric("meshpy_upstream_cx_total", cluster="echo") == cx_before + 1,
               "the fallback's upstream connection is counted")
    eventually(lambda: p.metric("meshpy_upstream_cx_active", cluster="echo") == 0, "the pair is closed")
    eventually(lambda: p.metric("meshpy_downstream_cx_active", listener="sniff") == 0,
               "the downstream gauge goes back to zero (counted once, not by detector and TCP both)")

    def session() -> dict[str, object] | None:
        for line in env.log_lines():
            if line["bytes_received"] == len(payload) and line["protocol"] == "TCP":
                return line
        return None

    eventually(lambda: session() is not None, "an access log line for the TCP session")
    line = session()
    assert line is not None
    assert line["upstream_host"] == f"127.0.0.1:{env.echo.port}"
    assert line["bytes_sent"] == len(payload)
    assert line["response_code"] == 0 and line["response_flags"] == "-"
    assert line["method"] is None and line["path"] is None
    # The HTTP requests of the same listener are logged as HTTP.
    http(env.ports["sniff"], path="/logged-as-http")
    eventually(lambda: any(x["path"] == "/logged-as-http" and x["protocol"] == "HTTP/1.1"
                           for x in env.log_lines()), "the HTTP request's log line")


def test_downstream_connections_counted_once(env: Env) -> None:
    p = env.proxy
    before = p.metric("meshpy_downstream_cx_total", listener="sniff")
    assert through(env.ports["sniff"], b"\x00once") == b"\x00once"
    assert http(env.ports["sniff"], path="/once").status == 200
    eventually(lambda: p.metric("meshpy_downstream_cx_total", listener="sniff") == before + 2,
               "one TCP and one HTTP connection counted, each once")


def test_listener_with_fallback_and_http1_codec(env: Env) -> None:
    r = http(env.ports["sniff1"], path="/h1")
    assert r.status == 200 and demo_json(r.body)["path"] == "/h1"
    assert through(env.ports["sniff1"], b"SSH-2.0-x\r\n") == b"SSH-2.0-x\r\n"


def test_listener_without_fallback_answers_400(env: Env) -> None:
    before = env.echo.connections
    with connect(env.ports["plain"]) as s:
        s.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        r = read_response(s)
    assert r.status == 400
    with connect(env.ports["plain"]) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        assert read_response(s).status == 400
    assert env.echo.connections == before
    assert http(env.ports["plain"], path="/fine").status == 200


# -- original destination reached directly ----------------------------------------------------------


def test_original_destination_http_direct_is_503_not_a_loop(env: Env) -> None:
    p = env.proxy
    before = p.metric("meshpy_downstream_cx_total", listener="od-http")
    r = http(env.ports["od-http"], path="/nowhere")
    assert r.status == 503
    assert r.header("x-upstream") is None
    # A loop would have opened connections to itself: exactly one downstream connection was made.
    time.sleep(0.2)
    assert p.metric("meshpy_downstream_cx_total", listener="od-http") == before + 1
    assert p.metric("meshpy_upstream_cx_total", cluster="passthrough") == 0
    assert p.admin("/ready")[0] == 200
    # A second request, on a connection kept alive, gets the same answer.
    with connect(env.ports["od-http"]) as s:
        assert http(0, path="/a", sock=s).status == 503
        assert http(0, path="/b", sock=s).status == 503
    assert p.alive()


def test_original_destination_tcp_fallback_direct_closes(env: Env) -> None:
    """The sniffing listener with original_destination: non-HTTP bytes go to the original_dst fallback,
    which has no host for a direct connection: closed at once, nothing echoed."""
    assert through(env.ports["od-http"], b"\x00\x01\x02binary") == b""
    assert env.proxy.metric("meshpy_upstream_cx_total", cluster="passthrough") == 0


def test_original_destination_tcp_direct_closes(env: Env) -> None:
    p = env.proxy
    t0 = time.monotonic()
    with connect(env.ports["od-tcp"]) as s:
        with contextlib.suppress(OSError):  # the proxy may have closed before these go out
            s.sendall(b"hello?")
        s.settimeout(5)
        assert recv_all(s) == b""
    assert time.monotonic() - t0 < 3
    assert p.metric("meshpy_upstream_cx_total", cluster="passthrough") == 0

    def flagged() -> bool:
        return any(x["protocol"] == "TCP" and x["response_flags"] == "UH" and x["upstream_host"] is None
                   for x in env.log_lines())

    eventually(flagged, "the TCP session is logged with flag UH")
    assert p.admin("/ready")[0] == 200
    assert http(env.ports["sniff"], path="/still-fine").status == 200


def test_no_host_is_kept_for_direct_connections(env: Env) -> None:
    for _ in range(3):
        assert http(env.ports["od-http"]).status == 503
        assert through(env.ports["od-tcp"], b"x") == b""
    state = {c["name"]: c for c in env.proxy.config_dump()["cluster_state"]}
    assert state["passthrough"]["type"] == "original_dst"
    assert state["passthrough"]["endpoints"] == []  # no host was made for "no destination"
    assert env.proxy.metric("meshpy_upstream_cx_total", cluster="passthrough") == 0


# -- bind: false ------------------------------------------------------------------------------------------


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_unbound_listener_has_no_socket(env: Env) -> None:
    assert refused(env.ports["hidden"])
    live = env.proxy.config_dump()
    dumped = {x["name"]: x for x in live["config"]["listeners"]}
    assert dumped["hidden"]["bind"] is False
    assert dumped["hidden"]["direction"] == "outbound"
    assert dumped["od-tcp"]["original_destination"] is True
    bound = {x["name"]: x["bound_port"] for x in live["listeners"]}
    assert bound["hidden"] is None and bound["od-tcp"] == env.ports["od-tcp"]


def test_reload_flips_bind_off_and_on(loop_name: str, demo: DemoUpstream, tmp_path: Path) -> None:
    admin, port = free_port(), free_port()
    base = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: flip
    address: 127.0.0.1:{port}
    routes: [{{match: /, cluster: demo}}]
clusters:
  demo: 127.0.0.1:{demo.port}
"""
    at = f"    address: 127.0.0.1:{port}\n"
    unbound = base.replace(at, at + "    bind: false\n")
    assert unbound != base
    p = Proxy(base, admin, loop=loop_name).start()
    try:
        assert http(port, path="/bound").status == 200
        loads = p.metric("meshpy_config_loads_total", result="accepted")
        p.rewrite(unbound)
        eventually(lambda: p.metric("meshpy_config_loads_total", result="accepted") == loads + 1,
                   "the config with bind: false is accepted")
        eventually(lambda: refused(port), "the socket is closed once the listener has bind: false")
        assert p.admin("/ready")[0] == 200
        p.rewrite(base)
        eventually(lambda: p.metric("meshpy_config_loads_total", result="accepted") == loads + 2,
                   "the config with bind back on is accepted")
        eventually(lambda: not refused(port), "the socket is open again once bind is back on")
        assert http(port, path="/bound-again").status == 200
        assert p.metric("meshpy_config_loads_total", result="rejected") == 0
        assert p.alive()
    finally:
        assert p.stop() == 0, p.logs()


# -- a server that speaks first ---------------------------------------------------------------------------

def banner(conn: socket.socket) -> None:
    """A server-first protocol (SMTP, MySQL): greets, then echoes one line."""
    conn.sendall(b"220 banner ready\r\n")
    line = conn.recv(1024)
    conn.sendall(b"250 " + line)
    conn.shutdown(socket.SHUT_WR)


def test_detect_timeout_serves_a_server_that_speaks_first(loop_name: str, demo: DemoUpstream) -> None:
    """With `detect_timeout`, a client that waits for the server's greeting is proxied as TCP once the
    time is up; without it the sniffing listener waits for the client's bytes, as Istio does by default
    (such ports should be declared as TCP)."""
    with RawUpstream(banner) as up:
        admin, waiting, patient = free_port(), free_port(), free_port()
        text = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: detect
    address: 127.0.0.1:{patient}
    routes: [{{match: /, cluster: demo}}]
    tcp_fallback: {{cluster: banner, detect_timeout: 200ms}}
  - name: wait
    address: 127.0.0.1:{waiting}
    routes: [{{match: /, cluster: demo}}]
    tcp_fallback: banner
clusters:
  demo: 127.0.0.1:{demo.port}
  banner: 127.0.0.1:{up.port}
"""
        p = Proxy(text, admin, loop=loop_name).start()
        try:
            with connect(patient) as s:
                t0 = time.monotonic()
                assert s.recv(100) == b"220 banner ready\r\n"
                assert 0.15 < time.monotonic() - t0 < 3.0
                s.sendall(b"HELO me\r\n")
                assert s.recv(100) == b"250 HELO me\r\n"
            # HTTP within the time is still routed on the same listener.
            assert demo_json(http(patient, path="/quick").body)["path"] == "/quick"
            with connect(waiting) as s:
                s.settimeout(1.0)
                with pytest.raises(TimeoutError):
                    s.recv(100)
            assert p.alive()
        finally:
            assert p.stop() == 0, p.logs()
