"""HTTP/1.1 proxying end to end, on uvloop and on the standard loop: real sockets, real upstreams."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from kit import (
    DemoUpstream,
    Proxy,
    RawUpstream,
    free_port,
    http,
    is_closed,
    needs_curl,
    read_request_head,
    read_response,
)


def config(demo_port: int, raw_port: int, admin: int, port: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    request_headers: {{add: {{x-listener: "1"}}}}
    virtual_hosts:
      - name: main
        domains: ["*"]
        routes:
          - match: /raw
            cluster: raw
            timeout: 1s
          - match: /dead
            cluster: dead
          - match: /empty
            cluster: empty
          - match: /direct
            direct: {{status: 201, body: "made here\\n"}}
          - match: /
            cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:{demo_port}]
  - name: raw
    endpoints: [127.0.0.1:{raw_port}]
  - name: dead
    endpoints: [127.0.0.1:{free_port()}]
    connect_timeout: 1s
  - name: empty
    type: strict_dns
    endpoints: [does-not-exist.invalid:80]
"""


class Script:
    """What the raw upstream does next; tests set `respond` before sending a request."""

    def __init__(self) -> None:
        self.respond: bytes | None = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        self.heads: list[bytes] = []
        self.close_after = False
        self.delay = 0.0

    def __call__(self, conn: socket.socket) -> None:
        while True:
            head = read_request_head(conn)
            if not head:
                return
            self.heads.append(head)
            if self.delay:
                time.sleep(self.delay)
            if self.respond is not None:
                conn.sendall(self.respond)
            if self.close_after or self.respond is None:
                return


@pytest.fixture(scope="module")
def script() -> Script:
    return Script()


@pytest.fixture(scope="module")
def proxy(loop_name: str, demo: DemoUpstream, script: Script) -> Iterator[tuple[Proxy, int]]:
    with RawUpstream(script) as raw:
        admin, port = free_port(), free_port()
        p = Proxy(config(demo.port, raw.port, admin, port), admin, loop=loop_name).start()
        yield p, port
        assert p.stop() == 0


def echo(resp_body: bytes) -> dict[str, object]:
    return dict(json.loads(resp_body))


def test_forwards_and_adds_headers(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    r = http(port, path="/x?y=1", headers=[("X-Forwarded-For", "10.0.0.9")])
    assert r.status == 200
    got = echo(r.body)
    assert got["path"] == "/x?y=1"
    headers = got["headers"]
    assert isinstance(headers, dict)
    assert headers["x-forwarded-for"] == "10.0.0.9,127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-listener"] == "1"
    assert len(headers["x-request-id"]) == 36


