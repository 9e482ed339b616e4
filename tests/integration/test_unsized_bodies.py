"""A response body whose upstream gives it no length (no content-length, not chunked: it ends when the
upstream closes), through a real meshpy process on both loops, to each kind of client: HTTP/1.1 gets
it chunked, HTTP/1.0 delimited by the connection's end, HTTP/2 in DATA frames ended normally (not a
reset stream: the end of such a body is its connection's close, not a failure)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from kit import Proxy, RawUpstream, free_port, http, needs_curl, read_request_head

BODY = b"said until the upstream closed\n" * 50


CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /
        cluster: closer
clusters:
  - name: closer
    endpoints: [127.0.0.1:{upstream}]
"""


def _answer_then_close(conn: socket.socket) -> None:
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + BODY)
    conn.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def port(loop_name: str) -> Iterator[int]:
    with RawUpstream(_answer_then_close) as upstream:
        admin, listen = free_port(), free_port()
        p = Proxy(CONFIG.format(admin=admin, port=listen, upstream=upstream.port), admin,
                  loop=loop_name).start()
        yield listen
        assert p.stop() == 0


def test_http11_client_gets_it_chunked(port: int) -> None:
    r = http(port, path="/a")
    assert r.status == 200 and r.body == BODY and r.header("transfer-encoding") == "chunked"


def test_http10_client_gets_it_until_the_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /b HTTP/1.0\r\nhost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower() and body == BODY


@needs_curl
def test_http2_client_gets_a_whole_stream(port: int) -> None:
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/c"],
                         capture_output=True, timeout=10)
    assert out.returncode == 0 and out.stdout == BODY  # (before: 92, the stream reset)
