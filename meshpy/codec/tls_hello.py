"""The TLS ClientHello a connection starts with, read without terminating TLS (what Envoy's
tls_inspector listener filter does): the SNI and ALPN protocols choose a filter chain or a passthrough
cluster, `looks_like_tls` tells TLS from plaintext on one port (mTLS PERMISSIVE).

Sans-I/O: the caller passes everything received so far and calls again with more bytes while the
answer is None. A ClientHello may be split over several TLS records (RFC 8446 5.1) and those over any
number of reads. What has arrived is checked as it arrives, so bytes that cannot start a ClientHello
are refused as soon as they show it, not once a declared length has been waited for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from meshpy.errors import MeshError

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
# RFC 8446 5.2: no record is longer, even protected (plaintext records stay within 2^14).
_MAX_RECORD = 2**14 + 2048
_SERVER_NAME, _ALPN, _PRE_SHARED_KEY, _SUPPORTED_VERSIONS = 0, 16, 41, 43
_HOST_NAME = 0
# RFC 1035 caps a name at 255 bytes; BoringSSL (Envoy's inspector) refuses longer ones too.
_MAX_HOST_NAME = 255


class NotClientHello(MeshError, ValueError):
    """The bytes cannot be (the start of) a TLS ClientHello; `reason` says why, for logs and stats."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str  # server_name's host_name, lower-cased; "" when the client sent none
    alpn: tuple[str, ...]  # as offered, in order (GREASE values included), latin-1 decoded
    versions: tuple[int, ...]  # supported_versions without GREASE, else (legacy_version,)
    size: int  # bytes of the records the ClientHello took; what follows belongs to the next message


def looks_like_tls(buf: bytes) -> bool | None:
    """Whether `buf` starts a TLS handshake record; None while too few bytes arrived to tell. Three bytes
    decide: content type 22 and a record version 3.0 to 3.4 (SSLv2-compatible hellos are not TLS here)."""
    if not buf:
        return None
    if buf[0] != _HANDSHAKE:
        return False
    if len(buf) < 2:
        return None
    if buf[1] != 3:
        return False
    return None if len(buf) < 3 else buf[2] <= 4


class _Incomplete(Exception):
    """A read past what has arrived (yet within every declared length): more bytes are needed."""


