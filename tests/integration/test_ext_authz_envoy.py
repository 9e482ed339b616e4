"""Envoy's ext_authz filter, HTTP and gRPC services: the same bootstrap run by real Envoy and by meshpy,
the same requests, and what the client, the upstream and the authorization service saw compared."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ext_authz_world import GrpcAuthz, HttpAuthz
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, http

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="needs envoy")

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# What the client's answer is compared on (the rest is each proxy's own: date, server, ...).
ANSWER_HEADERS = ("www-authenticate", "x-reason", "x-extra", "x-current-user", "x-dropped", "content-type",
                  "x-envoy-auth-failure-mode-allowed")
# What the upstream saw, compared on.
UPSTREAM_HEADERS = ("x-current-user", "x-secret", "x-tag", "x-extra", "x-dropped", "authorization",
                    "x-envoy-auth-failure-mode-allowed")


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoUpstream]:
    d = DemoUpstream(free_port()).start()
    yield d
    d.stop()


def cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        out["http2_protocol_options"] = {}
    return out


def bootstrap(admin: int, port: int, upstream: int, authz_port: int, authz: dict[str, Any],
              grpc: bool) -> str:
    routes = [
        {"match": {"prefix": "/public"}, "route": {"cluster": "backend"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE, "disabled": True}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    hcm = {"@type": HCM, "stat_prefix": "web",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.ext_authz",
                             "typed_config": {"@type": EXT_AUTHZ, **authz}},
                            {"name": "router", "typed_config": {"@type": ROUTER}}]}
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "web",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}],
            "clusters": [cluster("backend", upstream), cluster("authz", authz_port, http2=grpc)]}})


def run(config: str, admin: int, port: int, envoy: bool,
        requests: list[tuple[str, str, list[tuple[str, str]], bytes | None]]) -> list[dict[str, Any]]:
    proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
    try:
        out = []
        for method, path, headers, body in requests:
            r = http(port, method=method, path=path, headers=headers, body=body)
            seen: dict[str, str] = {}
            if r.status == 200 and r.body.startswith(b"{"):
                seen = {k: v for k, v in json.loads(r.body)["headers"].items() if k in UPSTREAM_HEADERS}
            out.append({"request": path, "status": r.status,
                        "headers": {k: r.header(k) for k in ANSWER_HEADERS if r.header(k) is not None},
                        "body": r.body if not r.body.startswith(b"{") else b"<upstream>",
                        "upstream": seen})
        return out
    finally:
        proc.stop()


REQUESTS: list[tuple[str, str, list[tuple[str, str]], bytes | None]] = [
    ("GET", "/ok?q=1", [("authorization", "Bearer t"), ("x-allowed", "yes"), ("x-other", "no"),
                        ("x-secret", "s3"), ("x-tag", "first")], None),
    ("POST", "/ok/post", [("x-allowed", "yes"), ("content-type", "text/plain")], b"hello body"),
    ("GET", "/deny/me", [("authorization", "Bearer bad")], None),
    ("GET", "/fail", [], None),
    ("GET", "/slow", [], None),
    ("GET", "/public/page", [("x-secret", "kept")], None),
]


Requests = list[tuple[str, str, list[tuple[str, str]], bytes | None]]


def compare(authz: dict[str, Any], grpc: bool, demo: DemoUpstream, service: HttpAuthz | GrpcAuthz,
            requests: Requests = REQUESTS) -> tuple[Any, Any]:
    results, asked = [], []
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        config = bootstrap(admin, port, demo.port, service.port, authz, grpc)
        service.seen.clear()
        results.append(run(config, admin, port, envoy, requests))
        asked.append(list(service.seen))
    for theirs, ours in zip(*results, strict=True):
        assert ours == theirs, f"meshpy answered {ours}\nEnvoy answered  {theirs}"
    return results, asked


@pytest.fixture(scope="module")
def http_authz() -> Iterator[HttpAuthz]:
    s = HttpAuthz(free_port()).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def grpc_authz() -> Iterator[GrpcAuthz]:
    s = GrpcAuthz(free_port()).start()
    yield s
    s.stop()


HTTP_SERVICE = {"http_service": {
    "server_uri": {"uri": "authz", "cluster": "authz", "timeout": "0.25s"}, "path_prefix": "/check",
    "authorization_request": {"allowed_headers": {"patterns": [{"exact": "x-allowed"}]},
                              "headers_to_add": [{"key": "x-from", "value": "proxy"}]},
    "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "x-current-user"}]},
                               "allowed_client_headers": {"patterns": [{"exact": "x-reason"}]},
                               "allowed_client_headers_on_success": {"patterns": [{"exact": "x-extra"}]}}}}


def test_http_service_as_envoy(demo: DemoUpstream, http_authz: HttpAuthz) -> None:
    _results, asked = compare(HTTP_SERVICE, False, demo, http_authz)
    # What the service was asked: the same requests, with the same headers (less the per-hop ones).
    volatile = {"x-request-id"}

    def view(seen: list[dict[str, Any]]) -> list[tuple[str, str, list[str], bytes]]:
        return [(s["method"], s["path"], sorted(set(s["headers"]) - volatile), s["body"]) for s in seen]

    assert view(asked[1]) == view(asked[0])
    assert asked[1][0]["headers"]["x-allowed"] == "yes" and "x-other" not in asked[1][0]["headers"]
    assert asked[1][0]["path"] == "/check/ok?q=1" and asked[1][0]["headers"]["x-from"] == "proxy"
    assert asked[1][0]["headers"]["x-envoy-expected-rq-timeout-ms"] == "250"


def test_http_service_defaults_as_envoy(demo: DemoUpstream, http_authz: HttpAuthz) -> None:
    """No allowed lists: the denial carries all the service's headers, nothing goes upstream; and
    failure_mode_allow lets a failed check through, marked."""
    authz = {"http_service": {"server_uri": {"uri": "authz", "cluster": "authz", "timeout": "0.25s"}},
             "failure_mode_allow": True, "failure_mode_allow_header_add": True}
    results, _ = compare(authz, False, demo, http_authz)
    by_path = {r["request"]: r for r in results[1]}
    assert by_path["/fail"]["status"] == 200
    assert by_path["/fail"]["upstream"].get("x-envoy-auth-failure-mode-allowed") == "true"
    assert by_path["/deny/me"]["headers"].get("www-authenticate") == "Bearer"


def test_grpc_service_as_envoy(demo: DemoUpstream, grpc_authz: GrpcAuthz) -> None:
    authz = {"grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.25s"},
             "transport_api_version": "V3", "status_on_error": {"code": 503},
             "with_request_body": {"max_request_bytes": 64, "allow_partial_message": True}}
    results, asked = compare(authz, True, demo, grpc_authz)
    by_path = {r["request"]: r for r in results[1]}
    assert by_path["/ok?q=1"]["upstream"] == {"x-current-user": "alice", "x-tag": "first,added",
                                             "authorization": "Bearer t"} or \
        by_path["/ok?q=1"]["upstream"]["x-current-user"] == "alice"
    assert by_path["/fail"]["status"] == 503 and by_path["/deny/me"]["status"] == 401

    def view(seen: list[Any]) -> list[tuple[str, str, str, list[str], bytes]]:
        out = []
        for s in seen:
            h = s.attributes.request.http
            out.append((h.method, h.path, h.host, sorted(set(h.headers) - {"x-request-id"}), h.body))
        return out

    assert view(asked[1]) == view(asked[0])
    ours = asked[1][0].attributes
    assert ours.source.address.socket_address.address == "127.0.0.1"
    assert ours.request.http.protocol == "HTTP/1.1" and ours.request.http.headers["x-allowed"] == "yes"


def test_google_grpc_on_a_unix_socket_as_envoy(demo: DemoUpstream) -> None:
    """OPA's sidecar shape: google_grpc with a unix: target, the body sent as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = str(Path(tmp) / "authz.sock")
        service = GrpcAuthz(free_port(), unix=sock).start()  # (the port: the unused cluster's)
        try:
            authz = {"grpc_service": {"google_grpc": {"target_uri": f"unix://{sock}", "stat_prefix": "authz"},
                                      "timeout": "0.5s"},
                     "with_request_body": {"max_request_bytes": 4, "allow_partial_message": True,
                                           "pack_as_bytes": True}}
            requests: Requests = [REQUESTS[0], REQUESTS[1], REQUESTS[2]]
            results, asked = compare(authz, True, demo, service, requests)
        finally:
            service.stop()
    assert [r["status"] for r in results[1]] == [200, 200, 401]
    posted = [s.attributes.request.http for s in asked[1] if s.attributes.request.http.method == "POST"]
    assert posted[0].raw_body == b"hell" and posted[0].headers["x-envoy-auth-partial-body"] == "true"
    assert [s.attributes.request.http.raw_body for s in asked[0]] == \
        [s.attributes.request.http.raw_body for s in asked[1]]
