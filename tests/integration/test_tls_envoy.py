"""One Envoy TLS bootstrap, run by real Envoy and by meshpy, asked the same things by curl and
openssl: the same outcome on each (which chain answered, the HTTP version ALPN chose, refusals).

The bootstrap covers filter chains chosen by SNI (exact, wildcard), by transport protocol (plaintext
beside TLS on one port), a default_filter_chain, a static secret named by an SDS config, client
certificates checked against a CA and a SAN matcher, TLS 1.3 only with ALPN h2, TLS passthrough by
SNI through tcp_proxy, and clusters originating TLS with SNI, a CA, a client certificate and SAN
matchers.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kit import Envoy, Proxy, envoy_binary, free_port, needs_curl
from pki import Ca, Issued, make_ca

pytestmark = [needs_curl, pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed")]
ORDERS = "spiffe://test.local/ns/shop/sa/orders"
PORTS = ("sni", "mtls", "modern", "passthrough", "outbound", "conn-rbac")
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
Json = dict[str, Any]


def hcm(name: str, routes: list[Json] | None = None) -> Json:
    direct = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": name}}}
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager",
            "stat_prefix": name.replace("-", "_"),
            "route_config": {
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes or [direct]}]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }


def tcp(cluster: str) -> Json:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster,
        },
    }


def socket(kind: str, **context: Any) -> Json:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": f"{TLS}.{kind}", **context}}


def address(port: int) -> Json:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def cluster(name: str, port: int, tls: Json | None = None) -> Json:
    found: Json = {
        "name": name,
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(port)}}]}],
        },
    }
    if tls is not None:
        found["transport_socket"] = socket("UpstreamTlsContext", **tls)
    return found


def bootstrap(admin: int, p: dict[str, int], certs: dict[str, Issued], ca: Ca) -> str:
    def pair(name: str) -> Json:
        return {
            "certificate_chain": {"filename": str(certs[name].cert)},
            "private_key": {"filename": str(certs[name].key)},
        }

    trusted = {"trusted_ca": {"filename": str(ca.path)}}
    inspector = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]

    def listener(name: str, chains: list[Json], default: Json | None = None, inspect: bool = True) -> Json:
        found: Json = {"name": name, "address": address(p[name]), "filter_chains": chains}
        if inspect:
            found["listener_filters"] = inspector
        if default is not None:
            found["default_filter_chain"] = default
        return found

    def client(cluster_ca: str, san: str | None) -> Json:
        validation: Json = {"trusted_ca": {"filename": cluster_ca}}
        if san is not None:
            validation["match_typed_subject_alt_names"] = [{"san_type": "DNS", "matcher": {"exact": san}}]
        return {
            "sni": "a.example.com",
            "common_tls_context": {"tls_certificates": [pair("orders")], "validation_context": validation},
        }

    routes = [
        {"match": {"prefix": f"/{path}"}, "route": {"cluster": name}}
        for path, name in (
            ("up", "mtls-up"),
            ("wrong-san", "wrong-san"),
            ("untrusted", "untrusted"),
            ("modern", "modern-tls"),
        )
    ]
    listeners = [
        listener(
            "sni",
            [
                {
                    "filter_chain_match": {"server_names": ["a.example.com"]},
                    "transport_socket": socket(
                        "DownstreamTlsContext",
                        common_tls_context={
                            "tls_certificate_sds_secret_configs": [{"name": "a-cert"}],
                            "alpn_protocols": ["h2", "http/1.1"],
                        },
                    ),
                    "filters": [hcm("chain-a")],
                },
                {
                    "filter_chain_match": {"server_names": ["*.b.example.com"]},
                    "transport_socket": socket(
                        "DownstreamTlsContext", common_tls_context={"tls_certificates": [pair("b")]}
                    ),
                    "filters": [hcm("chain-b-wild")],
                },
                {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": [hcm("plaintext")]},
            ],
            {
                "transport_socket": socket(
                    "DownstreamTlsContext", common_tls_context={"tls_certificates": [pair("a")]}
                ),
                "filters": [hcm("default")],
            },
        ),
        listener(
            "mtls",
            [
                {
                    "transport_socket": socket(
                        "DownstreamTlsContext",
                        require_client_certificate=True,
                        common_tls_context={
                            "tls_certificates": [pair("a")],
                            "validation_context": {
                                **trusted,
                                "match_typed_subject_alt_names": [
                                    {"san_type": "URI", "matcher": {"exact": ORDERS}}
                                ],
                            },
                        },
                    ),
                    "filters": [hcm("mtls")],
                }
            ],
        ),
        listener(
            "modern",
            [
                {
                    "transport_socket": socket(
                        "DownstreamTlsContext",
                        common_tls_context={
                            "tls_certificates": [pair("a")],
                            "alpn_protocols": ["h2"],
                            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                        },
                    ),
                    "filters": [hcm("modern")],
                }
            ],
        ),
        listener(
            "passthrough",
            [{"filter_chain_match": {"server_names": ["a.example.com"]}, "filters": [tcp("to-sni")]}],
            {"filters": [tcp("to-modern")]},
        ),
        listener("outbound", [{"filters": [hcm("outbound", routes)]}], inspect=False),
        # Who may connect at all: Envoy's network RBAC on the verified client certificate.
        listener("conn-rbac", [{"transport_socket": socket(
            "DownstreamTlsContext", require_client_certificate=True, common_tls_context={
                "tls_certificates": [pair("a")], "validation_context": trusted}),
            "filters": [{"name": "envoy.filters.network.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "stat_prefix": "conn_rbac.", "rules": {"action": "ALLOW", "policies": {"orders": {
                    "permissions": [{"any": True}],
                    "principals": [{"authenticated": {"principal_name": {"exact": ORDERS}}}]}}}}},
                hcm("conn-rbac")]}], inspect=False),
    ]
    clusters = [
        cluster("to-sni", p["sni"]),
        cluster("to-modern", p["modern"]),
        cluster("mtls-up", p["mtls"], client(str(ca.path), "a.example.com")),
        cluster("wrong-san", p["mtls"], client(str(ca.path), "nope.example.com")),
        cluster("untrusted", p["mtls"], client(str(certs["other-ca"].cert), None)),
        cluster(
            "modern-tls",
            p["modern"],
            {"sni": "a.example.com", "common_tls_context": {"validation_context": trusted}},
        ),
    ]
    return json.dumps(
        {
            "admin": {"address": address(admin)},
            "static_resources": {
                "secrets": [{"name": "a-cert", "tls_certificate": pair("a")}],
                "listeners": listeners,
                "clusters": clusters,
            },
        }
    )


@dataclass
class Pair:
    ports: dict[str, dict[str, int]]  # "envoy"/"meshpy" -> listener name -> port
    ca: Ca
    certs: dict[str, Issued]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    d = tmp_path_factory.mktemp("tls-envoy")
    ca = make_ca(d / "ca")
    other = make_ca(d / "other", "other")
    certs = {
        "a": ca.issue("a.example.com", dns=("a.example.com",)),
        "b": ca.issue("b.example.com", dns=("*.b.example.com",)),
        "orders": ca.issue("orders", uris=(ORDERS,)),
        "payments": ca.issue("payments", uris=("spiffe://test.local/ns/shop/sa/payments",)),
        "stranger": other.issue("stranger", uris=(ORDERS,)),
        "other-ca": Issued(other.path, other.path, other.pem, b""),
    }
    ports = {who: {n: free_port() for n in PORTS} for who in ("envoy", "meshpy")}
    e_admin, m_admin = free_port(), free_port()
    envoy = Envoy(bootstrap(e_admin, ports["envoy"], certs, ca), e_admin).start()
    proxy = Proxy(bootstrap(m_admin, ports["meshpy"], certs, ca), m_admin).start()
    try:
        yield Pair(ports, ca, certs)
    finally:
        envoy.stop()
        assert proxy.stop() == 0, proxy.logs()


def curl(
    pair: Pair,
    who: str,
    listener: str,
    host: str,
    *args: str,
    cert: str | None = None,
    scheme: str = "https",
    path: str = "/",
) -> str:
    port = pair.ports[who][listener]
    extra = ["--cert", str(pair.certs[cert].cert), "--key", str(pair.certs[cert].key)] if cert else []
    done = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "5",
            "--cacert",
            str(pair.ca.path),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            *extra,
            *args,
            "-w",
            " %{http_version} %{http_code}",
            f"{scheme}://{host}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


CASES = {
    "sni exact, ALPN h2": ("sni", "a.example.com", (), None, "https", "/"),
    "sni exact, http/1.1": ("sni", "a.example.com", ("--http1.1",), None, "https", "/"),
    "sni wildcard": ("sni", "x.b.example.com", (), None, "https", "/"),
    "plaintext beside TLS": ("sni", "a.example.com", (), None, "http", "/"),
    "client certificate accepted": ("mtls", "a.example.com", (), "orders", "https", "/"),
    "no client certificate": ("mtls", "a.example.com", (), None, "https", "/"),
    "client certificate, wrong SAN": ("mtls", "a.example.com", (), "payments", "https", "/"),
    "client certificate, unknown CA": ("mtls", "a.example.com", (), "stranger", "https", "/"),
    "TLS 1.3 only, ALPN h2 only": ("modern", "a.example.com", ("--http1.1",), None, "https", "/"),
    "TLS 1.2 to a TLS 1.3 listener": ("modern", "a.example.com", ("--tls-max", "1.2"), None, "https", "/"),
    "passthrough by SNI": ("passthrough", "a.example.com", (), None, "https", "/"),
    "passthrough default": ("passthrough", "x.b.example.com", ("-k",), None, "https", "/"),
    "network RBAC allows a principal": ("conn-rbac", "a.example.com", (), "orders", "https", "/"),
    "network RBAC denies another": ("conn-rbac", "a.example.com", (), "payments", "https", "/"),
    "upstream mTLS": ("outbound", "a.example.com", (), None, "http", "/up"),
    "upstream SAN mismatch": ("outbound", "a.example.com", (), None, "http", "/wrong-san"),
    "upstream unknown CA": ("outbound", "a.example.com", (), None, "http", "/untrusted"),
    # Envoy's default maximum version upstream, against a TLS 1.3-only listener.
    "upstream default versions": ("outbound", "a.example.com", (), None, "http", "/modern"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_outcome(pair: Pair, case: str) -> None:
    listener, host, args, cert, scheme, path = CASES[case]
    got = {
        who: curl(pair, who, listener, host, *args, cert=cert, scheme=scheme, path=path)
        for who in ("envoy", "meshpy")
    }
    if case.startswith("upstream"):
        # Both answer 503; the bodies name the TLS error each in its own words.
        got = {who: text.rsplit(" ", 2)[-1] for who, text in got.items()}
    assert got["meshpy"] == got["envoy"], got


def test_sni_default_chain_serves_unknown_names(pair: Pair) -> None:
    """A name no chain has goes to the default_filter_chain, on each."""
    for who in ("envoy", "meshpy"):
        port = pair.ports[who]["sni"]
        done = subprocess.run(
            [
                "curl",
                "-sk",
                "--max-time",
                "5",
                "--resolve",
                f"c.example.com:{port}:127.0.0.1",
                f"https://c.example.com:{port}/",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.stdout == "default", (who, done.stdout)
