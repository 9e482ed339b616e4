"""x-forwarded-client-cert through a real meshpy process configured in meshpy YAML, with curl as the
client (with and without a client certificate, sending its own XFCC or not, over HTTP/2 and
HTTP/1.1): what the app behind it (the demo upstream, which echoes request headers) receives in each
mode; that routing already sees the header as it goes upstream; and the TLS fields of the access log
for HTTP and TCP. The same modes against real Envoy, byte for byte: test_xfcc_envoy.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kit import DemoUpstream, Proxy, eventually, free_port, needs_curl
from pki import Ca, Issued, make_ca

pytestmark = needs_curl
ORDERS = "spiffe://test.local/ns/shop/sa/orders"
GATEWAY = "spiffe://test.local/ns/edge/sa/gateway"
NAMES = ("default", "forward", "append", "set", "always", "plain-set", "one-way", "permissive", "tcp")
FORGED = "By=spiffe://evil;Hash=00"


def ports_for(names: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    while len(set(found.values())) < len(names) + 1:  # (free_port may give one port twice)
        found = {n: free_port() for n in (*names, "admin")}
    return found


def config(ports: dict[str, int], demo: int, certs: dict[str, Issued], ca: Ca, log: Path) -> str:
    tls = (f"{{certificates: [{{cert: {certs['gateway'].cert}, key: {certs['gateway'].key}}}], "
           f"client_certificates: {{ca: {ca.path}, required: false}}}}")
    # A route that answers 299 when the request carries XFCC: routing sees the header after this hop's
    # work, as in Envoy.
    routes = ("[{match: {prefix: /seen, headers: {x-forwarded-client-cert: {present: true}}}, "
              "direct: {status: 299, body: has-xfcc}}, {match: /, cluster: demo}]")
    listeners = {
        "default": "",
        "forward": "forward_client_cert: forward_only",
        "append": "forward_client_cert: append_forward\n    client_cert_details: [subject, uri, dns]",
        "set": "forward_client_cert: sanitize_set\n    client_cert_details: [cert, chain, uri]",
        "always": "forward_client_cert: always_forward_only",
    }
    text = [f"admin: 127.0.0.1:{ports['admin']}", "drain_time: 0s", "grace_time: 1s", "listeners:"]
    for name, keys in listeners.items():
        text += [f"  - name: {name}", f"    address: 127.0.0.1:{ports[name]}", f"    tls: {tls}",
                 f"    access_log: {log}", f"    routes: {routes}"]
        if keys:
            text.append(f"    {keys}")
    text += [
        "  - name: plain-set", f"    address: 127.0.0.1:{ports['plain-set']}", f"    access_log: {log}",
        "    forward_client_cert: sanitize_set", f"    routes: {routes}",
        "  - name: one-way", f"    address: 127.0.0.1:{ports['one-way']}",  # no client certificates asked
        f"    tls: {{cert: {certs['gateway'].cert}, key: {certs['gateway'].key}}}",
        "    forward_client_cert: sanitize_set", f"    routes: {routes}",
        "  - name: permissive", f"    address: 127.0.0.1:{ports['permissive']}",
        f"    tls: {tls[:-1]}, plaintext: allow}}", "    forward_client_cert: sanitize_set",
        f"    access_log: {log}", f"    routes: {routes}",
        "  - name: tcp", f"    address: 127.0.0.1:{ports['tcp']}", "    protocol: tcp",
        f"    tls: {tls}", "    cluster: demo", f"    access_log: {log}",
        "clusters:", f"  demo: 127.0.0.1:{demo}",
    ]
    return "\n".join(text) + "\n"


@dataclass
class Env:
    proxy: Proxy
    ports: dict[str, int]
    ca: Ca
    certs: dict[str, Issued]
    log: Path

    def der(self, name: str) -> bytes:
        cert = x509.load_pem_x509_certificate(self.certs[name].cert_pem)
        return cert.public_bytes(serialization.Encoding.DER)

    def request(self, listener: str, *, cert: str | None = None, sent: tuple[str, ...] = (),
                http1: bool = False, plaintext: bool = False, path: str = "/") -> tuple[int, Any]:
        """(status, the echoed request headers or the body)."""
        port = self.ports[listener]
        args = ["--http1.1"] if http1 else []
        if cert is not None:
            args += ["--cert", str(self.certs[cert].cert), "--key", str(self.certs[cert].key)]
        for value in sent:
            args += ["-H", f"x-forwarded-client-cert: {value}"]
        scheme = "http" if plaintext else "https"
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", str(self.ca.path), "--resolve",
             f"a.example.com:{port}:127.0.0.1", *args, "-w", "\n%{http_code}",
             f"{scheme}://a.example.com:{port}{path}"],
            capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        body, _, status = done.stdout.rpartition("\n")
        return int(status), (json.loads(body)["headers"] if body.startswith("{") else body)

    def xfcc(self, listener: str, **kw: Any) -> str | None:
        status, headers = self.request(listener, **kw)
        assert status == 200, (status, headers)
        found: str | None = headers.get("x-forwarded-client-cert")
        return found


@pytest.fixture(scope="module")
def env(loop_name: str, demo: DemoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("xfcc")
    ca = make_ca(d / "ca")
    certs = {
        "gateway": ca.issue("a.example.com", dns=("a.example.com",), uris=(GATEWAY,)),
        "orders": ca.issue("orders", uris=(ORDERS,), dns=("orders.shop.svc",)),
    }
    ports = ports_for(NAMES)
    log = d / "access.log"
    proxy = Proxy(config(ports, demo.port, certs, ca, log), ports["admin"], loop=loop_name).start()
    try:
        yield Env(proxy, ports, ca, certs, log)
    finally:
        assert proxy.stop() == 0, proxy.logs()


def pem(der: bytes) -> str:
    text = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
    return urllib.parse.quote(text, safe="-")


@pytest.mark.parametrize("http1", [False, True], ids=["http2", "http1.1"])
def test_each_mode_as_the_app_sees_it(env: Env, http1: bool) -> None:
    der = env.der("orders")
    mine = f"By={GATEWAY};Hash={hashlib.sha256(der).hexdigest()}"
    x = env.xfcc
    for cert in (None, "orders"):  # sanitize (the default): a client's XFCC never passes
        assert x("default", cert=cert, sent=(FORGED,), http1=http1) is None
    assert x("forward", cert="orders", sent=(FORGED,), http1=http1) == FORGED
    assert x("forward", cert="orders", sent=("By=a", "Hash=b"), http1=http1) == "By=a,Hash=b"  # one header
    assert x("forward", sent=(FORGED,), http1=http1) is None  # no client certificate: not trusted
    details = f'{mine};Subject="CN=orders";URI={ORDERS};DNS=orders.shop.svc'
    assert x("append", cert="orders", http1=http1) == details
    assert x("append", cert="orders", sent=(FORGED,), http1=http1) == f"{FORGED},{details}"
    assert x("append", sent=(FORGED,), http1=http1) is None
    # Chain: the certificates as the client sent them. curl (OpenSSL) sends the CA's after its own
    # when it finds it among those it trusts.
    ca = env.ca.cert.public_bytes(serialization.Encoding.DER)
    chains = (pem(der), pem(der) + pem(ca))
    wholes = [f'{mine};Cert="{pem(der)}";Chain="{chain}";URI={ORDERS}' for chain in chains]
    assert x("set", cert="orders", sent=(FORGED,), http1=http1) in wholes
    assert x("set", http1=http1) is None  # TLS without a client certificate: nothing to say
    assert x("always", sent=(FORGED,), http1=http1) == FORGED
    assert x("plain-set", plaintext=True, sent=(FORGED,), http1=http1) is None
    assert x("one-way", cert="orders", sent=(FORGED,), http1=http1) is None  # a certificate not asked for
    assert x("permissive", plaintext=True, sent=(FORGED,), http1=http1) is None
    assert x("permissive", cert="orders", sent=(FORGED,), http1=http1) == mine


def test_routing_sees_the_header_as_it_goes_upstream(env: Env) -> None:
    """As Envoy: the header is rewritten before the route is chosen (and before filters run)."""
    assert env.request("default", cert="orders", sent=(FORGED,), path="/seen")[0] == 200  # removed first
    assert env.request("forward", cert="orders", sent=(FORGED,), path="/seen") == (299, "has-xfcc")
    assert env.request("set", cert="orders", path="/seen") == (299, "has-xfcc")  # added first
    assert env.request("set", path="/seen")[0] == 200


def lines(env: Env, **match: object) -> list[dict[str, Any]]:
    if not env.log.exists():
        return []
    found = [json.loads(line) for line in env.log.read_text().splitlines()]
    return [e for e in found if all(e.get(k) == v for k, v in match.items())]


def test_the_access_log_says_what_the_handshake_agreed(env: Env) -> None:
    env.request("append", cert="orders", path="/logged-mtls")
    env.request("append", http1=True, path="/logged-tls")
    env.request("plain-set", plaintext=True, path="/logged-plain")
    eventually(lambda: len(lines(env, path="/logged-plain")) >= 1, "the three requests logged")
    mtls = lines(env, path="/logged-mtls")[-1]
    assert mtls["downstream_tls_version"] in ("TLSv1.3", "TLSv1.2")
    assert mtls["downstream_tls_cipher"]
    assert mtls["requested_server_name"] == "a.example.com"
    assert mtls["downstream_tls_alpn"] == "h2"
    assert mtls["downstream_peer_uri_san"] == ORDERS
    assert mtls["downstream_peer_subject"] == "CN=orders"
    one_way = lines(env, path="/logged-tls")[-1]
    assert one_way["downstream_tls_alpn"] == "http/1.1"
    assert one_way["downstream_peer_uri_san"] is None and one_way["downstream_peer_subject"] is None
    assert "downstream_tls_version" not in lines(env, path="/logged-plain")[-1]  # plaintext: as before


def test_the_tcp_proxy_logs_its_tls_too(env: Env) -> None:
    """A TCP listener terminating TLS: the demo upstream gets plaintext HTTP, the log line says TLS."""
    port = env.ports["tcp"]
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--http1.1", "--cacert", str(env.ca.path), "--resolve",
         f"a.example.com:{port}:127.0.0.1", "--cert", str(env.certs["orders"].cert), "--key",
         str(env.certs["orders"].key), f"https://a.example.com:{port}/"],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0 and '"upstream"' in done.stdout, done.stderr
    eventually(lambda: lines(env, protocol="TCP"), "the TCP session logged")
    tcp = lines(env, protocol="TCP")[-1]
    assert tcp["requested_server_name"] == "a.example.com"
    assert tcp["downstream_peer_uri_san"] == ORDERS
    assert tcp["downstream_tls_version"].startswith("TLSv1.")
