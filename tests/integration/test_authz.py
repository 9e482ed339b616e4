"""Authorization through a real meshpy process on both loops: requests allowed and denied (403 `RBAC:
access denied`, never reaching the upstream), per-route replacement and `authz: off`, x-forwarded-for
with remote_ip, shadow rules counted and never enforced, the counters on the admin's
/stats/prometheus, the access log's flag, and HTTP/2 clients."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit import Proxy, RawUpstream, eventually, free_port, http, needs_curl, read_request_head

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    access_log: {log}
    use_remote_address: false        # trust x-forwarded-for: remote_ip reads it
    filters:
      - authz:
          action: allow
          policies:
            reads:
              from: [{{ip: 127.0.0.0/8}}]
              to: [{{methods: [GET, HEAD], paths: ["/api/*"]}}]
            mtls-only:
              from: [{{principal: "*"}}]     # a plaintext client is never authenticated
          shadow:
            action: deny
            policies:
              debug: {{when: [{{header: x-debug, values: ["*"]}}]}}
          stat_prefix: web_
    routes:
      - match: /open
        authz: off
        cluster: up
      - match: /lan
        authz: {{policies: {{lan: {{from: [{{remote_ip: 10.0.0.0/8}}]}}}}}}
        cluster: up
      - match: /strict
        authz: {{action: deny, policies: {{all: {{}}}}}}
        cluster: up
      - match: /
        cluster: up
clusters:
  up: 127.0.0.1:{upstream}
"""


class Counting:
    """An upstream that answers 200 and counts the requests that reached it."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, conn: socket.socket) -> None:
        while read_request_head(conn):
            with self.lock:
                self.count += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nup\n")


@dataclass
class World:
    proxy: Proxy
    port: int
    upstream: Counting
    log: Path


@pytest.fixture(scope="module")
def world(loop_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    counting = Counting()
    log = tmp_path_factory.mktemp("authz") / "access.log"
    with RawUpstream(counting) as up:
        admin, port = free_port(), free_port()
        proxy = Proxy(CONFIG.format(admin=admin, port=port, upstream=up.port, log=log), admin, loop=loop_name)
        proxy.start()
        try:
            yield World(proxy, port, counting, log)
        finally:
            rc = proxy.stop()
        assert rc == 0, proxy.logs()


def _reached(w: World, method: str, path: str, headers: list[tuple[str, str]] | None = None,
             body: bytes | None = None) -> tuple[int, bytes, bool, dict[str, str]]:
    before = w.upstream.count
    r = http(w.port, method=method, path=path, headers=headers, body=body)
    return r.status, r.body, w.upstream.count > before, dict(r.headers)


def test_allowed_and_denied(world: World) -> None:
    assert _reached(world, "GET", "/api/orders")[:3] == (200, b"up\n", True)
    status, body, reached, headers = _reached(world, "POST", "/api/orders", body=b"{}")
    assert (status, body, reached) == (403, b"RBAC: access denied", False)
    assert headers["content-type"] == "text/plain" and headers["content-length"] == "19"
    assert _reached(world, "GET", "/other")[:3] == (403, b"RBAC: access denied", False)
    # HEAD: the same answer without its body.
    r = http(world.port, method="HEAD", path="/other")
    assert (r.status, r.body, r.header("content-length")) == (403, b"", "19")


def test_routes_replace_or_turn_it_off(world: World) -> None:
    assert _reached(world, "DELETE", "/open/x")[:3] == (200, b"up\n", True)
    assert _reached(world, "GET", "/strict/api/x")[:3] == (403, b"RBAC: access denied", False)
    # The route's own rules replace the listener's: 127.0.0.1 is no longer enough, a LAN client is.
    assert _reached(world, "GET", "/lan")[0] == 403
    lan = [("x-forwarded-for", "10.1.2.3")]
    assert _reached(world, "GET", "/lan", headers=lan)[:3] == (200, b"up\n", True)
    assert _reached(world, "GET", "/lan", headers=[("x-forwarded-for", "10.1.2.3, 192.0.2.1")])[0] == 403


def _counts(w: World) -> dict[str, float]:
    # The enforced counts go under stat_prefix, the shadow ones under shadow_stat_prefix (unset here),
    # as Envoy 1.40 names them: http.web.rbac.web_.allowed, http.web.rbac.shadow_allowed.
    prefixes = {"allowed": "web_", "denied": "web_", "shadow_allowed": "", "shadow_denied": ""}
    return {n: w.proxy.metric(f"meshpy_rbac_{n}_total", listener="web", stat_prefix=p)
            for n, p in prefixes.items()}


def test_counters_and_shadow_rules(world: World) -> None:
    before = _counts(world)
    assert _reached(world, "GET", "/api/x", headers=[("x-debug", "1")])[0] == 200  # shadow-denied only
    assert _reached(world, "GET", "/api/x")[0] == 200
    assert _reached(world, "PUT", "/api/x")[0] == 403
    assert _reached(world, "PUT", "/open")[0] == 200  # off here: not counted at all
    after = _counts(world)
    assert {k: after[k] - before[k] for k in after} == {
        "allowed": 2, "denied": 1, "shadow_allowed": 2, "shadow_denied": 1}
    # A route's replacement counts under the listener's prefix, as in Envoy.
    mid = _counts(world)
    assert _reached(world, "GET", "/strict")[0] == 403
    assert _counts(world)["denied"] == mid["denied"] + 1
    text = world.proxy.admin("/stats/prometheus")[1]
    assert "# TYPE meshpy_rbac_denied_total counter" in text


def test_access_log_has_envoys_flag(world: World) -> None:
    """Envoy 1.40 sets no response flag on an RBAC denial: `-` (checked in test_rbac_envoy)."""
    assert _reached(world, "GET", "/logged-denial")[0] == 403

    def line() -> dict[str, object] | None:
        text = world.log.read_text() if world.log.exists() else ""
        found = [json.loads(x) for x in text.splitlines() if '"/logged-denial"' in x]
        return found[-1] if found else None

    eventually(lambda: line() is not None, "the denial logged")
    entry = line()
    assert entry is not None
    assert (entry["response_code"], entry["response_flags"], entry["upstream_host"]) == (403, "-", None)


@needs_curl
def test_http2_clients_get_the_same_answer(world: World) -> None:
    out = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-X", "POST", "-o", "-",
         "-w", " %{http_code} %{http_version}", f"http://127.0.0.1:{world.port}/api/x"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == "RBAC: access denied 403 2"
