"""meshpy YAML's `tls:` and `sni:`: what they become in the model, and the errors for bad values."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.tls import ChainMatch


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    return str(info.value)


EDGE = """
listeners:
  - address: 127.0.0.1:8443
    protocol: {protocol}
    tls: {tls}
    routes: [{{match: /, cluster: app}}]
clusters: {{app: 127.0.0.1:9000}}
"""


def test_listener_tls_defaults() -> None:
    config = load_text(EDGE.format(protocol="auto", tls="{cert: c.pem, key: k.pem}"))
    tls = config.listeners[0].tls
    assert tls is not None
    assert tls.alpn == ("h2", "http/1.1") and tls.params.min_version == "TLSv1.2"
    assert tls.certificates[0].chain is not None and tls.certificates[0].chain.path == "c.pem"
    assert tls.handshake_timeout == 10.0 and tls.session_tickets
    http1 = load_text(EDGE.format(protocol="http1", tls="{cert: c.pem, key: k.pem}")).listeners[0].tls
    assert http1 is not None and http1.alpn == ("http/1.1",)


def test_permissive_adds_a_plaintext_chain() -> None:
    listener = load_text(
        EDGE.format(protocol="auto", tls="{cert: c.pem, key: k.pem, plaintext: allow}")
    ).listeners[0]
    assert listener.match == ChainMatch(transport_protocol="tls") and listener.inspect_tls
    assert [c.match for c in listener.chains] == [ChainMatch(transport_protocol="raw_buffer")]
    assert listener.chains[0].tls is None and listener.chains[0].http == listener.http


def test_client_certificates() -> None:
    tls = (
        load_text(
            EDGE.format(
                protocol="auto",
                tls="""{cert: c.pem, key: k.pem, client_certificates: {
        ca: ca.pem, subject_alt_names: [{uri: "spiffe://x/ns/a/sa/b"}, {dns: {suffix: .example.com}}]}}""",
            )
        )
        .listeners[0]
        .tls
    )
    assert tls is not None and tls.require_client_certificate and tls.validation is not None
    assert [(s.kind, s.match.kind, s.match.value) for s in tls.validation.san] == [
        ("uri", "exact", "spiffe://x/ns/a/sa/b"),
        ("dns", "suffix", ".example.com"),
    ]


@pytest.mark.parametrize(
    ("tls", "error"),
    [
        ("{cert: c.pem}", "listeners[0].tls: missing required key 'key'"),
        ("{cert: c.pem, key: k.pem, min_version: 1.4}", "listeners[0].tls.min_version: must be one of"),
        (
            "{cert: c.pem, key: k.pem, plaintext: maybe}",
            "listeners[0].tls.plaintext: must be refuse or allow",
        ),
        ("{key: k.pem, certificates: [{cert: c.pem, key: k.pem}]}", "give either certificates"),
        ("{}", "missing required key 'certificates'"),
        (
            "{cert: c.pem, key: k.pem, client_certificates: {subject_alt_names: [{x: y}]}}",
            "client_certificates.subject_alt_names[0]: expected one of",
        ),
    ],
)
def test_listener_tls_errors(tls: str, error: str) -> None:
    assert error in errors(EDGE.format(protocol="auto", tls=tls))


def test_sni_routes() -> None:
    config = load_text("""
listeners:
  - address: 127.0.0.1:8443
    protocol: tcp
    sni:
      - {server_names: [a.example.com], cluster: a}
      - {server_names: ["*.B.example.com"], cluster: b}
clusters: {a: 127.0.0.1:9001, b: 127.0.0.1:9002}
""")
    listener = config.listeners[0]
    assert listener.tcp is not None and listener.tcp.cluster == "a"
    assert listener.match.server_names == ("a.example.com",)
    assert [(c.match.server_names, c.tcp.cluster if c.tcp else "") for c in listener.chains] == [
        (("*.b.example.com",), "b")
    ]
    assert "a server name is exact or *.suffix" in errors("""
listeners:
  - {address: 127.0.0.1:8443, protocol: tcp, sni: [{server_names: ["a*.b"], cluster: a}]}
clusters: {a: 127.0.0.1:9001}
""")
    assert "only applies to tcp listeners" in errors("""
