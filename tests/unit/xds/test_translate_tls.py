"""Envoy TLS config -> the model: contexts, secrets, chain matches, and the fields meshpy refuses by
name (tests/integration/test_tls_envoy.py runs the accepted kinds on real Envoy beside meshpy)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.tls import ChainMatch
from meshpy.model.types import Config
from meshpy.xds.translate import load_bootstrap

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
PAIR = {"certificate_chain": {"filename": "/certs/a.pem"}, "private_key": {"filename": "/certs/a.key"}}


def hcm() -> dict[str, Any]:
    return {
        "name": "hcm",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": "x",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def downstream(**context: Any) -> dict[str, Any]:
    return {"name": "tls", "typed_config": {"@type": f"{TLS}.DownstreamTlsContext", **context}}


def bootstrap(
    chains: list[dict[str, Any]],
    *,
    cluster_tls: dict[str, Any] | None = None,
    secrets: list[dict[str, Any]] | None = None,
    inspector: bool = False,
) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}},
        "filter_chains": chains,
    }
    if inspector:
        listener["listener_filters"] = [
            {
                "name": "tls_inspector",
                "typed_config": {
                    "@type": INSPECTOR
                },
            }
        ]
    cluster: dict[str, Any] = {
        "name": "c",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "c",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9443}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if cluster_tls is not None:
        cluster["transport_socket"] = {
            "name": "tls",
            "typed_config": {"@type": f"{TLS}.UpstreamTlsContext", **cluster_tls},
        }
    return {"static_resources": {"listeners": [listener], "clusters": [cluster], "secrets": secrets or []}}


def chain(**fields: Any) -> dict[str, Any]:
    return {"filters": [hcm()], **fields}


def test_downstream_context() -> None:
    config: Config = load_bootstrap(
        bootstrap(
            [
                chain(
                    transport_socket=downstream(
                        require_client_certificate=True,
                        disable_stateless_session_resumption=True,
                        common_tls_context={
                            "tls_certificates": [PAIR],
                            "alpn_protocols": ["h2"],
                            "tls_params": {
                                "tls_minimum_protocol_version": "TLSv1_3",
                                "cipher_suites": ["[ECDHE-ECDSA-AES128-GCM-SHA256|x]"],
                            },
                            "validation_context": {
                                "trusted_ca": {"inline_string": "PEM"},
                                "match_typed_subject_alt_names": [
                                    {"san_type": "URI", "matcher": {"prefix": "spiffe://"}}
                                ],
                            },
                        },
                    ),
                    transport_socket_connect_timeout="2s",
                )
            ]
        )
    )
    tls = config.listeners[0].tls
    assert tls is not None and tls.require_client_certificate and not tls.session_tickets
    assert tls.alpn == ("h2",) and tls.params.min_version == "TLSv1.3" and tls.params.max_version == "TLSv1.3"
    assert tls.handshake_timeout == 2.0
    assert tls.validation is not None and tls.validation.ca is not None and tls.validation.ca.inline == b"PEM"
    assert [(s.kind, s.match.kind) for s in tls.validation.san] == [("uri", "prefix")]


def test_static_secret_and_chains() -> None:
    config = load_bootstrap(
        bootstrap(
            [
                chain(
                    filter_chain_match={"server_names": ["a.example.com"], "destination_port": 8443},
                    transport_socket=downstream(
                        common_tls_context={"tls_certificate_sds_secret_configs": [{"name": "a"}]}
                    ),
                ),
                chain(
                    filter_chain_match={
                        "transport_protocol": "raw_buffer",
                        "source_prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}],
                    }
                ),
            ],
            secrets=[{"name": "a", "tls_certificate": PAIR}],
            inspector=True,
        )
    )
    listener = config.listeners[0]
    assert listener.inspect_tls and listener.match == ChainMatch(
        server_names=("a.example.com",), destination_port=8443
    )
    assert listener.tls is not None and listener.tls.certificates[0].chain is not None
    assert listener.tls.certificates[0].chain.path == "/certs/a.pem"
    assert listener.chains[0].match == ChainMatch(
        transport_protocol="raw_buffer", source_prefix_ranges=("10.0.0.0/8",)
    )


def test_upstream_context_defaults_to_tls_1_2() -> None:
    config = load_bootstrap(
        bootstrap(
            [chain()],
            cluster_tls={
                "sni": "api",
                "common_tls_context": {
                    "tls_certificates": [PAIR],
                    "validation_context": {"trusted_ca": {"filename": "/ca.pem"}},
                },
            },
        )
    )
    tls = config.clusters[0].tls
    assert tls is not None and tls.sni == "api" and tls.params.max_version == "TLSv1.2"
    assert tls.certificate is not None and tls.validation is not None and not tls.verify_hostname


REFUSED = [
    (
        "ocsp",
        lambda b: b["static_resources"]["listeners"][0]["filter_chains"][0].update(
            transport_socket=downstream(
                ocsp_staple_policy="MUST_STAPLE", common_tls_context={"tls_certificates": [PAIR]}
            )
        ),
        "ocsp_staple_policy",
    ),
    (
        "ticket keys over SDS",
        lambda b: b["static_resources"]["listeners"][0]["filter_chains"][0].update(
            transport_socket=downstream(
                session_ticket_keys_sds_secret_config={"name": "tickets"},
                common_tls_context={"tls_certificates": [PAIR]},
            )
        ),
        "session_ticket_keys_sds_secret_config",
    ),
    (
        "crl",
        lambda b: b["static_resources"]["listeners"][0]["filter_chains"][0].update(
            transport_socket=downstream(
                common_tls_context={
                    "tls_certificates": [PAIR],
                    "validation_context": {"trusted_ca": {"filename": "/ca"}, "crl": {"filename": "/crl"}},
                }
            )
        ),
        "validation_context.crl",
    ),
    (
        "no certificate",
        lambda b: b["static_resources"]["listeners"][0]["filter_chains"][0].update(
            transport_socket=downstream(common_tls_context={})
        ),
        "a server needs a certificate",
    ),
    (
        "sds",
        lambda b: b["static_resources"]["listeners"][0]["filter_chains"][0].update(
            transport_socket=downstream(
                common_tls_context={
                    "tls_certificate_sds_secret_configs": [
                        {"name": "x", "sds_config": {"ads": {}, "resource_api_version": "V3"}}
                    ]
                }
            )
        ),
        "ads: {} needs the bootstrap's dynamic_resources.ads_config",
    ),
    (
        "missing secret",
        lambda b: b["static_resources"]["listeners"][0]["filter_chains"][0].update(
            transport_socket=downstream(
                common_tls_context={"tls_certificate_sds_secret_configs": [{"name": "x"}]}
            )
        ),
        "no static secret named 'x'",
    ),
    (
        "renegotiation",
        lambda b: b["static_resources"]["clusters"][0].update(
            transport_socket={
                "name": "tls",
                "typed_config": {"@type": f"{TLS}.UpstreamTlsContext", "allow_renegotiation": True},
            }
        ),
        "allow_renegotiation",
    ),
]


@pytest.mark.parametrize(("name", "edit", "error"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_by_name(name: str, edit: Any, error: str) -> None:
    data = bootstrap([chain()])
    edit(data)
    with pytest.raises(ConfigError) as info:
        load_bootstrap(copy.deepcopy(data))
    assert error in str(info.value)


def test_session_ticket_keys_inline_and_from_files() -> None:
    keys = {"keys": [{"inline_bytes": "a2V5"}, {"filename": "/keys/previous.key"}]}
    config = load_bootstrap(bootstrap([chain(transport_socket=downstream(
        common_tls_context={"tls_certificates": [PAIR]}, session_ticket_keys=keys))]))
    tls = config.listeners[0].tls
    assert tls is not None
    assert [(k.inline, k.path) for k in tls.ticket_keys] == [(b"key", None), (None, "/keys/previous.key")]
