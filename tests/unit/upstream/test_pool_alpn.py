"""The pool of a cluster of protocol auto (meshpy.upstream.pool_alpn) against real TLS servers on
loopback, on uvloop and on asyncio's own loop: the codec is what ALPN agreed on (HTTP/2 to a server that
says h2, HTTP/1.1 to one that says http/1.1 or nothing), requests waiting for the first connect are
served by it, HTTP/2 multiplexes and HTTP/1.1 keeps connections alive, a host that starts speaking the
other protocol is followed, and the counts the circuit breakers read are right across both kinds."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from alpn_upstream import AlpnUpstream
from pki import Ca, Issued, make_ca

from meshpy.errors import ConfigError
from meshpy.model.tls import AUTO_ALPN, ClientTls, Pem, Validation
from meshpy.model.types import DEFAULT_HTTP2, Address, Cluster, Endpoint
from meshpy.ports import UpstreamStream
from meshpy.telemetry.metrics import ClusterStats, Metrics
from meshpy.transport.connector import Connector
from meshpy.transport.tls_contexts import client_context
from meshpy.transport.upstream_h2_stream import Http2UpstreamStream
from meshpy.transport.upstream_http1 import UpstreamHttp1
from meshpy.upstream.cluster import ClusterManager
from meshpy.upstream.pool import PoolOverflow
from meshpy.upstream.pool_alpn import AlpnHostPool

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
BOTH, H1_ONLY, NONE = ("h2", "http/1.1"), ("http/1.1",), ()


@dataclass
class Pki:
    ca: Ca
    server: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = make_ca(tmp_path_factory.mktemp("alpn-pool"))
    return Pki(ca, ca.issue("upstream.internal", dns=("upstream.internal",)))


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    new_loop = LOOPS[request.param]()
    yield new_loop
    new_loop.close()


class Limits:
    """The cluster-wide circuit breakers over one pool (what ClusterRuntime is for its hosts)."""

    def __init__(self, pending_limit: int = 1 << 62) -> None:
        self.busy = 0
        self.rq_limit = self.cx_limit = 1 << 62
        self.pending_limit = pending_limit
        self.pool: AlpnHostPool | None = None

    def connections(self) -> int:
        return self.pool.total if self.pool is not None else 0

    def pending(self) -> int:
        return self.pool.pending if self.pool is not None else 0


def connector(loop: asyncio.AbstractEventLoop, pki: Pki, alpn: tuple[str, ...] = AUTO_ALPN) -> Connector:
    tls = ClientTls(sni="upstream.internal", validation=Validation(ca=Pem(path=str(pki.ca.path))), alpn=alpn)
    return Connector(loop, 5.0, tls=client_context(tls, "tls"))


def new_pool(loop: asyncio.AbstractEventLoop, pki: Pki, port: int, limits: Limits | None = None,
             max_connections: int = 100) -> AlpnHostPool:
    limits = limits if limits is not None else Limits()
    pool = AlpnHostPool(loop, ("127.0.0.1", port), ClusterStats("auto"), connector(loop, pki),
                        max_connections, DEFAULT_HTTP2, limits)
    limits.pool = pool
    return pool


class Call:
    """One GET through an upstream stream, as an exchange drives one (both sides of the ports)."""

    method = b"GET"
    up_chunked = False

    def __init__(self, path: str) -> None:
        self.up_target = path.encode()
        self.up_head_bytes = b"GET %s HTTP/1.1\r\nhost: upstream.internal\r\n\r\n" % self.up_target
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.fields = b""
        self.body = b""

    def upstream_fields(self) -> list[tuple[bytes, bytes]]:
        return [(b"host", b"upstream.internal")]

    def upstream_head(self) -> bytes:
        return self.up_head_bytes

    def up_head(self, status: int, fields: bytes, keep_alive: bool) -> None:
        self.status, self.fields = status, fields

    def up_body(self, data: bytes) -> None:
        self.body += data

    def up_end(self, keep_alive: bool) -> None:
        self.done.set_result(None)

    def up_failed(self, exc: BaseException | None, protocol_error: bool) -> None:
        self.done.set_exception(exc or ConnectionResetError("upstream failed"))

    def up_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None: ...
    def up_pause_writing(self) -> None: ...
    def up_resume_writing(self) -> None: ...
    def flush(self) -> None: ...

    @property
    def protocol(self) -> str:
        found = re.search(rb"x-protocol: (\S+)", self.fields)
        return found.group(1).decode() if found else ""


async def checkout(pool: AlpnHostPool) -> UpstreamStream:
    got: asyncio.Future[UpstreamStream | BaseException] = asyncio.get_running_loop().create_future()
    conn = pool.checkout(got.set_result)
    result = conn if conn is not None else await got
    if isinstance(result, BaseException):
        raise result
    return result


async def call(pool: AlpnHostPool, conn: UpstreamStream, path: str = "/") -> Call:
    c = Call(path)
    conn.attach(c, False)
    conn.send_request(c, None, True)
    await c.done
    conn.detach()
    pool.release(conn)
    return c


async def fetch(pool: AlpnHostPool, path: str = "/") -> tuple[UpstreamStream, Call]:
    conn = await checkout(pool)
    return conn, await call(pool, conn, path)


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


def run(loop: asyncio.AbstractEventLoop, scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(15):
            await scenario()
        # Closed connections finish closing (TLS's close_notify, the transports' last callbacks)
        # before the loop goes.
        await asyncio.sleep(0.1)
    loop.run_until_complete(bounded())


@pytest.mark.parametrize(("offered", "expected"), [(BOTH, "h2"), (H1_ONLY, "http/1.1"), (NONE, "http/1.1")],
                         ids=["h2-and-http1", "http1-only", "no-alpn"])
def test_the_codec_is_what_alpn_agreed_on(loop: asyncio.AbstractEventLoop, pki: Pki, offered: tuple[str, ...],
                                          expected: str) -> None:
    async def scenario() -> None:
        server = await AlpnUpstream(pki.server, offered).serve()
        pool = new_pool(loop, pki, server.port)
        try:
            conn, c = await fetch(pool)
            assert (c.status, c.protocol) == (200, expected)
            assert server.connections == [expected]
            h2 = expected == "h2"
            assert isinstance(conn, Http2UpstreamStream if h2 else UpstreamHttp1)
            assert pool.protocol == ("http2" if h2 else "http1")
            assert (pool.stats.cx_http2_total, pool.stats.cx_http1_total) == ((1, 0) if h2 else (0, 1))
            assert (pool.total, pool.busy, pool.pending, pool.idle_count) == (1, 0, 0, 1)
        finally:
            pool.close()
            await server.aclose()

    run(loop, scenario)


def test_requests_waiting_for_the_first_answer_share_one_http2_connection(loop: asyncio.AbstractEventLoop,
                                                                           pki: Pki) -> None:
    async def scenario() -> None:
        server = await AlpnUpstream(pki.server, BOTH).serve()
        pool = new_pool(loop, pki, server.port)
        try:
            checkouts = [asyncio.ensure_future(checkout(pool)) for _ in range(30)]
            await asyncio.sleep(0)
            assert (pool.pending, pool.total) == (30, 1)  # one connect, for all of them
            conns = await asyncio.gather(*checkouts)
            assert all(isinstance(c, Http2UpstreamStream) for c in conns)
            assert (pool.busy, pool.pending) == (30, 0)
            calls = await asyncio.gather(*(call(pool, c, "/slow/50") for c in conns))
            assert {c.protocol for c in calls} == {"h2"}
            assert server.connections == ["h2"]
            assert (pool.busy, pool.total, pool.idle_count) == (0, 1, 1)
        finally:
            pool.close()
            await server.aclose()

    run(loop, scenario)


def test_http1_connections_are_kept_alive_and_opened_as_needed(loop: asyncio.AbstractEventLoop,
                                                               pki: Pki) -> None:
    async def scenario() -> None:
        server = await AlpnUpstream(pki.server, H1_ONLY).serve()
        pool = new_pool(loop, pki, server.port)
        try:
            for _ in range(3):
                _, c = await fetch(pool)
                assert (c.protocol, c.body) == ("http/1.1", b"http/1.1 1\n")  # the same connection
            conns = await asyncio.gather(*(checkout(pool) for _ in range(3)))
            assert len({id(c) for c in conns}) == 3 and pool.busy == 3
            await asyncio.gather(*(call(pool, c) for c in conns))
            assert server.connections == ["http/1.1"] * 3
            assert (pool.total, pool.idle_count, pool.stats.cx_http1_total) == (3, 3, 3)
        finally:
            pool.close()
            await server.aclose()

    run(loop, scenario)


def test_a_host_that_changes_protocol_is_followed(loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    """HTTP/2 to HTTP/1.1 and back on one address: each new connection joins the pool of what it
    speaks, and the request that asked for it is served there."""

    async def scenario() -> None:
        server = await AlpnUpstream(pki.server, BOTH).serve()
        port = server.port
        pool = new_pool(loop, pki, port)
        try:
            assert (await fetch(pool))[1].protocol == "h2"
            for offered, expected, learned in ((H1_ONLY, "http/1.1", "http1"), (BOTH, "h2", "http2"),
                                               (NONE, "http/1.1", "http1")):
                await server.aclose()
                await until(lambda: pool.total == 0)  # the old connections are gone
                server = await AlpnUpstream(pki.server, offered, port=port).serve()
                conns = await asyncio.gather(*(checkout(pool) for _ in range(3)))
                calls = await asyncio.gather(*(call(pool, c) for c in conns))
                assert {c.protocol for c in calls} == {expected}
                assert pool.protocol == learned
                assert (pool.busy, pool.pending) == (0, 0)
            assert pool.stats.cx_connect_fail == 0
        finally:
            pool.close()
            await server.aclose()

    run(loop, scenario)


def test_a_failed_first_connect_fails_every_request_waiting_for_it(loop: asyncio.AbstractEventLoop,
                                                                    pki: Pki) -> None:
    with socket.socket() as bound:  # bound, not listening: the connect is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]

        async def scenario() -> None:
            pool = new_pool(loop, pki, port)
            results = await asyncio.gather(*(checkout(pool) for _ in range(4)), return_exceptions=True)
            assert all(isinstance(r, ConnectionRefusedError) for r in results)
            assert (pool.total, pool.pending, pool.protocol, pool.stats.cx_connect_fail) == (0, 0, None, 1)

        run(loop, scenario)


def test_pending_requests_count_against_the_breaker_while_the_protocol_is_unknown(
        loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    async def scenario() -> None:
        server = await AlpnUpstream(pki.server, BOTH).serve()
        pool = new_pool(loop, pki, server.port, Limits(pending_limit=2))
        try:
            first, second = asyncio.ensure_future(checkout(pool)), asyncio.ensure_future(checkout(pool))
            await asyncio.sleep(0)
            with pytest.raises(PoolOverflow, match="max_pending_requests"):
                await checkout(pool)
            assert pool.stats.rq_pending_overflow == 1
            for conn in await asyncio.gather(first, second):
                pool.release(conn)
        finally:
            pool.close()
            await server.aclose()

    run(loop, scenario)


def test_a_cancelled_waiter_is_not_served_and_the_connection_is_kept(loop: asyncio.AbstractEventLoop,
                                                                      pki: Pki) -> None:
    async def scenario() -> None:
        server = await AlpnUpstream(pki.server, H1_ONLY).serve()
        pool = new_pool(loop, pki, server.port)
        try:
            served: list[object] = []
            assert pool.checkout(served.append) is None
            assert pool.pending == 1
            pool.cancel_waiter(served.append)
            assert pool.pending == 0
            await until(lambda: pool.idle_count == 1)  # the connect ended: its connection waits idle
            assert served == [] and (pool.total, pool.busy) == (1, 0)
        finally:
            pool.close()
            await server.aclose()

    run(loop, scenario)


def test_close_evict_and_a_new_address_reach_both_protocols(loop: asyncio.AbstractEventLoop, pki: Pki,
                                                            tmp_path: Path) -> None:
    async def scenario() -> None:
        h2_server = await AlpnUpstream(pki.server, BOTH).serve()
        h1_server = await AlpnUpstream(pki.server, H1_ONLY).serve()
        pool = new_pool(loop, pki, h2_server.port)
        try:
            assert (await fetch(pool))[1].protocol == "h2"
            pool.address = ("127.0.0.1", h1_server.port)  # LOGICAL_DNS: the next connect goes there
            assert pool.h1.address == pool.h2.address == pool.address
            busy = await checkout(pool)  # a stream on the HTTP/2 connection: it has room
            assert isinstance(busy, Http2UpstreamStream)
            await h2_server.aclose()
            await until(lambda: pool.h2.total == 0)
            conn, c = await fetch(pool)  # a new connection, to the new address: HTTP/1.1
            assert c.protocol == "http/1.1" and isinstance(conn, UpstreamHttp1)
            assert (pool.idle_count, pool.total) == (1, 1)
            pool.evict_idle(loop.time() + 3600, 60.0)
            assert (pool.idle_count, pool.total) == (0, 0)
            assert (await fetch(pool))[1].protocol == "http/1.1"
            pool.close()
            assert pool.closed and pool.h1.closed and pool.h2.closed
            await until(lambda: pool.total == 0)
            assert h1_server.connections == ["http/1.1", "http/1.1"]
        finally:
            pool.close()
            await h1_server.aclose()
            await h2_server.aclose()

    run(loop, scenario)


def test_a_cluster_of_protocol_auto_at_run_time(loop: asyncio.AbstractEventLoop, pki: Pki) -> None:
    """A cluster built without TLS (the Python API: the loaders refuse it) is refused; one with TLS has
    AlpnHostPools, and /clusters shows the protocol and what each endpoint agreed on."""

    async def scenario() -> None:
        manager = ClusterManager(Metrics(), loop)
        with pytest.raises(ConfigError) as err:
            manager.reconcile([Cluster(name="bare", protocol="auto")])
        assert [str(i) for i in err.value.issues] == [
            "clusters[0].protocol: auto needs TLS: ALPN chooses HTTP/2 or HTTP/1.1"]
        server = await AlpnUpstream(pki.server, BOTH).serve()
        tls = ClientTls(sni="upstream.internal", validation=Validation(ca=Pem(path=str(pki.ca.path))),
                        alpn=AUTO_ALPN)
        endpoint = Endpoint(address=Address(host="127.0.0.1", port=server.port))
        manager.commit(manager.reconcile([Cluster(name="auto", protocol="auto", tls=tls,
                                                  endpoints=(endpoint,))]))
        try:
            (view,) = manager.view()
            assert (view["protocol"], view["endpoints"][0]["protocol"]) == ("auto", None)
            host = manager.clusters["auto"].pick()
            assert host is not None and isinstance(host.pool, AlpnHostPool)
            assert (await fetch(host.pool))[1].protocol == "h2"
            assert manager.view()[0]["endpoints"][0]["protocol"] == "http2"
        finally:
            manager.close()
            await server.aclose()

    run(loop, scenario)


def test_discard_and_hand_over_reach_the_pool_that_gave_the_connection_out(loop: asyncio.AbstractEventLoop,
                                                                           pki: Pki) -> None:
    async def scenario() -> None:
        h2_server = await AlpnUpstream(pki.server, BOTH).serve()
        h1_server = await AlpnUpstream(pki.server, H1_ONLY).serve()
        h2_pool, h1_pool = new_pool(loop, pki, h2_server.port), new_pool(loop, pki, h1_server.port)
        try:
            stream = await checkout(h2_pool)
            assert isinstance(stream, Http2UpstreamStream) and (h2_pool.busy, h2_pool.h2.busy) == (1, 1)
            h2_pool.discard(stream)  # a stream cancelled: its connection stays
            assert (h2_pool.busy, h2_pool.total) == (0, 1)
            conn = await checkout(h1_pool)
            assert isinstance(conn, UpstreamHttp1) and (h1_pool.busy, h1_pool.h1.busy) == (1, 1)
            h1_pool.hand_over(conn)  # an upgrade made it a tunnel: it leaves the pool
            assert (h1_pool.busy, h1_pool.total) == (0, 0)
            conn.close()
            conn = await checkout(h1_pool)
            h1_pool.discard(conn)  # not reusable: closed
            assert (h1_pool.busy, h1_pool.total, h1_pool.idle_count) == (0, 0, 0)
            assert h1_server.connections == ["http/1.1", "http/1.1"]
        finally:
            h1_pool.close()
            h2_pool.close()
            await h1_server.aclose()
            await h2_server.aclose()

    run(loop, scenario)
