"""Request framing that once let one client's bytes become another request (found by outside probes),
on uvloop and on the standard loop: headers a Connection header names, Upgrade with a body, Host
ambiguity, fragments, chunked HTTP/1.0.

The upstream records every byte it receives and parses it with llhttp: a probe passes only if the
upstream saw exactly the request boundaries the client meant (never a `/SMUGGLED` request), and a
victim on a fresh connection is answered by its own request."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kit import Proxy, RawUpstream, fleet_config, free_port, http, read_response
from recorder import Recorder

SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\nHost: t.local\r\n\r\n"


@dataclass
class Env:
    proxy: Proxy
    port: int
    rec: Recorder


@pytest.fixture(scope="module")
def env(loop_name: str) -> Iterator[Env]:
    rec = Recorder()
    with RawUpstream(rec) as up:
        admin, port = free_port(), free_port()
        cfg = fleet_config(admin, port, [up.port])
        p = Proxy(cfg, admin, loop=loop_name).start()
        yield Env(p, port, rec)
        assert p.stop() == 0


@pytest.fixture(autouse=True)
def nothing_smuggled(env: Env) -> Iterator[None]:
    """After each case: nothing reached the upstream as a request of its own, and a victim on a new
    connection (the upstream connection is pooled) gets its answer."""
    yield
    time.sleep(0.05)
    assert b"/SMUGGLED" not in env.rec.all_urls(), env.rec.all_urls()
    r = http(env.port, path="/victim")
    assert r.status == 200 and r.body == b"ok"
    assert env.rec.all_urls()[-1] == b"/victim"
    assert env.proxy.alive(), env.proxy.logs()


def exchange(env: Env, data: bytes, answers: int = 1) -> tuple[list[int], bool]:
    """Send `data` on a new connection; the statuses of `answers` responses, and whether the proxy then
    closed the connection."""
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(data)
        statuses = [read_response(s).status for _ in range(answers)]
        s.settimeout(0.5)
        try:
            closed = s.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
        return statuses, closed


def forwarded(env: Env, marker: bytes) -> bytes:
    """The raw bytes of the one upstream connection that carried `marker`."""
    time.sleep(0.05)
    conns = env.rec.conns_containing(marker)
    assert len(conns) == 1, conns
    return bytes(conns[0].data)


@pytest.mark.parametrize("connection", [
    b"Connection: Content-Length\r\n",
    b"Connection: keep-alive, content-length\r\n",
    b"Connection: keep-alive\r\nConnection: Content-Length\r\n",
])
def test_connection_never_removes_content_length(env: Env, connection: bytes) -> None:
    marker = b"/legit-%d" % time.monotonic_ns()
    body = SMUGGLED
    req = b"POST " + marker + b" HTTP/1.1\r\nHost: t.local\r\n" + connection + \
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    assert exchange(env, req)[0] == [200]
    seen = forwarded(env, marker)
    assert b"\r\ncontent-length: %d\r\n" % len(body) in seen.lower() and seen.endswith(body)


def test_connection_never_removes_host_or_forwarding_headers(env: Env) -> None:
    marker = b"/fwd-%d" % time.monotonic_ns()
    req = b"GET " + marker + b" HTTP/1.1\r\nHost: t.local\r\nX-Forwarded-For: 192.0.2.7\r\n" \
        b"X-Request-Id: keep-me\r\nX-Other: 1\r\n" \
        b"Connection: host, x-forwarded-for, x-request-id, x-other\r\n\r\n"
    assert exchange(env, req)[0] == [200]
    head = forwarded(env, marker).lower()
    assert b"\r\nhost: t.local\r\n" in head and b"192.0.2.7" in head and b"keep-me" in head
    assert b"x-other" not in head  # other nominated headers still go (RFC 9110 7.6.1)


def test_response_framing_survives_its_connection_header(env: Env) -> None:
    """The upstream's `Connection: content-length` must not strip the response's framing: the client
    could not find the end of the body, and its next request on the connection would hang."""
    answers = [b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok"]

    def handler(conn: socket.socket) -> None:
        while conn.recv(65536):
            conn.sendall(answers[0])

    with RawUpstream(handler) as up:
        admin, port = free_port(), free_port()
        cfg = fleet_config(admin, port, [up.port])
        p = Proxy(cfg, admin, loop=env.proxy.loop).start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for _ in range(2):  # the second answer on the same connection shows the first ended
                    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    r = read_response(s)
                    assert r.status == 200 and r.body == b"ok" and ("content-length", "2") in r.headers
        finally:
            assert p.stop() == 0


@pytest.mark.parametrize(("upgrade", "status"), [(b"foo", 403), (b"websocket", 400)])
def test_upgrade_with_a_body_is_refused(env: Env, upgrade: bytes, status: int) -> None:
    """llhttp hands on everything after an upgrade head, body included: the body was once parsed as
    the next request. A type the listener does not take gets 403 as from Envoy; an allowed one that
    declares a body 400."""
    marker = b"/up-%d" % time.monotonic_ns()
    req = b"POST " + marker + b" HTTP/1.1\r\nHost: t.local\r\nConnection: Upgrade\r\nUpgrade: " + upgrade + \
        b"\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED
    assert exchange(env, req) == ([status], True)
    assert not env.rec.conns_containing(marker)


def test_h2c_upgrade_is_a_plain_request_with_its_body(env: Env) -> None:
    """`Upgrade: h2c` is dropped and the request served as HTTP/1.1 (as Envoy): its body is read by
    its Content-Length, and what follows is the next request on the connection."""
    marker = b"/h2c-%d" % time.monotonic_ns()
    body = b"hello"
    req = b"POST " + marker + b" HTTP/1.1\r\nHost: t.local\r\nConnection: Upgrade, HTTP2-Settings\r\n" \
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\n" + body + \
        b"GET " + marker + b"-next HTTP/1.1\r\nHost: t.local\r\n\r\n"
    assert exchange(env, req, answers=2) == ([200, 200], False)
    urls = env.rec.all_urls()
    assert urls[-2:] == [marker, marker + b"-next"]
    assert b"upgrade" not in forwarded(env, marker).lower()


def test_h2c_upgrade_with_a_chunked_body(env: Env) -> None:
    """llhttp leaves a chunked body after an upgrade head unparsed too: a relay parser reads it."""
    marker = b"/h2c-chunked-%d" % time.monotonic_ns()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    req = b"POST " + marker + b" HTTP/1.1\r\nHost: t.local\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" \
        b"Transfer-Encoding: chunked\r\n\r\n" + body + b"GET " + marker + b"-next HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        for i in range(0, len(req), 23):  # in pieces: the relay keeps its place across reads
            s.sendall(req[i:i + 23])
            time.sleep(0.002)
        assert [read_response(s).status for _ in range(2)] == [200, 200]
        s.sendall(b"GET " + marker + b"-third HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s).status == 200
    assert env.rec.all_urls()[-3:] == [marker, marker + b"-next", marker + b"-third"]
    # The POST's body, re-chunked by the proxy piece by piece as it came: joined, it is all there.
    assert SMUGGLED in re.sub(rb"\r\n[0-9a-f]+\r\n", b"", forwarded(env, marker))


def test_h2c_upgrade_with_a_bad_chunk(env: Env) -> None:
    req = b"POST /h2c-bad HTTP/1.1\r\nHost: t.local\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n" \
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + SMUGGLED
    statuses, closed = exchange(env, req)
    assert statuses[0] in (400, 502, 503) and closed


def test_http10_without_host_goes_out_with_an_empty_one(env: Env) -> None:
    marker = b"/h10-%d" % time.monotonic_ns()
    assert exchange(env, b"GET " + marker + b" HTTP/1.0\r\n\r\n") == ([200], True)
    seen = forwarded(env, marker)
    head = seen[seen.index(b"GET " + marker):]
    assert head.startswith(b"GET " + marker + b" HTTP/1.1\r\n") and b"\r\nhost: \r\n" in head.lower()


def test_h2c_upgrade_body_across_reads(env: Env) -> None:
    marker = b"/h2c-split-%d" % time.monotonic_ns()
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"POST " + marker + b" HTTP/1.1\r\nHost: t.local\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                  b"Content-Length: 10\r\n\r\n01234")
        time.sleep(0.1)
        s.sendall(b"56789GET " + marker + b"-2 HTTP/1.1\r\nHost: t.local\r\n\r\n")
        assert [read_response(s).status for _ in range(2)] == [200, 200]
    assert forwarded(env, marker).count(b"0123456789") == 1
    assert env.rec.all_urls()[-2:] == [marker, marker + b"-2"]


@pytest.mark.parametrize("head", [
    b"GET /h HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: a.example,b.example\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: a.example/x\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: a example\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: a.example#x\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: a.example:80x\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: [zz]\r\n\r\n",
    b"GET http://user@a.example/h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET ftp://a.example/h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /h#fragment HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"CONNECT /h HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
])
def test_ambiguous_requests_get_400(env: Env, head: bytes) -> None:
    before = len(env.rec.all_urls())
    statuses, closed = exchange(env, head)
    assert statuses[0] in (400, 403) and closed
    assert len(env.rec.all_urls()) == before  # nothing forwarded


def test_absolute_form_authority_ends_at_the_query(env: Env) -> None:
    marker = b"q%d" % time.monotonic_ns()
    assert exchange(env, b"GET HTTP://evil.local?" + marker + b" HTTP/1.1\r\nHost: t\r\n\r\n")[0] == [200]
    seen = forwarded(env, marker)  # (on a pooled connection: earlier requests come first)
    head = seen[seen.index(b"GET /?" + marker + b" HTTP/1.1\r\n"):].lower()
    assert b"\r\nhost: evil.local\r\n" in head[:head.index(b"\r\n\r\n") + 2]


def test_chunked_http10_is_answered_then_closed(env: Env) -> None:
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has suspect framing; close after it."""
    req = b"POST /c10 HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" \
        b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    assert exchange(env, req) == ([200], True)
