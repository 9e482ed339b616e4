"""TCP (L4) proxying end to end, on uvloop and on the standard loop: bytes both ways, half-close,
backpressure, the idle timeout, upstream connect failures and the access log of a TCP session."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kit import Proxy, RawUpstream, free_port, is_closed

MiB = 1 << 20
BULK = 200 * MiB
# Loopback socket buffers (both ends of both sockets, autotuned) hold several MiB; the proxy itself may
# hold a few writes' worth. Anything near the transfer size means the proxy read without regard to its
# peer. Measured: ~9 MiB in flight and no RSS growth to speak of.
MAX_IN_FLIGHT = 48 * MiB
MAX_RSS_GROWTH_KB = 48 * 1024


@dataclass
class Session:
    """What an upstream handler saw on one connection."""

    received: bytearray = field(default_factory=bytearray)
    saw_eof: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)


class Recorder:
    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.lock = threading.Lock()

    def new(self) -> Session:
        s = Session()
        with self.lock:
            self.sessions.append(s)
        return s

    def last(self, timeout: float = 5.0) -> Session:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.sessions:
                    return self.sessions[-1]
            time.sleep(0.01)
        raise TimeoutError("the upstream saw no connection")


class Echo(Recorder):
    """Echoes every byte; on EOF from the proxy answers `bye <n>` (n = bytes seen) and closes."""

    def __call__(self, conn: socket.socket) -> None:
        s = self.new()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                s.received += data
                conn.sendall(data)
            s.saw_eof.set()
            conn.sendall(b"bye %d" % len(s.received))
        finally:
            s.closed.set()


class Greeter(Recorder):
    """Says hello and half-closes at once, then keeps reading what the client still sends."""

    def __call__(self, conn: socket.socket) -> None:
        s = self.new()
        try:
            conn.sendall(b"hello\n")
            conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                s.received += data
            s.saw_eof.set()
        finally:
            s.closed.set()


class Bulk(Recorder):
    """`DOWN` sends BULK bytes then half-closes; `UP` stalls for `stall` seconds, then reads to EOF and
    answers the byte count. `sent` counts what the upstream has pushed so far (DOWN)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        # Far longer than the test's look at 0.8 s: on a loaded machine a sleep overshoots, and a
        # stall that ended before the look would let everything through and fail a correct proxy.
        self.stall = 3.0
        self.modes: list[bytes] = []  # the first bytes of each connection, for a failure's message

    def __call__(self, conn: socket.socket) -> None:
        s = self.new()
        try:
            mode = conn.recv(5)
            self.modes.append(mode)
            if mode == b"DOWN\n":
                chunk = b"d" * MiB
                for _ in range(BULK // MiB):
                    conn.sendall(chunk)
                    self.sent += MiB
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
            elif mode == b"UP\n\n\n":
                time.sleep(self.stall)
                n = 0
                while True:
                    data = conn.recv(MiB)
                    if not data:
                        break
                    n += len(data)
                conn.sendall(b"%d" % n)
            s.saw_eof.set()
        finally:
            s.closed.set()


class Blackhole:
    """A port whose accept queue is full: SYNs are dropped, so connecting hangs until a timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = int(self.sock.getsockname()[1])
        self.fillers: list[socket.socket] = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(f)
        time.sleep(0.1)

    def close(self) -> None:
        for s in [*self.fillers, self.sock]:
            s.close()


@dataclass
class Env:
    proxy: Proxy
    ports: dict[str, int]
    echo: Echo
    greeter: Greeter
    bulk: Bulk
    access_log: Path
    upstreams: dict[str, int]
    late: Blackhole

    def connect(self, listener: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=10)

    def log_lines(self) -> list[dict[str, object]]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def wait_log(self, pred: object, timeout: float = 5.0) -> dict[str, object]:
        assert callable(pred)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if pred(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no matching access log line in {self.log_lines()}")


def config(admin: int, ports: dict[str, int], up: dict[str, int], access_log: Path) -> str:
    def tcp(name: str, cluster: str, idle_timeout: str | None = None) -> str:
        idle = f"\n    idle_timeout: {idle_timeout}" if idle_timeout else ""
        return f"""
  - name: {name}
    address: 127.0.0.1:{ports[name]}
    protocol: tcp
    cluster: {cluster}
    access_log: {access_log}{idle}"""

    listeners = "".join([
        tcp("echo", "echo"),
        tcp("greet", "greet"),
        tcp("bulk", "bulk", "off"),
        tcp("idle", "echo", "1s"),
        tcp("refused", "refused"),
        tcp("blackhole", "blackhole"),
        tcp("late", "late", "0.3s"),
    ])
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
grace_time: 1s
listeners:{listeners}
clusters:
  echo: 127.0.0.1:{up["echo"]}
  greet: 127.0.0.1:{up["greet"]}
  bulk: 127.0.0.1:{up["bulk"]}
  refused: 127.0.0.1:{up["refused"]}
  blackhole:
    endpoints: [127.0.0.1:{up["blackhole"]}]
    connect_timeout: 0.5s
  late:
    endpoints: [127.0.0.1:{up["late"]}]
    connect_timeout: 5s
"""


@pytest.fixture(scope="module")
def env(loop_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    echo, greeter, bulk = Echo(), Greeter(), Bulk()
    hole, late = Blackhole(), Blackhole()
    access_log = tmp_path_factory.mktemp("tcp") / "access.log"
    try:
        with RawUpstream(echo) as e, RawUpstream(greeter) as g, RawUpstream(bulk) as b:
            admin = free_port()
            names = ("echo", "greet", "bulk", "idle", "refused", "blackhole", "late")
            ports = {n: free_port() for n in names}
            up = {"echo": e.port, "greet": g.port, "bulk": b.port, "refused": free_port(),
                  "blackhole": hole.port, "late": late.port}
            p = Proxy(config(admin, ports, up, access_log), admin, loop=loop_name).start()
            try:
                yield Env(p, ports, echo, greeter, bulk, access_log, up, late)
            finally:
                assert p.stop() == 0, p.logs()
    finally:
        hole.close()
        late.close()


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until EOF (fails on a timeout: the proxy must close)."""
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(out)
        out += data


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise ConnectionError(f"EOF after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def wait_metric(p: Proxy, value: float, name: str, timeout: float = 5.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.metric(name, **labels) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} is {p.metric(name, **labels)}, not {value}")


def test_bytes_both_ways(env: Env) -> None:
    with env.connect("echo") as s:
        # Sent right after connecting, likely before the proxy has its upstream connection: held, not lost.
        s.sendall(b"first")
        assert recv_exactly(s, 5) == b"first"
        payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        assert recv_exactly(s, len(payload)) == payload
        for i in range(20):  # many small round trips on one connection
            msg = b"ping %d\n" % i
            s.sendall(msg)
            assert recv_exactly(s, len(msg)) == msg
    session = env.echo.last()
    assert session.closed.wait(5), "closing the client must close the upstream connection"
    assert session.received.startswith(b"first" + payload)


def test_half_close_from_client(env: Env) -> None:
    with env.connect("echo") as s:
        s.sendall(b"question")
        assert recv_exactly(s, 8) == b"question"
        session = env.echo.last()
        s.shutdown(socket.SHUT_WR)
        assert session.saw_eof.wait(5), "the client's FIN must reach the upstream"
        # The upstream answers after our EOF; the proxy still carries it, then closes our side.
        assert recv_all(s) == b"bye 8"
        assert session.closed.wait(5)
    wait_metric(env.proxy, 0, "meshpy_downstream_cx_active", listener="echo")
    wait_metric(env.proxy, 0, "meshpy_upstream_cx_active", cluster="echo")


def test_data_and_eof_sent_at_once(env: Env) -> None:
    """Bytes and FIN before the proxy has its upstream connection: both are delivered, in order."""
    with env.connect("echo") as s:
        s.sendall(b"all at once")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"all at once" + b"bye 11"
    session = env.echo.last()
    assert session.saw_eof.wait(5) and bytes(session.received) == b"all at once"


def test_half_close_from_upstream(env: Env) -> None:
    with env.connect("greet") as s:
        s.settimeout(5)
        assert recv_all(s) == b"hello\n"  # the upstream's FIN reaches us ...
        s.sendall(b"still talking")  # ... and our direction stays open
        s.shutdown(socket.SHUT_WR)
        session = env.greeter.last()
        assert session.saw_eof.wait(5)
        assert bytes(session.received) == b"still talking"
        assert is_closed(s, 5)


def test_backpressure_download_to_slow_reader(env: Env) -> None:
    p = env.proxy
    base_kb = p.rss_kb()
    env.bulk.sent = 0
    with env.connect("bulk") as s:
        s.sendall(b"DOWN\n")
        time.sleep(1.0)  # not reading at all: the proxy must stop reading from the upstream
        in_flight = env.bulk.sent
        assert in_flight < MAX_IN_FLIGHT, f"{in_flight / MiB:.0f} MiB pushed to a client that reads nothing"
        stalled_kb = p.rss_kb()
        got = 0
        s.settimeout(10)
        next_pause = 40 * MiB
        while True:
            data = s.recv(MiB)
            if not data:
                break
            got += len(data)
            if got >= next_pause:  # a reader that keeps stalling
                next_pause += 40 * MiB
                time.sleep(0.1)
                assert env.bulk.sent - got < MAX_IN_FLIGHT
    assert got == BULK
    assert stalled_kb - base_kb < MAX_RSS_GROWTH_KB
    assert p.hwm_kb() - base_kb < MAX_RSS_GROWTH_KB, f"peak RSS {p.hwm_kb()} KiB, base {base_kb} KiB"


def test_backpressure_upload_to_slow_upstream(env: Env) -> None:
    p = env.proxy
    base_kb = p.rss_kb()
    sent = [0]

    def push(s: socket.socket) -> None:
        chunk = b"u" * MiB
        with contextlib.suppress(OSError):
            for _ in range(BULK // MiB):
                s.sendall(chunk)
                sent[0] += MiB
            s.shutdown(socket.SHUT_WR)

    with env.connect("bulk") as s:
        s.sendall(b"UP\n\n\n")
        pusher = threading.Thread(target=push, args=(s,), daemon=True)
        pusher.start()
        time.sleep(0.8)  # the upstream reads nothing for 3 s
        assert sent[0] < MAX_IN_FLIGHT, (
            f"{sent[0] / MiB:.0f} MiB accepted for an upstream that reads nothing (the upstream saw "
            f"{env.bulk.modes[-1:]!r}; the proxy grew by {p.rss_kb() - base_kb} KiB)")
        assert p.rss_kb() - base_kb < MAX_RSS_GROWTH_KB
        assert recv_all(s, timeout=30) == b"%d" % BULK
        pusher.join(5)
    assert p.hwm_kb() - base_kb < MAX_RSS_GROWTH_KB


def test_idle_timeout_closes_silent_pair(env: Env) -> None:
    with env.connect("idle") as s:
        # Traffic every 0.4 s keeps the pair alive well past the 1 s timeout.
        ticks = 0
        t_end = time.monotonic() + 1.8
        while time.monotonic() < t_end:
            s.sendall(b"tick")
            assert recv_exactly(s, 4) == b"tick"
            ticks += 1
            time.sleep(0.4)
        session = env.echo.last()
        silent_since = time.monotonic()
        assert is_closed(s, timeout=3.0), "the pair must close after 1 s without traffic"
        silence = time.monotonic() - silent_since
        # The timer is lazy (re-armed per interval), so the close comes 1-2 timeouts after the last byte.
        assert 0.9 <= silence <= 2.5, silence
        assert session.closed.wait(2), "the upstream side of the pair must be closed too"
        assert bytes(session.received) == b"tick" * ticks
    line = env.wait_log(lambda e: e["response_flags"] == "SI")
    assert line["bytes_received"] == line["bytes_sent"] == 4 * ticks


def test_refused_upstream_closes_client_promptly(env: Env) -> None:
    t0 = time.monotonic()
    with env.connect("refused") as s:
        s.sendall(b"anyone?")
        assert is_closed(s, timeout=3.0)
    assert time.monotonic() - t0 < 1.0
    assert env.proxy.metric("meshpy_upstream_cx_connect_fail_total", cluster="refused") >= 1
    refused = f"127.0.0.1:{env.upstreams['refused']}"
    line = env.wait_log(lambda e: e["upstream_host"] == refused)
    assert line["response_flags"] == "UF"
    assert line["bytes_sent"] == 0


def test_connect_timeout_closes_client(env: Env) -> None:
    before = env.proxy.metric("meshpy_upstream_cx_connect_fail_total", cluster="blackhole")
    t0 = time.monotonic()
    with env.connect("blackhole") as s:
        assert is_closed(s, timeout=3.0)
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < 1.5, f"closed after {elapsed:.2f}s with a 0.5s connect_timeout"
    wait_metric(env.proxy, before + 1, "meshpy_upstream_cx_connect_fail_total", cluster="blackhole")
    assert env.proxy.alive()


def test_access_log_line_for_session(env: Env) -> None:
    with env.connect("echo") as s:
        s.sendall(b"0123456789")
        assert recv_exactly(s, 10) == b"0123456789"
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"bye 10"
    line = env.wait_log(lambda e: e["bytes_received"] == 10 and e["bytes_sent"] == 16)
    assert line["protocol"] == "TCP"
    assert line["response_code"] == 0
    assert line["response_flags"] == "-"
    assert line["downstream_remote_address"] == "127.0.0.1"
    assert line["method"] is None and line["path"] is None and line["authority"] is None
    assert line["upstream_host"] == f"127.0.0.1:{env.upstreams['echo']}"
    assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0
    assert isinstance(line["start_time"], str) and line["start_time"].endswith("Z")


def test_upstream_connect_completing_after_client_left(env: Env) -> None:
    """The client is gone (idle timeout 0.3 s) while the upstream connect still waits for a SYN-ACK;
    when the upstream finally accepts, the proxy closes that connection, and its gauges end at zero."""
    p = env.proxy
    with env.connect("late") as s:
        assert is_closed(s, timeout=3.0)
    assert p.metric("meshpy_upstream_cx_total", cluster="late") == 0
    fillers = {f.getsockname() for f in env.late.fillers}
    env.late.sock.settimeout(0.1)
    accepted: list[socket.socket] = []
    from_proxy: socket.socket | None = None
    deadline = time.monotonic() + 6
    try:
        while from_proxy is None:  # make room in the accept queue until the proxy's SYN retry gets in
            assert time.monotonic() < deadline, "the proxy's connect never completed"
            with contextlib.suppress(TimeoutError):
                conn, peer = env.late.sock.accept()
                accepted.append(conn)
                if peer not in fillers:
                    from_proxy = conn
        assert is_closed(from_proxy, timeout=3.0), "the proxy must close a connection nobody wants"
        wait_metric(p, 0, "meshpy_upstream_cx_active", cluster="late")
        assert p.metric("meshpy_upstream_cx_total", cluster="late") == 1
        assert p.metric("meshpy_upstream_cx_connect_fail_total", cluster="late") == 0
        assert p.metric("meshpy_downstream_cx_active", listener="late") == 0
    finally:
        for a in accepted:
            a.close()
