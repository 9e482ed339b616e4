"""Backpressure and bounded memory, on uvloop and on the standard loop: 1 GiB downloads and uploads
through the proxy while a slow peer stalls, byte-exact, with the proxy's peak memory watched.

The upstream is a thread in the test process (fast blocking sockets); the route has `timeout: off`
because the route timeout covers the whole response. Memory is the proxy's VmHWM (peak RSS) against
its RSS when the module's proxy started: kernel socket buffers (tens of MiB on loopback) are not part
of it, only what the proxy itself holds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httptools
import pytest
from kit import Proxy, RawUpstream, free_port, http, read_response

pytestmark = pytest.mark.slow

GiB = 1 << 30
MiB = 1 << 20
BLOCK = bytes(range(256)) * 4096  # 1 MiB; the stream is this block repeated
PATTERN = memoryview(BLOCK * 2)  # any window of up to 1 MiB at any offset is a slice of this
MEMORY_BUDGET_KB = 64 * 1024  # the proxy's peak may grow at most this much above its start
PAUSE = 1.0  # how long the slow side stops reading
UPSTREAM_PAUSE = 2.0  # uploads: checks run while the upstream sleeps, so leave room for a loaded machine


def expected(offset: int, n: int) -> memoryview:
    start = offset % MiB
    return PATTERN[start:start + n]


# -- the upstream ------------------------------------------------------------------------------------
@dataclass
class StreamRequest:
    closed: threading.Event  # the connection that carried it has ended
    path: bytes = b""
    sent: int = 0  # download body bytes handed to the kernel
    received: int = 0  # upload body bytes received
    corrupt_at: int | None = None


class Streamer:
    """`GET /down/N` answers N pattern bytes (Content-Length); `POST /up` checks the body against the
    pattern and answers `<bytes received> <first bad offset or ->`; `?pause=S` on an upload stops reading
    for S seconds after the head."""

    def __init__(self) -> None:
        self.requests: list[StreamRequest] = []

    def __call__(self, conn: socket.socket) -> None:
        closed = threading.Event()
        parser = httptools.HttpRequestParser(_StreamSink(self, closed, conn))
        buf = bytearray(MiB)
        view = memoryview(buf)
        try:
            while n := conn.recv_into(buf):
                parser.feed_data(view[:n])
        except (OSError, httptools.HttpParserError):
            pass
        finally:
            closed.set()

    def find(self, path: bytes) -> StreamRequest | None:
        found = [r for r in self.requests if r.path == path]
        assert len(found) <= 1, found
        return found[0] if found else None

    def wait_for(self, path: bytes, timeout: float = 5.0) -> StreamRequest:
        deadline = time.monotonic() + timeout
        while (req := self.find(path)) is None:
            assert time.monotonic() < deadline, f"{path!r} never reached the upstream"
            time.sleep(0.01)
        return req


class _StreamSink:
    def __init__(self, up: Streamer, closed: threading.Event, conn: socket.socket) -> None:
        self.up = up
        self.closed = closed
        self.conn = conn
        self.rec = StreamRequest(closed)
        self.url = b""

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.rec = StreamRequest(self.closed, self.url)
        self.up.requests.append(self.rec)
        query = self.rec.path.partition(b"?")[2]
        for param in query.split(b"&"):
            if param.startswith(b"pause="):
                time.sleep(float(param[6:]))

    def on_body(self, body: bytes) -> None:
        rec = self.rec
        off = 0
        while off < len(body):  # compare in windows of at most 1 MiB
            piece = body[off:off + MiB]
            if rec.corrupt_at is None and piece != expected(rec.received, len(piece)):
                rec.corrupt_at = rec.received
            rec.received += len(piece)
            off += len(piece)

    def on_message_complete(self) -> None:
        rec = self.rec
        path = rec.path.partition(b"?")[0]
        if path.startswith(b"/down/"):
            total = int(path[6:])
            self.conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
            while rec.sent < total:
                n = min(total - rec.sent, 256 * 1024)
                self.conn.sendall(expected(rec.sent, n))
                rec.sent += n
        else:
            bad = b"-" if rec.corrupt_at is None else b"%d" % rec.corrupt_at
            body = b"%d %s" % (rec.received, bad)
            self.conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


# -- fixtures ------------------------------------------------------------------------------------------
@dataclass
class Env:
    proxy: Proxy
    port: int
    up: Streamer
    rss0_kb: int

    def peak_growth_kb(self) -> int:
        return self.proxy.hwm_kb() - self.rss0_kb


@pytest.fixture(scope="module")
def env(loop_name: str) -> Iterator[Env]:
    up = Streamer()
    with RawUpstream(up) as raw_up:
        admin, port = free_port(), free_port()
        cfg = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - cluster: stream
        timeout: off
clusters:
  - name: stream
    endpoints: [127.0.0.1:{raw_up.port}]
"""
        p = Proxy(cfg, admin, loop=loop_name).start()
        http(port, path="/down/1000")  # warm up: first request paths, pool, metrics
        yield Env(p, port, up, p.rss_kb())
        assert p.stop() == 0


@pytest.fixture(autouse=True)
def healthy_after(env: Env) -> Iterator[None]:
    yield
    assert env.proxy.alive(), env.proxy.logs()
    r = http(env.port, path="/down/1000")
    assert r.status == 200 and r.body == expected(0, 1000)
    assert env.peak_growth_kb() < MEMORY_BUDGET_KB, (env.rss0_kb, env.proxy.hwm_kb())


