"""A sidecar's lifecycle, with real processes: on SIGTERM the inbound listener drains while the
outbound one keeps serving its app as usual until the drain time ends; the preStop hook
(`meshpy drain --inbound-only`) and Envoy's /drain_listeners flags; `meshpy wait` as the postStart
hook and readiness probe; /quitquitquit ends the sidecar at once (a Job's last step)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from kit import ROOT, DemoUpstream, Proxy, eventually, free_port, http, refuses


def sidecar(admin: int, inbound: int, outbound: int, demo: int, drain: str = "2s") -> str:
    return f"""
admin: 127.0.0.1:{admin}
drain_time: {drain}
grace_time: 5s
listeners:
  - name: inbound
    address: 127.0.0.1:{inbound}
    direction: inbound
    cluster: app
  - name: outbound
    address: 127.0.0.1:{outbound}
    direction: outbound
    cluster: app
clusters:
  app: 127.0.0.1:{demo}
"""


def meshpy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "meshpy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def start(demo: DemoUpstream, drain: str = "2s") -> tuple[Proxy, int, int]:
    admin, inbound, outbound = free_port(), free_port(), free_port()
    return Proxy(sidecar(admin, inbound, outbound, demo.port, drain), admin).start(), inbound, outbound


def test_sigterm_drains_inbound_while_outbound_serves_on(demo: DemoUpstream) -> None:
    p, inbound, outbound = start(demo, drain="2s")
    try:
        assert http(inbound).header("connection") != "close"
        p.signal(signal.SIGTERM)
        eventually(lambda: p.admin("/ready")[0] == 503, "/ready turns 503 on SIGTERM")
        # Inbound: still accepting through the drain time, but asking every caller to go elsewhere.
        r_in = http(inbound)
        assert r_in.status == 200 and r_in.header("connection") == "close"
        # Outbound: the app's calls go on as before, connections kept alive.
        r_out = http(outbound)
        assert r_out.status == 200 and r_out.header("connection") != "close"
        eventually(lambda: refuses(inbound) and refuses(outbound), "both stop after the drain time", 6)
        assert p.proc is not None and p.proc.wait(10) == 0, p.logs()
    finally:
        p.stop()


def test_prestop_hook_drains_inbound_only(demo: DemoUpstream) -> None:
    p, inbound, outbound = start(demo, drain="30s")
    try:
        done = meshpy("drain", "--admin", f"127.0.0.1:{p.admin_port}", "--inbound-only")
        assert done.returncode == 0, done.stderr
        assert "inbound listeners draining" in done.stdout
        r = http(inbound)  # graceful: still accepting, with Connection: close
        assert r.status == 200 and r.header("connection") == "close"
        assert p.admin("/ready")[0] == 503
        r = http(outbound)
        assert r.status == 200 and r.header("connection") != "close"
        assert p.alive()
    finally:
        p.stop(timeout=40)


def test_drain_listeners_inboundonly_at_once(demo: DemoUpstream) -> None:
    """Envoy's flags: without `graceful` the chosen listeners stop accepting now."""
    p, inbound, outbound = start(demo, drain="30s")
    try:
        assert p.admin("/drain_listeners?inboundonly", method="POST") == (200, "OK\n")
        eventually(lambda: refuses(inbound), "the inbound listener stops at once", 3)
        assert http(outbound).status == 200
        assert p.alive()
    finally:
        p.stop(timeout=40)


def test_wait_returns_once_ready_and_fails_on_timeout(demo: DemoUpstream) -> None:
    admin, inbound, outbound = free_port(), free_port(), free_port()
    t0 = time.monotonic()
    nothing = meshpy("wait", "--admin", f"127.0.0.1:{admin}", "--timeout", "1")
    assert nothing.returncode == 1
    assert "not ready within 1s" in nothing.stderr and f"127.0.0.1:{admin}" in nothing.stderr
    assert time.monotonic() - t0 < 10
    # The hook starts before the proxy is up (kubelet runs it at once): it waits, then succeeds.
    waiter = subprocess.Popen([sys.executable, "-m", "meshpy", "wait", "--admin", f"127.0.0.1:{admin}",
                               "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    time.sleep(0.5)
    assert waiter.poll() is None, "returned before the proxy existed"
    p = Proxy(sidecar(admin, inbound, outbound, demo.port), admin).start()
    try:
        out, err = waiter.communicate(timeout=20)
        assert waiter.returncode == 0, err
        assert "ready (LIVE)" in out
        # A draining proxy is not ready: the readiness probe fails.
        assert p.admin("/drain_listeners?inboundonly&graceful", method="POST")[0] == 200
        probe = meshpy("wait", "--admin", f"127.0.0.1:{admin}", "--timeout", "0.5")
        assert probe.returncode == 1 and "503 DRAINING" in probe.stderr
    finally:
        p.stop()


def test_quitquitquit_ends_the_sidecar_for_a_job(demo: DemoUpstream) -> None:
    p, inbound, _ = start(demo, drain="30s")
    try:
        t0 = time.monotonic()
        assert p.admin("/quitquitquit", method="POST") == (200, "OK\n")
        assert p.proc is not None and p.proc.wait(10) == 0, p.logs()
        assert time.monotonic() - t0 < 5  # no 30 s drain time
        assert refuses(inbound)
    finally:
        p.stop()


def test_bad_admin_address_is_a_usage_error() -> None:
    for command in (["wait"], ["drain"]):
        done = meshpy(*command, "--admin", "nowhere")
        assert done.returncode == 2 and "expected HOST:PORT" in done.stderr
