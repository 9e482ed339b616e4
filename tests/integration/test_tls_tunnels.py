"""Tunnels over downstream TLS: a WebSocket session (wss://) through a meshpy listener that terminates
TLS, and a TCP listener that terminates TLS in front of a plaintext echo server, with its `authz:`
(the network RBAC filter) allowing one client identity only."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kit import Proxy, RawUpstream, free_port
from pki import Ca, Issued, make_ca
from test_websocket import EchoServer
from websockets.asyncio.client import connect

ORDERS = "spiffe://test.local/ns/shop/sa/orders"


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


@dataclass
class Env:
    proxy: Proxy
    wss: int
    tcp: int
    ca: Ca
    certs: dict[str, Issued]


@pytest.fixture(scope="module")
def env(loop_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("tls-tunnels")
    ca = make_ca(d)
    certs = {"server": ca.issue("a.example.com", dns=("a.example.com",)),
             "orders": ca.issue("orders", uris=(ORDERS,)),
             "payments": ca.issue("payments", uris=("spiffe://test.local/ns/shop/sa/payments",))}
    ws_port, wss, tcp, admin = free_port(), free_port(), free_port(), free_port()
    ws = EchoServer(ws_port)
    server = certs["server"]
    with RawUpstream(echo) as up:
        config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: wss
    address: 127.0.0.1:{wss}
    protocol: http1
    tls: {{cert: {server.cert}, key: {server.key}}}
    routes: [{{match: /, cluster: ws}}]
  - name: tcp-tls
    address: 127.0.0.1:{tcp}
    protocol: tcp
    cluster: echo
    tls:
      cert: {server.cert}
      key: {server.key}
      client_certificates: {{ca: {ca.path}}}
    authz:
      policies:
        orders-only: {{from: [{{principal: "test.local/ns/shop/sa/orders"}}]}}
clusters:
  ws: 127.0.0.1:{ws_port}
  echo: 127.0.0.1:{up.port}
"""
        proxy = Proxy(config, admin, loop=loop_name).start()
        try:
            yield Env(proxy, wss, tcp, ca, certs)
        finally:
            assert proxy.stop() == 0, proxy.logs()
            ws.stop()


def client_context(env: Env, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(env.ca.path))
    if cert is not None:
        ctx.load_cert_chain(env.certs[cert].cert, env.certs[cert].key)
    return ctx


def test_websocket_over_tls(env: Env) -> None:
    async def talk() -> list[object]:
        async with connect(f"wss://a.example.com:{env.wss}/ws", ssl=client_context(env),
                           host="127.0.0.1", port=env.wss) as ws:
            got: list[object] = []
            for message in ("hello", b"\x00\x01" * 5000, "again"):
                await ws.send(message)
                got.append(await ws.recv())
            return got

    assert asyncio.run(talk()) == ["HELLO", b"\x00\x01" * 5000, "AGAIN"]


def test_tcp_over_tls_with_network_authorization(env: Env) -> None:
    def session(cert: str) -> bytes:
        raw = socket.create_connection(("127.0.0.1", env.tcp), timeout=5)
        with client_context(env, cert).wrap_socket(raw, server_hostname="a.example.com") as s:
            try:
                s.sendall(b"ping" * 1000)
                got = b""
                while len(got) < 4000:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                return got
            except (ConnectionError, ssl.SSLError):
                return b""

    assert session("orders") == b"ping" * 1000  # allowed: echoed back through the TLS-terminating proxy
    assert session("payments") == b""  # a valid certificate, but not an identity the policy allows
    assert env.proxy.metric("meshpy_rbac_denied_total", listener="tcp-tls") >= 1
