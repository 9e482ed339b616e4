"""Downstream HTTP/2 through a real meshpy process: curl and h2load as clients, HTTP/1.1 upstreams,
one port for both protocols, and the protocol defences, each seen on the wire by a raw h2 client."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import h2.errors
import h2.events
import h2.settings
import pytest
from h2peer import H2Peer, request_headers
from kit import DemoUpstream, Proxy, eventually, free_port, h2_codec, http, needs_curl

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 1s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    protocol: {protocol}
    access_log: stdout
    max_request_headers: 8KiB
    http2: {{max_concurrent_streams: 20}}
    routes:
      - match: /direct
        direct: {{status: 200, body: "hello direct"}}
      - match: /
        cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:{upstream}]
"""

Peers = Callable[[int], H2Peer]


def start(demo: DemoUpstream, protocol: str = "auto") -> tuple[Proxy, int]:
    port, admin = free_port(), free_port()
    p = Proxy(CONFIG.format(admin=admin, port=port, upstream=demo.port, protocol=protocol), admin).start()
    return p, port


@pytest.fixture
def proxy(demo: DemoUpstream) -> Iterator[tuple[Proxy, int]]:
    p, port = start(demo)
    yield p, port
    p.stop()


@pytest.fixture
def peers() -> Iterator[Peers]:
    made: list[H2Peer] = []

    def make(port: int) -> H2Peer:
        made.append(H2Peer(port))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30,
                          check=False)


@needs_curl
def test_curl_prior_knowledge_and_http1_share_the_port(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    r = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/direct")
    assert r.stdout == b"hello direct\n2", r.stderr
    r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/echo?x=1", "-H", "cookie: a=1",
             "-H", "cookie: b=2")
    seen = json.loads(r.stdout)
    # The upstream speaks HTTP/1.1: Host from :authority, cookie crumbs joined (RFC 9113 8.2.3).
    assert seen["path"] == "/echo?x=1" and seen["headers"]["host"] == f"127.0.0.1:{port}"
    assert seen["headers"]["cookie"] == "a=1; b=2"
    assert http(port, path="/direct").body == b"hello direct"
    assert p.metric("meshpy_downstream_cx_http2_total", listener="web") == 2
    eventually(lambda: p.logs().count('"protocol":"HTTP/2"') == 2, "two HTTP/2 requests logged")


@needs_curl
def test_bodies_both_ways_arrive_whole(proxy: tuple[Proxy, int], tmp_path: object) -> None:
    _p, port = proxy
    r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/bytes/3000000")
    assert r.stdout == b"x" * 3_000_000
    r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/chunked/1000000")
    assert r.stdout == b"c" * 1_000_000
    body = bytes(range(256)) * 8192  # 2 MiB, with and without a declared length
    for extra in ([], ["-H", "content-length:"]):
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-", *extra,
                            f"http://127.0.0.1:{port}/upload"], input=body, capture_output=True, timeout=30,
                           check=False)
        assert json.loads(r.stdout)["body_bytes"] == len(body), r.stderr


def test_head_and_no_body_statuses(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    peer = peers(port)
    head = peer.request(request_headers(port, "/bytes/100", "HEAD"))
    no_content = peer.request(request_headers(port, "/status/204"))
    status, headers, body = peer.response(head)
    assert (status, body) == (200, b"") and (b"content-length", b"100") in headers
    status, _, body = peer.response(no_content)
    assert (status, body) == (204, b"")


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) is not installed")
def test_h2load_multiplexed(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    r = subprocess.run(["h2load", "-n", "3000", "-c", "4", "-m", "16", f"http://127.0.0.1:{port}/hello"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert "3000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
    assert p.metric("meshpy_downstream_rq_total", listener="web", response_code="200") >= 3000


def test_http1_only_listener_refuses_the_preface(demo: DemoUpstream, peers: Peers) -> None:
    p, port = start(demo, "http1")
    try:
        peer = peers(port)
        assert peer.wait(lambda _e: False, 2.0) is False and peer.closed  # 400, then closed
        assert http(port, path="/direct").status == 200
    finally:
        p.stop()


def test_http2_only_listener(demo: DemoUpstream, peers: Peers) -> None:
    p, port = start(demo, "http2")
    try:
        peer = peers(port)
        status, _, body = peer.response(peer.request(request_headers(port, "/direct")))
        assert (status, body) == (200, b"hello direct")
    finally:
        p.stop()


# -- defences ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":path", b"/")],  # no :scheme
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"connection", b"keep-alive")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"Upper", b"x")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b"x", b"1"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":bogus", b"1")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b"a\r\nb")],
], ids=["no-scheme", "connection-header", "uppercase", "pseudo-after-regular", "unknown-pseudo", "crlf"])
def test_malformed_request_resets_its_stream_only(proxy: tuple[Proxy, int], peers: Peers,
                                                  headers: list[tuple[bytes, bytes]]) -> None:
    p, port = proxy
    peer = peers(port)
    bad = peer.request(headers)
    assert peer.wait(lambda _e: peer.reset_of(bad) is not None)
    assert peer.reset_of(bad) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    status, _, body = peer.response(peer.request(request_headers(port, "/direct")))
    assert (status, body) == (200, b"hello direct")  # the connection lives on
    assert p.alive()


