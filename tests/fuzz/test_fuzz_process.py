"""The traffic corpora against a real meshpy process (`python -m meshpy run`, tests/kit.py), on uvloop
and on asyncio's loop: what the in-process harnesses cannot see is the process itself dying, or its
memory growing over many hostile connections. Each input goes over its own socket (split into writes
at `|SEG|`), the client half-closes and reads until the proxy closes (bounded); then the process must
still be running, answer a plain request on a new connection, and its RSS must not have grown more
than a few MB. A sample of the corpora (FUZZ_PROCESS_INPUTS, default 80 a kind) keeps this to seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest
from fuzz_http2 import PREFACE
from fuzzkit import corpus
from kit import DemoUpstream, Proxy, free_port, http

SAMPLE = int(os.environ.get("FUZZ_PROCESS_INPUTS", "80"))
SEG = b"|SEG|"


def _sample(name: str) -> list[bytes]:
    """Seeds only: the regress-* inputs are replayed in process, where known findings (known.py, each a
    strict xfail until fixed) are told apart; here one would fail the run with its traceback in the log."""
    inputs = [d for n, d in corpus(name) if not n.startswith("regress-")]
    step = max(1, len(inputs) // SAMPLE)
    return inputs[::step][:SAMPLE]


def _send(port: int, parts: list[bytes], deadline: float = 3.0) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=deadline) as s:
        with contextlib.suppress(OSError):
            for part in parts:
                s.sendall(part)
                time.sleep(0)
            s.shutdown(socket.SHUT_WR)
        end = time.monotonic() + deadline
        with contextlib.suppress(OSError):
            while time.monotonic() < end and s.recv(65536):
                pass


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_corpora_against_a_meshpy_process(loop: str, demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - address: 127.0.0.1:{port}
    upgrades: [websocket, connect]
    request_headers_timeout: 2s
    routes:
      - {{match: {{connect: true}}, cluster: demo}}
      - {{match: /, cluster: demo, timeout: 2s}}
clusters:
  demo: 127.0.0.1:{demo.port}
"""
    proxy = Proxy(config, admin, loop=loop).start()
    try:
        assert http(port, "GET", "/").status == 200
        rss0 = proxy.rss_kb()
        inputs = [[p for p in d.split(SEG) if p] for d in _sample("http1_request")]
        inputs += [[PREFACE, *(p for p in d.split(SEG) if p)] for d in _sample("http2")]
        for parts in inputs:
            _send(port, parts)
            assert proxy.alive(), f"meshpy died on {parts!r}:\n{proxy.logs()[-3000:]}"
        assert http(port, "GET", "/after").status == 200
        grown = proxy.rss_kb() - rss0
        assert grown < 20 * 1024, f"RSS grew {grown} KiB over {len(inputs)} hostile connections"
        logs = proxy.logs()
        assert "Traceback" not in logs and "Fatal error" not in logs, logs[-3000:]
    finally:
        proxy.stop()
