"""PROTOTYPE, for measuring only: a lean pure-Python HTTP/2 frame and HPACK codec. meshpy never uses it.

It gives an idea of what a codec of our own, specialised for proxying, could cost. It implements just
enough to carry exchanges against a real peer (libnghttp2, h2): the preface, SETTINGS and their ACK
(a smaller HPACK table the peer asks for included), HEADERS with CONTINUATION both ways, DATA split
into frames and held back while the connection's send window is short, WINDOW_UPDATE and PING.
Frames are parsed with `struct`.
HPACK has a fast path for fields fully indexed in the static or dynamic table, and a cache of decoded
Huffman literals; a literal seen for the first time is decoded with the hpack library's pure-Python
decoder. The encoder writes literals without Huffman coding (legal HPACK, a few more bytes on the
wire). There are none of the defences a real codec needs (limits, GOAWAY, RST_STREAM, stream states,
enforcement of the peer's flow control), which is why its figure is a lower bound and not a candidate's
cost.
"""

from __future__ import annotations

import struct
from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from .nghttp2_abi import DATA, END, HEADERS, Event, Fields

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">HBBBI")  # the 24-bit length as 16 + 8 bits, type, flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")
F_DATA, F_HEADERS, F_SETTINGS, F_PING, F_WINDOW_UPDATE, F_CONTINUATION = 0, 1, 4, 6, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
TABLE_SIZE = 4096  # the HPACK default; the prototype announces no other
WINDOW = 65535
MAX_FRAME = 16384  # the default SETTINGS_MAX_FRAME_SIZE, which the prototype never raises
STATIC: list[tuple[bytes, bytes]] = list(HeaderTable.STATIC_TABLE)
_STATIC_FULL = {field: i + 1 for i, field in reversed(list(enumerate(STATIC)))}
_STATIC_NAME = {name: i + 1 for i, (name, _) in reversed(list(enumerate(STATIC)))}