def test_frame_level_violation_gets_goaway_and_spares_others(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    other = peers(port)
    peer = peers(port)
    # A DATA frame on stream 0 is a connection error of type PROTOCOL_ERROR (RFC 9113 6.1).
    peer.send_raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    assert peer.wait(lambda _e: peer.goaway() is not None)
    goaway = peer.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert peer.wait(lambda _e: False, 2.0) is False and peer.closed
    status, _, _ = other.response(other.request(request_headers(port, "/direct")))
    assert status == 200


def test_header_list_over_the_limit_gets_431(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    peer = peers(port)
    big = peer.request(request_headers(port, "/direct", extra=[(b"x-big", b"v" * 9000)]))
    status, _, _ = peer.response(big)
    assert status == 431
    many = [(b"x-%d" % i, b"v" * 1000) for i in range(40)]
    huge = peer.request(request_headers(port, "/direct", extra=many))
    peer.wait(lambda _e: peer.goaway() is not None or peer.reset_of(huge) is not None)
    goaway = peer.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_too_many_concurrent_streams(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    peer = peers(port)
    for _ in range(21):  # the listener allows 20 at once; the requests never end, so all stay open
        peer.request(request_headers(port, "/upload", "POST"), end=False)
    peer.wait(lambda _e: peer.goaway() is not None or any(
        isinstance(e, h2.events.StreamReset) and e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        for e in peer.events))
    goaway = peer.goaway()
    refused = [e.stream_id for e in peer.events if isinstance(e, h2.events.StreamReset)
               and e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM]
    # RFC 9113 5.1.2 allows either: h2 ends the connection, nghttp2 refuses the one stream over the limit.
    if h2_codec() == "h2":
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    else:
        assert goaway is None and refused == [41]


def test_rapid_reset_closes_the_connection(proxy: tuple[Proxy, int], peers: Peers) -> None:
    p, port = proxy
    peer = peers(port)
    for _ in range(600):  # Envoy's rule: 500 streams opened, half of them reset early
        sid = peer.request(request_headers(port, "/delay/500"))
        peer.conn.reset_stream(sid)
    peer.flush()
    assert peer.wait(lambda _e: peer.goaway() is not None)
    goaway = peer.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert p.metric("meshpy_downstream_http2_abuse_total", listener="web") == 1
    assert http(port, path="/direct").status == 200


def test_ping_flood_closes_the_connection(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    peer = peers(port)
    for i in range(1200):
        peer.conn.ping(b"%08d" % i)
    peer.flush()
    assert peer.wait(lambda _e: peer.goaway() is not None)
    goaway = peer.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_hpack_table_size_over_our_setting_is_refused(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    peer = peers(port)
    peer.wait(lambda _e: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in _e))
    # A header block that starts with a dynamic table size update to 1 MiB (RFC 7541 6.3), over the
    # 4,096 bytes meshpy allows: HEADERS on stream 1, END_HEADERS | END_STREAM.
    # Size update to 1048576, then :method GET, :scheme http, :path / from the static table.
    block = b"\x3f\xe1\xff\x3f" + b"\x82\x86\x84"
    frame = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
    peer.send_raw(frame)
    assert peer.wait(lambda _e: peer.goaway() is not None)
    goaway = peer.goaway()
    # RFC 9113 4.3 asks for COMPRESSION_ERROR (nghttp2's answer); h2 reports every HPACK failure as
    # PROTOCOL_ERROR.
    codes = h2.errors.ErrorCodes
    assert goaway is not None
    assert goaway.error_code == (codes.PROTOCOL_ERROR if h2_codec() == "h2" else codes.COMPRESSION_ERROR)
    # The stream was never taken: h2 says 0; nghttp2 counts a stream whose HEADERS it began to read as
    # possibly processed (RFC 9113 6.8 lets the sender err that way: the client just won't retry it).
    assert goaway.last_stream_id == (0 if h2_codec() == "h2" else 1)


@needs_curl
def test_sigterm_sends_goaway_and_streams_in_flight_finish(demo: DemoUpstream, peers: Peers) -> None:
    p, port = start(demo)
    peer = peers(port)
    slow = peer.request(request_headers(port, "/delay/800"))
    time.sleep(0.2)
    p.signal(signal.SIGTERM)
    assert peer.wait(lambda _e: peer.goaway() is not None, 5)
    goaway = peer.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert goaway.last_stream_id == slow
    status, _, body = peer.response(slow)
    assert (status, body) == (200, b"delayed\n")
    assert p.proc is not None and p.proc.wait(10) == 0


@pytest.mark.slow
def test_slow_reader_holds_the_sender_back(proxy: tuple[Proxy, int], peers: Peers) -> None:
    """100 MiB to a client that stops taking it: meshpy's memory stays bounded (the HTTP/2 window
    closes, meshpy stops reading the upstream); then the client reads it all, and gets it whole."""
    p, port = proxy
    size = 100 << 20
    base = p.rss_kb()
    peer = peers(port)
    sid = peer.request(request_headers(port, f"/chunked/{size}"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # read what comes, acknowledge nothing: the window closes
        peer.read_once(0.2)
    held = p.rss_kb() - base
    assert held < 32 * 1024, f"meshpy grew by {held} KiB while the client read nothing"
    # Now take what came so far (it was read but never acknowledged), and the rest.
    got = 0
    for e in peer.events:
        if isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
            got += len(e.data)
            peer.conn.acknowledge_received_data(e.flow_controlled_length, sid)
    peer.flush()
    assert got < 2 << 20  # no more than the windows allowed
    peak = held
    ended = False
    last_sample = time.monotonic()
    while not ended:
        for e in peer.read_once(5.0):
            if isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                got += len(e.data)
                peer.conn.acknowledge_received_data(e.flow_controlled_length, sid)
            ended = ended or (isinstance(e, h2.events.StreamEnded) and e.stream_id == sid)
        peer.flush()
        assert not peer.closed
        if time.monotonic() - last_sample > 0.5:
            peak = max(peak, p.rss_kb() - base)
            last_sample = time.monotonic()
    assert got == size
    assert peak < 48 * 1024, f"meshpy grew by {peak} KiB while streaming"


def test_settings_flood_closes_the_connection(proxy: tuple[Proxy, int], peers: Peers) -> None:
    _p, port = proxy
    peer = peers(port)
    for _ in range(1100):
        peer.conn.update_settings({h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536})
    peer.flush()
    assert peer.wait(lambda _e: peer.goaway() is not None)
    goaway = peer.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_removed_listener_sends_goaway_and_finishes_streams(demo: DemoUpstream, peers: Peers) -> None:
    p, port = start(demo)
    try:
        peer = peers(port)
        slow = peer.request(request_headers(port, "/delay/600"))
        time.sleep(0.2)
        kept = free_port()  # the new config has another listener only: `web` is removed
        p.rewrite(p.config.replace(f"address: 127.0.0.1:{port}", f"address: 127.0.0.1:{kept}")
                  .replace("name: web", "name: other"))
        assert peer.wait(lambda _e: peer.goaway() is not None, 5)
        goaway = peer.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        status, _, body = peer.response(slow)
        assert (status, body) == (200, b"delayed\n")
    finally:
        p.stop()
