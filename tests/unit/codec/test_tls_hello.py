"""The ClientHello inspector against real hellos (Python's ssl module, `openssl s_client`, curl), every
way they can arrive (prefixes, re-framed into small records), hand-made malformed ones, and hypothesis
on random and mutated bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpy.codec.tls_hello import ClientHello, NotClientHello, looks_like_tls, parse_client_hello

TLS12, TLS13 = 0x0303, 0x0304


def python_hello(host: str | None = "api.example.test", alpn: tuple[str, ...] = ("h2", "http/1.1"),
                 maximum: ssl.TLSVersion | None = None) -> bytes:
    """The ClientHello OpenSSL (through the ssl module) sends first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if host is None:
        ctx.check_hostname = False
    if maximum is not None:
        ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    outgoing = ssl.MemoryBIO()
    conn = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


HELLO13 = python_hello()
HELLO12 = python_hello(maximum=ssl.TLSVersion.TLSv1_2)
NO_SNI = python_hello(host=None, alpn=())


# -- hand-made hellos --------------------------------------------------------------------------------
def u(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


def ext(kind: int, data: bytes) -> bytes:
    return u(kind, 2) + u(len(data), 2) + data


def sni_ext(*names: bytes, kind: int = 0) -> bytes:
    entries = b"".join(bytes([kind]) + u(len(n), 2) + n for n in names)
    return ext(0, u(len(entries), 2) + entries)


def alpn_ext(*names: bytes) -> bytes:
    entries = b"".join(bytes([len(n)]) + n for n in names)
    return ext(16, u(len(entries), 2) + entries)


def versions_ext(*versions: int) -> bytes:
    return ext(43, bytes([2 * len(versions)]) + b"".join(u(v, 2) for v in versions))


def message(*exts: bytes, version: int = TLS12, session: bytes = b"s" * 32, suites: bytes = b"\x13\x01",
            extensions: bool = True) -> bytes:
    body = (u(version, 2) + b"r" * 32 + bytes([len(session)]) + session + u(len(suites), 2) + suites
            + b"\x01\x00")
    if extensions:
        block = b"".join(exts)
        body += u(len(block), 2) + block
    return b"\x01" + u(len(body), 3) + body


def framed(msg: bytes, size: int = 2**14, version: bytes = b"\x03\x01") -> bytes:
    """`msg` in handshake records carrying `size` bytes each (the last one the rest)."""
    return b"".join(b"\x16" + version + u(len(msg[i:i + size]), 2) + msg[i:i + size]
                    for i in range(0, len(msg), size))


def unframed(data: bytes) -> bytes:
    """The handshake message of a hello, out of its records."""
    out, pos = b"", 0
    while pos < len(data):
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        out += data[pos + 5:pos + 5 + n]
        pos += 5 + n
    return out


def refused(data: bytes, limit: int = 65536) -> str:
    with pytest.raises(NotClientHello) as info:
        parse_client_hello(data, limit)
    assert str(info.value) == info.value.reason
    return info.value.reason


# -- real hellos -------------------------------------------------------------------------------------
def test_python_tls13_hello() -> None:
    assert parse_client_hello(HELLO13) == ClientHello(sni="api.example.test", alpn=("h2", "http/1.1"),
                                                      versions=(TLS13, TLS12), size=len(HELLO13))


def test_python_tls12_hello_has_the_legacy_version_only() -> None:
    hello = parse_client_hello(HELLO12)
    assert hello == ClientHello(sni="api.example.test", alpn=("h2", "http/1.1"), versions=(TLS12,),
                                size=len(HELLO12))


def test_python_hello_without_sni_or_alpn() -> None:
    assert parse_client_hello(NO_SNI) == ClientHello(sni="", alpn=(), versions=(TLS13, TLS12),
                                                     size=len(NO_SNI))


def test_sni_is_lower_cased() -> None:
    hello = parse_client_hello(python_hello(host="API.Example.TEST"))
    assert hello is not None and hello.sni == "api.example.test"


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(10)
        yield srv


def capture(srv: socket.socket, cmd: list[str]) -> tuple[bytes, ClientHello]:
    """What the client `cmd` sends to `srv` until a whole ClientHello arrived (then it is cut off)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = conn.recv(4096)
                assert chunk, f"client closed after {data!r}"
                data += chunk
                hello = parse_client_hello(data)
                if hello is not None:
                    return data, hello
            raise AssertionError(f"no complete ClientHello in {data!r}")
    finally:
        proc.kill()
        proc.wait(10)


def test_openssl_s_client_hello() -> None:
    with listener() as srv:
        port = srv.getsockname()[1]
        data, hello = capture(srv, ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                                    "-servername", "Mesh.Example.TEST", "-alpn", "h2,http/1.1"])
    assert (hello.sni, hello.alpn, hello.size) == ("mesh.example.test", ("h2", "http/1.1"), len(data))
    assert TLS13 in hello.versions
    check_every_way_of_arriving(data, hello)


def test_curl_hello() -> None:
    with listener() as srv:
        port = srv.getsockname()[1]
        data, hello = capture(srv, ["curl", "-q", "-k", "-s", "--noproxy", "*", "--max-time", "2",
                                    "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/"])
    assert (hello.sni, hello.size) == ("localhost", len(data))
    assert "http/1.1" in hello.alpn and TLS13 in hello.versions
    check_every_way_of_arriving(data, hello)


def check_every_way_of_arriving(data: bytes, hello: ClientHello) -> None:
    for k in range(len(data)):
        assert parse_client_hello(data[:k]) is None, k
    assert parse_client_hello(data + b"\x17\x03\x03\x00\x01x") == hello  # what follows is not read
    msg = unframed(data)
    for size in (1, 7, 100, 333, len(msg)):
        again = framed(msg, size)
        assert parse_client_hello(again) == dataclasses.replace(hello, size=len(again))
        step = 1 if size > 1 else 97  # (every prefix of 1-byte records is 6x the work: a sample)
        for k in range(0, len(again), step):
            assert parse_client_hello(again[:k]) is None, (size, k)


@pytest.mark.parametrize("data", [HELLO13, HELLO12, NO_SNI], ids=["tls13", "tls12", "no-sni"])
def test_every_prefix_and_framing_of_python_hellos(data: bytes) -> None:
    hello = parse_client_hello(data)
    assert hello is not None
    check_every_way_of_arriving(data, hello)


def test_records_of_mixed_sizes_and_versions() -> None:
    msg = unframed(HELLO13)
    data = (framed(msg[:3], version=b"\x03\x03") + framed(msg[3:200], 50)
            + framed(msg[200:], 1000, b"\x03\x00"))
    hello = parse_client_hello(data)
    assert hello is not None and (hello.sni, hello.size) == ("api.example.test", len(data))


# -- limits --------------------------------------------------------------------------------------------
def test_limit_is_the_size_of_the_records() -> None:
    assert parse_client_hello(HELLO13, limit=len(HELLO13)) is not None
    assert refused(HELLO13, limit=len(HELLO13) - 1) == f"client hello larger than {len(HELLO13) - 1} bytes"
    one_byte_records = framed(unframed(HELLO13), 1)
    limit = len(HELLO13) * 3  # the message fits; its 1-byte records, six bytes each, do not
    assert refused(one_byte_records, limit=limit) == f"client hello larger than {limit} bytes"


def test_a_declared_length_beyond_the_limit_is_refused_at_once() -> None:
    assert refused(b"\x16\x03\x01\x40\x00\x01\xff\xff\xff") == "client hello larger than 65536 bytes"
    at_16k = b"\x16\x03\x01\x40\x00\x01\x00\x40\x00"
    assert refused(at_16k, limit=16384) == "client hello larger than 16384 bytes"


@pytest.mark.parametrize("data", [
    framed(message(sni_ext(b"a.test"), ext(21, bytes(10500))), 1),
    framed(message(sni_ext(b"a.test"), *(ext(1000 + i, b"") for i in range(16000)))),
], ids=["10000-one-byte-records", "16000-extensions"])
def test_the_costliest_hellos_within_the_default_limit_are_linear(data: bytes) -> None:
    assert 60000 < len(data) < 65536
    started = time.monotonic()
    hello = parse_client_hello(data)
    assert hello is not None and hello.sni == "a.test"
    assert parse_client_hello(data[:-1]) is None
    assert time.monotonic() - started < 5  # about 20 ms; quadratic would be minutes


# -- malformed -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "reason"), [
    (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
    (b"\x17\x03\x03\x00\x05hello", "not a TLS handshake record"),
    (b"\x16*", "bad TLS record version"),
    (b"\x16\x02\x00", "bad TLS record version"),
    (b"\x16\x03\x05", "bad TLS record version"),
    (b"\x16\x03\x01\x00\x00", "empty handshake record"),
    (b"\x16\x03\x01\x48\x01", "TLS record of 18433 bytes"),
    (b"\x16\x03\x01\x00\x04\x02", "handshake message of type 2, not a client hello"),
    (framed(message(version=0x0203))[:12], "bad client version 0x0203"),
    (framed(message(session=b"x" * 33)), "session id longer than 32 bytes"),
    (framed(message(suites=b"\x13")), "bad cipher suites length"),
    (framed(message(suites=b"")), "bad cipher suites length"),
    (framed(message(ext(10, b"")) + b"\x00"), "data after the client hello in its record"),
    (framed(message(ext(10, b""), ext(10, b"x"))), "duplicate extension 10"),
    (framed(message(ext(41, b"psk"), ext(10, b""))), "pre_shared_key is not the last extension"),
    (framed(message(sni_ext(b"a\x00.test"))), "bad SNI encoding"),
    (framed(message(sni_ext("bücher.test".encode()))), "bad SNI encoding"),
    (framed(message(sni_ext(b"a test"))), "bad SNI encoding"),
    (framed(message(sni_ext(b""))), "bad SNI length"),
    (framed(message(sni_ext(b"a" * 256))), "bad SNI length"),
    (framed(message(sni_ext(b"a.test", b"b.test"))), "two host names in server_name"),
    (framed(message(ext(0, b"\x00\x00"))), "empty server_name list"),
    (framed(message(ext(0, b"\x00\x09\x00\x00\x07a.test"))), "server_name overruns its block"),
    (framed(message(ext(0, b"\x00\x08\x00\x00\x06a.test\x00"))),
     "server_name list length does not match its extension"),
    (framed(message(alpn_ext(b"h2", b""))), "empty ALPN protocol name"),
    (framed(message(ext(16, b"\x00\x00"))), "empty ALPN list"),
    (framed(message(ext(16, b"\x00\x03\x02h2\x00"))), "ALPN list length does not match its extension"),
    (framed(message(ext(16, b"\x00\x03\x02h"))), "ALPN list overruns its block"),
    (framed(message(ext(16, b"\x00\x02\x02h"))), "ALPN protocol overruns its block"),
    (framed(message(ext(43, b"\x03\x03\x04\x03"))), "bad supported_versions length"),
    (framed(message(ext(43, b"\x02\x03\x04\x03"))), "supported_versions length does not match its extension"),
    (framed(message(ext(10, b"")))[:-4] + b"\x00\x0a\x00\x05", "extension 10 overruns its block"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_malformed(data: bytes, reason: str) -> None:
    assert refused(data) == reason


def test_extensions_length_must_end_with_the_message() -> None:
    msg = bytearray(message(ext(10, b"ab")))
    msg[-8:-6] = u(5, 2)  # the extensions block says 5 bytes; 6 follow
    assert refused(framed(bytes(msg))) == "extensions length does not match the message"


def test_another_record_type_inside_the_hello() -> None:
    msg = message(sni_ext(b"a.test"))
    data = framed(msg[:20]) + b"\x14\x03\x03\x00\x01\x01" + framed(msg[20:])
    assert refused(data) == "a record of another type inside the client hello"


def test_malformed_bytes_are_refused_before_the_rest_arrives() -> None:
    # A bad version in the first bytes of a hello that declares 16 KB: refused on 11 bytes.
    assert refused(b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x09\x09") == "bad client version 0x0909"
    # Two host names, both arrived, the rest not: already refused.
    data = framed(message(sni_ext(b"a.test", b"b.test"), ext(21, bytes(1000))))
    assert refused(data[:data.index(b"b.test") + 6]) == "two host names in server_name"


def test_hello_without_extensions() -> None:
    data = framed(message(version=0x0301, extensions=False))
    assert parse_client_hello(data) == ClientHello(sni="", alpn=(), versions=(0x0301,), size=len(data))


def test_grease_versions_are_dropped_and_grease_protocols_kept() -> None:
    # As Chrome sends them (RFC 8701): a GREASE extension first and last, a GREASE version and protocol.
    data = framed(message(ext(0x0A0A, b""), versions_ext(0x1A1A, TLS13, 0xFAFA, TLS12),
                          alpn_ext(b"\x1a\x1a", b"h2"), sni_ext(b"A.Test"), ext(0x3A3A, b"\x00")))
    assert parse_client_hello(data) == ClientHello(sni="a.test", alpn=("\x1a\x1a", "h2"),
                                                   versions=(TLS13, TLS12), size=len(data))


def test_server_name_of_another_type_beside_the_host_name() -> None:
    data = framed(message(ext(0, b"\x00\x11\x07\x00\x01x\x00\x00\x0aA.Example.")))
    hello = parse_client_hello(data)
    assert hello is not None and hello.sni == "a.example."


def test_alpn_names_beyond_ascii_are_kept_as_latin_1() -> None:
    hello = parse_client_hello(framed(message(alpn_ext(b"\xff\x00h", b"h2"))))
    assert hello is not None and hello.alpn == ("\xff\x00h", "h2")


def test_all_grease_supported_versions_leave_none() -> None:
    hello = parse_client_hello(framed(message(versions_ext(0x0A0A))))
    assert hello is not None and hello.versions == ()


# -- looks_like_tls ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "answer"), [
    (b"", None),
    (b"\x16", None),
    (b"\x16\x03", None),
    (b"\x16\x03\x01", True),
    (b"\x16\x03\x00", True),
    (b"\x16\x03\x04", True),
    (b"\x16\x03\x05", False),
    (b"\x16\x02", False),
    (b"\x17", False),
    (b"G", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
    (HELLO13, True),
    (NO_SNI[:3], True),
])
def test_looks_like_tls(data: bytes, answer: bool | None) -> None:
    assert looks_like_tls(data) is answer


def test_one_byte_decides_unless_it_is_22() -> None:
    answers = [looks_like_tls(bytes([b])) for b in range(256)]
    assert answers == [None if b == 0x16 else False for b in range(256)]


# -- properties ------------------------------------------------------------------------------------------
SETTINGS = settings(max_examples=400, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> None:
    """Only NotClientHello comes out; the answer agrees with looks_like_tls and with the answers for
    every shorter buffer (more bytes never turn a refusal into a hello, nor a hello into another)."""
    try:
        hello = parse_client_hello(data)
    except NotClientHello:
        return
    assert looks_like_tls(data) is not False
    if hello is None:
        cuts = range(0, len(data), max(1, len(data) // 50))
    else:
        assert 0 < hello.size <= len(data) and parse_client_hello(data[:hello.size]) == hello
        cuts = range(0, hello.size, max(1, hello.size // 50))
        assert hello.sni == hello.sni.lower() and all(0x21 <= ord(c) <= 0x7E for c in hello.sni)
        assert all(hello.alpn) and not any(v & 0x0F0F == 0x0A0A for v in hello.versions if v >> 8 == v & 0xFF)
    for k in cuts:
        assert parse_client_hello(data[:k]) is None, k


@given(st.binary(max_size=3000))
@SETTINGS
def test_random_bytes(data: bytes) -> None:
    check(data)


HEADS = [b"\x16\x03\x01", b"\x16\x03\x03\x00", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]


@given(st.sampled_from(HEADS), st.binary(max_size=600))
@SETTINGS
def test_random_bytes_after_a_handshake_header(head: bytes, data: bytes) -> None:
    check(head + data)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("set16"), st.integers(0, 10**6), st.sampled_from([0, 1, 2, 0xFF, 0x100, 0xFFFF])),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


def mutated(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, arg in mutations:
        if not buf:
            break
        i = where % len(buf)
        if op == "flip":
            buf[i] ^= 1 << arg
        elif op == "cut":
            del buf[i:]
        elif op == "set16":  # a length field (or anything) rewritten
            buf[i:i + 2] = u(arg, 2)
        elif op == "delete":
            del buf[i:i + arg]
        else:
            buf.insert(i, arg)
    return bytes(buf)


@given(st.sampled_from([HELLO13, HELLO12, NO_SNI, framed(unframed(HELLO13), 7)]),
       st.lists(MUTATION, max_size=4))
@SETTINGS
def test_mutated_real_hellos(data: bytes, mutations: list[tuple[str, int, int]]) -> None:
    check(mutated(data, mutations))
