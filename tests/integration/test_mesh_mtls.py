"""Two meshpy sidecars with identities from `meshpy control`'s CA: each makes its own key, gets a
short-lived SPIFFE certificate over a CSR (a bootstrap token proves who it is), and serves it as the
secrets `default` and `ROOTCA`. The client sidecar calls the server sidecar over mutual TLS, checks the
server's SPIFFE ID, and the server's authorization allows the client's identity only. Certificates of
a few seconds renew under a steady load with no failed request."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kit import DemoUpstream, Proxy, eventually, free_port, http, wait_port
from xds_world import Control

TRUST = "test.local"
ORDERS = f"spiffe://{TRUST}/ns/shop/sa/orders"
PAYMENTS = f"spiffe://{TRUST}/ns/shop/sa/payments"
TOKENS = {"orders": "orders-token-0123456789", "payments": "payments-token-0123456789"}


@dataclass
class Mesh:
    control: Control
    server: Proxy  # the orders sidecar (inbound, mTLS)
    client: Proxy  # the payments sidecar (outbound, plaintext in, mTLS out)
    inbound: int
    outbound: int


def server_config(admin: int, inbound: int, demo: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: inbound
    address: 127.0.0.1:{inbound}
    access_log: stdout
    mtls: strict                      # the mesh's identities: secret default, peers checked against ROOTCA
    authz:
      policies:
        payments: {{from: [{{principal: "{TRUST}/ns/shop/sa/payments"}}]}}
    routes: [{{match: /, cluster: app}}]
clusters:
  app: 127.0.0.1:{demo}
"""


def client_config(admin: int, outbound: int, inbound: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: outbound
    address: 127.0.0.1:{outbound}
    routes: [{{match: /, cluster: orders}}]
clusters:
  orders:
    endpoints: [127.0.0.1:{inbound}]
    mtls: "{ORDERS}"                  # the server must prove it is the orders service
"""


@pytest.fixture(scope="module")
def mesh(loop_name: str, demo: DemoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    d = tmp_path_factory.mktemp("mesh")
    (d / "resources").mkdir()
    (d / "tokens.yaml").write_text("tokens:\n" + "".join(
        f"  - {{token: {tok}, namespace: shop, service_account: {sa}}}\n" for sa, tok in TOKENS.items()))
    for sa, tok in TOKENS.items():
        (d / f"{sa}.token").write_text(tok)
    control = Control(d / "resources", free_port(), d / "control.log", poll_interval=0.2)
    control.extra = ["--bootstrap-tokens", str(d / "tokens.yaml"), "--trust-domain", TRUST, "--svid-ttl", "6"]
    control.start()
    ca = f"127.0.0.1:{control.port}"
    inbound, outbound, s_admin, c_admin = free_port(), free_port(), free_port(), free_port()
    server = Proxy(server_config(s_admin, inbound, demo.port), s_admin, loop=loop_name, extra_args=[
        "--identity", ORDERS, "--ca", ca, "--ca-token", str(d / "orders.token")])
    client = Proxy(client_config(c_admin, outbound, inbound), c_admin, loop=loop_name, extra_args=[
        "--identity", PAYMENTS, "--ca", ca, "--ca-token", str(d / "payments.token")])
    try:
        wait_port(control.port)
        server.start()
        client.start()
        yield Mesh(control, server, client, inbound, outbound)
    finally:
        client.stop()
        server.stop()
        control.stop()


def test_mutual_tls_with_mesh_identities(mesh: Mesh) -> None:
    answer = http(mesh.outbound, path="/whoami")
    assert answer.status == 200, answer.body
    logged = '"downstream_peer_uri_san":"' + PAYMENTS
    eventually(lambda: logged in mesh.server.logs(), "the caller's identity logged")
    certs = json.loads(mesh.server.admin("/certs")[1])["certificates"]
    (inbound,) = [c for c in certs if c["context"] == "listener inbound"]
    assert inbound["cert_chain"][0]["subject_alt_names"] == [{"uri": ORDERS}]


def test_a_caller_without_the_identity_is_refused(mesh: Mesh) -> None:
    # Plaintext to the mTLS port: not TLS at all, so closed before any request is read.
    with socket.create_connection(("127.0.0.1", mesh.inbound), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        assert not s.recv(4096).startswith(b"HTTP/")


def test_rotation_under_load_fails_nothing(mesh: Mesh) -> None:
    """Certificates live 6 s and renew at about half: over ~8 s of steady requests every one succeeds
    while both sidecars change certificates at least once."""
    def serial() -> str:
        certs = json.loads(mesh.server.admin("/certs")[1])["certificates"]
        inbound = next(c for c in certs if c["context"] == "listener inbound")
        return str(inbound["cert_chain"][0]["serial_number"])

    first = serial()
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                answer = http(mesh.outbound, path="/hello")
                if answer.status != 200:
                    failures.append(f"{answer.status} {answer.body[:80]!r}")
            except OSError as err:
                failures.append(repr(err))
            done += 1
            time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        eventually(lambda: serial() != first, "the server's certificate renewed", timeout=15)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert done > 100 and failures == [], (done, failures[:5])
