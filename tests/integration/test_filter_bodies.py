"""Body hooks of Python filters (on_request_body, on_response_body), through a real meshpy process on
both loops and a strict origin that records every byte: bodies changed both ways and re-framed (a
changed length cannot keep its Content-Length), over HTTP/1.1 and HTTP/2, with Content-Length, chunked
and pipelined requests, the proxy's own answers, a reply from a body hook, hooks that raise, and a
route without the filter that keeps its framing untouched."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from kit import Proxy, eventually, free_port, http, needs_curl, read_response, request_bytes
from strict_origin import StrictOrigin

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    access_log: stdout
    filters:
      - name: upper
        python: {{class: "tests.filter_kit:Upper", config: {{suffix: "!"}}}}
    routes:
      - match: /plain
        filters: {{upper: {{disabled: true}}}}
        cluster: origin
      - match: /local
        direct: {{status: 200, body: "made here"}}
      - match: /
        cluster: origin
clusters:
  - name: origin
    endpoints: [127.0.0.1:{origin}]
"""


@pytest.fixture(scope="module")
def world(loop_name: str) -> Iterator[tuple[Proxy, int, StrictOrigin]]:
    with StrictOrigin() as origin:
        admin, port = free_port(), free_port()
        p = Proxy(CONFIG.format(admin=admin, port=port, origin=origin.port), admin, loop=loop_name).start()
        yield p, port, origin
        assert p.stop() == 0


@pytest.fixture
def fresh(world: tuple[Proxy, int, StrictOrigin]) -> tuple[Proxy, int, StrictOrigin]:
    world[2].clear()
    return world


def _only_request(origin: StrictOrigin) -> tuple[dict[str, str], bytes]:
    eventually(lambda: len(origin.requests) == 1, "the origin got the request")
    assert origin.errors == [], origin.errors
    req = origin.requests[0]
    return {n.lower(): v for n, v in req.headers}, req.body


def test_both_bodies_changed_and_reframed_over_http1(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    _, port, origin = fresh
    r = http(port, "POST", "/up/x", body=b"hello")
    headers, body = _only_request(origin)
    # The request body grew by the suffix: it went upstream chunked, without its Content-Length.
    assert body == b"HELLO!" and "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    assert r.status == 200 and r.body == b"POST /UP/X!"
    assert r.header("content-length") is None and r.header("transfer-encoding") == "chunked"


def test_a_chunked_request_body_piece_by_piece(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    _, port, origin = fresh
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        s.sendall(b"3\r\ndef\r\n0\r\n\r\n")
        assert read_response(s).status == 200
    assert _only_request(origin)[1] == b"ABCDEF!"


def test_pipelined_bodies_pass_the_filter_too(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    # The second request's body arrives before it is routed: it is filtered when it is.
    _, port, origin = fresh
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request_bytes("POST", "/a", body=b"one") + request_bytes("POST", "/b", body=b"two"))
        assert [read_response(s).body for _ in range(2)] == [b"POST /A!", b"POST /B!"]
    eventually(lambda: len(origin.requests) == 2, "both requests")
    assert [q.body for q in origin.requests] == [b"ONE!", b"TWO!"] and origin.errors == []


@needs_curl
def test_http2_client(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    _, port, origin = fresh
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "--data-binary", "hello",
                          f"http://127.0.0.1:{port}/h2"], capture_output=True, timeout=10, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200") and b"content-length" not in head.lower()
    assert body == b"POST /H2!"
    assert _only_request(origin)[1] == b"HELLO!"


def test_the_proxys_own_answers_pass_the_response_hook(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    r = http(fresh[1], path="/local")
    assert r.status == 200 and r.body == b"MADE HERE!" and r.header("content-length") == "10"


def test_a_route_without_the_filter_keeps_its_framing(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    _, port, origin = fresh
    r = http(port, "POST", "/plain", body=b"hello")
    headers, body = _only_request(origin)
    assert body == b"hello" and headers["content-length"] == "5" and "transfer-encoding" not in headers
    assert r.body == b"POST /plain" and r.header("content-length") == "11"


def test_a_reply_from_the_request_body_hook(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    _, port, origin = fresh
    r = http(port, "POST", "/up", headers=[("x-body-reply", "1")], body=b"please STOP here")
    assert r.status == 422 and r.body == b"STOPPED BY THE BODY\n!"  # (its body passed the hook too)
    assert all(q.body != b"PLEASE STOP HERE!" for q in origin.requests)


def test_a_request_body_hook_that_raises(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    p, port, origin = fresh
    before = p.metric("meshpy_downstream_rq_filter_errors_total", listener="web")
    r = http(port, "POST", "/up", headers=[("x-boom", "request-body")], body=b"hello")
    assert r.status == 500 and r.body == b"filter error"
    eventually(lambda: p.metric("meshpy_downstream_rq_filter_errors_total", listener="web") == before + 1,
               "the error counted")
    assert not any(q.body.startswith(b"HELLO") for q in origin.requests)
    assert http(port, "POST", "/up", body=b"ok").body == b"POST /UP!" and p.alive()


@needs_curl
def test_a_response_body_hook_that_raises_cuts_the_response(fresh: tuple[Proxy, int, StrictOrigin]) -> None:
    # The head is on its way: the only honest signal left is to end the connection (HTTP/1.1) or
    # reset the stream (HTTP/2), never a body that looks whole.
    p, port, _ = fresh
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request_bytes("GET", "/up", headers=[("x-boom", "response-body")]))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"0\r\n\r\n")
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "x-boom: response-body",
                          f"http://127.0.0.1:{port}/up"], capture_output=True, timeout=10)
    assert out.returncode == 92  # curl: HTTP/2 stream error (the stream was reset)
    eventually(lambda: p.logs().count('"FE"') >= 2, "flag FE logged for both")
    assert http(port, path="/up").body == b"GET /UP!" and p.alive()