def uid(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def held_back(progress: Callable[[], int], within: float) -> bool:
    """Whether the sender's progress comes to a stop (< 1 MiB in 0.2 s) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = progress()
        time.sleep(0.2)
        if progress() - before < MiB:
            return True
    return False


def wait_no_active_requests(p: Proxy, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while p.metric("meshpy_downstream_rq_active", listener="web") != 0:
        assert time.monotonic() < deadline, "an abandoned request is still active in the proxy"
        time.sleep(0.05)
    assert p.metric("meshpy_upstream_rq_active", cluster="stream") == 0


# -- tests ---------------------------------------------------------------------------------------------
def test_download_1gib_slow_reader(env: Env) -> None:
    path = f"/down/{GiB}?{uid('down')}".encode()
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)  # keep the kernel's share small
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: %d\r\n" % GiB in head.lower()
        rec = env.up.wait_for(path)
        # The slow phase: the client reads nothing while the upstream keeps sending.
        t0 = time.monotonic()
        rss_during = []
        while time.monotonic() - t0 < PAUSE:
            rss_during.append(env.proxy.rss_kb())
            time.sleep(0.1)
        assert held_back(lambda: rec.sent, 3), "the upstream is not held back while the client does not read"
        assert rec.sent < 128 * MiB, rec.sent  # only what socket buffers hold
        assert max(rss_during) - env.rss0_kb < MEMORY_BUDGET_KB, (env.rss0_kb, rss_during)
        # Then as fast as possible, checking every byte against the pattern.
        buf = bytearray(MiB)
        got = 0
        while got < GiB:
            n = s.recv_into(buf)
            assert n, f"connection closed after {got} bytes"
            assert buf[:n] == expected(got, n), f"corrupt near byte {got}"
            got += n
        assert got == GiB
        assert rec.sent == GiB
        # The connection is still a keep-alive one.
        s.sendall(b"GET /down/10 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s).body == expected(0, 10)
    assert env.peak_growth_kb() < MEMORY_BUDGET_KB


def upload(env: Env, chunked: bool) -> None:
    path = f"/up?pause={UPSTREAM_PAUSE}&{uid('up')}".encode()
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % GiB
    progress = [0]
    errors: list[BaseException] = []

    def send_body(s: socket.socket) -> None:
        try:
            for _ in range(GiB // MiB):
                if chunked:
                    s.sendall(b"%x\r\n" % MiB)
                s.sendall(BLOCK)
                if chunked:
                    s.sendall(b"\r\n")
                progress[0] += MiB
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    with socket.create_connection(("127.0.0.1", env.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
        sender = threading.Thread(target=send_body, args=(s,), daemon=True)
        sender.start()
        # The slow phase: the upstream reads nothing for PAUSE seconds after the head.
        rec = env.up.wait_for(path)
        t0 = time.monotonic()
        assert held_back(lambda: progress[0], UPSTREAM_PAUSE - 0.3), \
            "the client is not held back while the upstream does not read"
        assert rec.received == 0 and time.monotonic() - t0 < UPSTREAM_PAUSE, "checked too late"
        assert progress[0] < 128 * MiB, progress[0]  # only what socket buffers hold
        assert env.proxy.rss_kb() - env.rss0_kb < MEMORY_BUDGET_KB
        r = read_response(s, timeout=60)
        sender.join(10)
        assert not errors, errors
        assert r.status == 200
        assert r.body == b"%d -" % GiB, r.body  # every byte arrived, in order, unchanged
        assert progress[0] == GiB
    assert env.peak_growth_kb() < MEMORY_BUDGET_KB


def test_upload_1gib_content_length(env: Env) -> None:
    upload(env, chunked=False)


def test_upload_1gib_chunked(env: Env) -> None:
    upload(env, chunked=True)


def test_client_disconnects_mid_download(env: Env) -> None:
    path = f"/down/{64 * GiB}?{uid('abandoned')}".encode()
    p = env.proxy
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        got = 0
        while got < 32 * MiB:
            chunk = s.recv(MiB)
            assert chunk
            got += len(chunk)
        rec = env.up.wait_for(path)
        assert not rec.closed.is_set()
    # The proxy drops the upstream side too: the upstream's send fails and its connection ends.
    assert rec.closed.wait(5), "the upstream connection outlived the client"
    assert rec.sent < 64 * GiB
    wait_no_active_requests(p)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_disconnects_mid_upload(env: Env, chunked: bool) -> None:
    """The client closes (a FIN, not a half-close after a complete request) in the middle of the
    body: the request can never complete, so the proxy closes the upstream connection too."""
    path = f"/up?{uid('abandoned-upload')}".encode()
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % GiB
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as s:
        s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
        for _ in range(32):
            s.sendall((b"%x\r\n%s\r\n" % (MiB, BLOCK)) if chunked else BLOCK)
        rec = env.up.wait_for(path)
        deadline = time.monotonic() + 5
        while rec.received < 32 * MiB:  # everything sent so far went through
            assert time.monotonic() < deadline, rec.received
            time.sleep(0.01)
    assert rec.closed.wait(5), "the upstream connection outlived the client"
    assert rec.received == 32 * MiB and rec.corrupt_at is None
    wait_no_active_requests(env.proxy)
