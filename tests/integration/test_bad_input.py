"""Hostile and broken input, on uvloop and on the standard loop: malformed and oversized requests,
request smuggling, slowloris, idle-connection floods and upstreams that answer garbage or reset.

After every case the proxy process must still be alive and a normal request on another connection must
still be answered. Smuggling cases also check, with an upstream that records every byte it receives,
that nothing the proxy refused ever reached an upstream as a request.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kit import (
    DemoUpstream,
    Proxy,
    RawUpstream,
    free_port,
    http,
    is_closed,
    raw,
    read_request_head,
    read_response,
)
from recorder import OK, Recorder

BODY_LIMIT = 64 * 1024
IDLE_CONNECTIONS = 2000


# -- upstreams ---------------------------------------------------------------------------------------
@dataclass
class ScriptedConn:
    heads: list[bytes] = field(default_factory=list)
    closed_by_proxy: threading.Event = field(default_factory=threading.Event)


Action = Callable[[socket.socket], bool]  # returns False when the handler closed the connection itself


def answer_ok(conn: socket.socket) -> bool:
    conn.sendall(OK)
    return True


class Scripted:
    """An upstream that runs `action` for every request head; records each connection and whether the
    proxy closed it."""

    def __init__(self) -> None:
        self.action: Action = answer_ok
        self.conns: list[ScriptedConn] = []

    def __call__(self, conn: socket.socket) -> None:
        rec = ScriptedConn()
        self.conns.append(rec)
        while True:
            try:
                head = read_request_head(conn)
            except OSError:
                head = b""
            if not head:
                rec.closed_by_proxy.set()
                return
            rec.heads.append(head)
            if not self.action(conn):
                return

    def carrying(self, marker: bytes) -> ScriptedConn:
        """The one connection that carried the request whose head contains `marker`."""
        found = [c for c in self.conns if any(marker in h for h in c.heads)]
        assert len(found) == 1, found
        return found[0]


# -- fixtures ----------------------------------------------------------------------------------------
def config(demo_port: int, rec_port: int, bad_port: int, admin: int, port: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    request_headers_timeout: 1s
    max_request_body: {BODY_LIMIT}
    routes:
      - match: /rec
        cluster: rec
      - match: /bad
        cluster: bad
        timeout: 5s
      - match: /
        cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:{demo_port}]
  - name: rec
    endpoints: [127.0.0.1:{rec_port}]
  - name: bad
    endpoints: [127.0.0.1:{bad_port}]
"""


@dataclass
class Env:
    proxy: Proxy
    port: int
    rec: Recorder
    bad: Scripted
    loop: str


