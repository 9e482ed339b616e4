"""HTTP filters written in Python (meshpy.filters), through a real meshpy process on both loops: the
shipped examples (config/filters), per-route on and off and configs of their own, a filter that holds
and resumes, one that raises (500, FE, counted, the proxy goes on), state that survives a reload with
an unchanged config, HTTP/2 clients, and configs refused with their path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import (
    ROOT,
    DemoUpstream,
    Envoy,
    Proxy,
    envoy_binary,
    envoy_http_bootstrap,
    eventually,
    free_port,
    http,
    needs_curl,
)

KEY = ("x-api-key", "k1")

CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    access_log: stdout
    filters:
      - name: api_key
        python: {{class: "config.filters.api_key:ApiKeyFilter", config: {{keys: [k1]}}}}
      - name: boom
        python: {{class: "tests.filter_kit:Boom"}}
      - name: later
        python: {{class: "tests.filter_kit:Later", config: {{delay: 0.2}}}}
        disabled: true
      - name: counter
        python: {{class: "tests.filter_kit:Counter", config: {{label: {label}}}}}
      - name: tricky
        python: {{class: "tests.filter_kit:Tricky"}}
        disabled: true
      - name: whoami
        python: {{class: "tests.filter_kit:WhoAmI"}}
        disabled: true
    routes:
      - match: /whoami
        filters: {{whoami: {{disabled: false}}}}
        cluster: demo
      - match: /tricky
        filters: {{tricky: {{disabled: false}}}}
        idle_timeout: 1s
        cluster: demo
      - match: /later
        filters: {{later: {{disabled: false}}}}
        cluster: demo
      - match: /open
        filters: {{api_key: {{disabled: true}}}}
        cluster: demo
      - match: /own
        filters: {{counter: {{config: {{label: own}}}}}}
        cluster: demo
      - match: /
        cluster: {cluster}
clusters:
  - name: demo
    endpoints: [127.0.0.1:{upstream}]
  - name: demo2
    endpoints: [127.0.0.1:{upstream}]
"""


def _config(admin: int, port: int, upstream: int, label: str = "a", cluster: str = "demo") -> str:
    return CONFIG.format(admin=admin, port=port, upstream=upstream, label=label, cluster=cluster)


@pytest.fixture(scope="module")
def proxy(loop_name: str, demo: DemoUpstream) -> Iterator[tuple[Proxy, int]]:
    admin, port = free_port(), free_port()
    p = Proxy(_config(admin, port, demo.port), admin, loop=loop_name).start()
    yield p, port
    assert p.stop() == 0


