"""x-forwarded-client-cert, differential: one Envoy bootstrap run by real Envoy and by meshpy, the
same clients (curl, with the same certificates), and the app behind each (the demo upstream, which
echoes the request headers) must see the same header, byte for byte.

The bootstrap has a TLS listener per forward_client_cert_details mode with every
set_current_client_cert_details detail, two with fewer details, and plaintext listeners. The
certificates cover what the element's parts are made of: this proxy's certificate with two URI SANs
(two By=), a client certificate issued by an intermediate CA and sent with it (Chain=) or alone, with
two URI and two DNS SANs, and a subject (Subject=) with characters RFC 2253 escapes, an RDN of two
attributes, an emailAddress, an OID OpenSSL has no name for and a character outside ASCII. Clients
send no XFCC, one, or two (one header to Envoy, joined), and resume sessions.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, needs_curl
from pki import Ca, make_ca, write

pytestmark = [needs_curl, pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed")]
ALL = {"subject": True, "cert": True, "chain": True, "dns": True, "uri": True}
# listener -> (forward_client_cert_details, set_current_client_cert_details, TLS)
LISTENERS: dict[str, tuple[str, dict[str, bool], bool]] = {
    "sanitize": ("SANITIZE", ALL, True),
    "forward-only": ("FORWARD_ONLY", ALL, True),
    "append-forward": ("APPEND_FORWARD", ALL, True),
    "sanitize-set": ("SANITIZE_SET", ALL, True),
    "always-forward-only": ("ALWAYS_FORWARD_ONLY", ALL, True),
    "istio-inbound": ("APPEND_FORWARD", {"subject": True, "dns": True, "uri": True}, True),
    "hash-only": ("SANITIZE_SET", {}, True),
    "plain-forward-only": ("FORWARD_ONLY", {}, False),
    "plain-always": ("ALWAYS_FORWARD_ONLY", {}, False),
}
CLIENTS = ("chain", "leaf", "none")
SENT = {"none": (), "one": ("By=spiffe://up.stream;Hash=abc",), "two": ("By=first", "Hash=second")}
Json = dict[str, Any]
UNNAMED = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")  # an OID OpenSSL has no short name for


def _cert(subject: x509.Name, issuer: Ca, key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName],
          is_ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                              content_commitment=False, key_encipherment=False, data_encipherment=False,
                              key_agreement=False, encipher_only=False, decipher_only=False)
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Certs:
    ca: Ca
    files: dict[str, Path]  # trust, server, server-key, chain, leaf, client-key


def make_certs(d: Path) -> Certs:
    ca = make_ca(d)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshpy intermediate")])
    inter_cert = _cert(inter_name, ca, inter_key, [], is_ca=True)
    inter = Ca("meshpy intermediate", inter_key, inter_cert, d / "inter.pem", d)
    client_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shop, Inc.")]),
        x509.RelativeDistinguishedName([  # two attributes in one RDN: joined by +
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, 'orders "blue"+green; <x>'),
            x509.NameAttribute(NameOID.USER_ID, "u-17"),
        ]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.LOCALITY_NAME, "#1\ttown\x7f ")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(UNNAMED, "v=1")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "orders Zoë")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "orders@shop.example")]),
    ])
    client = _cert(subject, inter, client_key, [
        x509.UniformResourceIdentifier("spiffe://test.local/ns/shop/sa/orders"),
        x509.UniformResourceIdentifier("https://orders.example/id"),
        x509.DNSName("orders.shop.svc"),
        x509.DNSName("orders.example"),
    ])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example.com")]), ca, server_key, [
        x509.DNSName("a.example.com"),
        x509.UniformResourceIdentifier("spiffe://test.local/ns/edge/sa/gateway"),
        x509.UniformResourceIdentifier("spiffe://test.local/ns/edge/sa/second"),
    ])
    files = {
        "trust": write(d / "trust.pem", ca.pem + _pem(inter_cert), 0o644),
        "server": write(d / "server.pem", _pem(server), 0o644),
        "server-key": write(d / "server.key", _key_pem(server_key)),
        "chain": write(d / "client-chain.pem", _pem(client) + _pem(inter_cert), 0o644),
        "leaf": write(d / "client-leaf.pem", _pem(client), 0o644),
        "client-key": write(d / "client.key", _key_pem(client_key)),
    }
    return Certs(ca, files)


def bootstrap(admin: int, ports: dict[str, int], upstream: int, certs: Certs) -> str:
    f = certs.files
    listeners = []
    for name, (mode, details, tls) in LISTENERS.items():
        hcm: Json = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager",
            "stat_prefix": name.replace("-", "_"),
            "forward_client_cert_details": mode,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }
        if details:
            hcm["set_current_client_cert_details"] = details
        chain: Json = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm}]}
        if tls:
            chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(f["server"])},
                                          "private_key": {"filename": str(f["server-key"])}}],
                    "validation_context": {"trusted_ca": {"filename": str(f["trust"])}},
                }}}
        listeners.append({"name": name, "filter_chains": [chain], "address": {
            "socket_address": {"address": "127.0.0.1", "port_value": ports[name]}}})
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": [{
            "name": "app", "connect_timeout": "2s", "load_assignment": {"cluster_name": "app", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": upstream}}}}]}]}}]},
    })


@dataclass
class Pair:
    ports: dict[str, dict[str, int]]  # "envoy" / "meshpy" -> listener -> port
    certs: Certs


def distinct_ports(n: int) -> list[int]:
    found: set[int] = set()
    while len(found) < n:  # (free_port may give a port back twice: it is free again once asked)
        found.add(free_port())
    return list(found)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, demo: DemoUpstream) -> Iterator[Pair]:
    certs = make_certs(tmp_path_factory.mktemp("xfcc-envoy"))
    free = distinct_ports(2 * len(LISTENERS) + 2)
    ports = {who: {name: free.pop() for name in LISTENERS} for who in ("envoy", "meshpy")}
    e_admin, m_admin = free.pop(), free.pop()
    envoy = Envoy(bootstrap(e_admin, ports["envoy"], demo.port, certs), e_admin).start()
    try:
        proxy = Proxy(bootstrap(m_admin, ports["meshpy"], demo.port, certs), m_admin).start()
    except BaseException:
        envoy.stop()
        raise
    try:
        yield Pair(ports, certs)
    finally:
        envoy.stop()
        assert proxy.stop() == 0, proxy.logs()


def seen(pair: Pair, who: str, listener: str, client: str, sent: tuple[str, ...], http: str) -> str | None:
    """The x-forwarded-client-cert the app saw (None: none)."""
    port = pair.ports[who][listener]
    f = pair.certs.files
    tls = LISTENERS[listener][2]
    args = [f"--{http}"] if tls or http == "http1.1" else ["--http2-prior-knowledge"]
    if client != "none":
        args += ["--cert", str(f[client]), "--key", str(f["client-key"])]
    for value in sent:
        args += ["-H", f"x-forwarded-client-cert: {value}"]
    scheme = "https" if tls else "http"
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", str(pair.certs.ca.path), "--resolve",
         f"a.example.com:{port}:127.0.0.1", *args, f"{scheme}://a.example.com:{port}/"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, (who, done.stderr)
    headers: dict[str, str] = json.loads(done.stdout)["headers"]
    return headers.get("x-forwarded-client-cert")


CASES = [
    (listener, client, sent)
    for listener, (_, _, tls) in LISTENERS.items()
    for client in (CLIENTS if tls else ("none",))
    for sent in SENT
]


@pytest.mark.parametrize(("listener", "client", "sent"), CASES, ids=["-".join(c) for c in CASES])
def test_the_app_sees_what_it_sees_behind_envoy(pair: Pair, listener: str, client: str, sent: str) -> None:
    for http in ("http1.1", "http2"):
        envoy = seen(pair, "envoy", listener, client, SENT[sent], http)
        meshpy = seen(pair, "meshpy", listener, client, SENT[sent], http)
        assert meshpy == envoy, (http, envoy, meshpy)


def test_the_cases_are_not_all_alike(pair: Pair) -> None:
    """What the comparison above covers: headers removed, kept, joined, appended to and replaced."""
    kept = seen(pair, "envoy", "forward-only", "chain", SENT["two"], "http1.1")
    assert kept == "By=first,Hash=second"
    assert seen(pair, "envoy", "forward-only", "none", SENT["two"], "http1.1") is None
    assert seen(pair, "envoy", "always-forward-only", "none", SENT["one"], "http1.1") == SENT["one"][0]
    appended = seen(pair, "envoy", "append-forward", "chain", SENT["one"], "http1.1")
    assert appended is not None and appended.startswith(SENT["one"][0] + ",By=spiffe://test.local/ns/edge/")
    assert "Chain=" in appended and 'Subject="emailAddress=' in appended
    hashed = seen(pair, "envoy", "hash-only", "leaf", SENT["two"], "http1.1")
    assert hashed is not None and hashed.count(";") == 2 and ";Hash=" in hashed


def resumed_chain(pair: Pair, who: str, version: ssl.TLSVersion) -> list[str | None]:
    """The XFCC of a full handshake and of a resumed session (a ticket), with the intermediate sent."""
    f = pair.certs.files
    ctx = ssl.create_default_context(cafile=str(pair.certs.ca.path))
    ctx.maximum_version = version
    ctx.load_cert_chain(str(f["chain"]), str(f["client-key"]))
    ctx.set_alpn_protocols(["http/1.1"])
    seen: list[str | None] = []
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", pair.ports[who]["sanitize-set"]), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="a.example.com", session=session) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nhost: a.example.com\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            assert conn.session_reused == (session is not None), who
            session = conn.session
        seen.append(json.loads(data.partition(b"\r\n\r\n")[2])["headers"].get("x-forwarded-client-cert"))
    return seen


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["1.2", "1.3"])
def test_a_resumed_session_still_has_the_chain(pair: Pair, version: ssl.TLSVersion) -> None:
    """OpenSSL's tickets keep the client's own certificate only; Envoy's keep what it sent."""
    envoy, meshpy = resumed_chain(pair, "envoy", version), resumed_chain(pair, "meshpy", version)
    assert meshpy == envoy
    assert envoy[0] == envoy[1] and envoy[0] is not None and envoy[0].count("BEGIN%20CERTIFICATE") >= 3
