"""The HTTP/2 codec micro-benchmark (benchmarks/micro_h2codecs, issue 16): each codec really carries a
gRPC unary call and an h2 GET, and a codec that loses part of the exchange fails instead of being timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import hpack
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.micro_h2codecs import exchange, h2_baseline, lean_proto, nghttp2_abi  # noqa: E402


def _nghttp2_missing() -> str | None:
    try:
        nghttp2_abi.load()
    except OSError as e:
        return f"{nghttp2_abi.LIBRARY} cannot be loaded (Debian package libnghttp2-14): {e}"
    return None


needs_nghttp2 = pytest.mark.skipif(_nghttp2_missing() is not None, reason=str(_nghttp2_missing()))

def _nghttp2(client: bool) -> exchange.Codec:
    return nghttp2_abi.Connection(client, "plain")


# (codec, the peer it talks to: None for itself)
CODECS = [
    pytest.param(h2_baseline.Connection, None, id="h2"),
    pytest.param(_nghttp2, None, id="nghttp2-cffi", marks=needs_nghttp2),
    pytest.param(lambda client: nghttp2_abi.Connection(client, "rcbuf"), None, id="nghttp2-cffi-rcbuf",
                 marks=needs_nghttp2),
    pytest.param(lean_proto.Connection, None, id="lean-prototype"),
    # Against a real peer: nghttp2's Huffman-coded literals and its use of the dynamic table.
    pytest.param(lean_proto.Connection, _nghttp2, id="lean-prototype-vs-nghttp2", marks=needs_nghttp2),
    pytest.param(lean_proto.Connection, h2_baseline.Connection, id="lean-prototype-vs-h2"),
]


@pytest.mark.parametrize(("factory", "peer"), CODECS)
@pytest.mark.parametrize("upstream", [False, True], ids=["downstream", "upstream"])
def test_grpc_unary_really_happens(factory: exchange.Factory, peer: exchange.Factory | None,
                                   upstream: bool) -> None:
    seen_all: list[exchange.Seen] = []

    def check(shape: exchange.Shape, sent: exchange.Fields, seen: exchange.Seen) -> None:
        exchange.verify(shape, sent, seen)
        seen_all.append(seen)

    client_s, server_s = exchange.measure(factory, "grpc-unary", 3, upstream, check, peer)
    assert client_s > 0 and server_s > 0
    assert len(seen_all) == 3
    last = seen_all[-1]
    server_fields = dict(last.server_headers)
    assert server_fields[b":path"] == b"/bench.Echo/Unary"
    assert server_fields[b"content-type"] == b"application/grpc"
    assert (b"x-request-id" in server_fields) is upstream
    assert bytes(last.server_body) == exchange.GRPC_MESSAGE and last.server_ended
    response, trailers = (dict(block) for block in last.client_headers)
    assert response[b":status"] == b"200"
    assert bytes(last.client_body) == exchange.GRPC_ANSWER and last.client_ended
    assert trailers[b"grpc-status"] == b"0"


@pytest.mark.parametrize(("factory", "peer"), CODECS)
def test_h2_get_really_happens(factory: exchange.Factory, peer: exchange.Factory | None) -> None:
    seen_all: list[exchange.Seen] = []
    exchange.measure(factory, "h2-get", 2, False, lambda *a: seen_all.append(a[2]) or exchange.verify(*a),
                     peer)
    [*_, last] = seen_all
    assert dict(last.server_headers)[b":method"] == b"GET" and last.server_body == b"" and last.server_ended
    [response] = last.client_headers
    assert dict(response)[b":status"] == b"200"
    assert last.client_body == b"hello h2!\n" and last.client_ended


class _DropsTrailers:
    """A codec that loses the response trailers on the way: what a half-working binding could do."""

    def __init__(self, client_side: bool) -> None:
        self._inner = h2_baseline.Connection(client_side)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def send_response(self, stream_id: int, headers: exchange.Fields, body: bytes = b"",
                      trailers: exchange.Fields | None = None) -> None:
        del trailers
        self._inner.send_response(stream_id, headers, body, None)


def test_a_broken_codec_fails_loudly() -> None:
    with pytest.raises(exchange.ExchangeFailed, match="grpc-status"):
        exchange.measure(_DropsTrailers, "grpc-unary", 1, False)


@needs_nghttp2
def test_bench_entry_point_writes_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.micro_h2codecs.bench", "--requests", "20", "--runs", "1",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob("h2-codecs-*.json")
    result = json.loads(path.read_text())
    assert set(result["summary"]) == {"grpc-unary", "h2-get"}
    for by_codec in result["summary"].values():
        assert set(by_codec) == {"h2", "nghttp2-cffi", "nghttp2-cffi-rcbuf", "lean-prototype"}
        for s in by_codec.values():
            assert s["proxy_us"] > 0
    assert result["versions"]["nghttp2"].startswith("1.")


def test_lean_prototype_hpack_decodes_huffman_and_follows_evictions() -> None:
    # The hpack library's encoder Huffman-codes and indexes everything it can; 400 distinct fields of
    # ~100 bytes each overflow the 4,096-byte table many times, so stale indices would be caught.
    encoder = hpack.Encoder()
    decoder = lean_proto.Decoder()
    for i in range(400):
        block = [(b":path", b"/bench.Echo/Unary"), (b"x-request-id", b"%064x" % i), (b"x-%d" % (i % 7), b"v")]
        assert decoder.decode(encoder.encode(block)) == block
    assert decoder.huffman and decoder.size <= lean_proto.TABLE_SIZE


def test_lean_prototype_encoder_is_read_back_by_hpack() -> None:
    encoder = lean_proto.Encoder()
    decoder = hpack.Decoder()
    for i in range(400):
        block = [(b":method", b"POST"), (b"x-request-id", b"%064x" % i), (b"user-agent", b"h2load")]
        assert decoder.decode(encoder.encode(block), raw=True) == block


def _pump(client: exchange.Codec, server: exchange.Codec) -> tuple[list[Any], list[Any]]:
    """Bytes both ways until neither side has more; DATA is consumed as it arrives, so windows reopen."""
    got_server: list[Any] = []
    got_client: list[Any] = []
    for _ in range(200):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            break
        for side, events, data in ((server, got_server, to_server), (client, got_client, to_client)):
            for event in side.receive(data) if data else []:
                events.append(event)
                if event[0] == nghttp2_abi.DATA:
                    side.consume(event[1], len(event[2]))
    return got_server, got_client


@pytest.mark.parametrize("peer", [
    pytest.param(h2_baseline.Connection, id="h2"),
    pytest.param(_nghttp2, id="nghttp2", marks=needs_nghttp2),
    pytest.param(lean_proto.Connection, id="itself"),
])
def test_lean_prototype_carries_large_headers_and_bodies_both_ways(peer: exchange.Factory) -> None:
    """Header blocks over one frame go as HEADERS + CONTINUATION, bodies over a frame are split, and a
    body over the connection's window waits for the peer's WINDOW_UPDATE instead of being refused."""
    big = b"x" * 40_000  # a header value: a block of three frames
    for client_f, server_f in ((lean_proto.Connection, peer), (peer, lean_proto.Connection)):
        client, server = exchange.connect(client_f, server_f)
        # 256,000 bytes (four windows' worth) from every sender but the h2 adapter, which sends a body
        # in one call and so only within the window.
        body = bytes(range(256)) * (1_000 if client_f is not h2_baseline.Connection else 60)
        request = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"a"),
                   (b"x-big", big)]
        sid = client.send_request(request, body)
        got, _ = _pump(client, server)
        heads = [e[2] for e in got if e[0] == nghttp2_abi.HEADERS]
        assert heads and (b"x-big", big) in heads[0], (client_f, server_f)
        assert b"".join(e[2] for e in got if e[0] == nghttp2_abi.DATA) == body
        assert (nghttp2_abi.END, sid, None) in got
        body = bytes(range(256)) * (1_000 if server_f is not h2_baseline.Connection else 60)
        server.send_response(sid, [(b":status", b"200"), (b"x-big", big)], body, [(b"grpc-status", b"0")])
        _, back = _pump(client, server)
        heads = [e[2] for e in back if e[0] == nghttp2_abi.HEADERS]
        assert (b"x-big", big) in heads[0] and heads[-1] == [(b"grpc-status", b"0")]
        assert b"".join(e[2] for e in back if e[0] == nghttp2_abi.DATA) == body


def test_lean_prototype_encoder_follows_a_smaller_table() -> None:
    """SETTINGS_HEADER_TABLE_SIZE from the peer: the next block starts with the size update and never
    refers to an entry the smaller table no longer holds (read back by the hpack library)."""
    conn = lean_proto.Connection(True)
    fields = [(b"x-one", b"a" * 100), (b"x-two", b"b" * 100)]
    first = conn._encoder.encode(fields)
    conn.receive(lean_proto._frame(lean_proto.F_SETTINGS, 0, 0, lean_proto._SETTING.pack(1, 150)))
    second = conn._encoder.encode(fields)
    assert second[0] & 0xE0 == 0x20  # a dynamic table size update comes first
    decoder = hpack.Decoder()
    assert [(bytes(n), bytes(v)) for n, v in decoder.decode(first, raw=True)] == fields
    assert [(bytes(n), bytes(v)) for n, v in decoder.decode(second, raw=True)] == fields
    assert decoder.header_table_size == 150
