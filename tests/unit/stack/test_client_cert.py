"""x-forwarded-client-cert: the element this hop builds (meshpy.stack.client_cert.element) and what
each mode does to a request's headers (ClientCertPolicy.rewrite). Against real Envoy, byte for byte:
tests/integration/test_xfcc_envoy.py."""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pki import make_ca

from meshpy.codec.request_facts import scan_request
from meshpy.ports import ConnectionInfo, TlsInfo
from meshpy.stack.client_cert import ClientCertPolicy, element

Headers = list[tuple[bytes, bytes]]
ORDERS = "spiffe://test.local/ns/shop/sa/orders"
XFCC = b"x-forwarded-client-cert"


@pytest.fixture(scope="module")
def der(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    ca = make_ca(Path(tmp_path_factory.mktemp("xfcc-unit")))
    issued = ca.issue("orders", uris=(ORDERS, "https://orders.example/id"), dns=("orders.shop",))
    return x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(serialization.Encoding.DER)


def mtls(der: bytes, **over: object) -> TlsInfo:
    info = TlsInfo(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", sni="a.example.com", alpn="h2",
                   peer_uris=(ORDERS, "https://orders.example/id"), peer_dns=("orders.shop",),
                   peer_subject="CN=orders", peer_certificate=der,
                   local_uris=("spiffe://test.local/ns/edge/sa/gw",))
    return replace(info, **over)  # type: ignore[arg-type]


class Writer:
    """The one thing rewrite asks of a ResponseWriter; counts how often it is asked."""

    def __init__(self, tls: TlsInfo | None) -> None:
        self.tls = tls
        self.asked = 0

    def connection_info(self) -> ConnectionInfo:
        self.asked += 1
        return ConnectionInfo(peer="127.0.0.1", peer_port=1, local="127.0.0.1", local_port=2,
                              original_destination=None, listener="l", direction="inbound", tls=self.tls)


def rewrite(mode: str, headers: Headers, tls: TlsInfo | None, details: tuple[str, ...] = ()) -> Headers:
    """The headers as they go on (unchanged when rewrite says None)."""
    policy = ClientCertPolicy(mode, details, mutual=True)
    out = policy.rewrite(headers, scan_request(headers).xfcc, Writer(tls))  # type: ignore[arg-type]
    return headers if out is None else out


def xfcc(headers: Headers) -> list[bytes]:
    return [v for n, v in headers if n == XFCC]


# --- the element --------------------------------------------------------------------------------------
def test_by_and_hash_always_then_details_in_envoys_order(der: bytes) -> None:
    tls = mtls(der, local_uris=("spiffe://a/gw", "spiffe://a/second"))
    digest = hashlib.sha256(der).hexdigest()
    assert element(tls, ()) == f"By=spiffe://a/gw;By=spiffe://a/second;Hash={digest}".encode()
    got = element(tls, ("subject", "uri", "dns")).decode()
    assert got == (f"By=spiffe://a/gw;By=spiffe://a/second;Hash={digest};Subject=\"CN=orders\";"
                   f"URI={ORDERS};URI=https://orders.example/id;DNS=orders.shop")


def test_cert_and_chain_are_percent_encoded_pem(der: bytes, tmp_path: Path) -> None:
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
    encoded = urllib.parse.quote(pem, safe="-")  # PEM has no character quote() and Envoy treat apart
    alone = element(mtls(der), ("cert", "chain")).decode()
    assert f';Cert="{encoded}";Chain="{encoded}"' in alone
    other = x509.load_pem_x509_certificate(make_ca(tmp_path).pem)  # as if an intermediate
    sent = element(mtls(der, peer_chain=(other.public_bytes(serialization.Encoding.DER),)), ("chain",))
    both = urllib.parse.quote(pem + other.public_bytes(serialization.Encoding.PEM).decode(), safe="-")
    assert sent.decode().endswith(f';Chain="{both}"')


def test_a_certificate_without_uri_sans_still_says_uri(der: bytes) -> None:
    got = element(mtls(der, peer_uris=(), peer_dns=(), local_uris=()), ("uri", "dns")).decode()
    assert got.startswith("Hash=")  # no By= without a URI SAN of our own
    assert got.endswith(";URI=")  # URI= kept empty, as Envoy; DNS= left out
    assert "DNS=" not in got


# --- the modes ----------------------------------------------------------------------------------------
SENT: Headers = [(b"host", b"a"), (XFCC, b"By=first"), (b"accept", b"*/*"), (XFCC, b""), (XFCC, b"Hash=x")]


def test_sanitize_removes_every_one_and_never_looks_at_the_connection(der: bytes) -> None:
    writer = Writer(mtls(der))
    policy = ClientCertPolicy("sanitize", (), mutual=True)
    out = policy.rewrite(SENT, 3, writer)  # type: ignore[arg-type]
    assert out == [(b"host", b"a"), (b"accept", b"*/*")]
    assert writer.asked == 0
    assert not policy.adds
    assert policy.rewrite([(b"host", b"a")], 0, writer) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["forward_only", "append_forward", "sanitize_set"])
