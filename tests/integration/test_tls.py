"""TLS through a real meshpy process, with curl and openssl s_client as clients: termination with
certificates picked by SNI, ALPN choosing HTTP/2 or HTTP/1.1, client certificates required and checked
(CA, expiry, SAN), TLS versions, PERMISSIVE (plaintext and TLS on one port), TLS passthrough routed by
SNI, session resumption, and TLS to upstream clusters (SNI, CA, SAN matchers). Bad input: garbage
instead of a ClientHello, plaintext to a TLS port, a handshake that stalls; none harms other
connections, and each failure is counted by reason.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from kit import DemoUpstream, Proxy, eventually, free_port, http, needs_curl
from pki import Ca, Issued, make_ca, write

pytestmark = needs_curl
ORDERS = "spiffe://test.local/ns/shop/sa/orders"
NAMES = ("edge", "mtls", "modern", "permissive", "passthrough", "outbound", "no-tickets", "rotating")


@dataclass
class Env:
    proxy: Proxy
    ports: dict[str, int]
    ca: Ca
    other_ca: Ca
    certs: dict[str, Issued]

    @property
    def directory(self) -> Path:
        return self.ca.directory.parent

    def curl(
        self,
        name: str,
        path: str = "/",
        *,
        host: str = "a.example.com",
        args: tuple[str, ...] = (),
        cert: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        port = self.ports[name]
        extra = ["--cert", str(self.certs[cert].cert), "--key", str(self.certs[cert].key)] if cert else []
        return subprocess.run(
            [
                "curl",
                "-s",
                "--max-time",
                "5",
                "--cacert",
                str(self.ca.path),
                "--resolve",
                f"{host}:{port}:127.0.0.1",
                *extra,
                *args,
                "-w",
                "\n%{http_version} %{http_code}",
                f"https://{host}:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )


def s_client(port: int, *args: str, servername: str = "a.example.com", data: bytes = b"") -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", servername, *args],
        input=data,
        capture_output=True,
        timeout=10,
        check=False,
    )
    return done.stdout.decode("latin-1") + done.stderr.decode("latin-1")


def config(admin: int, ports: dict[str, int], demo: int, d: Path, certs: dict[str, Issued], ca: Ca) -> str:
    def pair(name: str) -> str:
        return f"{{cert: {certs[name].cert}, key: {certs[name].key}}}"

    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
grace_time: 1s
listeners:
  - name: edge
    address: 127.0.0.1:{ports["edge"]}
    tls:
      certificates: [{pair("a")}, {pair("b")}]
    routes: [{{match: /, cluster: demo}}]
  - name: mtls
    address: 127.0.0.1:{ports["mtls"]}
    tls:
      certificates: [{pair("a")}]
      client_certificates:
        ca: {ca.path}
        subject_alt_names: [{{uri: "{ORDERS}"}}]
      handshake_timeout: 1s
    routes: [{{match: /, cluster: demo}}]
  - name: modern
    address: 127.0.0.1:{ports["modern"]}
    protocol: http1
    tls: {{certificates: [{pair("b")}], min_version: "1.3"}}
    routes: [{{match: /, cluster: demo}}]
  - name: no-tickets
    address: 127.0.0.1:{ports["no-tickets"]}
    tls: {{certificates: [{pair("a")}], session_tickets: false}}
    routes: [{{match: /, cluster: demo}}]
  - name: rotating
    address: 127.0.0.1:{ports["rotating"]}
    protocol: http1
    tls: {{cert: {d / "rotating.pem"}, key: {d / "rotating.key"}}}
    routes: [{{match: /, cluster: demo}}]
  - name: permissive
    address: 127.0.0.1:{ports["permissive"]}
    tls: {{certificates: [{pair("a")}], plaintext: allow}}
    routes: [{{match: /, cluster: demo}}]
  - name: passthrough
    address: 127.0.0.1:{ports["passthrough"]}
    protocol: tcp
    sni:
      - {{server_names: [a.example.com], cluster: edge}}
      - {{server_names: ["*.b.example.com"], cluster: modern}}
  - name: outbound
    address: 127.0.0.1:{ports["outbound"]}
    routes:
      - {{match: /secure, cluster: secure}}
      - {{match: /wrong-san, cluster: wrong-san}}
      - {{match: /untrusted, cluster: untrusted}}
      - {{match: /mutual, cluster: mutual}}
clusters:
  demo: 127.0.0.1:{demo}
  edge: 127.0.0.1:{ports["edge"]}
  modern: 127.0.0.1:{ports["modern"]}
  secure: {{endpoints: [127.0.0.1:{ports["edge"]}], tls: {{sni: a.example.com, ca: {ca.path}}}}}
  wrong-san:
    endpoints: [127.0.0.1:{ports["edge"]}]
    tls: {{sni: a.example.com, ca: {ca.path}, verify_hostname: false,
          subject_alt_names: [{{dns: nope.example.com}}]}}
  untrusted:
    endpoints: [127.0.0.1:{ports["edge"]}]
    tls: {{sni: a.example.com, ca: {d / "other" / "other.pem"}}}
  mutual:
    endpoints: [127.0.0.1:{ports["mtls"]}]
    tls: {{sni: a.example.com, ca: {ca.path}, cert: {certs["orders"].cert}, key: {certs["orders"].key}}}
"""


