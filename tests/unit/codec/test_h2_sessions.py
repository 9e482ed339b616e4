"""Both HTTP/2 codecs behind meshpy's seam (meshpy.codec.h2session), in memory: whole exchanges between
them, flow control, and the same verdict on bad input: a malformed request is never forwarded, a
connection error gets GOAWAY with its code.

The verdict a proxy acts on is the codec's events plus meshpy's own header checks (`read_request`), as
in meshpy.transport.downstream_http2: h2 leaves header validation to meshpy, nghttp2 does much of it
itself. The differential test holds the two to the same outcome on every case."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from h2frames import (
    PREFACE,
    block,
    continuation,
    data,
    frame,
    headers,
    hpack_int,
    literal,
    request,
    rst_stream,
    settings,
)
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame

from meshpy.codec import h2session
from meshpy.codec.h2session import (
    DATA,
    END,
    REQUEST,
    RESPONSE,
    STREAM_ERROR,
    TRAILERS,
    SessionError,
    StreamGone,
)
from meshpy.codec.http2 import Malformed, client_settings, local_settings, read_checked_request, read_request
from meshpy.codec.nghttp2 import Nghttp2Session, load
from meshpy.model.types import Http2Options

# nghttp2 twice: through the compiled binding (make builds it) and in ABI mode, the fallback.
CODECS = ("nghttp2", "nghttp2-abi", "h2")
LIMIT = 8192  # the listener's header limit in these tests


STREAM_WINDOW = Http2Options().initial_stream_window_size
CONNECTION_WINDOW = Http2Options().initial_connection_window_size


def server(codec: str, drained: bool = True) -> h2session.Session:
    opts = Http2Options(codec="nghttp2" if codec == "nghttp2-abi" else codec)  # type: ignore[arg-type]
    s: h2session.Session
    if codec == "nghttp2-abi":
        s = Nghttp2Session(False, opts, local_settings(opts, LIMIT), 2 * LIMIT + 32 * 100, load(native=False))
    else:
        s = h2session.server(opts, local_settings(opts, LIMIT), 2 * LIMIT + 32 * 100)
    if drained:
        s.data_to_send()  # its SETTINGS: a raw peer does not need them
    return s


def connected(server_codec: str, client_codec: str) -> tuple[h2session.Session, h2session.Session]:
    c, s = client(client_codec), server(server_codec, drained=False)
    s.receive(c.data_to_send())
    c.receive(s.data_to_send())
    s.receive(c.data_to_send())
    return c, s


STREAM_EVENTS = (REQUEST, RESPONSE, TRAILERS, DATA, END)


def client(codec: str) -> h2session.Session:
    opts = Http2Options(codec="nghttp2" if codec == "nghttp2-abi" else codec)  # type: ignore[arg-type]
    if codec == "nghttp2-abi":
        return Nghttp2Session(True, opts, client_settings(opts), 1 << 20, load(native=False))
    return h2session.client(opts, client_settings(opts))


def test_the_compiled_binding_is_built_here() -> None:
    """make builds it (meshpy.codec.nghttp2.native_build); without it meshpy runs, but slower."""
    assert load().native and not load(native=False).native


def frames(raw: bytes) -> list[Frame]:
    out = []
    while len(raw) >= 9:
        f, length = Frame.parse_frame_header(memoryview(raw[:9]))
        f.parse_body(memoryview(raw[9:9 + length]))
        out.append(f)
        raw = raw[9 + length:]
    return out


@dataclass
class Verdict:
    forwarded: list[int] = field(default_factory=list)  # streams whose request a proxy would pass on
    refused: dict[int, int] = field(default_factory=dict)  # stream -> RST_STREAM code sent
    goaway: int | None = None  # the GOAWAY code sent
    body: bytes = b""


def serve(codec: str, raw: bytes) -> Verdict:
    """What meshpy's downstream side makes of `raw` (after the preface and SETTINGS)."""
    s = server(codec)
    v = Verdict()
    try:
        events = s.receive(PREFACE + settings() + raw)
    except SessionError:
        events = []
    for kind, sid, a, b in events:
        if kind == REQUEST:
            try:
                (read_checked_request if s.checks_messages else read_request)(a, b)
            except Malformed:
                s.reset_stream(sid, 1)  # as the transport does
                continue
            v.forwarded.append(sid)
        elif kind == DATA:
            v.body += a
        elif kind == STREAM_ERROR and sid in v.forwarded:
            v.forwarded.remove(sid)  # an exchange under way is ended (DPE), never completed
    for f in frames(s.data_to_send()):
        if isinstance(f, RstStreamFrame):
            v.refused[f.stream_id] = f.error_code
        elif isinstance(f, GoAwayFrame):
            v.goaway = f.error_code
    return v