def test_the_api_key_example(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    refused = http(port, path="/echo")
    assert refused.status == 401 and refused.header("www-authenticate") == 'ApiKey header="x-api-key"'
    ok = http(port, path="/echo", headers=[KEY, ("x-request-id", "r1")])
    assert ok.status == 200
    seen = json.loads(ok.body)["headers"]
    assert "x-api-key" not in seen  # the key goes no further than the proxy
    assert http(port, path="/open/echo").status == 200  # off on this route


def test_response_hooks_and_a_route_config_of_its_own(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    first = http(port, path="/echo", headers=[KEY])
    second = http(port, path="/echo", headers=[KEY])
    assert int(second.header("x-seen") or 0) == int(first.header("x-seen") or 0) + 1
    assert second.header("x-label") == "a"
    own = http(port, path="/own/echo", headers=[KEY])
    assert own.header("x-label") == "own"  # its own instance, with its own count
    # The proxy's own answers pass the response hooks too (401 from the api key filter: none later).
    assert http(port, path="/open/echo").header("x-label") == "a"


def test_hold_then_resume_or_reply(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    t0 = time.monotonic()
    assert http(port, path="/later/echo", headers=[KEY]).status == 200
    assert time.monotonic() - t0 >= 0.18
    denied = http(port, path="/later/echo", headers=[KEY, ("x-deny", "1")])
    assert denied.status == 403 and denied.body == b"denied later\n"


@pytest.mark.parametrize("where", ["request", "response", "complete"])
def test_a_filter_that_raises(proxy: tuple[Proxy, int], where: str) -> None:
    p, port = proxy
    before = p.metric("meshpy_downstream_rq_filter_errors_total", listener="web")
    r = http(port, path="/echo", headers=[KEY, ("x-boom", where)])
    assert r.status == (200 if where == "complete" else 500)
    eventually(lambda: p.metric("meshpy_downstream_rq_filter_errors_total", listener="web") == before + 1,
               "the error counted")
    if where != "complete":
        eventually(lambda: '"response_flags": "FE"' in p.logs() or '"FE"' in p.logs(), "flag FE logged")
    assert http(port, path="/echo", headers=[KEY]).status == 200  # and the proxy goes on
    assert p.alive()


@pytest.mark.parametrize(("mode", "status"), [
    ("inject", 500),  # a CR/LF in a reply header's value: refused, never written
    ("rid", 500),  # x-request-id is the proxy's: a change would be lost, so it is refused
    ("reply-late", 500),  # reply() from on_response: refused, and no loop through the hooks again
    ("early-resume", 200),  # resume() before returning HOLD: goes on at once
])
def test_misuses_of_the_api(proxy: tuple[Proxy, int], mode: str, status: int) -> None:
    p, port = proxy
    r = http(port, path="/tricky/echo", headers=[KEY, ("x-mode", mode)])
    assert r.status == status and r.header("x-injected") is None, r
    assert p.alive() and http(port, path="/echo", headers=[KEY]).status == 200


def test_a_reply_with_its_own_content_type(proxy: tuple[Proxy, int]) -> None:
    r = http(proxy[1], path="/tricky/echo", headers=[KEY, ("x-mode", "ctype")])
    assert r.status == 200 and r.all("content-type") == ["application/json"] and r.body == b"{}"


def test_a_request_held_forever_ends_with_the_idle_timeout(proxy: tuple[Proxy, int]) -> None:
    t0 = time.monotonic()
    r = http(proxy[1], path="/tricky/echo", headers=[KEY, ("x-mode", "forever")])
    assert r.status in (408, 504) and 0.9 < time.monotonic() - t0 < 5


@needs_curl
def test_the_client_connection(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    r = http(port, path="/whoami", headers=[KEY])
    seen = json.loads(r.body)
    assert seen["peer"] == "127.0.0.1" and seen["peer_port"] > 0 and seen["local_port"] == port
    assert (seen["listener"], seen["direction"], seen["original_destination"], seen["protocol"]) == \
        ("web", "unspecified", None, "HTTP/1.1")
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "x-api-key: k1",
                          f"http://127.0.0.1:{port}/whoami"],
                         capture_output=True, text=True, timeout=10).stdout
    h2 = json.loads(out)
    assert (h2["local_port"], h2["protocol"], h2["peer"]) == (port, "HTTP/2", "127.0.0.1")


@needs_curl
def test_http2_clients_pass_the_same_filters(proxy: tuple[Proxy, int]) -> None:
    _, port = proxy
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                          "--http2-prior-knowledge", f"http://127.0.0.1:{port}/echo"],
                         capture_output=True, text=True, timeout=10).stdout
    assert out == "401 2"
    out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge", "-H",
                          "x-api-key: k1", f"http://127.0.0.1:{port}/echo"],
                         capture_output=True, text=True, timeout=10).stdout
    assert out.startswith("HTTP/2 200") and "x-label: a" in out


def test_state_survives_a_reload_with_an_unchanged_config(demo: DemoUpstream) -> None:
    admin, port = free_port(), free_port()
    p = Proxy(_config(admin, port, demo.port), admin).start()
    try:
        def loads() -> float:
            return p.metric("meshpy_config_loads_total", result="accepted")

        seen = [int(http(port, path="/echo", headers=[KEY]).header("x-seen") or 0) for _ in range(3)]
        assert seen == [1, 2, 3]
        n = loads()
        p.rewrite(_config(admin, port, demo.port, cluster="demo2"))  # the filters unchanged
        eventually(lambda: loads() > n, "the reload")
        assert http(port, path="/echo", headers=[KEY]).header("x-seen") == "4"
        n = loads()
        p.rewrite(_config(admin, port, demo.port, label="b", cluster="demo2"))  # a new config: a new one
        eventually(lambda: loads() > n, "the second reload")
        r = http(port, path="/echo", headers=[KEY])
        assert (r.header("x-seen"), r.header("x-label")) == ("1", "b")
    finally:
        p.stop()