def raise_nofile(want: int) -> None:
    """Room for the idle-connection flood, in this process and in the proxy (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new_soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))


def nofile_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError("no open files limit")


@pytest.fixture(scope="module")
def env(loop_name: str, demo: DemoUpstream) -> Iterator[Env]:
    raise_nofile(IDLE_CONNECTIONS + 1000)
    rec, bad = Recorder(), Scripted()
    with RawUpstream(rec) as rec_up, RawUpstream(bad) as bad_up:
        admin, port = free_port(), free_port()
        p = Proxy(config(demo.port, rec_up.port, bad_up.port, admin, port), admin, loop=loop_name).start()
        yield Env(p, port, rec, bad, loop_name)
        assert p.stop() == 0


@pytest.fixture(autouse=True)
def still_healthy(env: Env) -> Iterator[None]:
    """After each case: the process lives and a fresh connection gets normal answers."""
    env.bad.action = answer_ok
    yield
    env.bad.action = answer_ok
    assert env.proxy.alive(), env.proxy.logs()
    r = http(env.port, path="/hello")
    assert r.status == 200 and r.body.startswith(b"Hello")
    assert http(env.port, path="/rec/after").body == b"ok"


def marker(env: Env, name: str) -> str:
    return f"{name}-{env.loop}-{time.monotonic_ns()}"


def send_and_read_all(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `data`, read until the proxy closes. Returns (bytes read, closed by the proxy)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out, True
                out += chunk
        except ConnectionResetError:
            return out, True
        except TimeoutError:
            return out, False


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


def assert_refused(env: Env, data: bytes, status: int, *never: bytes) -> bytes:
    """`data` gets `status` and the connection is closed; none of `never` reaches an upstream."""
    out, closed = send_and_read_all(env.port, data)
    assert status_of(out) == status, out
    assert closed, "the proxy must close the connection after refusing a request"
    assert out.count(b"HTTP/1.1 ") == 1, out  # one answer, nothing else
    time.sleep(0.2)  # anything forwarded would have arrived by now
    seen = env.rec.everything()
    for m in never:
        assert m not in seen, f"{m!r} was forwarded upstream"
    return out


# -- malformed requests --------------------------------------------------------------------------------
def test_malformed_request_line(env: Env) -> None:
    for line in (b"NOT A REQUEST\r\n\r\n", b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
                 b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/9.Z\r\nHost: a\r\n\r\n"):
        out, closed = send_and_read_all(env.port, line)
        assert status_of(out) == 400, (line, out)
        assert closed


def test_header_section_over_60k(env: Env) -> None:
    m = marker(env, "big-head").encode()
    data = b"GET /rec/" + m + b" HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (62 * 1024) + b"\r\n\r\n"
    assert_refused(env, data, 431, m)
    # The same in many moderate headers.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(70))
    assert_refused(env, b"GET /rec/" + m + b" HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", 431, m)


def test_unterminated_header_line_over_60k(env: Env) -> None:
    """A header line that never ends must not be buffered forever: the limit holds mid-line too."""
    hwm0 = env.proxy.hwm_kb()
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        sent = 0
        t0 = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # Keep the line going until the proxy answers (well before the 1 s headers timeout).
            while sent < 64 * 1024 * 1024 and not select.select([s], [], [], 0)[0]:
                s.sendall(b"z" * 16384)
                sent += 16384
        assert time.monotonic() - t0 < 0.9, "refused only by the headers timeout"
        out = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := s.recv(65536):
                out += chunk
    assert status_of(out) == 431, out
    # What the client pushed beyond the limit sat in socket buffers, not in the proxy.
    assert env.proxy.hwm_kb() - hwm0 < 16 * 1024, (hwm0, env.proxy.hwm_kb(), sent)


def test_more_than_100_headers(env: Env) -> None:
    m = marker(env, "many-headers").encode()
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    assert_refused(env, b"GET /rec/" + m + b" HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n", 431, m)
    # Exactly 100 header lines (Host included) are fine.
    ok = [(f"X-H{i}", "v") for i in range(99)]
    assert http(env.port, path="/hello", headers=ok).status == 200


def test_body_over_limit_content_length(env: Env) -> None:
    m = marker(env, "cl-413").encode()
    head = b"POST /rec/" + m + b" HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 1)
    assert_refused(env, head + b"x" * 1000, 413, m)
    # At the limit it passes.
    r = http(env.port, method="POST", path="/rec/at-limit", body=b"y" * BODY_LIMIT)
    assert r.status == 200 and r.body == b"ok"


def test_body_over_limit_chunked(env: Env) -> None:
    m = marker(env, "chunked-413").encode()
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"POST /rec/" + m + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (8192, b"c" * 8192)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(BODY_LIMIT // 8192 + 4):
                s.sendall(piece)
                time.sleep(0.01)  # let part of the body stream upstream before the limit is hit
        r = read_response(s)
        assert r.status == 413
        assert is_closed(s)
    # The head and part of the body went upstream (the body streams); that request never completes
    # there, and its connection is closed, not left open (or pooled) with a half-sent request on it.
    carrying = env.rec.conns_containing(m)
    assert len(carrying) == 1
    for conn in carrying:
        assert conn.closed.wait(5), "upstream connection carrying the refused body left open"
        assert conn.urls[-1] == b"/rec/" + m and conn.completed == len(conn.urls) - 1


# -- request smuggling ---------------------------------------------------------------------------------
SMUGGLED = b"GET /rec/smuggled-%s HTTP/1.1\r\nHost: a\r\n\r\n"


def smuggle(env: Env, name: str, head_lines: bytes, body: bytes) -> None:
    m = marker(env, name).encode()
    data = b"POST /rec/" + m + b" HTTP/1.1\r\nHost: a\r\n" + head_lines + b"\r\n" + body + (SMUGGLED % m)
    assert_refused(env, data, 400, m, b"smuggled-" + m)


def test_smuggling_content_length_with_transfer_encoding(env: Env) -> None:
    smuggle(env, "cl-te", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")
    smuggle(env, "te-cl", b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n")


def test_smuggling_two_content_lengths(env: Env) -> None:
    smuggle(env, "cl-cl", b"Content-Length: 5\r\nContent-Length: 50\r\n", b"hello")
    smuggle(env, "cl-list", b"Content-Length: 5, 50\r\n", b"hello")


def test_smuggling_invalid_chunk_size(env: Env) -> None:
    m = marker(env, "bad-chunk").encode()
    body = b"5\r\nhello\r\nzz\r\n" + SMUGGLED % m + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"POST /rec/" + m + b" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.2)  # the head is forwarded and the body starts streaming
        s.sendall(body)
        r = read_response(s)
        assert r.status == 400
        assert is_closed(s)
    time.sleep(0.2)
    # The head may have gone upstream (the body streams), but nothing after the bad chunk did.
    assert b"smuggled-" + m not in env.rec.everything()
    assert not [u for u in env.rec.all_urls() if b"smuggled-" + m in u]
    carrying = env.rec.conns_containing(m)
    assert len(carrying) == 1
    for conn in carrying:
        assert conn.closed.wait(5), "upstream connection of the broken request left open"
        assert conn.urls[-1] == b"/rec/" + m and conn.completed == len(conn.urls) - 1


def test_smuggling_obs_fold(env: Env) -> None:
    smuggle(env, "obs-fold", b"X-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", b"")
    smuggle(env, "obs-fold-tab", b"Content-Length: 0\r\nX-A: b\r\n\tc\r\n", b"")


def test_smuggling_bare_cr(env: Env) -> None:
    smuggle(env, "bare-cr", b"Content-Length: 0\r\nX-A: b\rTransfer-Encoding: chunked\r\n", b"")


def test_smuggling_nul(env: Env) -> None:
    smuggle(env, "nul", b"Content-Length: 0\r\nX-A: b\x00c\r\n", b"")


def test_smuggling_transfer_encoding_not_chunked(env: Env) -> None:
    smuggle(env, "te-gzip", b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n")
    smuggle(env, "te-gzip-chunked", b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n")
    smuggle(env, "te-chunked-gzip", b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n")
    smuggle(env, "te-twice", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", b"0\r\n\r\n")


def test_pipelined_valid_then_garbage(env: Env) -> None:
    m = marker(env, "pipelined").encode()
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"GET /rec/" + m + b" HTTP/1.1\r\nHost: a\r\n\r\n" + b"\x01\x02 GARBAGE\r\n\r\n")
        first = read_response(s)
        assert first.status == 200 and first.body == b"ok"
        second = read_response(s)
        assert second.status == 400 and not second.keep_alive
        assert is_closed(s)
    assert env.rec.all_urls().count(b"/rec/" + m) == 1


# -- slowloris and idle floods ---------------------------------------------------------------------------
def test_slowloris_headers_timeout(env: Env) -> None:
    head = b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        t0 = time.monotonic()
        answered = False
        for i in range(len(head)):
            try:
                s.sendall(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([s], [], [], 0.05)[0]:  # 20 bytes/s: the head needs ~4 s
                answered = True
                break
        elapsed = time.monotonic() - t0
        assert answered, "the proxy waited for the whole slow head"
        assert 0.9 < elapsed < 3.0, elapsed
        r = read_response(s)
        assert r.status == 408
        assert is_closed(s)


def test_idle_connections_do_not_slow_active_ones(env: Env) -> None:
    idle_count = IDLE_CONNECTIONS
    assert env.proxy.proc is not None
    for limit in (resource.getrlimit(resource.RLIMIT_NOFILE)[0], nofile_of(env.proxy.proc.pid)):
        if limit < idle_count + 200:
            pytest.skip(f"RLIMIT_NOFILE {limit} is too low for {idle_count} connections (hard limit)")

    def timed_run() -> float:
        with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
            t0 = time.perf_counter()
            for i in range(200):
                r = http(env.port, path=f"/n{i}", sock=s)
                assert r.status == 200
            return time.perf_counter() - t0

    timed_run()  # warm-up
    baseline = min(timed_run() for _ in range(2))
    before = env.proxy.metric("meshpy_downstream_cx_active", listener="web")
    idle: list[socket.socket] = []
    try:
        for _ in range(idle_count):
            idle.append(socket.create_connection(("127.0.0.1", env.port), timeout=10))
        deadline = time.monotonic() + 10
        while env.proxy.metric("meshpy_downstream_cx_active", listener="web") < before + idle_count:
            assert time.monotonic() < deadline, "the proxy did not accept all idle connections"
            time.sleep(0.1)
        time.sleep(1.5)  # at least one connection-timer round over every idle connection
        loaded = min(timed_run() for _ in range(2))
        assert loaded < 3 * baseline + 0.05, (baseline, loaded)
        # The idle connections are still open and usable.
        assert not is_closed(idle[0], timeout=0.1) and not is_closed(idle[-1], timeout=0.1)
        assert http(env.port, path="/hello", sock=idle[idle_count // 2]).status == 200
    finally:
        for s in idle:
            s.close()


# -- misbehaving upstreams ------------------------------------------------------------------------------
def bad_response_case(env: Env, response: bytes) -> None:
    def action(conn: socket.socket) -> bool:
        conn.sendall(response)
        return True  # keep reading: the proxy must be the one to close

    m = marker(env, "bad-response").encode()
    env.bad.action = action
    r = http(env.port, path="/bad/" + m.decode())
    assert r.status == 502, (response, r)
    broken = env.bad.carrying(m)
    assert broken.closed_by_proxy.wait(5), "the proxy kept the broken upstream connection"
    env.bad.action = answer_ok
    assert http(env.port, path="/bad/next-" + m.decode()).body == b"ok"
    fresh = env.bad.carrying(b"next-" + m)
    assert fresh is not broken and len(fresh.heads) == 1, "the next request needs a fresh upstream connection"


def test_upstream_bad_status_line(env: Env) -> None:
    bad_response_case(env, b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok")
    bad_response_case(env, b"NOTHTTP 200 OK\r\ncontent-length: 2\r\n\r\nok")


def test_upstream_bad_header(env: Env) -> None:
    bad_response_case(env, b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok")
    bad_response_case(env, b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\ncontent-length: 2\r\n\r\nok")


def test_upstream_invalid_content_length(env: Env) -> None:
    bad_response_case(env, b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n")
    bad_response_case(env, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")


def test_upstream_reset_mid_body(env: Env) -> None:
    def action(conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n" + b"r" * 100_000)
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST
        return False

    env.bad.action = action
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as s:
        s.sendall(b"GET /bad/reset HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        t0 = time.monotonic()
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail("the client connection hangs after the upstream reset")
        assert time.monotonic() - t0 < 3
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    body = got.split(b"\r\n\r\n", 1)[1]
    assert 0 < len(body) < 10_000_000  # truncated: the client can tell, the close says so


def test_invalid_header_line(env: Env) -> None:
    """A header line without a colon: exactly one answer (400, `connection: close`), then EOF."""
    out = raw(env.port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert status_of(out) == 400 and b"connection: close" in out.lower()