listeners:
  - {address: 127.0.0.1:8443, sni: [{server_names: [a], cluster: a}], routes: [{match: /, cluster: a}]}
clusters: {a: 127.0.0.1:9001}
""")


def test_cluster_tls() -> None:
    config = load_text("""
listeners: [{address: 127.0.0.1:8080, routes: [{match: /, cluster: a}]}]
clusters:
  a: {endpoints: [127.0.0.1:9443], protocol: http2, tls: {sni: api.internal}}
  b: {endpoints: [127.0.0.1:9443], tls: {verify: false}}
""")
    a, b = config.clusters
    assert (
        a.tls is not None and a.tls.sni == "api.internal" and a.tls.verify_hostname and a.tls.alpn == ("h2",)
    )
    assert a.tls.validation is not None and a.tls.validation.system
    assert b.tls is not None and b.tls.validation is None and b.tls.alpn == ("http/1.1",)
    assert "verify: false checks nothing" in errors("""
listeners: [{address: 127.0.0.1:8080, routes: [{match: /, cluster: a}]}]
clusters: {a: {endpoints: [127.0.0.1:9443], tls: {verify: false, ca: ca.pem}}}
""")


def test_config_dump_never_shows_an_inline_key() -> None:
    from meshpy.model.dump import dump_config

    config = load_text(EDGE.format(protocol="auto", tls='{cert: "-----BEGIN CERTIFICATE-----\\nAAAA\\n'
                                   '-----END CERTIFICATE-----", key: "-----BEGIN PRIVATE KEY-----\\nhush\\n'
                                   '-----END PRIVATE KEY-----"}'))
    text = str(dump_config(config))
    assert "hush" not in text and "[redacted]" in text and "AAAA" in text


def test_mesh_mtls_shorthand() -> None:
    config = load_text("""
listeners:
  - {name: strict, address: 127.0.0.1:15006, mtls: strict, routes: [{match: /, cluster: app}]}
  - {name: permissive, address: 127.0.0.1:15007, mtls: permissive, routes: [{match: /, cluster: app}]}
clusters:
  app: {endpoints: [127.0.0.1:9000], mtls: "spiffe://cluster.local/ns/shop/sa/orders"}
  any: {endpoints: [127.0.0.1:9001], mtls: true}
""")
    strict, permissive = config.listeners
    assert strict.tls is not None and strict.tls.certificates[0].secret == "default"
    assert strict.tls.validation is not None and strict.tls.validation.ca_secret == "ROOTCA"
    assert strict.tls.require_client_certificate and not strict.chains
    assert permissive.tls == strict.tls and permissive.inspect_tls
    assert [c.match for c in permissive.chains] == [ChainMatch(transport_protocol="raw_buffer")]
    app, anyone = config.clusters
    assert app.tls is not None and app.tls.certificate is not None and app.tls.certificate.secret == "default"
    assert app.tls.validation is not None and [s.match.value for s in app.tls.validation.san] == [
        "spiffe://cluster.local/ns/shop/sa/orders"]
    assert anyone.tls is not None and anyone.tls.validation is not None and anyone.tls.validation.san == ()
    assert "must be strict or permissive" in errors(EDGE.format(protocol="auto", tls="{}").replace(
        "    tls: {}", "    mtls: loose"))
    assert "expected true or SPIFFE IDs" in errors("""
listeners: [{address: 127.0.0.1:8080, routes: [{match: /, cluster: a}]}]
clusters: {a: {endpoints: [127.0.0.1:9000], mtls: [orders]}}
""")


def test_session_ticket_keys_and_groups() -> None:
    tls = load_text(EDGE.format(protocol="auto", tls="""{cert: c.pem, key: k.pem,
        session_ticket_keys: [t1.key, t2.key], curves: [P-384, X25519]}""")).listeners[0].tls
    assert tls is not None
    assert [k.path for k in tls.ticket_keys] == ["t1.key", "t2.key"]
    assert tls.params.curves == ("P-384", "X25519")
    error = errors(EDGE.format(protocol="auto", tls="{cert: c.pem, key: k.pem, session_tickets: false, "
                                                    "session_ticket_keys: [t.key]}"))
    assert "session_ticket_keys: cannot be used with session_tickets: false" in error
