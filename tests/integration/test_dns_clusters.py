"""DNS clusters end to end, on uvloop and on the standard loop (their getaddrinfo differ): STRICT_DNS
and LOGICAL_DNS endpoints resolved in the background, what `/clusters` shows, and a name that does not
resolve."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kit import ROOT, DemoUpstream, Proxy, free_port, http

BAD_NAME = "does-not-exist.invalid"


def localhost_ips() -> list[str]:
    """What `localhost` resolves to here, in resolver order (127.0.0.1, and ::1 on some hosts)."""
    ips: list[str] = []
    for *_, sockaddr in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM):
        ip = str(sockaddr[0])
        if ip not in ips:
            ips.append(ip)
    return ips


def label(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class Local:
    """One demo upstream named "local" on every address `localhost` resolves to, all on `port`."""

    port: int
    ips: list[str]


@pytest.fixture(scope="module")
def local() -> Iterator[Local]:
    ips = localhost_ips()
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "meshpy", "demo-upstream", "--listen", label(ip, port),
                               "--name", "local"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for ip in ips]
    try:
        for ip in ips:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((ip, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        yield Local(port, ips)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def config(admin: int, port: int, local: int, demo: int, demo_b: int) -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - {{match: /strict, cluster: strict}}
      - {{match: /logical, cluster: logical}}
      - {{match: /mixed, cluster: mixed}}
      - {{match: /nowhere, cluster: nowhere}}
      - {{match: /, cluster: demo}}
clusters:
  strict:
    type: strict_dns
    endpoints: [localhost:{local}]
    dns_refresh_rate: 0.5s
  logical:
    type: logical_dns
    endpoints: [localhost:{local}]
    dns_refresh_rate: 0.5s
  mixed:
    type: strict_dns
    endpoints: [localhost:{local}, 127.0.0.1:{demo_b}]
  nowhere:
    endpoints: [{BAD_NAME}:80]
    dns_refresh_rate: 0.5s
    connect_timeout: 1s
  demo: 127.0.0.1:{demo}
"""


@pytest.fixture(scope="module")
def proxy(loop_name: str, local: Local, demo: DemoUpstream,
          demo_b: DemoUpstream) -> Iterator[tuple[Proxy, int]]:
    admin, port = free_port(), free_port()
    p = Proxy(config(admin, port, local.port, demo.port, demo_b.port), admin, loop=loop_name).start()
    try:
        yield p, port
    finally:
        assert p.stop() == 0, p.logs()


def upstream_of(port: int, path: str) -> str:
    r = http(port, path=path)
    assert r.status == 200, (path, r.status, r.body)
    return str(json.loads(r.body)["upstream"])


def wait_serving(port: int, path: str, timeout: float = 5.0) -> None:
    """DNS clusters resolve in the background: the first answers may be 503 until they have."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http(port, path=path).status == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never served")


def clusters(p: Proxy) -> dict[str, dict[str, Any]]:
    status, body = p.admin("/clusters")
    assert status == 200
    return {c["name"]: c for c in json.loads(body)["clusters"]}


def test_strict_dns_resolves_and_serves(proxy: tuple[Proxy, int], local: Local) -> None:
    p, port = proxy
    wait_serving(port, "/strict")
    assert {upstream_of(port, f"/strict/{i}") for i in range(6)} == {"local"}
    c = clusters(p)["strict"]
    assert c["type"] == "strict_dns"
    assert [e["address"] for e in c["endpoints"]] == [label(ip, local.port) for ip in local.ips]
    assert {e["hostname"] for e in c["endpoints"]} == {"localhost"}
    assert all(e["health"] == "healthy" for e in c["endpoints"])


def test_dns_refresh_keeps_hosts_and_their_pools(proxy: tuple[Proxy, int], local: Local) -> None:
    p, port = proxy
    wait_serving(port, "/strict")
    for i in range(len(local.ips)):  # one pooled connection per resolved host
        upstream_of(port, f"/strict/warm{i}")
    opened = p.metric("meshpy_upstream_cx_total", cluster="strict")
    assert opened >= len(local.ips)
    before = clusters(p)["strict"]["endpoints"]
    time.sleep(1.2)  # at least two re-resolutions at dns_refresh_rate 0.5s
    after = clusters(p)["strict"]["endpoints"]
    assert [e["address"] for e in after] == [e["address"] for e in before]
    assert all(e["idle_connections"] >= 1 for e in after), after
    for i in range(len(local.ips)):
        upstream_of(port, f"/strict/again{i}")
    # The warm connections were reused: no re-resolution replaced a host or its pool.
    assert p.metric("meshpy_upstream_cx_total", cluster="strict") == opened


def test_logical_dns_uses_the_first_address(proxy: tuple[Proxy, int], local: Local) -> None:
    p, port = proxy
    wait_serving(port, "/logical")
    assert {upstream_of(port, f"/logical/{i}") for i in range(4)} == {"local"}
    c = clusters(p)["logical"]
    assert c["type"] == "logical_dns"
    (ep,) = c["endpoints"]
    assert ep["address"] == label(local.ips[0], local.port)
    assert ep["hostname"] == "localhost"


def test_strict_dns_every_endpoint_is_used(proxy: tuple[Proxy, int], local: Local,
                                           demo_b: DemoUpstream) -> None:
    """Every address of every endpoint is a host: `localhost` (one or two addresses) plus an IP."""
    p, port = proxy
    wait_serving(port, "/mixed")
    addresses = [e["address"] for e in clusters(p)["mixed"]["endpoints"]]
    assert addresses == [label(ip, local.port) for ip in local.ips] + [f"127.0.0.1:{demo_b.port}"]
    seen = [upstream_of(port, f"/mixed/{i}") for i in range(3 * len(addresses))]
    assert seen.count("demo-b") == 3 and seen.count("local") == 3 * len(local.ips)  # round robin


def test_unresolvable_name_gives_503_without_blocking_others(proxy: tuple[Proxy, int]) -> None:
    p, port = proxy
    for _ in range(3):
        t0 = time.monotonic()
        r = http(port, path="/nowhere")
        assert r.status == 503 and r.body == b"no healthy upstream"
        assert time.monotonic() - t0 < 0.5  # no lookup on the request path, no connect attempt
        # Other routes, static and DNS, are served in between.
        assert upstream_of(port, "/static") == "demo"
        wait_serving(port, "/strict")
    assert clusters(p)["nowhere"]["endpoints"] == []
    assert clusters(p)["nowhere"]["type"] == "strict_dns"
    assert p.metric("meshpy_downstream_rq_total", listener="web", response_code="503") >= 3
    assert p.metric("meshpy_upstream_cx_connect_fail_total", cluster="nowhere") == 0
    assert "cluster nowhere: DNS resolution failed" in p.logs()
    assert p.admin("/ready")[0] == 200


def test_many_requests_while_a_name_fails(proxy: tuple[Proxy, int]) -> None:
    """The failing lookups repeat every 0.5 s in the background; the proxy never stalls on them."""
    _, port = proxy
    wait_serving(port, "/strict")
    deadline = time.monotonic() + 1.2
    n = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            assert http(port, path="/strict/k", sock=s).status == 200
            assert http(port, path="/nowhere", sock=s).status == 503
            assert time.monotonic() - t0 < 0.5
            n += 1
    assert n > 10
