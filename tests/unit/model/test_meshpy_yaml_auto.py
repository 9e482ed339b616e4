"""meshpy YAML's `protocol: auto` on a cluster: HTTP/2 or HTTP/1.1 by what TLS's ALPN agrees on. It needs
`tls:` or `mtls:`; its ALPN offer is h2 then http/1.1 unless `alpn:` says otherwise (never nothing)."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import Cluster

CONFIG = """
listeners: [{{address: 127.0.0.1:8080, routes: [{{match: /, cluster: a}}]}}]
clusters:
  a: {cluster}
"""


def cluster(text: str) -> Cluster:
    return load_text(CONFIG.format(cluster=text)).clusters[0]


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(CONFIG.format(cluster=text))
    return str(info.value)


def test_auto_offers_h2_then_http1() -> None:
    a = cluster("{endpoints: [127.0.0.1:9443], protocol: auto, tls: {sni: api.internal},"
                " http2: {max_concurrent_streams: 9}}")
    assert a.protocol == "auto" and a.http2.max_concurrent_streams == 9
    assert a.tls is not None and a.tls.alpn == ("h2", "http/1.1") and a.tls.sni == "api.internal"


def test_auto_over_mesh_mtls_offers_both_too() -> None:
    a = cluster("{endpoints: [127.0.0.1:9443], protocol: auto, mtls: true}")
    assert a.tls is not None and a.tls.alpn == ("h2", "http/1.1")
    assert a.tls.certificate is not None and a.tls.certificate.secret == "default"


def test_an_alpn_list_given_is_offered_as_given() -> None:
    a = cluster("{endpoints: [127.0.0.1:9443], protocol: auto, tls: {verify: false, alpn: [http/1.1, h2]}}")
    assert a.tls is not None and a.tls.alpn == ("http/1.1", "h2")


def test_the_other_protocols_keep_their_offers() -> None:
    for protocol, alpn in (("http1", ("http/1.1",)), ("http2", ("h2",))):
        c = cluster(f"{{endpoints: [127.0.0.1:9443], protocol: {protocol}, tls: {{verify: false}}}}")
        assert c.tls is not None and c.tls.alpn == alpn
        m = cluster(f"{{endpoints: [127.0.0.1:9443], protocol: {protocol}, mtls: true}}")
        assert m.tls is not None and m.tls.alpn == alpn


def test_auto_without_tls_is_refused() -> None:
    assert error("{endpoints: [127.0.0.1:9443], protocol: auto}") == (
        "clusters.a.protocol: auto lets TLS's ALPN choose HTTP/2 or HTTP/1.1, so the cluster needs tls: or "
        "mtls: (without TLS, say http1 or http2)")


def test_auto_offering_nothing_is_refused() -> None:
    assert error("{endpoints: [127.0.0.1:9443], protocol: auto, tls: {verify: false, alpn: []}}") == (
        "clusters.a.tls.alpn: protocol: auto lets ALPN choose, so offer h2 and/or http/1.1 (or leave alpn "
        "out for both)")


def test_an_unknown_protocol_names_the_choices() -> None:
    assert error("{endpoints: [127.0.0.1:9443], protocol: h3}") == (
        "clusters.a.protocol: must be http1, http2 or auto, got 'h3'")