class _Reader:
    """A cursor over a block whose length is declared (`end`) while only part of it may have arrived
    (`data`): reading past `end` is malformed, reading past `data` only means "not yet"."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: memoryview, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int, what: str) -> memoryview:
        stop = self.pos + n
        if stop > self.end:
            raise NotClientHello(f"{what} overruns its block")
        if stop > len(self.data):
            raise _Incomplete
        out = self.data[self.pos:stop]
        self.pos = stop
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def block(self, len_bytes: int, what: str) -> _Reader:
        """The length-prefixed block at the cursor, which moves past it (arrived or not)."""
        n = self.uint(len_bytes, what)
        if self.pos + n > self.end:
            raise NotClientHello(f"{what} overruns its block")
        inner = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return inner

    @property
    def left(self) -> int:
        return self.end - self.pos


def _is_grease(v: int) -> bool:
    # RFC 8701: 0x0A0A, 0x1A1A ... 0xFAFA
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def _server_name(ext: _Reader) -> str:
    names = ext.block(2, "server_name list")
    if names.end != ext.end:
        raise NotClientHello("server_name list length does not match its extension")
    if not names.left:
        raise NotClientHello("empty server_name list")
    host = ""
    while names.left:
        kind = names.uint(1, "server_name type")
        # Every name type RFC 6066 defines is opaque<1..2^16-1>, and the list cannot be walked otherwise.
        name = names.block(2, "server_name")
        if kind != _HOST_NAME:
            continue
        if host:
            raise NotClientHello("two host names in server_name")
        if not 0 < name.left <= _MAX_HOST_NAME:
            raise NotClientHello("bad SNI length")
        raw = name.take(name.left, "server_name")
        # Printable ASCII without space: NUL or control bytes would let one name pass for another.
        if any(not 0x21 <= b <= 0x7E for b in raw):
            raise NotClientHello("bad SNI encoding")
        host = bytes(raw).decode("ascii").lower()
    return host


def _alpn(ext: _Reader) -> tuple[str, ...]:
    protocols = ext.block(2, "ALPN list")
    if protocols.end != ext.end:
        raise NotClientHello("ALPN list length does not match its extension")
    if not protocols.left:
        raise NotClientHello("empty ALPN list")
    out = []
    while protocols.left:
        name = protocols.block(1, "ALPN protocol")
        if not name.left:
            raise NotClientHello("empty ALPN protocol name")
        # latin-1 maps every byte: an odd name is kept as offered, never an error.
        out.append(bytes(name.take(name.left, "ALPN protocol")).decode("latin-1"))
    return tuple(out)


def _versions(ext: _Reader) -> tuple[int, ...]:
    versions = ext.block(1, "supported_versions list")
    if versions.end != ext.end:
        raise NotClientHello("supported_versions length does not match its extension")
    if versions.left < 2 or versions.left % 2:
        raise NotClientHello("bad supported_versions length")
    out = []
    while versions.left:
        v = versions.uint(2, "version")
        if not _is_grease(v):
            out.append(v)
    return tuple(out)


def _parse_body(body: memoryview, length: int, size: int) -> ClientHello:
    """The ClientHello message after its 4-byte header; `body` may hold fewer than `length` bytes, and
    then _Incomplete is raised once everything that arrived checked out."""
    r = _Reader(body, 0, length)
    legacy_version = r.uint(2, "client version")
    if legacy_version >> 8 != 3:
        raise NotClientHello(f"bad client version 0x{legacy_version:04x}")
    r.take(32, "random")
    if r.block(1, "session id").left > 32:
        raise NotClientHello("session id longer than 32 bytes")
    suites = r.block(2, "cipher suites").left
    if suites < 2 or suites % 2:
        raise NotClientHello("bad cipher suites length")
    if not r.block(1, "compression methods").left:
        raise NotClientHello("no compression methods")
    sni = ""
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = (legacy_version,)
    if r.left:  # (TLS 1.2 and older may end the message here: no extensions)
        exts = r.block(2, "extensions")
        if exts.end != r.end:
            raise NotClientHello("extensions length does not match the message")
        seen: set[int] = set()
        while exts.pos < exts.end:
            if _PRE_SHARED_KEY in seen:
                raise NotClientHello("pre_shared_key is not the last extension")  # RFC 8446 4.2.11
            # One read a header, and no reader nor string for an unknown extension: 64 KB hold 16,000.
            head = exts.take(4, "extension header")
            kind, start = head[0] << 8 | head[1], exts.pos
            exts.pos += head[2] << 8 | head[3]
            if kind in seen:
                raise NotClientHello(f"duplicate extension {kind}")
            seen.add(kind)
            if exts.pos > exts.end:
                raise NotClientHello(f"extension {kind} overruns its block")
            if kind == _SERVER_NAME:
                sni = _server_name(_Reader(body, start, exts.pos))
            elif kind == _ALPN:
                alpn = _alpn(_Reader(body, start, exts.pos))
            elif kind == _SUPPORTED_VERSIONS:
                versions = _versions(_Reader(body, start, exts.pos))
    return ClientHello(sni=sni, alpn=alpn, versions=versions, size=size)


def parse_client_hello(buf: bytes, limit: int = 65536) -> ClientHello | None:
    """The ClientHello at the start of `buf`; None while `buf` is a valid start that needs more bytes.
    Raises NotClientHello as soon as the bytes cannot be one, and when its records would take more
    than `limit` bytes. Bytes after the ClientHello's last record are not looked at.

    Linear in len(buf) (about 8 ms at worst for 64 KB: 1-byte records, or 16,000 empty extensions), but
    each call starts over: a peer trickling its hello a byte a read makes the caller's total quadratic,
    which the caller's deadline for the hello has to bound."""
    view = memoryview(buf)
    message = bytearray()  # the handshake message, reassembled from the records' fragments
    length = -1  # of the ClientHello body, from its header once 4 bytes of it arrived
    pos = records = 0
    while True:
        header = view[pos:pos + 5]
        if header and header[0] != _HANDSHAKE:
            raise NotClientHello("not a TLS handshake record" if not records
                                 else "a record of another type inside the client hello")
        if (len(header) > 1 and header[1] != 3) or (len(header) > 2 and header[2] > 4):
            raise NotClientHello("bad TLS record version")
        if len(header) < 5:
            break
        declared = int.from_bytes(header[3:5], "big")
        if declared == 0:
            raise NotClientHello("empty handshake record")  # RFC 8446 5.1 forbids them
        if declared > _MAX_RECORD:
            raise NotClientHello(f"TLS record of {declared} bytes")
        records += 1
        declared_end = len(message) + declared  # where the message is once this record has arrived
        fragment = view[pos + 5:pos + 5 + declared]
        message += fragment
        pos += 5 + len(fragment)
        if message and message[0] != _CLIENT_HELLO:
            raise NotClientHello(f"handshake message of type {message[0]}, not a client hello")
        if length < 0 and len(message) >= 4:
            length = int.from_bytes(message[1:4], "big")
        total = 4 + length if length >= 0 else declared_end
        # Every byte of the message is in a record and every record has a 5-byte header.
        if 5 * records + max(total, declared_end) > limit:
            raise NotClientHello(f"client hello larger than {limit} bytes")
        if length >= 0 and declared_end > total:
            # RFC 8446 5.1: a key change may follow the ClientHello, so it must end its record.
            raise NotClientHello("data after the client hello in its record")
        if len(fragment) < declared:
            break
        if length >= 0 and len(message) == total:
            # Every declared byte has arrived, so no read can come up short (_Incomplete).
            return _parse_body(memoryview(message)[4:], length, pos)
    if length >= 0:
        # Checks what arrived; a body whose last blocks were skipped unread may "parse" all the same.
        with contextlib.suppress(_Incomplete):
            _parse_body(memoryview(message)[4:], length, pos)
    return None
