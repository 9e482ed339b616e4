"""The downstream TLS layer on its own, against a real client SSLObject: records that arrive whole,
several at once, a byte at a time, while reading is paused; the client's close_notify; a handshake that
fails. The socket side is a recording transport; the TLS is real (OpenSSL on both ends)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pki import make_ca

from meshpy.ports import TlsInfo
from meshpy.transport.tls_layer import TlsConnection


class Raw(asyncio.Transport):
    """The socket's transport: what the layer writes goes to the client."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool:
        self.eof = True
        return False


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    ca = make_ca(tmp_path)
    leaf = ca.issue("a", dns=("a.example.com",))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(leaf.cert, leaf.key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(ca.path)
    yield server, client


class Pair:
    """A client SSLObject talking to a TlsConnection over a Raw transport."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext, fail: list[str | None]) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = App()
        self.raw = Raw()
        self.info: TlsInfo | None = None

        def ready(conn: TlsConnection, info: TlsInfo) -> asyncio.BaseProtocol:
            self.info = info
            return self.app

        self.conn = TlsConnection(self.loop, server, "a.example.com", ready, fail.append, None)
        self.cin, self.cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client.wrap_bio(self.cin, self.cout, server_hostname="a.example.com")
        self.conn.start(self.raw, b"")

    def shuttle(self) -> None:
        """Until the handshake is done both ways."""
        for _ in range(10):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.conn.data_received(self.cout.read())  # the client's Finished
                self.cin.write(bytes(self.raw.out))  # TLS 1.3 session tickets
                self.raw.out.clear()
                return
            self.conn.data_received(self.cout.read())
            self.cin.write(bytes(self.raw.out))
            self.raw.out.clear()
        raise AssertionError("no handshake")

    def records(self, *payloads: bytes) -> bytes:
        for p in payloads:
            self.client.write(p)
        return self.cout.read()

    def close(self) -> None:
        self.loop.close()


def test_records_whole_several_and_byte_by_byte(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    fail: list[str | None] = []
    pair = Pair(*contexts, fail)
    try:
        pair.shuttle()
        assert pair.info is not None and pair.info.version == "TLSv1.3" and pair.info.sni == "a.example.com"
        pair.conn.data_received(pair.records(b"one"))
        assert pair.app.got == b"one"
        pair.conn.data_received(pair.records(b"two", b"three", b"four"))
        assert pair.app.got == b"onetwothreefour"
        for byte in pair.records(b"five"):
            pair.conn.data_received(bytes([byte]))
        assert pair.app.got == b"onetwothreefourfive"
        pair.conn.write(b"answer")
        pair.cin.write(bytes(pair.raw.out))
        assert pair.client.read(100) == b"answer"
        assert fail == []
    finally:
        pair.close()


def test_paused_reading_holds_records_until_resumed(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    pair = Pair(*contexts, [])
    try:
        pair.shuttle()
        pair.conn.pause_reading()
        pair.conn.data_received(pair.records(b"held", b"back"))
        assert pair.app.got == b"" and not pair.raw.reading
        pair.conn.resume_reading()
        pair.loop.run_until_complete(asyncio.sleep(0))  # the held records are read soon, not in resume
        assert pair.app.got == b"heldback" and pair.raw.reading
    finally:
        pair.close()


def test_close_notify_is_the_clients_eof(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    pair = Pair(*contexts, [])
    try:
        pair.shuttle()
        with pytest.raises(ssl.SSLWantReadError):
            pair.client.unwrap()
        pair.conn.data_received(pair.cout.read())
        assert pair.app.eof and pair.raw.closed
    finally:
        pair.close()


def test_a_failed_handshake_is_counted_and_closed(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    fail: list[str | None] = []
    pair = Pair(*contexts, fail)
    try:
        pair.conn.data_received(b"\x16\x03\x01\x00\x05hello")
        assert fail == ["connection_error"] and pair.raw.closed and pair.info is None
    finally:
        pair.close()


def test_write_eof_sends_close_notify_and_keeps_reading(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    pair = Pair(*contexts, [])
    try:
        pair.shuttle()
        assert not pair.conn.can_write_eof()
        pair.conn.write_eof()
        pair.cin.write(bytes(pair.raw.out))
        assert pair.client.read(10) == b""  # the client sees our close_notify as its EOF
        pair.conn.data_received(pair.records(b"still read"))
        assert pair.app.got == b"still read" and not pair.raw.closed
    finally:
        pair.close()
