"""CONNECT through a real meshpy process: a route with `match: {connect: true}` on a listener that
allows `connect` terminates the CONNECT, connects to the route's cluster and tunnels bytes both ways;
curl uses it as an HTTP proxy tunnel. Without such a route or permission, CONNECT gets no tunnel."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
from kit import DemoUpstream, Proxy, eventually, free_port

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: egress
    address: 127.0.0.1:{port}
    upgrades: [websocket, connect]
    access_log: stdout
    virtual_hosts:
      - domains: ["db.internal"]
        routes:
          - match: {{connect: true}}
            cluster: dead
      - domains: ["*"]
        routes:
          - match: {{connect: true}}
            cluster: demo
          - match: /
            direct: {{status: 200, body: "plain"}}
  - name: plain
    address: 127.0.0.1:{plain}
    routes:
      - match: {{connect: true}}
        cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:{upstream}]
  - name: dead
    connect_timeout: 1s
    endpoints: [127.0.0.1:{dead}]
"""


@pytest.fixture(scope="module")
def env(demo_module: DemoUpstream) -> Iterator[tuple[Proxy, int, int]]:
    port, admin, plain = free_port(), free_port(), free_port()
    p = Proxy(CONFIG.format(admin=admin, port=port, plain=plain, upstream=demo_module.port, dead=free_port()),
              admin).start()
    yield p, port, plain
    p.stop()


@pytest.fixture(scope="module")
def demo_module() -> Iterator[DemoUpstream]:
    up = DemoUpstream(free_port(), "demo").start()
    yield up
    up.stop()


def connect(port: int, target: bytes) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def test_bytes_both_ways_through_the_tunnel(env: tuple[Proxy, int, int]) -> None:
    p, port, _ = env
    s, head = connect(port, b"anything.example:80")
    with s:
        assert head.startswith(b"HTTP/1.1 200 ")
        # What goes through is the client's business: here, HTTP/1.1 to the demo upstream.
        s.sendall(b"GET /bytes/70000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"x" * 100)
    assert len(data.split(b"\r\n\r\n", 1)[1]) == 70000
    eventually(lambda: '"method":"CONNECT"' in p.logs(), "the tunnel is logged when it closes")
    line = [x for x in p.logs().splitlines() if '"method":"CONNECT"' in x][-1]
    assert '"response_code":200' in line and '"authority":"anything.example:80"' in line
    eventually(lambda: p.metric("meshpy_upstream_cx_active", cluster="demo") == 0, "the upstream side closes")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_proxy_tunnel(env: tuple[Proxy, int, int]) -> None:
    _, port, _ = env
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-p", "-x", f"http://127.0.0.1:{port}",
                        "http://service.example/hello"], capture_output=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"Hello")


def test_connect_failure_is_503(env: tuple[Proxy, int, int]) -> None:
    _, port, _ = env
    s, head = connect(port, b"db.internal:5432")
    s.close()
    assert head.startswith(b"HTTP/1.1 503 ")


def test_no_tunnel_without_permission_or_route(env: tuple[Proxy, int, int]) -> None:
    _, port, plain = env
    s, head = connect(plain, b"anything.example:80")  # a listener whose upgrades do not include connect
    s.close()
    assert head.startswith(b"HTTP/1.1 403 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"CONNECT bad-target HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")


def test_plain_requests_still_work(env: tuple[Proxy, int, int]) -> None:
    _, port, _ = env
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