def test_request_id_passed_on(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    r = http(port, headers=[("x-request-id", "abc-123")])
    assert echo(r.body)["headers"]["x-request-id"] == "abc-123"  # type: ignore[index]


def test_hop_by_hop_removed(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    r = http(port, headers=[("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "5"),
                            ("Proxy-Connection", "x"), ("TE", "gzip"), ("X-Kept", "yes")])
    headers = echo(r.body)["headers"]
    assert isinstance(headers, dict)
    for gone in ("x-secret", "keep-alive", "proxy-connection", "te", "connection"):
        assert gone not in headers
    assert headers["x-kept"] == "yes"


def test_keep_alive_reuses_connection(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    with socket.create_connection(("127.0.0.1", port)) as s:
        for i in range(5):
            r = http(port, path=f"/n{i}", sock=s)
            assert r.status == 200 and echo(r.body)["path"] == f"/n{i}"


def test_pipelined_requests_answered_in_order(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    with socket.create_connection(("127.0.0.1", port)) as s:
        reqs = b"".join(
            f"GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for i in range(10)) + \
            b"GET /direct HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n"
        s.sendall(reqs)
        for i in range(10):
            assert echo(read_response(s).body)["path"] == f"/p{i}"
        assert read_response(s).status == 201
        assert echo(read_response(s).body)["path"] == "/last"


def test_chunked_request_and_response(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    r = http(port, method="POST", path="/echo", headers=[("Transfer-Encoding", "chunked")], body=body)
    assert echo(r.body)["body_bytes"] == 11
    r = http(port, path="/chunked/20000")
    assert r.header("transfer-encoding") == "chunked" and r.body == b"c" * 20000


def test_head_204_304(proxy: tuple[Proxy, int], script: Script) -> None:
    _, port = proxy
    r = http(port, method="HEAD", path="/bytes/1000")
    assert r.status == 200 and r.header("content-length") == "1000" and r.body == b""
    with socket.create_connection(("127.0.0.1", port)) as s:  # the connection stays usable after HEAD
        assert http(port, method="HEAD", path="/hello", sock=s).body == b""
        assert http(port, path="/hello", sock=s).body.startswith(b"Hello")
    assert http(port, path="/status/204").status == 204
    script.respond = b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n"
    r = http(port, path="/raw/304")
    assert r.status == 304 and r.header("etag") == "x" and r.body == b""


def test_interim_1xx_forwarded(proxy: tuple[Proxy, int], script: Script) -> None:
    _, port = proxy
    script.respond = (b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /raw/early HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.3)
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"HTTP/1.1 200 OK" in data and data.endswith(b"body")


def test_expect_100_continue(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        r = read_response(s)
        assert r.status == 200 and echo(r.body)["body_bytes"] == 4
        assert "expect" not in echo(r.body)["headers"]  # type: ignore[operator]


def test_http10_client(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /chunked/100 HTTP/1.0\r\n\r\n")
        r = read_response(s)
        assert r.status == 200 and r.body == b"c" * 100 and r.header("transfer-encoding") is None
        assert is_closed(s)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        r = http(port, path="/hello", sock=s, version="1.0", headers=[("Connection", "keep-alive")])
        assert r.header("connection") == "keep-alive"
        assert http(port, path="/hello", sock=s).status == 200


def test_connection_close_from_client_and_upstream(proxy: tuple[Proxy, int], script: Script) -> None:
    _, port = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        r = http(port, sock=s, headers=[("Connection", "close")])
        assert r.status == 200 and r.header("connection") == "close"
        assert is_closed(s)
    script.respond = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    script.close_after = True
    try:
        for _ in range(3):  # each request needs a new upstream connection; none is reused
            assert http(port, path="/raw/c").body == b"ok"
    finally:
        script.close_after = False
        script.respond = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_close_delimited_upstream_response(proxy: tuple[Proxy, int], script: Script) -> None:
    _, port = proxy
    script.respond = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"
    script.close_after = True
    try:
        r = http(port, path="/raw/eof")
        assert r.status == 200 and r.body == b"until the end"
        assert r.header("transfer-encoding") == "chunked"
    finally:
        script.close_after = False
        script.respond = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_proxy_made_answers(proxy: tuple[Proxy, int], script: Script) -> None:
    p, port = proxy
    assert http(port, path="/dead").status == 503  # UF: connect refused
    assert http(port, path="/empty").status == 503  # UH: no host resolved
    script.respond = None  # upstream closes without answering: UC
    try:
        assert http(port, path="/raw/reset").status == 503
    finally:
        script.respond = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    script.delay = 1.5
    try:
        t0 = time.monotonic()
        r = http(port, path="/raw/slow")
        assert r.status == 504 and 0.9 < time.monotonic() - t0 < 1.5  # UT after the 1s route timeout
    finally:
        script.delay = 0.0
    assert p.metric("meshpy_upstream_rq_timeout_total", cluster="raw") >= 1
    assert p.metric("meshpy_upstream_cx_connect_fail_total", cluster="dead") >= 1


def test_malformed_upstream_response_gives_502(proxy: tuple[Proxy, int], script: Script) -> None:
    _, port = proxy
    script.respond = b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n"
    try:
        assert http(port, path="/raw/bad").status == 502
    finally:
        script.respond = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert http(port, path="/raw/after").body == b"ok"


def test_metrics_count_requests(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    before = p.metric("meshpy_downstream_rq_total", listener="web", response_code="201")
    for _ in range(3):
        http(port, path="/direct")
    assert p.metric("meshpy_downstream_rq_total", listener="web", response_code="201") == before + 3
    assert p.metric("meshpy_upstream_rq_total", cluster="demo", response_code_class="2xx") > 0


@needs_curl
def test_curl_through_proxy(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "--data-binary", "x" * 100_000, f"http://127.0.0.1:{port}/upload"],
                         capture_output=True, timeout=20, check=True)
    assert out.stdout == b"200"
