"""A short, bounded wrk run through meshpy to the demo upstream, on uvloop and on the standard loop:
every request answered 2xx, no socket error. A smoke test, not a benchmark: no speed is asserted."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from kit import DemoUpstream, Proxy, free_port, http

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def test_wrk_hello(loop_name: str, demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    config = f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    cluster: demo
clusters:
  demo: 127.0.0.1:{demo.port}
"""
    p = Proxy(config, admin, loop=loop_name).start()
    try:
        assert http(port, path="/hello").status == 200  # warm: the pool has a connection
        out = subprocess.run(["wrk", "-t1", "-c10", "-d2s", "--timeout", "2s", f"http://127.0.0.1:{port}/hello"],
                             capture_output=True, text=True, timeout=30)
        report = out.stdout + out.stderr
        assert out.returncode == 0, report

        m = re.search(r"^\s*(\d+) requests in ([\d.]+)s", report, re.MULTILINE)
        assert m, report
        requests = int(m.group(1))
        assert requests > 0
        assert "Socket errors" not in report, report  # wrk prints the line only when there are some
        assert "Non-2xx or 3xx responses" not in report, report
        rps = re.search(r"^Requests/sec:\s+([\d.]+)", report, re.MULTILINE)
        assert rps and float(rps.group(1)) > 0, report

        # The proxy saw the same: at least as many 200s as wrk counted, nothing else.
        assert p.metric("meshpy_downstream_rq_total", listener="web", response_code="200") >= requests
        assert p.metric("meshpy_downstream_rq_total", listener="web") == \
            p.metric("meshpy_downstream_rq_total", listener="web", response_code="200")
        assert p.metric("meshpy_upstream_rq_total", cluster="demo", response_code_class="2xx") >= requests
        assert p.metric("meshpy_upstream_cx_connect_fail_total", cluster="demo") == 0
        assert p.alive() and p.admin("/ready")[0] == 200
    finally:
        assert p.stop() == 0, p.logs()
