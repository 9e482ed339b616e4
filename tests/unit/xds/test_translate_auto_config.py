"""Envoy's auto_config (upstreams.http.v3.HttpProtocolOptions): a cluster that speaks HTTP/2 or HTTP/1.1
by what ALPN agrees on. It needs a TLS transport socket; without alpn_protocols the cluster offers h2
and http/1.1, with them it offers those; http2_protocol_options set its HTTP/2 side; what meshpy does
not do (HTTP/3, the alternate protocols cache, HTTP/1 knobs) is refused by field."""

from __future__ import annotations

from typing import Any

import pytest
from test_translate_tls import bootstrap, chain

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.types import DEFAULT_HTTP2
from meshpy.xds.translate import load_bootstrap

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
AT = f"static_resources.clusters[0].typed_extension_protocol_options[{HTTP_OPTIONS}]"
CA = {"validation_context": {"trusted_ca": {"filename": "/ca.pem"}}}


def with_options(options: dict[str, Any], tls: dict[str, Any] | None = None,
                 **cluster: Any) -> dict[str, Any]:
    b = bootstrap([chain()], cluster_tls=tls)
    b["static_resources"]["clusters"][0].update(
        typed_extension_protocol_options={HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                                                         **options}}, **cluster)
    return b


def issues(b: dict[str, Any]) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as err:
        load_bootstrap(b)
    return list(err.value.issues)


def test_auto_config_over_tls_offers_h2_then_http1() -> None:
    b = with_options({"auto_config": {}}, {"sni": "api", "common_tls_context": CA})
    c = load_bootstrap(b).clusters[0]
    assert c.protocol == "auto" and c.http2 == DEFAULT_HTTP2
    assert c.tls is not None and c.tls.alpn == ("h2", "http/1.1") and c.tls.sni == "api"


def test_alpn_given_on_the_transport_socket_is_offered_as_given() -> None:
    tls = {"common_tls_context": {**CA, "alpn_protocols": ["http/1.1"]}}
    c = load_bootstrap(with_options({"auto_config": {}}, tls)).clusters[0]
    assert c.protocol == "auto" and c.tls is not None and c.tls.alpn == ("http/1.1",)


def test_http2_options_configure_the_http2_side() -> None:
    auto = {"http_protocol_options": {}, "http2_protocol_options": {
        "max_concurrent_streams": 7, "connection_keepalive": {"interval": "10s", "timeout": "1s"}}}
    c = load_bootstrap(with_options({"auto_config": auto,
                                     "common_http_protocol_options": {"idle_timeout": "30s"}},
                                    {"common_tls_context": CA})).clusters[0]
    assert (c.protocol, c.http2.max_concurrent_streams, c.http2.keepalive_interval) == ("auto", 7, 10.0)
    assert c.pool_idle_timeout == 30.0


def test_auto_config_without_tls_is_refused() -> None:
    assert issues(with_options({"auto_config": {}})) == [ConfigIssue(
        f"{AT}.auto_config", "ALPN chooses the protocol, so the cluster needs a transport_socket that "
        "negotiates it (an UpstreamTlsContext)")]


@pytest.mark.parametrize(("auto", "field"), [
    ({"http3_protocol_options": {}}, "auto_config.http3_protocol_options"),
    ({"alternate_protocols_cache_options": {"name": "c"}}, "auto_config.alternate_protocols_cache_options"),
    ({"http_protocol_options": {"accept_http_10": True}}, "auto_config.http_protocol_options.accept_http_10"),
    ({"http2_protocol_options": {"allow_connect": True}}, "auto_config.http2_protocol_options.allow_connect"),
])
def test_what_meshpy_does_not_do_is_refused_by_field(auto: dict[str, Any], field: str) -> None:
    assert issues(with_options({"auto_config": auto}, {"common_tls_context": CA})) == [
        ConfigIssue(f"{AT}.{field}", "not supported by meshpy")]


def test_use_downstream_protocol_config_stays_refused() -> None:
    assert issues(with_options({"use_downstream_protocol_config": {}}, {"common_tls_context": CA})) == [
        ConfigIssue(f"{AT}.use_downstream_protocol_config", "not supported by meshpy")]


def test_auto_config_beside_the_legacy_http2_field_is_refused() -> None:
    b = with_options({"auto_config": {}}, {"common_tls_context": CA}, http2_protocol_options={})
    assert issues(b) == [ConfigIssue("static_resources.clusters[0].http2_protocol_options",
                                     f"cannot be used with {HTTP_OPTIONS}")]
