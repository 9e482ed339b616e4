"""The Connector on real loopback sockets, on uvloop and on asyncio's own loop: every connection it opens
has TCP_NODELAY, SO_KEEPALIVE only with a tcp_keepalive (and then the timings given, the kernel's for
the rest); a refused connect fails at once and one that gets no answer fails at the connect timeout.
The pools connect through it, to their current address."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from meshpy.model.types import DEFAULT_HTTP2, TcpKeepalive
from meshpy.ports import UpstreamStream
from meshpy.telemetry.metrics import ClusterStats
from meshpy.transport.connector import Connector
from meshpy.upstream.pool import ConnPool, HostPool
from meshpy.upstream.pool_h2 import Http2HostPool

T = TypeVar("T")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
OPTIONS = {
    "nodelay": (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    "keepalive": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "probes": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    "time": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    "interval": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
}


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    new_loop = LOOPS[request.param]()
    yield new_loop
    new_loop.close()


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """Connections complete in the kernel and wait in the accept queue; closing it resets them."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(10):
            return await coro
    return loop.run_until_complete(bounded())


def options_of(sock: Any) -> dict[str, int]:
    """The options compared: the two switches as booleans, the timings as the kernel reports them."""
    got = {name: sock.getsockopt(level, option) for name, (level, option) in OPTIONS.items()}
    return {**got, "nodelay": int(bool(got["nodelay"])), "keepalive": int(bool(got["keepalive"]))}


class Probe(asyncio.Protocol):
    """Tells when its connection is gone, so a test ends with nothing left open."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


async def options_over(connector: Connector, address: tuple[str, int]) -> dict[str, int]:
    probe = await connector.open(address, Probe)
    assert probe.transport is not None
    try:
        return options_of(probe.transport.get_extra_info("socket"))
    finally:
        probe.transport.close()
        await probe.lost


def test_nodelay_on_and_keepalive_off_without_tcp_keepalive(loop: asyncio.AbstractEventLoop,
                                                             listener: tuple[str, int]) -> None:
    got = run(loop, options_over(Connector(loop, 5.0), listener))
    assert (got["nodelay"], got["keepalive"]) == (1, 0)


def test_tcp_keepalive_sets_each_timing_given(loop: asyncio.AbstractEventLoop,
                                              listener: tuple[str, int]) -> None:
    connector = Connector(loop, 5.0, TcpKeepalive(probes=4, time=45.0, interval=7.0))
    got = run(loop, options_over(connector, listener))
    assert got == {"nodelay": 1, "keepalive": 1, "probes": 4, "time": 45, "interval": 7}


def test_timings_not_given_stay_the_kernels(loop: asyncio.AbstractEventLoop,
                                            listener: tuple[str, int]) -> None:
    with socket.socket() as fresh:
        kernel = options_of(fresh)
    assert kernel["time"] != 45  # (else the check below could not tell)
    got = run(loop, options_over(Connector(loop, 5.0, TcpKeepalive(time=45.0)), listener))
    assert got == {"nodelay": 1, "keepalive": 1, "probes": kernel["probes"], "time": 45,
                   "interval": kernel["interval"]}


def test_a_refused_connect_fails_at_once(loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket() as bound:  # bound but not listening: the kernel answers a SYN with RST
        bound.bind(("127.0.0.1", 0))
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            run(loop, Connector(loop, 5.0).open(bound.getsockname(), Probe))
    assert time.monotonic() - t0 < 2.0


@pytest.fixture
def unanswered() -> Iterator[tuple[str, int]]:
    """A listener whose accept queue is full (backlog 0, one connection waiting in it): the kernel drops
    further SYNs, so a connect to it gets no answer until the client's SYN retry, a second later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        address = sock.getsockname()
        fillers = [socket.socket() for _ in range(3)]
        try:
            for f in fillers:
                f.setblocking(False)
                f.connect_ex(address)
                if f is fillers[0]:
                    assert select.select([], [f], [], 2.0)[1], "the first filler did not connect"
            yield address
        finally:
            for f in fillers:
                f.close()


def test_the_connect_timeout_applies(loop: asyncio.AbstractEventLoop, unanswered: tuple[str, int]) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        run(loop, Connector(loop, 0.3).open(unanswered, Probe))
    assert 0.25 < time.monotonic() - t0 < 0.9  # well before the SYN retry could get through


def test_streams_for_health_checks(loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> tuple[bytes, dict[str, int]]:
        done = asyncio.Event()

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello\n")
            await reader.read()  # until the client closes
            writer.close()
            await writer.wait_closed()
            done.set()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        async with server:
            reader, writer = await Connector(loop, 5.0, TcpKeepalive(probes=2)).streams(
                server.sockets[0].getsockname())
            line = await reader.readline()
            got = options_of(writer.get_extra_info("socket"))
            writer.close()
            await writer.wait_closed()
            await done.wait()
        return line, got

    line, got = run(loop, scenario())
    assert line == b"hello\n"
    assert (got["nodelay"], got["keepalive"], got["probes"]) == (1, 1, 2)


async def checkout(pool: ConnPool) -> UpstreamStream | BaseException:
    got: asyncio.Future[UpstreamStream | BaseException] = asyncio.get_running_loop().create_future()
    conn = pool.checkout(got.set_result)
    return conn if conn is not None else await got


async def settle(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_a_pool_connects_to_its_current_address(loop: asyncio.AbstractEventLoop) -> None:
    """LOGICAL_DNS re-resolution replaces a pool's address: the next connect goes to the new one."""
    with socket.create_server(("127.0.0.1", 0)) as first, socket.create_server(("127.0.0.1", 0)) as second:
        async def scenario() -> list[tuple[str, int]]:
            stats = ClusterStats("c")
            pool = HostPool(loop, first.getsockname(), stats, Connector(loop, 5.0), max_connections=10)
            peers = []
            conns = []
            for address in (first.getsockname(), second.getsockname()):
                pool.address = address
                conn = await checkout(pool)
                assert not isinstance(conn, BaseException)
                conns.append(conn)
                assert options_of(conn.transport.get_extra_info("socket"))["nodelay"] == 1  # type: ignore[attr-defined]
                peers.append(conn.transport.get_extra_info("peername")[:2])  # type: ignore[attr-defined]
            for conn in conns:
                pool.discard(conn)
            await settle(lambda: stats.cx_active == 0)
            pool.close()
            return peers

        assert run(loop, scenario()) == [first.getsockname(), second.getsockname()]


@pytest.mark.parametrize("protocol", ["http1", "http2"])
def test_options_the_kernel_refuses_fail_the_connect(loop: asyncio.AbstractEventLoop,
                                                     listener: tuple[str, int], protocol: str) -> None:
    """The connection is closed and counted as a connect failure; the active gauge is back to zero."""
    async def scenario() -> tuple[BaseException | UpstreamStream, ClusterStats]:
        stats = ClusterStats("c")
        connector = Connector(loop, 5.0, TcpKeepalive(probes=1000))  # above Linux's 127
        pool: ConnPool = HostPool(loop, listener, stats, connector, 10) if protocol == "http1" else \
            Http2HostPool(loop, listener, stats, connector, 10, DEFAULT_HTTP2)
        got = await checkout(pool)
        await settle(lambda: stats.cx_active == 0 and stats.cx_connect_fail == 1)
        pool.close()
        return got, stats

    got, stats = run(loop, scenario())
    assert isinstance(got, OSError)
    assert (stats.cx_total, stats.cx_active, stats.cx_connect_fail) == (1, 0, 1)
