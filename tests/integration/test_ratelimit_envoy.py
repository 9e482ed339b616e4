"""Envoy's global rate limit filter against real Envoy 1.40: a rate limit service on grpcio
(envoy.service.ratelimit.v3) records the calls it gets and answers by the descriptors (an `answer`
entry: ok, over, error, slow, unknown, each); Envoy and meshpy run the same bootstrap and get the same
requests, and what the client got (status, headers, body), what the upstream saw and the descriptors
the service was asked about are compared request by request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, http

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="needs envoy")

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.ratelimit"
# The client's answer, compared on these (the rest is each proxy's own: date, server, ...).
ANSWER_HEADERS = ("x-envoy-ratelimited", "x-rl-service", "x-ratelimit-limit", "x-ratelimit-remaining",
                  "x-ratelimit-reset", "retry-after", "content-type", "x-from-filter")
# What the upstream saw, compared on these.
UPSTREAM_HEADERS = ("x-answer", "x-rl-upstream", "x-tag")
Response = rls_pb2.RateLimitResponse
Request = tuple[str, str, list[tuple[str, str]], bytes | None]


def _status(code: int, limit: int, unit: int, remaining: int, reset: int, name: str = "") -> Any:
    s = Response.DescriptorStatus(code=code, limit_remaining=remaining)
    s.current_limit.requests_per_unit, s.current_limit.unit, s.current_limit.name = limit, unit, name
    s.duration_until_reset.seconds = reset
    return s


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """Answers by the value of a descriptor entry `answer`; records each call."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[rls_pb2.RateLimitRequest] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{port}")

    def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.seen.append(request)
        answer = next((e.value for d in request.descriptors for e in d.entries if e.key == "answer"), "")
        if answer == "slow":
            time.sleep(0.6)  # past the filters' timeout here
        if answer == "error":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        out = Response(overall_code=Response.OK)
        if answer == "over":
            out.overall_code = Response.OVER_LIMIT
            out.statuses.append(_status(Response.OVER_LIMIT, 10, Response.RateLimit.MINUTE, 0, 30, "per-ip"))
            out.statuses.append(_status(Response.OK, 1000, Response.RateLimit.HOUR, 7, 3000))
            out.response_headers_to_add.append(base_pb2.HeaderValue(key="x-rl-service", value="said-over"))
            out.response_headers_to_add.append(base_pb2.HeaderValue(key="content-type",
                                                                    value="application/json"))
            out.request_headers_to_add.append(base_pb2.HeaderValue(key="x-rl-upstream", value="shadowed"))
            out.raw_body = b'{"slow": "down"}'
        elif answer == "unknown":
            out.overall_code = Response.UNKNOWN
        elif answer == "ok":
            out.statuses.append(_status(Response.OK, 100, Response.RateLimit.HOUR, 42, 100))
            out.response_headers_to_add.append(base_pb2.HeaderValue(key="x-rl-service", value="said-ok"))
            out.request_headers_to_add.append(base_pb2.HeaderValue(key="x-rl-upstream", value="added"))
            out.request_headers_to_add.append(base_pb2.HeaderValue(key="x-tag", value="from-rls"))
        elif answer == "each":  # a status per descriptor, one with a unit multiplier, one a week
            for i, _ in enumerate(request.descriptors):
                unit = Response.RateLimit.WEEK if i == 2 else Response.RateLimit.MINUTE
                s = _status(Response.OK, 100 + i, unit, 40 + i, 10 + i, f"d{i}")
                if i == 1:
                    s.current_limit.unit_multiplier.value = 5
                out.statuses.append(s)
        return out

    def calls(self) -> list[list[list[Any]]]:
        """The calls since the last look: each call's domain and descriptors (entries, override, hits)."""
        with self.lock:
            seen, self.seen = self.seen, []
        return [[q.domain, [_descriptor(d) for d in q.descriptors]] for q in seen]

    def quiet(self) -> None:
        """Wait until no call has come for a while (a stream-done call follows the answer)."""
        count, since = -1, time.monotonic()
        while time.monotonic() - since < 1.0:
            with self.lock:
                now = len(self.seen)
            if now != count:
                count, since = now, time.monotonic()
            elif time.monotonic() - since > 0.12:
                return
            time.sleep(0.02)


