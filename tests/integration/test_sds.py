"""Secrets over SDS from `meshpy control` (a directory of Envoy resources holding Secret resources) to
meshpy and to real Envoy, over the ADS stream, state of the world and delta: a TLS listener whose
certificate is named by an SDS config serves once the secret arrives, and serves the new certificate
when the secret changes on the control plane, without a restart."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, eventually, free_port, needs_curl
from pki import Ca, Issued, make_ca
from xds_world import CLUSTER, Control, bootstrap, endpoints, routes

pytestmark = needs_curl
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ADS = {"ads": {}, "resource_api_version": "V3"}


def tls_listener(name: str, port: int) -> str:
    return json.dumps(
        {
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": f"{TLS}.DownstreamTlsContext",
                            "common_tls_context": {
                                "alpn_protocols": ["h2", "http/1.1"],
                                "tls_certificate_sds_secret_configs": [
                                    {"name": "server-cert", "sds_config": ADS}
                                ],
                            },
                        },
                    },
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": HCM,
                                "stat_prefix": "tls",
                                "rds": {"route_config_name": "local", "config_source": ADS},
                                "http_filters": [
                                    {
                                        "name": "envoy.filters.http.router",
                                        "typed_config": {"@type": ROUTER},
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    )


def secret(leaf: Issued) -> str:
    return json.dumps(
        {
            "@type": f"{TLS}.Secret",
            "name": "server-cert",
            "tls_certificate": {
                "certificate_chain": {"inline_string": leaf.cert_pem.decode()},
                "private_key": {"inline_string": leaf.key_pem.decode()},
            },
        }
    )


def served_serial(port: int, ca: Ca) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.example.com"],
        input=b"",
        capture_output=True,
        timeout=10,
        check=False,
    )
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial"], input=done.stdout, capture_output=True, check=False
    ).stdout.decode()
    return out.strip().removeprefix("serial=").lower().lstrip("0")


def fetch(port: int, ca: Ca) -> str:
    done = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "5",
            "--cacert",
            str(ca.path),
            "--resolve",
            f"a.example.com:{port}:127.0.0.1",
            "-w",
            " %{http_version}",
            f"https://a.example.com:{port}/hello",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


@pytest.fixture(params=["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, demo: DemoUpstream
) -> Iterator[tuple[Path, Ca, dict[str, int]]]:
    source = tmp_path / "resources"
    source.mkdir()
    ca = make_ca(tmp_path / "pki")
    ports = {"meshpy": free_port(), "envoy": free_port()}
    (source / "listener-meshpy.yaml").write_text(tls_listener("tls-meshpy", ports["meshpy"]))
    (source / "listener-envoy.yaml").write_text(tls_listener("tls-envoy", ports["envoy"]))
    (source / "routes.yaml").write_text(routes())
    (source / "cluster.yaml").write_text(CLUSTER)
    (source / "endpoints.yaml").write_text(endpoints(demo.port))
    (source / "secret.yaml").write_text(secret(ca.issue("first", dns=("a.example.com",))))
    control = Control(source, free_port(), tmp_path / "control.log", poll_interval=0.1).start()
    m_admin, e_admin = free_port(), free_port()
    proxy = Proxy(bootstrap(m_admin, control.port, request.param, node="meshpy-1"), m_admin)
    envoy = None
    try:
        proxy.start()
        if envoy_binary() is not None:
            envoy = Envoy(bootstrap(e_admin, control.port, request.param, node="envoy-1"), e_admin).start()
        yield source, ca, ports
    finally:
        if envoy is not None:
            envoy.stop()
        proxy.stop()
        control.stop()


def test_secrets_arrive_and_rotate(world: tuple[Path, Ca, dict[str, int]]) -> None:
    source, ca, ports = world
    who = ["meshpy"] + (["envoy"] if envoy_binary() is not None else [])
    for name in who:
        eventually(lambda name=name: fetch(ports[name], ca).endswith(" 2"), f"{name} serves TLS from SDS")  # type: ignore[misc]
        assert fetch(ports[name], ca).startswith("Hello from the meshpy demo upstream")
    first = served_serial(ports["meshpy"], ca)
    renewed = ca.issue("second", dns=("a.example.com",))
    (source / "secret.yaml").write_text(secret(renewed))
    for name in who:
        eventually(lambda name=name: served_serial(ports[name], ca) != first, f"{name} serves the new secret")  # type: ignore[misc]
        assert fetch(ports[name], ca).endswith(" 2")
