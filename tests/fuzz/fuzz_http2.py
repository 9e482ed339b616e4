"""HTTP/2 frames, in process, through each of meshpy's HTTP/2 codecs (meshpy.codec.h2session: nghttp2
through its compiled binding and in ABI mode, and h2): a server-side session is fed the client preface
and the input's frames, and driven as Http2Downstream drives it: each request read with
`read_checked_request` or `read_request` (as the codec checks messages itself or not), trailers with
`read_trailers`, received data acknowledged, and each valid request answered.

Property: nothing but the codec's SessionError (a GOAWAY on the wire), StreamGone (a send on a stream
already closed) and meshpy's Malformed (RST_STREAM PROTOCOL_ERROR) comes out; and a request either
codec lets through is one HTTP/1.1 can carry (the method a token, the path visible ASCII, no
connection-specific field, a valid authority).

The structured mutator works on frames: it inserts, drops, repeats, swaps and rewrites whole frames
(type, flags, stream id, length, payload), with header blocks built from a pool of odd fields.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import hpack
from fuzzkit import Finding, Target, mutate_bytes

from meshpy.codec import h2session
from meshpy.codec.h2session import DATA, REQUEST, TRAILERS, SessionError, StreamGone
from meshpy.codec.http1 import valid_authority
from meshpy.codec.http2 import (
    CONNECTION_SPECIFIC,
    PREFACE,
    Malformed,
    local_settings,
    read_checked_request,
    read_request,
    read_trailers,
    response_fields,
)
from meshpy.codec.nghttp2 import Nghttp2Session, load
from meshpy.model.types import Http2Options

SEGMENT = b"|SEG|"
_OPTS = Http2Options()
_LIMIT = 60 * 1024
_SETTINGS = local_settings(_OPTS, _LIMIT)
_BLOCK = 2 * _LIMIT + 32 * 100


def _sessions() -> list[Callable[[], h2session.Session]]:
    h2_opts = Http2Options(codec="h2")
    return [
        lambda: Nghttp2Session(False, _OPTS, _SETTINGS, _BLOCK, load()),
        lambda: Nghttp2Session(False, _OPTS, _SETTINGS, _BLOCK, load(native=False)),
        lambda: h2session.server(h2_opts, _SETTINGS, _BLOCK),
    ]


def run(data: bytes) -> None:
    for make in _sessions():
        _drive(make(), data)


def _drive(s: h2session.Session, data: bytes) -> None:
    reader = read_checked_request if s.checks_messages else read_request
    parts = data.split(SEGMENT)
    parts[0] = PREFACE + parts[0]
    for part in parts:
        try:
            events = s.receive(part)
        except SessionError:
            s.data_to_send()
            return
        for kind, sid, a, b in events:
            if kind == REQUEST:
                try:
                    head = reader(a, b)
                except Malformed:
                    _quietly(s.reset_stream, sid, 1)
                    continue
                _check_request(head)
                answer = response_fields(200, [(b"content-length", b"2")])
                if sid % 4 == 1:  # half the answers whole, with trailers (the compiled binding's C path)
                    _quietly(s.send_message, sid, answer, b"ok", [(b"grpc-status", b"0")])
                else:
                    _quietly(s.send_headers, sid, answer, False)
                    _quietly(s.send_data, sid, b"ok", True)
            elif kind == TRAILERS:
                try:
                    read_trailers(a)
                except Malformed:
                    _quietly(s.reset_stream, sid, 1)
            elif kind == DATA and b:
                s.acknowledge(sid, b)
        s.data_to_send()
        if s.finished():
            return


def _quietly(fn: object, *args: object) -> None:
    """Sends on a stream the peer has reset or closed raise StreamGone: what the downstream's writes
    meet too, and handle the same way."""
    with contextlib.suppress(StreamGone):
        fn(*args)  # type: ignore[operator]


def _check_request(head: object) -> None:
    method, path, fields = head.method, head.path, head.fields  # type: ignore[attr-defined]
    if any(c in b" \r\n\t\x00:" for c in method):
        raise Finding(f"read_request accepted method {method!r}")
    if any(c <= 0x20 or c >= 0x7F or c == 0x23 for c in path):
        raise Finding(f"read_request accepted path {path!r}")
    for name, value in fields:
        if name in CONNECTION_SPECIFIC or not name or name.lower() != name or b":" in name:
            raise Finding(f"read_request accepted field {name!r}")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise Finding(f"read_request accepted value {value!r}")
    authority = head.authority  # type: ignore[attr-defined]
    if authority is not None and not valid_authority(authority):
        raise Finding(f"read_request accepted authority {authority!r}")


# -- frames ------------------------------------------------------------------------------------------
def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + (sid & 0xFFFFFFFF).to_bytes(4, "big")
    return head + payload


def split_frames(data: bytes) -> list[bytes]:
    """The input as frames (the last element may be a truncated frame or trailing bytes)."""
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 3], "big") if i + 3 <= len(data) else 0
        end = min(len(data), i + 9 + n)
        out.append(data[i:end])
        i = end
    return out


FIELDS = (
    (b":method", b"GET"), (b":method", b"POST"), (b":method", b"CONNECT"), (b":method", b"G T"),
    (b":scheme", b"http"), (b":scheme", b"h ttp"), (b":path", b"/"), (b":path", b"*"), (b":path", b"/a#b"),
    (b":path", b"x"), (b":authority", b"a.test"), (b":authority", b"a@b"), (b":authority", b""),
    (b":authority", b"[::1]:8"), (b":protocol", b"websocket"), (b":status", b"200"), (b":foo", b"x"),
    (b"host", b"h.test"), (b"content-length", b"0"), (b"content-length", b"5"), (b"content-length", b"-1"),
    (b"content-length", b"99999999999999999999"), (b"te", b"trailers"), (b"te", b"gzip"),
    (b"connection", b"close"), (b"transfer-encoding", b"chunked"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
    (b"X-Upper", b"v"), (b"x-sp", b" v"), (b"x-nul", b"a\x00b"), (b"x-crlf", b"a\r\nb: c"), (b"", b"v"),
    (b"x-long", b"v" * 300), (b"grpc-timeout", b"1S"), (b"grpc-timeout", b"99999999H"),
    (b"content-type", b"application/grpc"), (b"upgrade", b"h2c"), (b"x-request-id", b"r"),
)
_ENCODER = hpack.Encoder()


def header_block(rng: random.Random) -> bytes:
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test")]
    for _ in range(rng.randint(0, 4)):
        op = rng.randrange(3)
        if op == 0 and fields:
            fields.pop(rng.randrange(len(fields)))
        elif op == 1:
            fields.insert(rng.randint(0, len(fields)), rng.choice(FIELDS))
        elif len(fields) > 1:
            i, j = rng.randrange(len(fields)), rng.randrange(len(fields))
            fields[i], fields[j] = fields[j], fields[i]
    if rng.random() < 0.5:
        return _ENCODER.encode(fields)
    from h2frames import block  # literal encoding: any bytes, exactly as given

    return block(fields)


def random_frame(rng: random.Random) -> bytes:
    sid = rng.choice((0, 1, 1, 1, 3, 5, 2, 0x7FFFFFFF, rng.randrange(1, 200, 2)))
    kind = rng.randrange(12)
    if kind == 0:
        return frame(0, rng.choice((0, 1, 8, 9)), sid, rng.randbytes(rng.randint(0, 40)))
    if kind in (1, 9):
        flags = rng.choice((4, 5, 0, 1, 0x24, 0x2c))
        return frame(kind, flags, sid, header_block(rng))
    if kind == 2:
        return frame(2, 0, sid, rng.randbytes(rng.choice((5, 4, 6))))
    if kind == 3:
        return frame(3, 0, sid, rng.randrange(16).to_bytes(4, "big"))
    if kind == 4:
        ids = rng.choice((1, 2, 3, 4, 5, 6, 8, 0x10, 0xFFFF))
        val = rng.choice((0, 1, 100, 16384, 65535, 2**24, 2**31 - 1, 2**31, 2**32 - 1))
        return frame(4, rng.choice((0, 0, 1)), 0, ids.to_bytes(2, "big") + val.to_bytes(4, "big"))
    if kind == 6:
        return frame(6, rng.choice((0, 1)), 0, rng.randbytes(8))
    if kind == 7:
        return frame(7, 0, 0, rng.randrange(2**31).to_bytes(4, "big") + rng.randrange(16).to_bytes(4, "big"))
    if kind == 8:
        inc = rng.choice((0, 1, 65535, 2**31 - 1, 2**31, rng.randrange(2**31)))
        return frame(8, 0, rng.choice((0, sid)), inc.to_bytes(4, "big"))
    if kind == 5:
        return frame(5, 4, sid, b"\x00\x00\x00\x02" + header_block(rng))
    return frame(rng.randrange(10, 256), rng.randrange(256), sid, rng.randbytes(rng.randint(0, 16)))


def mutate(data: bytes, rng: random.Random) -> bytes:
    parts = data.split(SEGMENT)
    k = rng.randrange(len(parts))
    frames = split_frames(parts[k])
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        i = rng.randint(0, len(frames))
        if op <= 1 or not frames:
            frames.insert(i, random_frame(rng))
            continue
        i = min(i, len(frames) - 1)
        f = frames[i]
        if op == 2:
            del frames[i]
        elif op == 3:
            frames.insert(i, f)
        elif op == 4:
            j = rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        elif op == 5 and len(f) >= 9:  # type, flags or stream id
            head = bytearray(f[:9])
            which = rng.randrange(3)
            if which == 0:
                head[3] = rng.randrange(11)
            elif which == 1:
                head[4] ^= 1 << rng.randrange(8)
            else:
                head[5:9] = rng.choice((0, 1, 3, 2, 0x7FFFFFFF, 0x80000001)).to_bytes(4, "big")
            frames[i] = bytes(head) + f[9:]
        elif op == 6 and len(f) >= 9:  # the payload, length kept right
            payload = mutate_bytes(f[9:], rng, max_len=20000)
            frames[i] = len(payload).to_bytes(3, "big") + f[3:9] + payload
        else:
            frames[i] = mutate_bytes(f, rng, max_len=20000)
    if rng.random() < 0.1:  # a new read boundary
        joined = b"".join(frames)
        cut = rng.randint(0, len(joined))
        parts[k] = joined[:cut] + SEGMENT + joined[cut:]
    else:
        parts[k] = b"".join(frames)
    return SEGMENT.join(parts)


TARGET = Target(name="http2", run=run, mutate=mutate, max_len=32768, time_limit=3.0)
