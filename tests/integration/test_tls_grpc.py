"""gRPC and HTTP/2 over TLS through a real meshpy: a grpcio client with a client certificate
(mutual TLS) to a meshpy listener that terminates TLS (ALPN h2), meshpy to a grpcio server over TLS
(the cluster originates it, ALPN h2, verifying the server's certificate), and h2load over TLS."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import grpc_echo
import pytest
from kit import DemoUpstream, Proxy, free_port
from pki import Ca, Issued, make_ca

ORDERS = "spiffe://test.local/ns/shop/sa/orders"


@dataclass
class Env:
    proxy: Proxy
    port: int
    plain_tls: int  # a TLS listener that asks for no client certificate
    ca: Ca
    client: Issued


def tls_echo(port: int, cert: Issued) -> grpc.Server:
    """The echo service over TLS (grpcio's own), as an upstream that wants HTTP/2 over TLS."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_echo.add_handlers(server)
    creds = grpc.ssl_server_credentials([(cert.key_pem, cert.cert_pem)])
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    return server


@pytest.fixture(scope="module")
def env(loop_name: str, demo: DemoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("tls-grpc")
    ca = make_ca(d / "ca")
    server_cert = ca.issue("grpc.example.com", dns=("grpc.example.com",))
    upstream_cert = ca.issue("echo.internal", dns=("echo.internal",))
    client = ca.issue("orders", uris=(ORDERS,))
    up_port, port, plain_tls, admin = free_port(), free_port(), free_port(), free_port()
    upstream = tls_echo(up_port, upstream_cert)
    config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: grpc-tls
    address: 127.0.0.1:{port}
    tls:
      cert: {server_cert.cert}
      key: {server_cert.key}
      client_certificates: {{ca: {ca.path}, subject_alt_names: [{{uri: "{ORDERS}"}}]}}
    routes:
      - {{match: /echo.Echo/, cluster: echo-tls, timeout: 0s}}
      - {{match: /, cluster: demo}}
  - name: h2-tls
    address: 127.0.0.1:{plain_tls}
    tls: {{cert: {server_cert.cert}, key: {server_cert.key}}}
    routes: [{{match: /, cluster: demo}}]
clusters:
  echo-tls:
    protocol: http2
    endpoints: [127.0.0.1:{up_port}]
    tls: {{sni: echo.internal, ca: {ca.path}}}
  demo: 127.0.0.1:{demo.port}
"""
    proxy = Proxy(config, admin, loop=loop_name).start()
    try:
        yield Env(proxy, port, plain_tls, ca, client)
    finally:
        assert proxy.stop() == 0, proxy.logs()
        upstream.stop(0)


def channel(env: Env, client: Issued | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=env.ca.pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(
        f"127.0.0.1:{env.port}", creds, options=[("grpc.ssl_target_name_override", "grpc.example.com")]
    )


def test_grpc_over_mutual_tls_both_hops(env: Env) -> None:
    with channel(env, env.client) as ch:
        reply, call = ch.unary_unary("/echo.Echo/Unary").with_call(b"hello", timeout=10)
        assert reply == b"hello"
        assert ("x-served-by", "grpc-echo") in tuple(call.trailing_metadata() or ())
        assert list(ch.stream_stream("/echo.Echo/Bidi")(iter([b"x", b"yz"]), timeout=10)) == [b"X", b"YZ"]
        big = bytes(range(256)) * 4096
        assert ch.unary_unary("/echo.Echo/Unary")(big, timeout=30) == big
    assert env.proxy.metric("meshpy_upstream_tls_handshakes_total", cluster="echo-tls") >= 1
    assert (
        env.proxy.metric("meshpy_downstream_tls_handshakes_total", listener="grpc-tls", version="TLSv1.3")
        >= 1
    )


def test_grpc_without_a_client_certificate_is_refused(env: Env) -> None:
    with channel(env, None) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary("/echo.Echo/Unary")(b"hello", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (Debian: nghttp2-client)")
def test_h2load_over_tls(env: Env) -> None:
    done = subprocess.run(
        ["h2load", "-n", "400", "-c", "4", "-m", "10", f"https://127.0.0.1:{env.plain_tls}/hello"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Application protocol: h2" in done.stdout, done.stdout
    assert re.search(r"400 succeeded, 0 failed", done.stdout), done.stdout
    # To the listener that wants a client certificate, h2load (which has none) gets nowhere.
    refused = subprocess.run(
        ["h2load", "-n", "10", "-c", "1", f"https://127.0.0.1:{env.port}/hello"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "0 succeeded" in refused.stdout, refused.stdout
