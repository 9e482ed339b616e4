"""A mixed mesh: a meshpy sidecar (its key made by itself, its certificate from a CSR) and an unmodified
Envoy sidecar (its key pair made by `meshpy control` and sent over SDS on its ADS stream, which proves
its identity with a bearer token), both with SPIFFE certificates from the same CA, calling each other
over mutual TLS, each checking the other's SPIFFE ID."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, http, wait_port
from xds_world import Control

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="envoy is not installed")
TRUST = "test.local"
ORDERS = f"spiffe://{TRUST}/ns/shop/sa/orders"  # the Envoy sidecar
PAYMENTS = f"spiffe://{TRUST}/ns/shop/sa/payments"  # the meshpy sidecar
TOKENS = {"orders": "orders-token-0123456789", "payments": "payments-token-0123456789"}
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ADS = {"ads": {}, "resource_api_version": "V3"}
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass
class World:
    meshpy: Proxy
    ports: dict[str, int]


def sds(name: str) -> dict[str, object]:
    return {"name": name, "sds_config": ADS}


def hcm(name: str, route: dict[str, object]) -> dict[str, object]:
    return {
        "name": "hcm",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **route}]}
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


def address(port: int) -> dict[str, object]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def envoy_bootstrap(admin: int, ads: int) -> str:
    """Envoy gets everything over ADS: its listeners and clusters, and (by name) its secrets. (A static
    cluster naming an SDS secret over ADS crashes Envoy 1.40 at start, so the clusters come over CDS.)"""
    return json.dumps(
        {
            "node": {"id": "orders-envoy", "cluster": "orders"},
            "admin": {"address": address(admin)},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [
                        {
                            "envoy_grpc": {"cluster_name": "xds"},
                            "initial_metadata": [
                                {"key": "authorization", "value": f"Bearer {TOKENS['orders']}"}
                            ],
                        }
                    ],
                },
                "lds_config": ADS,
                "cds_config": ADS,
            },
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "typed_extension_protocol_options": {
                            HTTP_OPTIONS: {
                                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                        "load_assignment": {
                            "cluster_name": "xds",
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(ads)}}]}],
                        },
                    }
                ]
            },
        }
    )


def envoy_resources(ports: dict[str, int]) -> dict[str, object]:
    """The Envoy sidecar's listeners and cluster, as the control plane serves them (one file each)."""
    common = {
        "tls_certificate_sds_secret_configs": [sds("default")],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": PAYMENTS}}]
            },
            "validation_context_sds_secret_config": sds("ROOTCA"),
        },
    }
    listener = "type.googleapis.com/envoy.config.listener.v3.Listener"
    return {
        "inbound": {
            "@type": listener,
            "name": "inbound",
            "address": address(ports["envoy_in"]),
            "filter_chains": [
                {
                    "transport_socket": {
                        "name": "tls",
                        "typed_config": {
                            "@type": f"{TLS}.DownstreamTlsContext",
                            "require_client_certificate": True,
                            "common_tls_context": common,
                        },
                    },
                    "filters": [
                        hcm(
                            "inbound",
                            {
                                "direct_response": {
                                    "status": 200,
                                    "body": {"inline_string": "orders via envoy"},
                                }
                            },
                        )
                    ],
                }
            ],
        },
        "outbound": {
            "@type": listener,
            "name": "outbound",
            "address": address(ports["envoy_out"]),
            "filter_chains": [{"filters": [hcm("outbound", {"route": {"cluster": "payments"}})]}],
        },
        "payments": {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "payments",
            "type": "STATIC",
            "connect_timeout": "1s",
            "transport_socket": {
                "name": "tls",
                "typed_config": {"@type": f"{TLS}.UpstreamTlsContext", "common_tls_context": common},
            },
            "load_assignment": {
                "cluster_name": "payments",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(ports["meshpy_in"])}}]}],
            },
        },
    }


def meshpy_config(admin: int, ports: dict[str, int], demo: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: inbound
    address: 127.0.0.1:{ports["meshpy_in"]}
    tls:
      secret: default
      client_certificates: {{ca_secret: ROOTCA, subject_alt_names: [{{uri: "{ORDERS}"}}]}}
    routes: [{{match: /, cluster: app}}]
  - name: outbound
    address: 127.0.0.1:{ports["meshpy_out"]}
    routes: [{{match: /, cluster: orders}}]
clusters:
  app: 127.0.0.1:{demo}
  orders:
    endpoints: [127.0.0.1:{ports["envoy_in"]}]
    tls: {{secret: default, ca_secret: ROOTCA, subject_alt_names: [{{uri: "{ORDERS}"}}]}}
"""


@pytest.fixture(scope="module", params=["uvloop"])
def world(
    request: pytest.FixtureRequest, demo: DemoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    d = tmp_path_factory.mktemp("mixed")
    (d / "resources").mkdir()
    ports = {n: free_port() for n in ("envoy_in", "envoy_out", "meshpy_in", "meshpy_out")}
    for name, resource in envoy_resources(ports).items():
        (d / "resources" / f"{name}.yaml").write_text(json.dumps(resource))
    (d / "tokens.yaml").write_text(
        "tokens:\n"
        + "".join(
            f"  - {{token: {tok}, namespace: shop, service_account: {sa}}}\n" for sa, tok in TOKENS.items()
        )
    )
    (d / "payments.token").write_text(TOKENS["payments"])
    control = Control(d / "resources", free_port(), d / "control.log", poll_interval=0.2)
    control.extra = ["--bootstrap-tokens", str(d / "tokens.yaml"), "--trust-domain", TRUST]
    control.start()
    wait_port(control.port)
    e_admin, m_admin = free_port(), free_port()
    envoy = Envoy(envoy_bootstrap(e_admin, control.port), e_admin)
    proxy = Proxy(
        meshpy_config(m_admin, ports, demo.port),
        m_admin,
        loop=request.param,
        extra_args=[
            "--identity",
            PAYMENTS,
            "--ca",
            f"127.0.0.1:{control.port}",
            "--ca-token",
            str(d / "payments.token"),
        ],
    )
    try:
        envoy.start()
        proxy.start()
        yield World(proxy, ports)
    finally:
        proxy.stop()
        envoy.stop()
        control.stop()


def test_meshpy_calls_envoy_over_mutual_tls(world: World) -> None:
    answer = http(world.ports["meshpy_out"], path="/")
    assert answer.status == 200 and answer.body == b"orders via envoy", answer.body


def test_envoy_calls_meshpy_over_mutual_tls(world: World) -> None:
    answer = http(world.ports["envoy_out"], path="/hello")
    assert answer.status == 200 and answer.body.startswith(b"Hello from the meshpy demo upstream"), (
        answer.body
    )


def test_the_envoy_sidecar_holds_an_svid_from_the_mesh_ca(world: World) -> None:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{world.ports['envoy_in']}"],
        input=b"",
        capture_output=True,
        timeout=10,
        check=False,
    )
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=done.stdout,
        capture_output=True,
        check=False,
    ).stdout.decode()
    assert f"URI:{ORDERS}" in text, text