@pytest.fixture(scope="module")
def env(loop_name: str, demo: DemoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d / "ca")
    other = make_ca(d / "other", "other")
    certs = {
        "a": ca.issue("a.example.com", dns=("a.example.com",)),
        "b": ca.issue("b.example.com", dns=("b.example.com", "*.b.example.com")),
        "orders": ca.issue("orders", uris=(ORDERS,)),
        "payments": ca.issue("payments", uris=("spiffe://test.local/ns/shop/sa/payments",)),
        "expired": ca.issue("orders-old", uris=(ORDERS,), expired=True),
        "stranger": other.issue("stranger", uris=(ORDERS,)),
    }
    rotating = certs["rotating"] = ca.issue("rotating-1", dns=("a.example.com",))
    write(d / "rotating.pem", rotating.cert_pem, 0o644)
    write(d / "rotating.key", rotating.key_pem)
    admin = free_port()
    ports = {n: free_port() for n in NAMES}
    p = Proxy(config(admin, ports, demo.port, d, certs, ca), admin, loop=loop_name).start()
    try:
        yield Env(p, ports, ca, other, certs)
    finally:
        assert p.stop() == 0, p.logs()


def failures(env: Env, name: str, reason: str | None = None, upstream: bool = False) -> float:
    """meshpy's TLS failure counter for a listener (or a cluster), by reason or all of them."""
    labels = {"cluster" if upstream else "listener": name} | ({"reason": reason} if reason else {})
    side = "upstream" if upstream else "downstream"
    return env.proxy.metric(f"meshpy_{side}_tls_failures_total", **labels)


def body(done: subprocess.CompletedProcess[str]) -> tuple[dict[str, object], str]:
    text, _, status = done.stdout.rpartition("\n")
    return (json.loads(text) if text.startswith("{") else {}), status


def test_alpn_picks_http2_or_http11_and_the_app_sees_https(env: Env) -> None:
    echoed, status = body(env.curl("edge"))
    assert status == "2 200"
    headers = {k.lower(): v for k, v in dict(echoed["headers"]).items()}  # type: ignore[call-overload]
    assert headers["x-forwarded-proto"] == "https"
    assert body(env.curl("edge", args=("--http1.1",)))[1] == "1.1 200"


def test_sni_picks_the_certificate(env: Env) -> None:
    assert "CN=b.example.com" in s_client(env.ports["edge"], servername="b.example.com").replace(" = ", "=")
    assert "CN=a.example.com" in s_client(env.ports["edge"], servername="a.example.com").replace(" = ", "=")
    assert body(env.curl("edge", host="b.example.com"))[1] == "2 200"


def test_tls_versions(env: Env) -> None:
    assert "Protocol  : TLSv1.2" in s_client(env.ports["edge"], "-tls1_2") or "TLSv1.2" in s_client(
        env.ports["edge"], "-tls1_2"
    )
    assert "TLSv1.3" in s_client(env.ports["edge"], "-tls1_3")
    refused = s_client(env.ports["modern"], "-tls1_2")
    assert "alert" in refused.lower() or "no protocols available" in refused.lower(), refused
    assert body(env.curl("modern", host="b.example.com"))[1] == "1.1 200"


