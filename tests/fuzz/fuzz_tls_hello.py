"""TLS ClientHellos, in process: meshpy.codec.tls_hello's `parse_client_hello` (and `looks_like_tls`) on
the input's bytes, as the start of a downstream connection.

Properties: nothing but NotClientHello comes out; bytes looks_like_tls calls plaintext are refused; a
buffer's answer agrees with the answers for its prefixes (a hello's own records parse to the same hello
and any shorter buffer asks for more; a prefix refused means the whole is refused); a hello's size obeys
`limit` exactly; the SNI is lower-case printable ASCII and no GREASE version is left.

The structured mutator works on the TLS structure: it re-frames the handshake message into records of
random sizes, adds, drops, repeats and swaps extensions (odd SNI, ALPN and supported_versions ones among
them) with the lengths kept right, rewrites length fields, and mutates the message's bytes.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import zlib

from fuzzkit import Finding, Target, mutate_bytes

from meshpy.codec.tls_hello import ClientHello, NotClientHello, looks_like_tls, parse_client_hello

LIMIT = 16384  # below the default, so that inputs within max_len can cross it


def _parse(data: bytes, limit: int = LIMIT) -> ClientHello | NotClientHello | None:
    """The hello, None, or the NotClientHello raised."""
    try:
        return parse_client_hello(data, limit)
    except NotClientHello as exc:
        return exc


def run(data: bytes) -> None:
    whole = _parse(data)
    if looks_like_tls(data) is False and not isinstance(whole, NotClientHello):
        raise Finding(f"plaintext by looks_like_tls, not refused: {whole!r}")
    end = len(data)
    if isinstance(whole, ClientHello):
        end = whole.size
        if not 0 < end <= min(len(data), LIMIT):
            raise Finding(f"size {end} of a {len(data)}-byte input (limit {LIMIT})")
        if _parse(data[:end]) != whole or _parse(data, end) != whole:
            raise Finding("the hello's own records do not parse to the same hello")
        if not isinstance(_parse(data, end - 1), NotClientHello):
            raise Finding(f"a {end}-byte hello within a limit of {end - 1}")
        if whole.sni != whole.sni.lower() or any(not 0x21 <= ord(c) <= 0x7E for c in whole.sni):
            raise Finding(f"SNI {whole.sni!r}")
        if any((v & 0x0F0F) == 0x0A0A and v >> 8 == v & 0xFF for v in whole.versions):
            raise Finding(f"GREASE in versions {whole.versions}")
    # Prefixes: a sample (every one would be quadratic), the same sample for the same input.
    rng = random.Random(zlib.crc32(data))
    cuts = {*range(12), end - 1, end // 2, *(rng.randrange(end) for _ in range(8) if end)}
    for k in sorted(c for c in cuts if 0 <= c < end):
        part = _parse(data[:k])
        if part is not None and not (isinstance(part, NotClientHello) and isinstance(whole, NotClientHello)):
            raise Finding(f"{len(data)} bytes: {whole!r}, but their first {k}: {part!r}")


# -- TLS structure -------------------------------------------------------------------------------------
def unframe(data: bytes) -> bytes | None:
    """The handshake message carried by the records at the start of `data`, if they carry a whole one."""
    message, pos = b"", 0
    while pos + 5 <= len(data) and data[pos] == 0x16:
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        message += data[pos + 5:pos + 5 + n]
        pos += 5 + n
        if len(message) >= 4 and len(message) >= 4 + int.from_bytes(message[1:4], "big"):
            return message
    return None


def frame(message: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    out, i = [], 0
    while i < len(message):
        n = sizes[len(out) % len(sizes)]
        out.append(b"\x16" + version + len(message[i:i + n]).to_bytes(2, "big") + message[i:i + n])
        i += n
    return b"".join(out)


def split(message: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(the body up to the extensions, the extensions as (type, data)); ValueError when it does not walk."""
    i = 4 + 2 + 32
    i += 1 + message[i]
    i += 2 + int.from_bytes(message[i:i + 2], "big")
    i += 1 + message[i]
    head, exts, j = message[4:i], [], i + 2
    while j + 4 <= len(message):
        n = int.from_bytes(message[j + 2:j + 4], "big")
        exts.append((int.from_bytes(message[j:j + 2], "big"), message[j + 4:j + 4 + n]))
        j += 4 + n
    if j != len(message) and i != len(message):
        raise ValueError("extensions do not walk")
    return head, exts


def join(head: bytes, exts: list[tuple[int, bytes]]) -> bytes:
    block = b"".join(k.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for k, d in exts)
    body = head + len(block).to_bytes(2, "big") + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _sni(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([kind]) + len(n).to_bytes(2, "big") + n for kind, n in names)
    return len(entries).to_bytes(2, "big") + entries


def _alpn(*names: bytes) -> bytes:
    entries = b"".join(bytes([len(n) & 0xFF]) + n for n in names)
    return len(entries).to_bytes(2, "big") + entries