class ProtocolError(Exception):
    pass


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _enc_int(value: int, prefix: int, flags: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((flags | value,))
    out = [flags | mask]
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Decoder:
    def __init__(self) -> None:
        self.table: list[tuple[bytes, bytes]] = []  # newest first: HPACK's index order
        self.size = 0
        self.max_size = TABLE_SIZE
        # Encoded Huffman string -> decoded: a proxy sees the same user-agents, authorities and paths
        # again and again, and decoding Huffman in Python costs microseconds per string.
        self.huffman: dict[bytes, bytes] = {}

    def _add(self, field: tuple[bytes, bytes]) -> None:
        self.table.insert(0, field)
        self.size += len(field[0]) + len(field[1]) + 32
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= 61:
            return STATIC[index - 1]
        try:
            return self.table[index - 62]
        except IndexError:
            raise ProtocolError(f"HPACK index {index} out of range") from None

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huffman = data[pos] & 0x80
        length, pos = _int(data, pos, 7)
        raw = data[pos:pos + length]
        if huffman:
            decoded = self.huffman.get(raw)
            if decoded is None:
                if len(self.huffman) >= 4096:
                    self.huffman.clear()  # bounded: a peer sending ever-new literals cannot grow it
                decoded = self.huffman[raw] = decode_huffman(raw)
            raw = decoded
        return raw, pos + length

    def decode(self, data: bytes) -> Fields:
        out: Fields = []
        pos, end = 0, len(data)
        while pos < end:
            b = data[pos]
            if b & 0x80:  # indexed field: the fast path
                index, pos = _int(data, pos, 7)
                out.append(self._field(index))
                continue
            if b & 0xE0 == 0x20:  # dynamic table size update
                self.max_size, pos = _int(data, pos, 5)
                if self.max_size > TABLE_SIZE:
                    raise ProtocolError("HPACK table size above the announced one")
                self._evict()
                continue
            indexing = b & 0x40
            index, pos = _int(data, pos, 6 if indexing else 4)
            if index:
                name = self._field(index)[0]
            else:
                name, pos = self._string(data, pos)
            value, pos = self._string(data, pos)
            out.append((name, value))
            if indexing:
                self._add((name, value))
        return out


class Encoder:
    def __init__(self) -> None:
        # (field, insertion number), oldest first; `where` maps a field to its newest insertion.
        self.entries: deque[tuple[tuple[bytes, bytes], int]] = deque()
        self.where: dict[tuple[bytes, bytes], int] = {}
        self.inserted = 0
        self.size = 0
        self.limit = TABLE_SIZE
        self.update = b""  # a table size update the next block must start with

    def encode(self, fields: Fields) -> bytes:
        out = [self.update] if self.update else []
        self.update = b""
        for field in fields:
            index = _STATIC_FULL.get(field)
            if index is None:
                seq = self.where.get(field)
                if seq is not None:
                    index = 62 + self.inserted - 1 - seq
            if index is not None:
                out.append(_enc_int(index, 7, 0x80))
                continue
            name, value = field
            name_index = _STATIC_NAME.get(name, 0)
            out.append(_enc_int(name_index, 6, 0x40))
            if not name_index:
                out += (_enc_int(len(name), 7, 0), name)
            out += (_enc_int(len(value), 7, 0), value)
            self._add(field)
        return b"".join(out)

    def _add(self, field: tuple[bytes, bytes]) -> None:
        self.entries.append((field, self.inserted))
        self.where[field] = self.inserted
        self.inserted += 1
        self.size += len(field[0]) + len(field[1]) + 32
        self._evict()

    def resize(self, limit: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: the table shrinks now, and the next block says so
        first (a dynamic table size update, RFC 7541 6.3)."""
        self.limit = limit
        self.update = _enc_int(limit, 5, 0x20)
        self._evict()

    def _evict(self) -> None:
        while self.size > self.limit:
            old, seq = self.entries.popleft()
            self.size -= len(old[0]) + len(old[1]) + 32
            if self.where.get(old) == seq:
                del self.where[old]


class Connection:
    """The same interface as nghttp2_abi.Connection (see there), in pure Python."""

    def __init__(self, client_side: bool) -> None:
        self._client = client_side
        self._decoder = Decoder()
        self._encoder = Encoder()
        self._buffer = b""
        self._preface_due = not client_side
        self._next_id = 1
        self._out: list[bytes] = [PREFACE] if client_side else []
        self._out.append(_frame(F_SETTINGS, 0, 0, b""))
        self._send_window = WINDOW
        self._unacked = 0  # connection-level bytes consumed and not yet given back
        self._queued: deque[tuple[int, bytes]] = deque()  # (window it takes, frame) held for the window
        self._fragments: tuple[int, int, list[bytes]] | None = None  # a header block still arriving
        self._stream_unacked: dict[int, int] = {}  # per stream, as _unacked

    def send_request(self, headers: Fields, body: bytes = b"", trailers: Fields | None = None) -> int:
        sid = self._next_id
        self._next_id += 2
        self._send(sid, headers, body, trailers)
        return sid

    def send_response(self, stream_id: int, headers: Fields, body: bytes = b"",
                      trailers: Fields | None = None) -> None:
        self._send(stream_id, headers, body, trailers)

    def _send(self, sid: int, headers: Fields, body: bytes, trailers: Fields | None) -> None:
        self._out.append(self._headers(sid, headers, not body and trailers is None))
        # DATA (and the trailers after it, whose order must hold) go through the queue that the
        # connection's send window lets out; stream windows are not tracked (see the module's text).
        queue = self._queued
        for start in range(0, len(body), MAX_FRAME):
            chunk = body[start:start + MAX_FRAME]
            last = start + MAX_FRAME >= len(body) and trailers is None
            queue.append((len(chunk), _frame(F_DATA, END_STREAM if last else 0, sid, chunk)))
        if trailers is not None:
            queue.append((0, self._headers(sid, trailers, True)))
        self._flush()

    def _flush(self) -> None:
        queue = self._queued
        while queue and queue[0][0] <= self._send_window:
            cost, frame = queue.popleft()
            self._send_window -= cost
            self._out.append(frame)

    def _headers(self, sid: int, fields: Fields, end_stream: bool) -> bytes:
        block = self._encoder.encode(fields)
        flags = END_STREAM if end_stream else 0
        if len(block) <= MAX_FRAME:
            return _frame(F_HEADERS, END_HEADERS | flags, sid, block)
        pieces = [block[i:i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)]
        frames = [_frame(F_HEADERS, flags, sid, pieces[0])]
        frames += [_frame(F_CONTINUATION, 0, sid, piece) for piece in pieces[1:-1]]
        frames.append(_frame(F_CONTINUATION, END_HEADERS, sid, pieces[-1]))
        return b"".join(frames)

    def consume(self, stream_id: int, length: int) -> None:
        # Given back in batches of half a window, as nghttp2 and h2 do: the connection's, and the
        # stream's once a body is larger than the benchmark's (a stream's table entry only then).
        self._unacked += length
        if self._unacked >= WINDOW // 2:
            self._out.append(_frame(F_WINDOW_UPDATE, 0, 0, _U32.pack(self._unacked)))
            self._unacked = 0
        held = self._stream_unacked.get(stream_id, 0) + length
        if held >= WINDOW // 2:
            self._out.append(_frame(F_WINDOW_UPDATE, 0, stream_id, _U32.pack(held)))
            held = 0
        self._stream_unacked[stream_id] = held

    def receive(self, data: bytes) -> list[Event]:
        buf = self._buffer + data if self._buffer else data
        pos = 0
        if self._preface_due:
            if len(buf) < len(PREFACE):
                self._buffer = buf
                return []
            if not buf.startswith(PREFACE):
                raise ProtocolError("no client preface")
            self._preface_due = False
            pos = len(PREFACE)
        events: list[Event] = []
        unpack = _FRAME.unpack_from
        end = len(buf)
        while end - pos >= 9:
            hi, lo, kind, flags, sid = unpack(buf, pos)
            length = (hi << 8) | lo
            if end - pos - 9 < length:
                break
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            sid &= 0x7FFFFFFF
            if self._fragments is not None:
                # Inside a header block only its CONTINUATIONs may come (RFC 9113 6.10).
                fsid, fflags, parts = self._fragments
                if kind != F_CONTINUATION or sid != fsid:
                    raise ProtocolError("a header block interrupted")
                parts.append(payload)
                if flags & END_HEADERS:
                    self._fragments = None
                    events.append((HEADERS, sid, self._decoder.decode(b"".join(parts))))
                    if fflags & END_STREAM:
                        events.append((END, sid, None))
                continue
            if kind in (F_HEADERS, F_DATA):
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if kind == F_DATA:
                    events.append((DATA, sid, payload))
                else:
                    if flags & PRIORITY:
                        payload = payload[5:]
                    if not flags & END_HEADERS:
                        self._fragments = (sid, flags, [payload])
                        continue
                    events.append((HEADERS, sid, self._decoder.decode(payload)))
                if flags & END_STREAM:
                    events.append((END, sid, None))
            else:
                self._control(kind, flags, sid, payload)
        self._buffer = buf[pos:]
        return events

    def _control(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == F_SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                ident, value = _SETTING.unpack_from(payload, i)
                if ident == 1 and value != self._encoder.limit:
                    self._encoder.resize(value)
            self._out.append(_frame(F_SETTINGS, ACK, 0, b""))
        elif kind == F_WINDOW_UPDATE and sid == 0:
            self._send_window += _U32.unpack(payload)[0] & 0x7FFFFFFF
            self._flush()
        elif kind == F_PING and not flags & ACK:
            self._out.append(_frame(F_PING, ACK, 0, payload))
        elif kind == F_CONTINUATION:
            raise ProtocolError("CONTINUATION outside a header block")
        # PRIORITY, RST_STREAM, GOAWAY, stream-level WINDOW_UPDATE and unknown frames: ignored here.

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out