def test_client_certificates(env: Env) -> None:
    assert body(env.curl("mtls", cert="orders"))[1] == "2 200"
    before = failures(env, "mtls")
    for cert in (None, "stranger", "expired", "payments"):  # none, unknown CA, expired, wrong SAN
        assert body(env.curl("mtls", cert=cert))[1].endswith(" 000"), cert
    eventually(lambda: failures(env, "mtls") >= before + 4, "four refused handshakes counted")
    assert failures(env, "mtls", "fail_verify_san") >= 1
    assert failures(env, "mtls", "fail_verify_no_cert") >= 1
    assert failures(env, "mtls", "fail_verify_error") >= 2  # unknown CA, expired


def test_permissive_takes_plaintext_and_tls(env: Env) -> None:
    assert body(env.curl("permissive"))[1] == "2 200"
    assert http(env.ports["permissive"], path="/").status == 200


def test_passthrough_routes_by_sni_without_terminating(env: Env) -> None:
    done = env.curl("passthrough", host="a.example.com")
    assert body(done)[1] == "2 200"
    # *.b.example.com goes to the http1-only listener: it answers HTTP/1.1, proving where it went.
    assert body(env.curl("passthrough", host="x.b.example.com"))[1] == "1.1 200"
    assert body(env.curl("passthrough", host="c.example.com"))[1].endswith(" 000")
    assert env.proxy.metric("meshpy_downstream_cx_no_chain_match_total", listener="passthrough") >= 1


def test_session_resumption(env: Env, tmp_path: Path) -> None:
    """Tickets (stateless resumption) unless turned off; TLS 1.2 session ids resume either way, as in
    Envoy, whose stateful resumption is on by default."""
    for name, tickets in (("edge", True), ("no-tickets", False)):
        session = tmp_path / f"{name}.pem"
        first = s_client(env.ports[name], "-tls1_2", "-sess_out", str(session))
        assert "New," in first
        assert ("TLS session ticket:" in first) == tickets, first
        again = s_client(env.ports[name], "-tls1_2", "-sess_in", str(session))
        assert "Reused," in again, again
    session = tmp_path / "tls13.pem"
    # TLS 1.3 tickets come after the handshake: the client stays until the answer to read them.
    s_client(
        env.ports["edge"],
        "-tls1_3",
        "-ign_eof",
        "-sess_out",
        str(session),
        data=b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert "Reused," in s_client(env.ports["edge"], "-tls1_3", "-sess_in", str(session))
    assert env.proxy.metric("meshpy_downstream_tls_sessions_reused_total", listener="edge") >= 2


def test_upstream_tls(env: Env) -> None:
    out = env.ports["outbound"]
    assert http(out, path="/secure").status == 200
    assert http(out, path="/mutual").status == 200  # a client certificate the mtls listener accepts
    for path in ("/wrong-san", "/untrusted"):
        answer = http(out, path=path)
        assert answer.status == 503 and answer.header("x-envoy-response-flags") in (None, "UF"), path
    assert failures(env, "wrong-san", "fail_verify_san", upstream=True) >= 1
    assert failures(env, "untrusted", "fail_verify_error", upstream=True) >= 1
    assert env.proxy.metric("meshpy_upstream_tls_handshakes_total", cluster="secure") >= 1


def test_bad_input_is_refused_and_harms_no_one(env: Env) -> None:
    port = env.ports["mtls"]
    held = socket.create_connection(("127.0.0.1", port))  # a stalled handshake: half a ClientHello
    held.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)))
    assert body(env.curl("mtls", cert="orders"))[1] == "2 200"  # meanwhile, others are served
    with socket.create_connection(("127.0.0.1", env.ports["edge"])) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # plaintext to a TLS port
        s.settimeout(3)
        answer = s.recv(4096)
        assert not answer.startswith(b"HTTP/"), answer
    t0 = time.monotonic()
    held.settimeout(5)
    assert held.recv(100) == b""  # closed at the 1 s handshake timeout
    assert time.monotonic() - t0 < 3
    eventually(
        lambda: failures(env, "mtls", "handshake_timeout") >= 1,
        "the stalled handshake counted",
    )
    garbage.close()
    held.close()


