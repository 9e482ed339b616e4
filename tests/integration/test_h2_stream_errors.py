"""HTTP/2 requests that are malformed in their framing (RFC 9113 8.1.1), on both loops: each is a
stream error that ends that stream alone, while a slow request on the same connection completes; and
header blocks that never end (CONTINUATION without END_HEADERS) are bounded in size and in time."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import h2.errors
import h2.events
import pytest
from h2peer import H2Peer, request_headers
from hyperframe.frame import ContinuationFrame, HeadersFrame
from kit import DemoUpstream, Proxy, fleet_config, free_port

PROTOCOL_ERROR = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)


@pytest.fixture(scope="module")
def proxy(loop_name: str, demo: DemoUpstream) -> Iterator[tuple[Proxy, int]]:
    port, admin = free_port(), free_port()
    limits = "request_headers_timeout: 1s\n    max_request_headers: 16KiB"
    cfg = fleet_config(admin, port, [demo.port], listener=limits)
    p = Proxy(cfg, admin, loop=loop_name).start()
    yield p, port
    assert p.stop() == 0


def _slow_beside(port: int, bad: list[tuple[bytes, bytes]], body: bytes | None, end: bool = True) -> H2Peer:
    """A slow request, then `bad` on the same connection: `bad` is reset, the slow one completes."""
    peer = H2Peer(port)
    slow = peer.request(request_headers(port, "/delay/300"))
    sid = peer.request(request_headers(port, "/bad", "POST", bad), body, end)
    assert peer.wait(lambda _: peer.reset_of(sid) is not None, 5), peer.events
    assert peer.reset_of(sid) == PROTOCOL_ERROR
    status, _, answer = peer.response(slow)
    assert (status, answer) == (200, b"delayed\n") and peer.goaway() is None
    return peer


def test_end_stream_with_a_content_length(proxy: tuple[Proxy, int]) -> None:
    """Once forwarded with that length and no body: the origin waited 15 s for it."""
    p, port = proxy
    before = p.metric("meshpy_upstream_rq_total")
    _slow_beside(port, [(b"content-length", b"10")], None).close()
    assert p.metric("meshpy_upstream_rq_total") - before == 1  # the slow one only


@pytest.mark.parametrize(("declared", "sent"), [(b"5", b"0123456789"), (b"10", b"01234")])
def test_body_not_matching_its_content_length(proxy: tuple[Proxy, int], declared: bytes, sent: bytes) -> None:
    _slow_beside(proxy[1], [(b"content-length", declared)], sent).close()


def _block(port: int, frames: int, size: int) -> tuple[socket.socket, bool, float]:
    """HEADERS without END_HEADERS, then `frames` CONTINUATION frames of `size` bytes, none ending the
    block. Returns the socket, whether the proxy closed it, and when (seconds after the last frame)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    first = HeadersFrame(1)
    first.data = b"\x82\x86\x84"  # :method GET, :scheme http, :path / (static table)
    first.flags.add("END_STREAM")
    payload = b"\x00" + bytes([0x7F]) + b"\x81\x7f" + b"a" * 8  # filler the block never finishes
    try:
        s.sendall(first.serialize())
        for _ in range(frames):
            cont = ContinuationFrame(1)
            cont.data = (payload * (size // len(payload) + 1))[:size]
            s.sendall(cont.serialize())
    except (BrokenPipeError, ConnectionResetError):
        return s, True, 0.0
    t0 = time.monotonic()
    s.settimeout(5)
    try:
        while s.recv(65536):
            pass
        return s, True, time.monotonic() - t0
    except TimeoutError:
        return s, False, 5.0
    except ConnectionResetError:
        return s, True, time.monotonic() - t0


def test_a_growing_header_block_is_cut_at_the_limit(proxy: tuple[Proxy, int]) -> None:
    """63 CONTINUATION frames of 16 KiB (h2 would hold them all): the connection goes once the block
    passes twice the header limit, long before the headers timeout; memory stays flat."""
    p, port = proxy
    rss0 = p.rss_kb()
    socks = []
    for _ in range(20):
        s, closed, after = _block(port, 63, 16384)
        socks.append(s)
        assert closed and after < 0.9, after
    for s in socks:
        s.close()
    assert p.rss_kb() - rss0 < 20 * 1024, (rss0, p.rss_kb())
    assert p.metric("meshpy_downstream_http2_abuse_total") >= 20


def test_a_parked_header_block_ends_with_the_headers_timeout(proxy: tuple[Proxy, int]) -> None:
    s, closed, after = _block(proxy[1], 1, 1000)
    s.close()
    assert closed and 0.5 < after < 3.0, (closed, after)


def test_a_client_that_never_opens_its_window_is_reset_at_the_idle_timeout(demo: DemoUpstream) -> None:
    """A zero-window stall: the client's stream window is 0 and never grows, so the answer cannot
    move. The stream idle timeout resets that stream (Envoy's answer to the same), the upstream is let
    go, and a new stream on a fresh connection is served."""
    port, admin = free_port(), free_port()
    cfg = fleet_config(admin, port, [demo.port], listener="stream_idle_timeout: 1s")
    p = Proxy(cfg, admin).start()
    try:
        peer = H2Peer(port, window=0)
        start = time.monotonic()
        sid = peer.request(request_headers(port, "/bytes/100000"))
        assert peer.wait(lambda _: peer.reset_of(sid) is not None, 10), peer.events
        assert 0.8 < time.monotonic() - start < 5
        assert p.metric("meshpy_upstream_rq_active", cluster="backend") == 0
        peer.close()
        fresh = H2Peer(port)
        status, _, body = fresh.response(fresh.request(request_headers(port, "/bytes/1000")))
        assert status == 200 and len(body) == 1000
        fresh.close()
    finally:
        p.stop()