def one_request(extra: list[tuple[bytes, bytes]] | None = None,
                fields: list[tuple[bytes, bytes]] | None = None, end: bool = True) -> bytes:
    return headers(1, block(fields if fields is not None else request(extra=extra)), end_stream=end)


def _hpack_bomb() -> bytes:
    # One 4,000-byte field added to the dynamic table (RFC 7541 6.2.1), then indexed (one byte each,
    # 62 being the first dynamic index) 20 times: 80 KB decoded from ~4 KB on the wire.
    add = b"\x40" + hpack_int(1, 7) + b"x" + hpack_int(4000, 7) + b"y" * 4000
    return headers(1, block(request()) + add + b"\xbe" * 20, end_stream=True)


BAD_REQUESTS = {
    "obs-text in :path": one_request(fields=request(path=b"/a\xff")),
    "userinfo in :authority": one_request(fields=request(authority=b"user@host")),
    "space in :authority": one_request(fields=request(authority=b"a b")),
    "control character in a value": one_request([(b"x-a", b"1\x012")]),
    "DEL in a value": one_request([(b"x-a", b"1\x7f")]),
    "leading space in a value": one_request([(b"x-a", b" 1")]),
    "repeated host": one_request([(b"host", b"a"), (b"host", b"b")]),
    "repeated :path": one_request(fields=[*request(), (b":path", b"/b")]),
    "content-length with no body": one_request([(b"content-length", b"3")], end=True),
    "CONNECT with :path": one_request(fields=request(method=b"CONNECT")),
    ":protocol on GET": one_request([(b":protocol", b"websocket")]),
    "uppercase name": one_request([(b"X-Foo", b"1")]),
    "connection header": one_request([(b"connection", b"close")]),
    "transfer-encoding": one_request([(b"transfer-encoding", b"chunked")]),
    "te other than trailers": one_request([(b"te", b"gzip")]),
    "CR in a value": one_request([(b"x-a", b"1\r2")]),
    "LF in a value": one_request([(b"x-a", b"1\n2")]),
    "NUL in a value": one_request([(b"x-a", b"1\x002")]),
    "pseudo-header after a field": one_request(fields=[(b":method", b"GET"), (b"x-a", b"1"),
                                                       (b":scheme", b"http"), (b":path", b"/"),
                                                       (b":authority", b"a")]),
    "no :path": one_request(fields=[(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")]),
    "unknown pseudo-header": one_request([(b":foo", b"1")]),
    "body longer than content-length": one_request([(b"content-length", b"2")], end=False)
    + data(1, b"hello", end_stream=True),
}

CONNECTION_ERRORS = {
    # RFC 9113 6.1: DATA on stream 0.
    "DATA on stream 0": (frame(0, 0, 0, b"x"), {1}),
    # 6.9.1: more DATA than the connection's window is a flow-control violation: 48 KiB on each of
    # enough streams to pass it, none over its own window. (A stream's own window overrun may be a
    # stream error: see test_a_stream_window_overrun_ends_it.)
    "connection flow control violated": (b"".join(
        headers(sid, block(request()), end_stream=False) + data(sid, b"x" * 16384) * 3
        for sid in range(1, 2 * (CONNECTION_WINDOW // 49152) + 4, 2)), {3}),
    # HPACK: an index beyond both tables.
    "bad HPACK index": (headers(1, b"\xff\xff\x7f", end_stream=True), {1, 9}),
    "HPACK bomb": (_hpack_bomb(), {1, 9, 11}),
    # 5.1: DATA on an idle stream.
    "DATA on an idle stream": (data(5, b"x"), {1, 5}),
}


@pytest.mark.parametrize("codec", CODECS)
def test_a_whole_grpc_exchange_between_the_codecs(codec: str) -> None:
    for other in CODECS:
        c, s = connected(codec, other)
        sid = c.open_stream([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M"),
                             (b":authority", b"a"), (b"content-type", b"application/grpc")], False)
        # (Before the HEADERS are out, as an upstream stream sends its first body bytes.)
        assert c.send_window(sid) >= 16384
        c.send_data(sid, b"\0\0\0\0\x05hello", True)
        events = [e for e in s.receive(c.data_to_send()) if e[0] in STREAM_EVENTS]
        kinds = [e[0] for e in events]
        assert kinds[0] == REQUEST and (DATA, sid, b"\0\0\0\0\x05hello", 10) in events and kinds[-1] == END
        s.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
        s.send_data(sid, b"\0\0\0\0\x02ok", False)
        s.send_headers(sid, [(b"grpc-status", b"0")], True)
        got = [e for e in c.receive(s.data_to_send()) if e[0] in STREAM_EVENTS]
        assert [e[0] for e in got] == [RESPONSE, DATA, TRAILERS, END], (codec, other, got)
        assert got[-2][2] == [(b"grpc-status", b"0")]


GRPC_HEAD = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/p.S/M"), (b":authority", b"a"),
             (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def by_stream(events: list[h2session.Event]) -> dict[int, list[h2session.Event]]:
    """Each stream's events in order (the codecs interleave streams differently)."""
    out: dict[int, list[h2session.Event]] = {}
    for e in events:
        if e[0] in STREAM_EVENTS:
            out.setdefault(e[1], []).append(e)
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_whole_messages_go_in_one_call_between_the_codecs(codec: str) -> None:
    """send_message: a request (stream 0: a new one) and its answer with trailers, each in one call;
    what arrives is the same as from send_headers, send_data and send_headers."""
    for other in CODECS:
        c, s = connected(other, codec)
        sid = c.send_message(0, GRPC_HEAD, b"\0\0\0\0\x05hello", None)
        assert sid == 1 and c.send_message(0, GRPC_HEAD, b"\0\0\0\0\x01x", [(b"x-t", b"1")]) == 3
        events = by_stream(s.receive(c.data_to_send()))
        assert [e[0] for e in events[1]] == [REQUEST, DATA, END], (codec, other, events)
        assert [e[0] for e in events[3]] == [REQUEST, DATA, TRAILERS, END], (codec, other, events)
        assert events[1][1][2] == b"\0\0\0\0\x05hello" and events[3][2][2] == [(b"x-t", b"1")]
        for stream, trailers in ((1, [(b"grpc-status", b"0")]), (3, None)):
            s.send_message(stream, [(b":status", b"200"), (b"content-type", b"application/grpc")],
                           b"\0\0\0\0\x02ok", trailers)
        got = by_stream(c.receive(s.data_to_send()))
        assert [e[0] for e in got[1]] == [RESPONSE, DATA, TRAILERS, END], (codec, other, got)
        assert [e[0] for e in got[3]] == [RESPONSE, DATA, END], (codec, other, got)
        assert got[1][1][2] == b"\0\0\0\0\x02ok" and got[1][2][2] == [(b"grpc-status", b"0")]
        with pytest.raises(StreamGone):  # stream 1 has ended both ways
            s.send_message(1, [(b":status", b"200")], b"late", None)


def test_a_whole_message_waits_for_the_window_and_dies_with_its_stream() -> None:
    """The compiled binding's whole messages are sent from C as the peer's window allows (meshpy
    hands over at most a window's worth, but nghttp2 holds the rest if it must); one whose stream is
    reset first, or whose session ends first, is dropped without harm to the others."""
    for reset in (False, True):
        c, s = connected("nghttp2", "h2")
        body = b"b" * (STREAM_WINDOW + 5000)
        c.send_message(0, GRPC_HEAD, b"r", None)
        c.send_message(0, GRPC_HEAD, b"r", None)
        s.receive(c.data_to_send())
        s.send_message(1, [(b":status", b"200")], body, [(b"grpc-status", b"0")])
        s.send_message(3, [(b":status", b"200")], b"small", None)
        got = c.receive(s.data_to_send())
        first = b"".join(e[2] for e in got if e[0] == DATA and e[1] == 1)
        assert len(first) == STREAM_WINDOW  # the client's window (meshpy's default), no more
        assert (END, 3, None, None) in got and (END, 1, None, None) not in got
        if reset:
            c.reset_stream(1, 8)
            s.receive(c.data_to_send())
            assert s.data_to_send() == b""  # nothing more for stream 1: the rest was dropped
            continue
        for e in got:
            if e[0] == DATA:
                c.acknowledge(e[1], e[3])
        s.receive(c.data_to_send())
        rest = c.receive(s.data_to_send())
        assert first + b"".join(e[2] for e in rest if e[0] == DATA) == body
        assert [e[0] for e in rest if e[0] in (TRAILERS, END)] == [TRAILERS, END]
    # A session let go with a whole message still waiting (its memory goes with the session).
    c, s = connected("nghttp2", "h2")
    c.send_message(0, GRPC_HEAD, b"r", None)
    s.receive(c.data_to_send())
    s.send_message(1, [(b":status", b"200")], b"x" * (STREAM_WINDOW * 2), None)
    s.data_to_send()
    del s


@pytest.mark.parametrize("codec", CODECS)
def test_send_window_is_the_peers_and_opens_as_the_peer_acknowledges(codec: str) -> None:
    for other in CODECS:
        c, s = connected(codec, other)
        sid = c.open_stream(request(), True)
        s.receive(c.data_to_send())
        s.send_headers(sid, [(b":status", b"200")], False)
        # The client's stream window (meshpy's default); h2 also caps it at a frame (16 KiB),
        # nghttp2 splits frames itself.
        assert s.send_window(sid) == (16384 if codec == "h2" else STREAM_WINDOW)
        sent = 0
        while (w := s.send_window(sid)) > 0:
            s.send_data(sid, b"z" * w, False)
            sent += w
        assert sent == STREAM_WINDOW
        body = 0
        for kind, esid, a, b in c.receive(s.data_to_send()):
            if kind == DATA:
                body += len(a)
                c.acknowledge(esid, b)
        assert body == STREAM_WINDOW and s.send_window(sid) == 0
        s.receive(c.data_to_send())  # the WINDOW_UPDATEs
        assert s.send_window(sid) > 0


@pytest.mark.parametrize("codec", CODECS)
def test_sends_on_a_reset_stream_raise_stream_gone(codec: str) -> None:
    c, s = connected(codec, "h2")
    sid = c.open_stream(request(), True)
    s.receive(c.data_to_send())
    s.receive(rst_stream(sid, 8))
    s.data_to_send()
    with pytest.raises(StreamGone):
        s.send_headers(sid, [(b":status", b"200")], True)


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_requests_are_refused_by_both_codecs(case: str) -> None:
    for codec in CODECS:
        v = serve(codec, BAD_REQUESTS[case])
        assert v.forwarded == [], (codec, v)
        assert v.refused.get(1) == 1 or v.goaway == 1, (codec, v)  # PROTOCOL_ERROR, on the stream or all


def test_a_fragment_in_path_is_left_to_the_exchange() -> None:
    """It answers 400 (as Envoy's HCM does) or cuts the fragment off (Envoy's runtime flag
    http_reject_path_with_fragment: false): tests/integration/test_runtime_envoy.py."""
    for codec in CODECS:
        v = serve(codec, one_request(fields=request(path=b"/a#b")))
        assert v.forwarded == [1] and not v.refused, (codec, v)


def test_a_good_request_is_forwarded_by_both_codecs() -> None:
    raw = one_request([(b"content-length", b"5")], end=False) + data(1, b"hello", end_stream=True)
    for codec in CODECS:
        v = serve(codec, raw)
        assert v.forwarded == [1] and v.body == b"hello" and not v.refused and v.goaway is None, (codec, v)


@pytest.mark.parametrize("case", sorted(CONNECTION_ERRORS))
def test_connection_errors_get_goaway_from_both_codecs(case: str) -> None:
    raw, codes = CONNECTION_ERRORS[case]
    for codec in CODECS:
        v = serve(codec, raw)
        assert v.goaway in codes, (codec, case, v)


@pytest.mark.parametrize("codec", CODECS)
def test_a_continuation_flood_is_bounded(codec: str) -> None:
    s = server(codec)
    s.receive(PREFACE + settings())
    s.receive(headers(1, block(request()), end_headers=False))
    assert s.header_block_state() == 1
    ended = False
    for i in range(2000):
        try:
            s.receive(continuation(1, literal(b"x-%d" % i, b"v" * 100), end_headers=False))
        except SessionError:
            ended = True
            break
        if s.header_block_state() == 2:
            break
    # nghttp2 ends the connection after 8 CONTINUATION frames; with h2 the block is reported as over
    # the limit (the transport then sends GOAWAY ENHANCE_YOUR_CALM) long before 2,000 frames.
    assert ended or s.header_block_state() == 2
    assert i < 200


def test_a_stream_window_overrun_ends_it_and_is_never_completed() -> None:
    """More DATA than the stream's window: RFC 9113 6.9 allows a stream error (nghttp2) or a
    connection error (h2), both FLOW_CONTROL_ERROR; the request is never passed on whole."""
    raw = one_request(end=False) + b"".join(data(1, b"x" * 16384) for _ in range(STREAM_WINDOW // 16384 + 1))
    for codec in CODECS:
        v = serve(codec, raw)
        assert v.forwarded == [] and (v.refused.get(1) == 3 or v.goaway == 3), (codec, v)


def test_a_lower_stream_id_is_never_served() -> None:
    """HEADERS on stream 1 after stream 3: RFC 9113 5.1.1 says PROTOCOL_ERROR (h2); nghttp2 ignores the
    block on purpose (stream 1 may be a stream it reset whose trailers were already on their way)."""
    raw = headers(3, block(request()), end_stream=True) + headers(1, block(request()), end_stream=True)
    for codec in CODECS:
        v = serve(codec, raw)
        if codec == "h2":  # (the connection error ends the whole read: stream 3 is not served either)
            assert v.forwarded == [] and v.goaway == 1, v
        else:
            assert v.forwarded == [3] and v.goaway is None, v


def test_headers_on_a_stream_the_client_ended_are_refused() -> None:
    """RFC 9113 5.1: a stream in half-closed (remote) takes no more HEADERS: STREAM_CLOSED, as a
    stream error (h2) or a connection error (nghttp2); the first request alone is served."""
    raw = headers(1, block(request()), end_stream=True) + headers(1, block(request()), end_stream=True)
    for codec in CODECS:
        v = serve(codec, raw)
        assert v.forwarded.count(1) <= 1 and (v.refused.get(1) == 5 or v.goaway in (1, 5)), (codec, v)


@pytest.mark.parametrize("codec", CODECS)
def test_data_of_one_read_arrives_whole_and_in_order(codec: str) -> None:
    """The compiled binding hands a stream's DATA over once per read, however many frames brought
    it; every codec delivers the same bytes, acknowledges the same length and keeps END last."""
    raw = one_request(end=False) + headers(3, block(request()), end_stream=False)
    raw += b"".join(data(1, b"%d" % i * 100) + data(3, b"x" * 10) for i in range(5))
    raw += data(1, b"end", end_stream=True)
    s = server(codec)
    events = [e for e in s.receive(PREFACE + settings() + raw) if e[0] in (DATA, END)]
    one = [e for e in events if e[1] == 1]
    assert b"".join(e[2] for e in one if e[0] == DATA) == b"".join(b"%d" % i * 100 for i in range(5)) + b"end"
    assert sum(e[3] for e in one if e[0] == DATA) == 503 and one[-1][0] == END
    if codec == "nghttp2":  # (streams 1 and 3 alternate, so each switch hands over what was gathered)
        assert len([e for e in one if e[0] == DATA]) == 6
        s2 = server(codec)
        raw2 = one_request(end=False) + b"".join(data(1, b"y" * 1000) for _ in range(8))
        got = [e for e in s2.receive(PREFACE + settings() + raw2) if e[0] == DATA]
        assert len(got) == 1 and got[0][2] == b"y" * 8000 and got[0][3] == 8000


@pytest.mark.parametrize("codec", CODECS)
def test_a_large_body_in_odd_pieces_arrives_whole(codec: str) -> None:
    """Half a megabyte in 30,000-byte pieces, as far as each window allows: the compiled binding
    sends frames of 4 KiB and more without copying their bodies (NO_COPY), splitting pieces across
    frames; every pairing of codecs gets the same bytes, in order."""
    body = bytes(range(256)) * 2000
    for other in CODECS:
        c, s = connected(codec, other)
        sid = c.open_stream(request(), True)
        s.receive(c.data_to_send())
        s.send_headers(sid, [(b":status", b"200")], False)
        sent, got, ended = 0, bytearray(), False
        for _ in range(1000):
            window = s.send_window(sid)
            if window > 0 and sent < len(body):
                piece = body[sent:sent + min(window, 30000)]
                sent += len(piece)
                s.send_data(sid, piece, sent == len(body))
            for kind, esid, a, b in c.receive(s.data_to_send()):
                if kind == DATA:
                    got += a
                    c.acknowledge(esid, b)
                ended = ended or kind == END
            s.receive(c.data_to_send())
            if ended:
                break
        assert ended and bytes(got) == body, (codec, other, len(got))


def test_the_compiled_binding_refuses_to_send_a_field_holding_nul() -> None:
    """Header lists cross into C joined by NUL, so a NUL inside a field would shift every field after
    it: C counts them and refuses the list (meshpy's own checks never let one through to here)."""
    c = client("nghttp2")
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    for bad in ([(b"x", b"a\0b")], [(b"x\0y", b"v")], [(b"x", b"v\0")], [(b"\0", b"")]):
        with pytest.raises(StreamGone):
            c.open_stream(head + bad, True)
        with pytest.raises(StreamGone):
            c.send_message(0, head + bad, b"body", None)
    assert c.open_stream([*head, (b"x", b"")], True) == 1  # an empty value is fine
