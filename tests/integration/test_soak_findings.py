"""What the soak under chaos found (docs/soak.md), each pinned down on its own: a request head cut short
must not count as a request, a refused upstream connect is the pool's to handle (not an ERROR with a
traceback), a POST whose connect failed is retried (nothing was sent), and an HTTP/2 connection does not
remember every closed stream."""

from __future__ import annotations

import socket
import struct
import time

import h2.config
import h2.connection
from kit import DemoUpstream, Proxy, eventually, free_port, http

from meshpy.codec.h2_pure import Connection


def config(admin: int, port: int, endpoints: str, retry: str = "") -> str:
    return f"""
admin: 127.0.0.1:{admin}
listeners:
- name: web
  address: 127.0.0.1:{port}
  routes:
  - match: /
    cluster: app{retry}
clusters:
  app: {{endpoints: [{endpoints}]}}
"""


def test_a_head_cut_short_is_no_request(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    p = Proxy(config(admin, port, f"127.0.0.1:{demo.port}"), admin).start()
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: exa")
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            s.close()
        assert http(port, path="/hello").status == 200
        eventually(lambda: p.metric("meshpy_downstream_cx_active", listener="web") == 0, "connections gone")
        assert p.metric("meshpy_downstream_rq_active", listener="web") == 0
        assert p.metric("meshpy_downstream_rq_total", listener="web") == 1  # the one whole request
    finally:
        p.stop()


def test_a_refused_connect_is_not_logged_as_an_error() -> None:
    admin, port, dead = free_port(), free_port(), free_port()
    p = Proxy(config(admin, port, f"127.0.0.1:{dead}"), admin).start()
    try:
        for _ in range(3):
            assert http(port, path="/").status == 503
        assert p.metric("meshpy_upstream_cx_connect_fail_total", cluster="app") == 3
        assert "background task" not in p.logs() and "Traceback" not in p.logs(), p.logs()
    finally:
        p.stop()


def test_a_post_whose_connect_failed_is_retried(demo: DemoUpstream) -> None:
    admin, port, dead = free_port(), free_port(), free_port()
    retry = "\n    retry: {retry_on: [connect-failure], num_retries: 2}"
    p = Proxy(config(admin, port, f"127.0.0.1:{dead}, 127.0.0.1:{demo.port}", retry), admin).start()
    try:
        answers = [http(port, method="POST", path="/echo", body=b"x" * 100).status for _ in range(10)]
        assert answers == [200] * 10
        assert p.metric("meshpy_upstream_cx_connect_fail_total", cluster="app") >= 1  # the dead one was tried
    finally:
        p.stop()


def test_an_http2_connection_forgets_old_closed_streams() -> None:
    """h2 would remember 65,536 closed stream ids per connection (~10 MiB on a long-lived one)."""
    server = Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for _ in range(2000):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                  (":authority", "x")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
    assert len(server._closed_streams) <= Connection.MAX_CLOSED_STREAMS == 512