def test_without_mutual_tls_the_header_is_never_trusted(der: bytes, mode: str) -> None:
    for tls in (None, mtls(der, peer_certificate=b"")):  # plaintext; TLS without a client certificate
        out = rewrite(mode, SENT, tls, ("uri",))
        assert xfcc(out) == []
        assert [n for n, _ in out] == [b"host", b"accept"]
        assert rewrite(mode, [(b"host", b"a")], tls) == [(b"host", b"a")]


def test_forward_only_keeps_one_header_joining_repeats(der: bytes) -> None:
    one: Headers = [(b"host", b"a"), (XFCC, b"By=first")]
    assert rewrite("forward_only", one, mtls(der)) is one
    out = rewrite("forward_only", SENT, mtls(der))
    assert out == [(b"host", b"a"), (XFCC, b"By=first,Hash=x"), (b"accept", b"*/*")]


def test_always_forward_only_keeps_it_even_in_plaintext() -> None:
    one: Headers = [(XFCC, b"By=first")]
    assert rewrite("always_forward_only", one, None) is one
    assert xfcc(rewrite("always_forward_only", SENT, None)) == [b"By=first,Hash=x"]
    policy = ClientCertPolicy("always_forward_only", (), mutual=True)
    assert not policy.adds  # nothing to do for a request without one


def test_append_forward_appends_after_a_comma(der: bytes) -> None:
    mine = element(mtls(der), ("uri",))
    assert xfcc(rewrite("append_forward", SENT, mtls(der), ("uri",))) == [b"By=first,Hash=x," + mine]
    empty: Headers = [(XFCC, b"")]
    assert xfcc(rewrite("append_forward", empty, mtls(der), ("uri",))) == [mine]
    out = rewrite("append_forward", [(b"host", b"a")], mtls(der), ("uri",))
    assert out == [(b"host", b"a"), (XFCC, mine)]


def test_sanitize_set_replaces_in_place(der: bytes) -> None:
    mine = element(mtls(der), ())
    out = rewrite("sanitize_set", SENT, mtls(der))
    assert out == [(b"host", b"a"), (XFCC, mine), (b"accept", b"*/*")]


def test_adds_only_in_an_adding_mode_where_clients_may_present_certificates() -> None:
    assert ClientCertPolicy("append_forward", (), mutual=True).adds
    assert ClientCertPolicy("sanitize_set", (), mutual=True).adds
    assert not ClientCertPolicy("sanitize_set", (), mutual=False).adds  # no client certificates asked
    assert not ClientCertPolicy("forward_only", (), mutual=True).adds


def test_the_element_is_built_once_per_connection(der: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshpy.stack.client_cert as module

    built: list[TlsInfo] = []
    real = module.element

    def counting(tls: TlsInfo, details: tuple[str, ...]) -> bytes:
        built.append(tls)
        return real(tls, details)

    monkeypatch.setattr(module, "element", counting)
    policy = ClientCertPolicy("sanitize_set", ("subject",), mutual=True)
    first, second = mtls(der), mtls(der, sni="b.example.com")  # two connections
    for tls in (first, first, second, first, second):
        policy.rewrite([(b"host", b"a")], 0, Writer(tls))  # type: ignore[arg-type]
    assert built == [first, second]


def test_request_facts_count_the_header() -> None:
    assert scan_request(SENT).xfcc == 3
    assert scan_request([(b"host", b"a")]).xfcc == 0
