"""Session ticket keys given by the user, and ECDH group lists, through real meshpy processes and
`openssl s_client`: replicas with the same keys resume each other's sessions (the reason to set them),
a key file rotated in place keeps old tickets working while it is listed, and a listener offers only
the groups it names. One replica reads meshpy YAML, the other an Envoy bootstrap with the same key
inline (`session_ticket_keys.keys[].inline_bytes`), so both front doors are checked."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit import DemoUpstream, Proxy, eventually, free_port, needs_curl
from pki import Ca, make_ca, write

from meshpy.transport import tls_native

pytestmark = [needs_curl,
              pytest.mark.skipif(not tls_native.available(), reason="libssl's SSL_CTX is not reachable")]
REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def s_client(port: int, *args: str, data: bytes = REQUEST) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.example.com", "-ign_eof",
         *args],
        input=data, capture_output=True, timeout=10, check=False)
    return done.stdout.decode("latin-1") + done.stderr.decode("latin-1")


def meshpy_yaml(admin: int, port: int, demo: int, cert: Path, key: Path, extra: str) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: edge
    address: 127.0.0.1:{port}
    protocol: http1
    tls: {{cert: {cert}, key: {key}{extra}}}
    routes: [{{match: /, cluster: demo}}]
clusters:
  demo: 127.0.0.1:{demo}
"""


def envoy_bootstrap(admin: int, port: int, demo: int, cert: Path, key: Path, ticket_key: bytes) -> str:
    api = "type.googleapis.com/envoy.extensions"
    hcm = f"{api}.filters.network.http_connection_manager.v3.HttpConnectionManager"
    tls = f"{api}.transport_sockets.tls.v3.DownstreamTlsContext"
    router = f"{api}.filters.http.router.v3.Router"
    demo_address = f"{{socket_address: {{address: 127.0.0.1, port_value: {demo}}}}}"
    route = "{match: {prefix: /}, route: {cluster: demo}}"
    return f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: edge
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": {tls}
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            alpn_protocols: [http/1.1]
          session_ticket_keys: {{keys: [{{inline_bytes: "{base64.b64encode(ticket_key).decode()}"}}]}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: edge
          http_filters:
          - {{name: envoy.filters.http.router, typed_config: {{"@type": {router}}}}}
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{route}]}}]
  clusters:
  - name: demo
    load_assignment:
      cluster_name: demo
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {demo_address}}}}}]}}]
"""


@dataclass
class Replicas:
    ports: dict[str, int]
    keys: Path  # the directory of the key files the YAML replicas read
    shared_key: bytes
    proxies: list[Proxy]


@pytest.fixture(scope="module")
def replicas(loop_name: str, demo: DemoUpstream,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    d = tmp_path_factory.mktemp("tickets")
    ca: Ca = make_ca(d / "ca")
    leaf = ca.issue("a.example.com", dns=("a.example.com",))
    shared = os.urandom(80)
    write(d / "current.key", shared)
    write(d / "previous.key", os.urandom(80))
    keys = f", session_ticket_keys: [{d / 'current.key'}, {d / 'previous.key'}]"
    names = ("yaml", "envoy", "stranger", "groups")
    ports = {name: free_port() for name in names}
    admins = {name: free_port() for name in names}
    configs = {
        "yaml": meshpy_yaml(admins["yaml"], ports["yaml"], demo.port, leaf.cert, leaf.key, keys),
        "envoy": envoy_bootstrap(admins["envoy"], ports["envoy"], demo.port, leaf.cert, leaf.key, shared),
        "stranger": meshpy_yaml(admins["stranger"], ports["stranger"], demo.port, leaf.cert, leaf.key, ""),
        "groups": meshpy_yaml(admins["groups"], ports["groups"], demo.port, leaf.cert, leaf.key,
                              ", curves: [P-384, X25519]"),
    }
    proxies: list[Proxy] = []
    try:
        for name, text in configs.items():
            proxies.append(Proxy(text, admins[name], loop=loop_name).start())
        yield Replicas(ports, d, shared, proxies)
    finally:
        for p in proxies:
            assert p.stop() == 0, p.logs()


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_replicas_with_the_same_key_resume_each_others_sessions(replicas: Replicas, tmp_path: Path,
                                                                 version: str) -> None:
    session = tmp_path / "session.pem"
    first = s_client(replicas.ports["yaml"], version, "-sess_out", str(session))
    assert "New," in first and "200 OK" in first, first
    # The Envoy-format replica has the same key inline; the stranger made its own.
    assert "Reused," in s_client(replicas.ports["envoy"], version, "-sess_in", str(session))
    assert "New," in s_client(replicas.ports["stranger"], version, "-sess_in", str(session))


def test_a_rotated_key_file_keeps_old_tickets_while_it_is_listed(replicas: Replicas, tmp_path: Path) -> None:
    session = tmp_path / "before.pem"
    s_client(replicas.ports["yaml"], "-tls1_2", "-sess_out", str(session))
    assert "Reused," in s_client(replicas.ports["yaml"], "-tls1_2", "-sess_in", str(session))
    # Rotation as an operator does it: the current key becomes the previous one, a new one is current.
    write(replicas.keys / "previous.key", replicas.shared_key)
    write(replicas.keys / "current.key", os.urandom(80))

    def new_tickets_differ() -> bool:  # the Envoy-format replica still has only the old key
        probe = tmp_path / "probe.pem"
        s_client(replicas.ports["yaml"], "-tls1_2", "-sess_out", str(probe))
        return "New," in s_client(replicas.ports["envoy"], "-tls1_2", "-sess_in", str(probe))

    eventually(new_tickets_differ, "tickets encrypted under the new key")
    assert "Reused," in s_client(replicas.ports["yaml"], "-tls1_2", "-sess_in", str(session))
    write(replicas.keys / "previous.key", os.urandom(80))  # the old key leaves the list

    eventually(lambda: "New," in s_client(replicas.ports["yaml"], "-tls1_2", "-sess_in", str(session)),
               "the removed key's tickets refused")


def test_a_listener_offers_only_the_groups_it_names(replicas: Replicas) -> None:
    port = replicas.ports["groups"]
    assert "200 OK" in s_client(port, "-groups", "P-384")
    assert "200 OK" in s_client(port, "-groups", "X25519")
    refused = s_client(port, "-groups", "P-256")
    assert "200 OK" not in refused and "alert" in refused.lower(), refused
