"""`meshpy run` serving the app's kubelet probes on its probe port, as `meshpy inject` sets it up: the
originals from the flag or MESHPY_APP_PROBES, checked against the demo app, on both event loops."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import ROOT, DemoUpstream, Proxy, free_port, http


def config(admin: int) -> str:
    return f"admin: 127.0.0.1:{admin}\nlisteners:\n  - name: web\n    address: 127.0.0.1:{free_port()}\n" \
           "    routes: [{match: /, direct: {status: 200}}]\n"


def probes(app: int) -> str:
    return json.dumps({
        "/app-health/web/livez": {"httpGet": {"path": "/hello", "port": app}, "timeoutSeconds": 2},
        "/app-health/web/readyz": {"httpGet": {"path": "/status/503", "port": app}},
        "/app-health/web/startupz": {"tcpSocket": {"port": app}},
        "/app-health/gone/livez": {"tcpSocket": {"port": free_port()}},
    })


@pytest.fixture
def proxy(demo: DemoUpstream, loop_name: str) -> Iterator[tuple[Proxy, int]]:
    admin, port = free_port(), free_port()
    running = Proxy(config(admin), admin, loop_name,
                    ["--app-probes", probes(demo.port), "--probe-listen", f"127.0.0.1:{port}"]).start()
    yield running, port
    assert running.stop() == 0, running.logs()


def test_the_probe_port_answers_for_the_app(proxy: tuple[Proxy, int]) -> None:
    running, port = proxy
    assert http(port, path="/app-health/web/livez").status == 200
    assert http(port, path="/app-health/web/readyz").status == 503  # the app's own answer
    assert http(port, path="/app-health/web/startupz").status == 200
    assert http(port, path="/app-health/gone/livez").status == 503
    assert http(port, path="/ready").status == 404  # the admin is not served here
    assert "app probe /app-health/gone/livez fails" in running.logs()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`meshpy run` that is expected to stop at once."""
    return subprocess.run([sys.executable, "-m", "meshpy", "run", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_the_variable_is_read_and_a_bad_one_stops_the_proxy() -> None:
    done = run("--xds", "127.0.0.1:1", "--node-id", "n", env={"MESHPY_APP_PROBES": '{"/healthz": {}}'})
    assert done.returncode == 2
    assert "MESHPY_APP_PROBES: /healthz: a probe's path starts with /app-health/" in done.stderr


def test_a_probe_port_in_use_stops_the_proxy(demo: DemoUpstream, tmp_path: Path) -> None:
    admin = free_port()
    path = tmp_path / "meshpy.yaml"
    path.write_text(config(admin))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("-c", str(path), "--app-probes", probes(demo.port), "--probe-listen", f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port} for the app's probes" in done.stdout