def serial(env: Env, name: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial"],
        input=s_client(env.ports[name]).encode(),
        capture_output=True,
        check=False,
    ).stdout.decode()
    return out.strip().removeprefix("serial=").lower().lstrip("0")


def test_certs_endpoint_and_expiry_gauges(env: Env) -> None:
    status, body_text = env.proxy.admin("/certs")
    assert status == 200
    contexts = {c["context"]: c for c in json.loads(body_text)["certificates"]}
    edge = contexts["listener edge"]
    assert [c["subject_alt_names"] for c in edge["cert_chain"]] == [
        [{"dns": "a.example.com"}],
        [{"dns": "b.example.com"}, {"dns": "*.b.example.com"}],
    ]
    assert edge["cert_chain"][0]["days_until_expiration"] == "0" and edge["ca_cert"] == []
    assert contexts["listener mtls"]["ca_cert"][0]["subject"] == "CN=meshpy test CA"
    assert contexts["cluster mutual"]["cert_chain"][0]["subject_alt_names"] == [{"uri": ORDERS}]
    assert (
        env.proxy.metric("meshpy_tls_certificate_expiration_timestamp_seconds", context="listener edge")
        > time.time()
    )


def test_certificate_files_reload_without_dropping_connections(env: Env) -> None:
    d = env.directory
    before = serial(env, "rotating")
    held = socket.create_connection(("127.0.0.1", env.ports["rotating"]))
    ctx = ssl.create_default_context(cafile=str(env.ca.path))
    tls = ctx.wrap_socket(held, server_hostname="a.example.com")
    assert http(0, path="/", host="a.example.com", sock=tls).status == 200
    # A key that does not match its certificate (written first, as a careless copy would): refused.
    bad = env.ca.issue("rotating-bad", dns=("a.example.com",))
    write(d / "rotating.key", bad.key_pem)
    eventually(lambda: "cannot be used" in env.proxy.logs(), "the unusable files logged")
    assert serial(env, "rotating") == before
    write(d / "rotating.pem", bad.cert_pem, 0o644)  # now the pair matches
    eventually(lambda: serial(env, "rotating") != before, "the new certificate served")
    assert serial(env, "rotating") == format(_serial_of(bad.cert_pem), "x")
    assert http(0, path="/", host="a.example.com", sock=tls).status == 200
    tls.close()


def _serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def test_renegotiation_is_refused(env: Env) -> None:
    """A TLS 1.2 client that asks to renegotiate (openssl s_client's `R`) gets no new handshake: the
    server never renegotiates (OpenSSL's no_renegotiation alert), and serves everyone else meanwhile."""
    client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{env.ports['edge']}", "-tls1_2",
                               "-servername", "a.example.com"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    assert client.stdin is not None
    time.sleep(1.0)  # connected and handshaken
    client.stdin.write(b"R\n")
    client.stdin.flush()
    time.sleep(1.0)  # the renegotiation asked and answered
    out = client.communicate(timeout=10)[0].decode("latin-1")
    assert "RENEGOTIATING" in out and out.count("Cipher is") == 1, out  # one handshake, not two
    assert "no renegotiation" in out.lower() or "alert" in out.lower(), out
    assert body(env.curl("edge"))[1] == "2 200" and env.proxy.alive()


def test_a_huge_client_certificate_chain_is_refused(env: Env, tmp_path: Path) -> None:
    """A client sending a chain of many large certificates: refused (OpenSSL's limit on the handshake
    message), counted, and nobody else is harmed."""
    chain = b"".join(
        env.other_ca.issue(f"filler-{i}", dns=tuple(f"n{j}.filler{i}.example" for j in range(200))).cert_pem
        for i in range(40)
    )
    stranger = env.certs["stranger"]
    bundle = tmp_path / "huge.pem"
    bundle.write_bytes(stranger.cert_pem + chain)
    done = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "5",
            "--cacert",
            str(env.ca.path),
            "--resolve",
            f"a.example.com:{env.ports['mtls']}:127.0.0.1",
            "--cert",
            str(bundle),
            "--key",
            str(stranger.key),
            "-w",
            " %{http_code}",
            f"https://a.example.com:{env.ports['mtls']}/",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.endswith(" 000"), done.stdout
    assert body(env.curl("mtls", cert="orders"))[1] == "2 200"
