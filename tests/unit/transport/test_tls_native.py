"""Groups and session ticket keys set on an SSLContext's SSL_CTX: real handshakes between two
ssl.SSLObjects over memory BIOs, so what is checked is what OpenSSL did, not what was asked."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from pki import Ca, make_ca

from meshpy.transport import tls_native

pytestmark = pytest.mark.skipif(not tls_native.available(), reason="libssl's SSL_CTX is not reachable")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    return make_ca(tmp_path_factory.mktemp("native"))


def server_ctx(ca: Ca, keys: tuple[bytes, ...] = (), groups: tuple[str, ...] = ()) -> ssl.SSLContext:
    leaf = ca.issue("server", dns=("server.test",))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    if keys:
        assert tls_native.set_ticket_keys(ctx, keys) is None
    if groups:
        assert tls_native.set_groups(ctx, groups) is None
    return ctx


def client_ctx(ca: Ca, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
               groups: tuple[str, ...] = ()) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca.path)
    ctx.maximum_version = version
    if groups:
        assert tls_native.set_groups(ctx, groups) is None
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> ssl.SSLObject:
    """A full exchange in memory; returns the client side (with its session once a byte was read)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="server.test", session=session)
    done = {"c": False, "s": False}
    for _ in range(20):
        for side, obj in (("c", cli), ("s", srv)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not finish"
    # TLS 1.3 tickets come after the handshake: one application byte carries them to the client.
    srv.write(b"x")
    c_in.write(s_out.read())
    assert cli.read(1) == b"x"
    return cli


def test_two_contexts_with_one_key_resume_each_others_sessions(ca: Ca) -> None:
    key = os.urandom(80)
    first, second, stranger = server_ctx(ca, (key,)), server_ctx(ca, (key,)), server_ctx(ca)
    client = client_ctx(ca)
    got = handshake(first, client)
    assert not got.session_reused and got.session is not None
    assert handshake(second, client, got.session).session_reused  # another "replica" with the same key
    assert not handshake(stranger, client, got.session).session_reused  # its own keys: a full handshake


def test_several_keys_encrypt_with_the_first_and_decrypt_with_any(ca: Ca) -> None:
    old, new = os.urandom(80), os.urandom(80)
    before, after, only_new = server_ctx(ca, (old,)), server_ctx(ca, (new, old)), server_ctx(ca, (new,))
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = client_ctx(ca, version)
        issued_old = handshake(before, client).session
        resumed = handshake(after, client, issued_old)
        assert resumed.session_reused, version  # an older key still decrypts
        assert not handshake(only_new, client, issued_old).session_reused, version
        issued_new = handshake(after, client).session
        assert handshake(only_new, client, issued_new).session_reused, version  # the first key encrypts


def test_groups_in_order_and_refusals(ca: Ca) -> None:
    server = server_ctx(ca, groups=("P-384", "X25519"))
    assert handshake(server, client_ctx(ca, groups=("X25519",))).version() == "TLSv1.3"
    assert handshake(server, client_ctx(ca, groups=("P-384",))).version() == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(server, client_ctx(ca, groups=("P-256",)))  # nothing in common: the handshake fails
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert "no group" in (tls_native.set_groups(scratch, ("P-256", "nope")) or "")
    assert "80 bytes" in (tls_native.set_ticket_keys(scratch, (b"short",)) or "")


def test_a_key_file_is_what_envoy_reads(tmp_path: Path) -> None:
    """Envoy's keys are 80 random bytes in a file (`openssl rand 80`): the length is all we check."""
    path = tmp_path / "ticket.key"
    path.write_bytes(os.urandom(80))
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls_native.set_ticket_keys(scratch, (path.read_bytes(),)) is None
