"""Upstream response heads: the pass-through fast path and the general path, against a raw upstream
that answers each request with bytes chosen by its path."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from kit import Proxy, RawUpstream, free_port, http, raw, read_request_head

BIG_HEADERS = b"".join(b"x-filler-%05d: %s\r\n" % (i, b"v" * 60) for i in range(1200))  # ~90 KiB

RESPONSES: dict[bytes, bytes] = {
    b"/plain": b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"/lf": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Lf: yes\n\nok",
    b"/early": (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"),
    b"/nominated": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nX-Kept: 1\r\n"
                    b"Content-Length: 2\r\n\r\nok"),
    b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"/nodate": b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"/huge": b"HTTP/1.1 200 OK\r\n" + BIG_HEADERS + b"Content-Length: 2\r\n\r\nok",
    b"/upclose": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
}


def answer(conn: socket.socket) -> None:
    while True:
        head = read_request_head(conn)
        if not head:
            return
        path = head.split(b" ", 2)[1]
        if path == b"/trickle":
            # The head arrives a few bytes at a time, in separate reads on the proxy's side.
            resp = RESPONSES[b"/plain"]
            for i in range(0, len(resp), 7):
                conn.sendall(resp[i:i + 7])
                time.sleep(0.002)
            continue
        conn.sendall(RESPONSES[path])
        if path == b"/upclose":
            return


@pytest.fixture(scope="module")
def port(loop_name: str) -> Iterator[int]:
    with RawUpstream(answer) as up:
        admin, listen = free_port(), free_port()
        config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{listen}
    routes:
      - match: /
        cluster: up
clusters:
  - name: up
    endpoints: [127.0.0.1:{up.port}]
"""
        p = Proxy(config, admin, loop=loop_name).start()
        yield listen
        assert p.stop() == 0


def test_plain_head_passes_through_without_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(3):  # keep-alive both sides: the same client connection serves all three
            r = http(port, path="/plain", sock=s)
            assert (r.status, r.body, r.header("server")) == (200, b"ok", "up")
            assert r.header("connection") is None and r.header("date") is not None


def test_bare_lf_upstream_head_is_a_502(port: int) -> None:
    assert http(port, path="/lf").status == 502  # llhttp refuses bare LF line ends in a response
    assert http(port, path="/plain").body == b"ok"


def test_interim_and_final_head_in_one_read(port: int) -> None:
    out = raw(port, b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\n"), out
    assert b"link: </s.css>; rel=preload\r\n" in out.lower()
    final = out[out.index(b"HTTP/1.1 200"):]
    assert final.endswith(b"\r\n\r\nfinal") and b"connection: close" in final.lower()


def test_connection_nominated_header_is_removed(port: int) -> None:
    r = http(port, path="/nominated")
    assert r.status == 200 and r.header("x-kept") == "1"
    assert r.header("x-secret") is None and r.header("connection") is None


def test_chunked_upstream_rechunked(port: int) -> None:
    r = http(port, path="/chunked")
    assert (r.status, r.body, r.header("transfer-encoding")) == (200, b"abcde", "chunked")


def test_date_added_when_upstream_has_none(port: int) -> None:
    r = http(port, path="/nodate")
    assert r.status == 201 and r.header("date") is not None and r.header("content-length") == "0"


def test_head_over_64k_is_a_502(port: int) -> None:
    assert http(port, path="/huge").status == 502
    assert http(port, path="/plain").body == b"ok"  # and nothing else suffers


def test_head_in_many_reads(port: int) -> None:
    r = http(port, path="/trickle")
    assert (r.status, r.body, r.header("server")) == (200, b"ok", "up")


def test_upstream_connection_close_is_not_passed_on(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        r = http(port, path="/upclose", sock=s)
        assert r.status == 200 and r.body == b"ok" and r.header("connection") is None
        assert http(port, path="/plain", sock=s).body == b"ok"  # the client connection stays open