def _descriptor(d: Any) -> list[Any]:
    out: list[Any] = [(e.key, e.value) for e in d.entries]
    if d.HasField("limit"):
        out.append(("limit", d.limit.requests_per_unit, d.limit.unit))
    if d.HasField("hits_addend"):
        out.append(("hits", d.hits_addend.value))
    return out


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoUpstream]:
    d = DemoUpstream(free_port()).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def service() -> Iterator[RateLimitService]:
    s = RateLimitService(free_port())
    s.server.start()
    yield s
    s.server.stop(0)


def cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        out["http2_protocol_options"] = {}
    return out


def rate_limit_filter(name: str = NAME, **config: Any) -> dict[str, Any]:
    """The filter, with a timeout that a loaded test machine meets (Envoy's default is 20 ms)."""
    service = {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}, "transport_api_version": "V3"}
    return {"name": name, "typed_config": {"@type": RL, "domain": "web", "rate_limit_service": service,
                                           "timeout": "0.3s", **config}}


def route(prefix: str, per_route: dict[str, Any] | None = None, metadata: Any = None,
          **action: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"match": {"prefix": prefix}, "route": {"cluster": "backend", **action}}
    if per_route is not None:
        out["typed_per_filter_config"] = {NAME: {"@type": PER_ROUTE, **per_route}}
    if metadata is not None:
        out["metadata"] = {"filter_metadata": metadata}
    return out


def bootstrap(admin: int, port: int, demo: int, service: int, filters: list[dict[str, Any]],
              vhost: dict[str, Any], hcm: dict[str, Any] | None = None,
              backend_http2: bool = False) -> str:
    config = {"@type": HCM, "stat_prefix": "web",
              "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], **vhost}]},
              "http_filters": [*filters, {"name": "router", "typed_config": {"@type": ROUTER}}],
              **(hcm or {})}
    return json.dumps({
        "node": {"id": "n1", "cluster": "proxy"},  # (source_cluster's value)
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "web",
                           "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "hcm", "typed_config": config}]}]}],
            "clusters": [cluster("backend", demo, backend_http2),
                         cluster("ratelimit", service, http2=True)]}})


def run(config: str, admin: int, port: int, envoy: bool, requests: list[Request],
        service: RateLimitService) -> list[dict[str, Any]]:
    proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
    try:
        out = []
        for method, path, headers, body in requests:
            service.quiet()
            service.calls()
            r = http(port, method=method, path=path, headers=headers, body=body)
            service.quiet()
            upstream: dict[str, str] = {}
            if r.body.startswith(b'{"upstream"'):
                seen = json.loads(r.body)["headers"]
                upstream = {k: seen[k] for k in UPSTREAM_HEADERS if k in seen}
            out.append({"request": path, "status": r.status,
                        "headers": {k: r.all(k) for k in ANSWER_HEADERS if r.all(k)},
                        "body": b"<upstream>" if upstream or r.body.startswith(b'{"upstream"') else r.body,
                        "upstream": upstream, "calls": service.calls()})
        return out
    finally:
        proc.stop()


def compare(demo: DemoUpstream, service: RateLimitService, filters: list[dict[str, Any]],
            vhost: dict[str, Any], requests: list[Request], **kw: Any) -> list[dict[str, Any]]:
    """Envoy's answers and meshpy's, request by request; meshpy's returned, once they agree."""
    results = []
    for envoy in (True, False):
        admin, port = free_port(), free_port()
        config = bootstrap(admin, port, demo.port, service.port, filters, vhost, **kw)
        results.append(run(config, admin, port, envoy, requests, service))
    for theirs, ours in zip(*results, strict=True):
        assert ours == theirs, f"meshpy: {ours}\nEnvoy:  {theirs}"
    return results[1]