BAD = [
    ('filters: [{python: {class: "no.such.module:X"}}]', "listeners[0].filters[0]", "No module named"),
    ('filters: [{python: {class: "tests.filter_kit:NotAFilter"}}]', "listeners[0].filters[0]", "HttpFilter"),
    ('filters: [{python: {class: "tests.filter_kit:Picky"}}]', "listeners[0].filters[0]",
     "`must` is required"),
    ('filters: [{python: {class: "not a path"}}]', "filters[0].python.class", "package.module:Class"),
    ("filters: [gzip]", "filters[0]", "unknown filter 'gzip'"),
]


@pytest.mark.parametrize(("lines", "where", "why"), BAD)
def test_bad_filter_configs_are_refused_with_their_path(tmp_path: Path, lines: str, where: str,
                                                       why: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"""
listeners:
  - name: web
    address: 127.0.0.1:{free_port()}
    {lines}
    routes: [{{match: /, cluster: c}}]
clusters: [{{name: c, endpoints: ["127.0.0.1:9"]}}]
""")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["validate", str(cfg)], ["run", "-c", str(cfg)]):
        out = subprocess.run([sys.executable, "-m", "meshpy", *args], capture_output=True, text=True,
                             timeout=30, cwd=ROOT, env=env)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and where in text and why in text, text


def test_a_route_naming_an_unknown_filter(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("""
listeners:
  - name: web
    address: 127.0.0.1:1
    routes: [{match: /, cluster: c, filters: {nosuch: {disabled: true}}}]
clusters: [{name: c, endpoints: ["127.0.0.1:9"]}]
""")
    out = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(cfg)], capture_output=True,
                         text=True, timeout=30, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 1 and "routes[0].filters.nosuch: no such filter on the listener" in out.stdout


def test_the_sample_config(demo: DemoUpstream) -> None:
    """config/filters/filters.yaml, its ports moved, in front of the demo upstream."""
    admin, port = free_port(), free_port()
    text = (ROOT / "config" / "filters" / "filters.yaml").read_text()
    for old, new in (("9901", admin), ("10000", port), ("18080", demo.port)):
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    p = Proxy(text, admin).start()
    try:
        assert http(port, path="/echo").status == 401
        r = http(port, path="/echo", headers=[("x-api-key", "demo-key"), ("x-canary", "always")])
        assert r.status == 200 and r.header("x-canary") == "1"
        assert json.loads(r.body)["headers"]["x-canary"] == "1"
        assert http(port, path="/public/x", headers=[("x-canary", "never")]).header("x-canary") == "0"
    finally:
        p.stop()


PYTHON_FILTER = """
- name: api_key
  is_optional: true
  typed_config:
    "@type": type.googleapis.com/xds.type.v3.TypedStruct
    type_url: type.googleapis.com/meshpy.filters.v1.Python
    value: {class: "config.filters.api_key:ApiKeyFilter", config: {keys: [k1]}}
"""
OFF_HERE = ('{ match: { prefix: /open }, route: { cluster: backend }, typed_per_filter_config: { api_key: {'
            ' "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true } } }, ')


def test_the_envoy_form(demo: DemoUpstream) -> None:
    """A Python filter in an Envoy bootstrap (an optional TypedStruct filter): meshpy runs it, turned
    off on one route by a FilterConfig; real Envoy, which has no such filter, passes over it."""
    admin, port = free_port(), free_port()
    bootstrap = envoy_http_bootstrap(admin, port, demo.port, filters=PYTHON_FILTER, routes=OFF_HERE)
    p = Proxy(bootstrap, admin).start()
    try:
        assert http(port, path="/echo").status == 401
        assert http(port, path="/echo", headers=[KEY]).status == 200
        assert http(port, path="/open/echo").status == 200
    finally:
        p.stop()
    if envoy_binary() is None:
        return
    admin, port = free_port(), free_port()
    bootstrap = envoy_http_bootstrap(admin, port, demo.port, filters=PYTHON_FILTER, routes=OFF_HERE)
    envoy = Envoy(bootstrap, admin).start()
    try:
        assert http(port, path="/echo").status == 200  # (no such filter in Envoy: passed over)
    finally:
        envoy.stop()