ODD_EXTENSIONS = (
    (0, _sni((0, b"A.Test"))), (0, _sni((0, b"a\x00test"))), (0, b"\x00\x00"),
    (0, _sni((0, b"a"), (0, b"b"))), (0, _sni((7, b"x"), (0, b"y"))), (0, _sni((0, "é".encode()))),
    (0, _sni((0, b"a" * 256))), (0, _sni((0, b""))), (0, _sni((0, b"a.test"))[:-1]),
    (16, _alpn(b"h2", b"http/1.1")),
    (16, _alpn(b"\x0a\x0a", b"")), (16, b"\x00\x00"), (16, _alpn(b"\xff" * 255)), (16, _alpn(b"h2") + b"x"),
    (43, b"\x04\x0a\x0a\x03\x04"), (43, b"\x02\x1a\x1a"), (43, b"\x03\x03\x04\x03"), (43, b"\x00"),
    (41, b"psk"), (0x0A0A, b""), (0xFAFA, b"\x00"), (21, bytes(300)), (65535, b"x"),
)


def mutate(data: bytes, rng: random.Random) -> bytes:
    message = unframe(data)
    if message is None:
        return mutate_bytes(data, rng)
    op = rng.randrange(6)
    if op == 0:  # the same message in other records
        sizes = [rng.choice((1, 2, 3, 5, 7, 64, 200, 16384)) for _ in range(rng.randint(1, 3))]
        return frame(message, sizes, rng.choice((b"\x03\x01", b"\x03\x03", b"\x03\x00", b"\x03\x05")))
    if op == 1:  # a length field (or any two bytes) rewritten
        buf = bytearray(message)
        i = rng.randrange(len(buf))
        left = len(buf) - i
        value = rng.choice((0, 1, 2, 3, 0xFF, 0x100, 0xFFFF, left, left + 1, left - 1, left - 2))
        buf[i:i + 2] = (value & 0xFFFF).to_bytes(2, "big")
        return frame(bytes(buf), [16384])
    if op == 2:  # the message's bytes, its length set right again half of the time
        body = mutate_bytes(message, rng, max_len=20000)
        if rng.random() < 0.5 and len(body) >= 4:
            body = body[:1] + (len(body) - 4).to_bytes(3, "big") + body[4:]
        return frame(body, [rng.choice((16384, 100, 7))])
    head, exts = split(message)
    for _ in range(rng.randint(1, 3)):
        what = rng.randrange(4)
        i = rng.randint(0, len(exts))
        if what == 0 or not exts:
            exts.insert(i, rng.choice(ODD_EXTENSIONS))
        elif what == 1:
            del exts[min(i, len(exts) - 1)]
        elif what == 2:
            exts.insert(i, rng.choice(exts))
        else:
            j = rng.randrange(len(exts))
            exts[min(i, len(exts) - 1)], exts[j] = exts[j], exts[min(i, len(exts) - 1)]
    out = frame(join(head, exts), [rng.choice((16384, 300, 1))])
    return out[:rng.randint(0, len(out))] if op == 5 else out


DICTIONARY = (b"\x16\x03\x01", b"\x16\x03\x03", b"\x00\x00", b"\x00\x10", b"\x00\x2b", b"\x00\x29",
              b"\x0a\x0a", b"\x03\x04", b"\x03\x03", b"h2", b"http/1.1", b"\x02h2", b"\xff\xff",
              b"\x00\x00\x00")


# -- seeds (make_corpus.py) ------------------------------------------------------------------------------
def _python_hello(host: str | None, alpn: list[str], maximum: ssl.TLSVersion | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = host is not None
    if maximum is not None:
        ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    outgoing = ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):  # (it waits for the ServerHello)
        ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=host).do_handshake()
    return outgoing.read()


def _fixed(message: bytes) -> bytes:
    """The message with its random parts (random, session id, key shares) zeroed: a rebuild of the
    corpus gives the same files while the OpenSSL version stays."""
    head, exts = split(message)
    head = head[:2] + bytes(32) + head[34:35] + bytes(head[34]) + head[35 + head[34]:]
    fixed = []
    for kind, d in exts:
        if kind == 51:  # key_share: (group, key) entries after the list length; keys zeroed
            out, i = bytearray(d[:2]), 2
            while i + 4 <= len(d):
                n = int.from_bytes(d[i + 2:i + 4], "big")
                out += d[i:i + 4] + bytes(n)
                i += 4 + n
            d = bytes(out)
        fixed.append((kind, d))
    return join(head, fixed)


def seeds() -> list[bytes]:
    """Hellos of OpenSSL (through the ssl module): TLS 1.3 and 1.2, with and without SNI and ALPN; one
    re-framed into small records; one with GREASE as Chrome sends it; one of TLS 1.0 without extensions."""
    messages = [_fixed(unframe(_python_hello(*args)) or b"") for args in (
        ("api.example.test", ["h2", "http/1.1"]), (None, []), ("A.Example.TEST", ["http/1.1"]),
        ("a.test", ["h2"], ssl.TLSVersion.TLSv1_2))]
    head, exts = split(messages[0])
    chrome = {43: b"\x04\x1a\x1a\x03\x04", 16: _alpn(b"\x2a\x2a", b"h2")}
    grease = join(head, [(0x0A0A, b""), *((k, chrome.get(k, d)) for k, d in exts), (0xFAFA, b"\x00")])
    old = b"\x03\x01" + bytes(32) + b"\x00" + b"\x00\x04\x00\x2f\x00\x35" + b"\x01\x00"
    old = b"\x01" + len(old).to_bytes(3, "big") + old
    return [*(frame(m, [16384]) for m in messages), frame(messages[0], [7, 1, 100]), frame(grease, [16384]),
            frame(old, [16384])]


TARGET = Target(name="tls_hello", run=run, mutate=mutate, dictionary=DICTIONARY, max_len=8192,
                time_limit=3.0)