def get(path: str, *headers: tuple[str, str]) -> Request:
    return ("GET", path, list(headers), None)


ANSWER = {"request_headers": {"header_name": "x-answer", "descriptor_key": "answer"}}


def by_request(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["request"]: r for r in results}


def test_the_actions_make_the_descriptors_envoy_makes(demo: DemoUpstream, service: RateLimitService) -> None:
    actions = [
        {"actions": [ANSWER]},
        {"actions": [{"source_cluster": {}}, {"destination_cluster": {}}, {"remote_address": {}}]},
        {"actions": [{"generic_key": {"descriptor_value": "g%REQ(x)%"}},
                     {"header_value_match": {"descriptor_value": "hv", "headers": [
                         {"name": "x-m", "string_match": {"exact": "1"}}]}}]},
        {"actions": [{"header_value_match": {"descriptor_value": "absent", "expect_match": False,
                                             "headers": [{"name": "x-m", "present_match": True}]}}]},
        {"actions": [{"query_parameters": {"query_parameter_name": "q", "descriptor_key": "qk"}}]},
        {"actions": [{"query_parameter_value_match": {"descriptor_value": "qm", "query_parameters": [
            {"name": "q", "string_match": {"exact": "a b"}}]}}]},
        {"actions": [{"masked_remote_address": {"v4_prefix_mask_len": 24}}]},
        {"actions": [{"remote_address_match": {"descriptor_value": "loopback", "address_matcher": {
            "ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}}}]},
        {"actions": [{"request_headers": {"header_name": ":path", "descriptor_key": "p"}},
                     {"request_headers": {"header_name": "host", "descriptor_key": "h"}},
                     {"request_headers": {"header_name": ":method", "descriptor_key": "m"}},
                     {"request_headers": {"header_name": "x-forwarded-proto", "descriptor_key": "xfp"}},
                     {"request_headers": {"header_name": "x-multi", "descriptor_key": "mu",
                                          "skip_if_absent": True}},
                     {"request_headers": {"header_name": "x-none", "descriptor_key": "n",
                                          "skip_if_absent": True}}]},
        {"actions": [{"metadata": {"descriptor_key": "m", "source": "ROUTE_ENTRY",
                                   "metadata_key": {"key": "ns", "path": [{"key": "k"}]}}}]},
        {"actions": [{"metadata": {"descriptor_key": "n", "source": "ROUTE_ENTRY", "default_value": "d",
                                   "metadata_key": {"key": "ns", "path": [{"key": "number"}]}}}]},
        {"actions": [{"metadata": {"descriptor_key": "dyn", "default_value": "none",
                                   "metadata_key": {"key": "ns", "path": [{"key": "k"}]}}}]},
        {"actions": [{"metadata": {"descriptor_key": "dyn", "skip_if_absent": True,
                                   "metadata_key": {"key": "ns", "path": [{"key": "k"}]}}},
                     {"generic_key": {"descriptor_value": "after-skip"}}]},
        {"actions": [{"metadata": {"descriptor_key": "dyn",
                                   "metadata_key": {"key": "ns", "path": [{"key": "k"}]}}},
                     {"generic_key": {"descriptor_value": "never"}}]},
        {"actions": [{"generic_key": {"descriptor_value": "fixed", "descriptor_key": "limited"}}],
         "limit": {"rate_limit": {"requests_per_unit": 7, "unit": "MINUTE"}}},
        {"actions": [{"generic_key": {"descriptor_value": "unresolved"}}],
         "limit": {"dynamic_metadata": {"metadata_key": {"key": "ns", "path": [{"key": "k"}]}}}},
        {"actions": [{"generic_key": {"descriptor_value": "route-hits"}}], "hits_addend": {"number": 3}},
        {"actions": [{"extension": {"name": "from-header", "typed_config": {
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
            "header_name": "x-m"}}}]},
        {"stage": 1, "actions": [{"generic_key": {"descriptor_value": "another stage"}}]},
    ]
    vhost = {"routes": [route("/r", rate_limits=actions, metadata={"ns": {"k": "from-route", "number": 5}}),
                        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200}}]}
    results = compare(demo, service, [rate_limit_filter()], vhost, [
        get("/r/a?q=a%20b&q=second", ("x-answer", "ok"), ("x-m", "1"), ("x-multi", "one"),
            ("x-multi", "two")),
        get("/r/b?q=a+b", ("x-forwarded-for", "10.1.2.3")),
        get("/r/c"),
        get("/direct", ("x-answer", "over")),  # no route action: not limited
    ])
    first = results[0]["calls"][0][1]
    assert [("qk", "a b")] in first and [("source_cluster", "proxy"), ("destination_cluster", "backend"),
                                         ("remote_address", "127.0.0.1")] in first
    assert [("limited", "fixed"), ("limit", 7, 2)] in first and [("m", "from-route")] in first
    second = results[1]["calls"][0][1]  # (no x-answer: that descriptor is not made)
    assert [("source_cluster", "proxy"), ("destination_cluster", "backend"), ("remote_address", "10.1.2.3")] \
        in second  # trusted from x-forwarded-for
    assert results[3]["calls"] == []


def test_answers_over_the_limit_errors_and_timeouts_as_envoy(demo: DemoUpstream,
                                                            service: RateLimitService) -> None:
    vhost = {"routes": [route("/", rate_limits=[{"actions": [ANSWER]}])]}
    requests = [get("/ok", ("x-answer", "ok")), get("/over", ("x-answer", "over")),
                get("/error", ("x-answer", "error")), get("/slow", ("x-answer", "slow")),
                get("/unknown", ("x-answer", "unknown")), get("/nothing"),
                ("POST", "/over/post", [("x-answer", "over"), ("content-type", "text/plain")], b"body" * 100),
                ("HEAD", "/over/head", [("x-answer", "over")], None)]
    results = by_request(compare(demo, service, [rate_limit_filter(
        enable_x_ratelimit_headers="DRAFT_VERSION_03", enable_retry_after_header=True)], vhost, requests))
    assert results["/over"]["status"] == 429
    assert results["/over"]["headers"]["x-envoy-ratelimited"] == ["true"]
    assert results["/over"]["body"] == b'{"slow": "down"}'
    assert results["/ok"]["upstream"] == {"x-answer": "ok", "x-rl-upstream": "added", "x-tag": "from-rls"}
    assert results["/error"]["status"] == results["/slow"]["status"] == 200  # failing open
    # Denying on errors, with statuses and headers of the config's:
    config: dict[str, Any] = {"failure_mode_deny": True, "status_on_error": {"code": 503},
              "rate_limited_status": {"code": 403},
              "response_headers_to_add": [{"header": {"key": "x-from-filter", "value": "yes"}},
                                          {"header": {"key": "x-rl-service", "value": "mine"},
                                           "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}
    results = by_request(compare(demo, service, [rate_limit_filter(**config)], vhost, requests[:4]))
    assert results["/error"]["status"] == results["/slow"]["status"] == 503
    assert results["/over"]["status"] == 403 and results["/over"]["headers"]["x-from-filter"] == ["yes"]
    quiet: dict[str, Any] = {"rate_limited_status": {"code": 302}, "disable_x_envoy_ratelimited_header": True}
    (over,) = compare(demo, service, [rate_limit_filter(**quiet)], vhost, requests[1:2])
    assert over["status"] == 429 and "x-envoy-ratelimited" not in over["headers"]


def test_which_rate_limits_apply_as_envoy(demo: DemoUpstream, service: RateLimitService) -> None:
    own = {"domain": "other", "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "own"}}]}]}
    vhost = {"rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "vh"}}]}], "routes": [
        route("/include", rate_limits=[{"actions": [ANSWER]}], include_vh_rate_limits=True),
        route("/per-include", rate_limits=[{"actions": [ANSWER]}], per_route={"vh_rate_limits": "INCLUDE"}),
        route("/per-ignore", per_route={"vh_rate_limits": "IGNORE", "override_option": "INCLUDE_POLICY"}),
        route("/own", per_route=own, rate_limits=[{"actions": [ANSWER]}]),
        route("/override", rate_limits=[{"actions": [ANSWER]}]),
        route("/other-stage", rate_limits=[{"stage": 1, "actions": [ANSWER]}]),
        route("/disabled-key", rate_limits=[{"disable_key": "k", "actions": [ANSWER]}]),
        route("/")]}
    paths = ("/include", "/per-include", "/per-ignore", "/own", "/override", "/other-stage", "/disabled-key",
             "/elsewhere")
    requests = [get(p, ("x-answer", "ok")) for p in paths]
    results = by_request(compare(demo, service, [rate_limit_filter()], vhost, requests))
    assert results["/own"]["calls"] == [["other", [[("generic_key", "own")]]]]
    assert results["/other-stage"]["calls"] == [] and results["/per-ignore"]["calls"] == []
    # The filter's own rate limits win over the routes'; a second filter takes another stage and domain;
    # an `internal` filter takes no request (none is internal without internal_address_config).
    own_limits = [{"actions": [{"generic_key": {"descriptor_value": "filter"}}]}]
    filters = [rate_limit_filter(rate_limits=own_limits),
               rate_limit_filter(name="second", stage=1, domain="two"),
               rate_limit_filter(name="internal", request_type="internal")]
    results = by_request(compare(demo, service, filters, vhost, [requests[5], requests[4], requests[3]]))
    assert results["/other-stage"]["calls"] == [["web", [[("generic_key", "filter")]]],
                                                ["two", [[("answer", "ok")]]]]


def test_shadow_mode_disabled_and_no_timeout_as_envoy(demo: DemoUpstream, service: RateLimitService) -> None:
    vhost = {"routes": [route("/", rate_limits=[{"actions": [ANSWER]}])]}
    over, ok = get("/over", ("x-answer", "over")), get("/ok", ("x-answer", "ok"))
    shadow: dict[str, Any] = {"filter_enforced": {"default_value": {"numerator": 0}},
              "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}
    (result, _) = compare(demo, service, [rate_limit_filter(**shadow)], vhost, [over, ok])
    assert result["status"] == 200 and result["headers"]["x-envoy-ratelimited"] == ["true"]
    assert result["headers"]["content-type"] == ["application/json,application/json"]  # joined, as Envoy
    off: dict[str, Any] = {"filter_enabled": {"default_value": {"numerator": 0}}}
    (result,) = compare(demo, service, [rate_limit_filter(**off)], vhost, [over])
    assert result["calls"] == [] and result["status"] == 200
    slow = get("/slow", ("x-answer", "slow"))
    (result,) = compare(demo, service, [rate_limit_filter(timeout="0s")], vhost, [slow])
    assert result["status"] == 200 and result["calls"]


def test_hits_addend_and_stream_done_calls_as_envoy(demo: DemoUpstream, service: RateLimitService) -> None:
    per_route = {"rate_limits": [
        {"actions": [{"generic_key": {"descriptor_value": "first"}}], "hits_addend": {"number": 0}},
        {"actions": [{"generic_key": {"descriptor_value": "done"}}], "hits_addend": {"number": 2},
         "apply_on_stream_done": True},
        {"actions": [ANSWER], "limit": {"rate_limit": {"requests_per_unit": 3, "unit": "SECOND"}}}]}
    vhost = {"routes": [route("/", per_route=per_route)]}
    results = compare(demo, service, [rate_limit_filter()], vhost,
                      [get("/a"), get("/b", ("x-answer", "ok")), get("/c", ("x-answer", "over"))])
    assert [len(r["calls"]) for r in results] == [2, 2, 2]  # the request's call, then the stream-done one
    assert results[2]["calls"][1] == ["web", [[("generic_key", "done"), ("hits", 2)]]]


def test_x_ratelimit_headers_by_descriptor_as_envoy(demo: DemoUpstream, service: RateLimitService) -> None:
    limits = [{"actions": [ANSWER]}, {"actions": [{"generic_key": {"descriptor_value": "b"}}]},
              {"actions": [{"generic_key": {"descriptor_value": "c"}}]}]
    off = [limits[0], {**limits[1], "x_ratelimit_option": "OFF"}, limits[2]]
    # (a first entry that makes no descriptor: the statuses answer the descriptors sent)
    unmade = [{"actions": [{"request_headers": {"header_name": "x-none", "descriptor_key": "n"}}]}, *off]
    vhost = {"routes": [route("/all", rate_limits=limits), route("/off", rate_limits=off),
                        route("/unmade", rate_limits=unmade)]}
    each = ("x-answer", "each")
    headers_on = rate_limit_filter(enable_x_ratelimit_headers="DRAFT_VERSION_03")
    results = compare(demo, service, [headers_on], vhost,
                      [get("/all", each), get("/off", each), get("/unmade", each)])
    assert results[2]["headers"]["x-ratelimit-limit"] == ['100, 100;w=60;name="d0", 102;w=604800;name="d2"']
    assert results[0]["headers"]["x-ratelimit-limit"] == ['100, 100;w=60;name="d0", 101;w=300;name="d1", '
                                                          '102;w=604800;name="d2"']
    on_descriptor = [limits[0], {**limits[1], "x_ratelimit_option": "DRAFT_VERSION_03"}]
    vhost = {"routes": [route("/", rate_limits=on_descriptor)]}
    (result,) = compare(demo, service, [rate_limit_filter()], vhost, [get("/", each)])
    assert "x-ratelimit-limit" not in result["headers"]  # (not where the filter's are off)


def test_grpc_calls_over_the_limit_as_envoy(demo: DemoUpstream, service: RateLimitService,
                                            grpc_upstream: int) -> None:
    """A gRPC call over the limit: UNAVAILABLE, or RESOURCE_EXHAUSTED if the filter says so."""
    vhost = {"routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "rate_limits": [
        {"actions": [{"request_headers": {"header_name": "x-answer", "descriptor_key": "answer"}}]}]}}]}
    outcomes: dict[tuple[bool, bool], list[str]] = {}
    for exhausted in (False, True):
        for envoy in (True, False):
            admin, port = free_port(), free_port()
            config = bootstrap(admin, port, grpc_upstream, service.port,
                               [rate_limit_filter(rate_limited_as_resource_exhausted=exhausted)], vhost,
                               hcm={"codec_type": "AUTO"}, backend_http2=True)
            proc: Envoy | Proxy = Envoy(config, admin).start() if envoy else Proxy(config, admin).start()
            try:
                got = []
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    for answer in ("ok", "over", "error"):
                        try:
                            reply = channel.unary_unary("/echo.Echo/Unary")(b"hi", timeout=10,
                                                                            metadata=(("x-answer", answer),))
                            got.append(f"OK {reply!r}")
                        except grpc.RpcError as err:
                            got.append(err.code().name)
                outcomes[(exhausted, envoy)] = got
            finally:
                proc.stop()
        assert outcomes[(exhausted, False)] == outcomes[(exhausted, True)], outcomes
    assert outcomes[(False, False)] == ["OK b'hi'", "UNAVAILABLE", "OK b'hi'"]
    assert outcomes[(True, False)][1] == "RESOURCE_EXHAUSTED"
