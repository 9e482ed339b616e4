"""The fault-injecting fleet of the test kit does what the resilience tests rely on."""

from __future__ import annotations

import socket
from http.client import HTTPConnection, IncompleteRead

import pytest
from fleet import Fleet
from kit import http


def test_error_rate_latency_and_counters() -> None:
    with Fleet(2, error_rate=0.5, retry_after="1") as fleet:
        statuses = [http(fleet.ports[0], path="/x", headers=[("x-envoy-attempt-count", "2")])
                    for _ in range(200)]
        errors = sum(r.status == 503 for r in statuses)
        assert 60 <= errors <= 140
        assert all(r.header("retry-after") == "1" for r in statuses if r.status == 503)
        assert all(r.header("x-seen-attempt") == "2" for r in statuses)
        stats = fleet.stats(0)
        assert stats["requests"] == 200 and stats["errors"] == errors and stats["attempts"] == {"2": 200}
        fleet.set(1, error_rate=0, latency_ms=0)
        ok = http(fleet.ports[1], path="/x")
        assert (ok.status, ok.body, ok.header("x-upstream")) == (200, b"host-1\n", "host-1")
        assert fleet.requests() == [200, 1]


def test_resets_and_black_holes() -> None:
    with Fleet(2, reset_rate=1.0) as fleet:
        conn = HTTPConnection("127.0.0.1", fleet.ports[0], timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        with pytest.raises((IncompleteRead, ConnectionResetError)):
            resp.read()
        conn.close()
        fleet.set(1, mode="blackhole", reset_rate=0)
        with socket.create_connection(("127.0.0.1", fleet.ports[1]), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(100)
