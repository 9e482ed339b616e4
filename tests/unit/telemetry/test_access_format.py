"""Envoy's substitution formats as meshpy writes them: the grammar, text and JSON lines, START_TIME.

The expected lines are what Envoy 1.40 wrote for the same formats and values (tests/integration/
test_access_log_envoy.py compares the two proxies on real traffic); the records here are plain data
in the shape the operators read (meshpy.telemetry.accesslog_ops.HttpRecord).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from meshpy.model.access_log import (
    ENVOY_TEXT,
    Command,
    LogFormat,
    format_issues,
    json_object,
    parse_format,
)
from meshpy.ports import ConnectionInfo, TlsInfo
from meshpy.telemetry.accesslog_format import compile_format
from meshpy.telemetry.accesslog_ops import LogContext, StartTime

T0 = 1796702014.813717  # 2026-12-08T03:53:34.813717Z
Header = tuple[bytes, bytes]


@dataclass
class Record:
    """A finished request, as the operators read one."""

    wall0: float = T0
    resp_status: int = 200
    flag: str = ""
    bytes_in: int = 0
    bytes_out: int = 279
    request: dict[str, str] = field(default_factory=lambda: {
        ":method": "GET", ":path": "/a?q=1", ":authority": "example.com", "user-agent": "probe/1.0",
        "x-request-id": "cf61590a-dd78-4e7a-b278-d781e1325cf8"})
    response: dict[str, str] = field(default_factory=lambda: {
        "content-type": "application/json", "x-envoy-upstream-service-time": "0"})
    trailers: dict[str, str] = field(default_factory=dict)
    upstream: str | None = "127.0.0.1:45727"
    info: ConnectionInfo = field(default_factory=lambda: ConnectionInfo(
        peer="127.0.0.1", peer_port=43406, local="127.0.0.1", local_port=50043, original_destination=None,
        listener="web", direction="unspecified"))

    def log_request_header(self, name: bytes) -> str | None:
        return self.request.get(name.decode())

    def log_header_list(self) -> list[Header]:
        return [(k.encode(), v.encode()) for k, v in self.request.items() if k[0] != ":"]

    def log_response_header(self, name: bytes) -> str | None:
        return self.response.get(name.decode())

    def log_trailer(self, name: bytes) -> str | None:
        return self.trailers.get(name.decode())

    def log_protocol(self) -> str | None:
        return "HTTP/1.1"

    def log_details(self) -> str | None:
        return "via_upstream" if not self.flag else None

    def log_request_ms(self) -> int | None:
        return 0

    def log_response_ms(self) -> int | None:
        return 0 if self.upstream else None

    def log_tx_ms(self, seconds: float) -> int | None:
        return 0 if self.upstream else None

    def log_upstream_host(self) -> str | None:
        return self.upstream

    def log_cluster(self) -> str | None:
        return "demo" if self.upstream else None

    def log_upstream_local(self) -> str | None:
        return "127.0.0.1:36224" if self.upstream else None

    def log_failure_reason(self) -> str | None:
        return None

    def log_remote(self) -> tuple[str, int]:
        return self.info.peer, self.info.peer_port

    def log_connection(self) -> ConnectionInfo:
        return self.info

    def log_route_name(self) -> str | None:
        return None

    def log_attempts(self) -> int:
        return 1 if self.upstream else 0


CTX = LogContext(hostname="vm")


def write(fmt: LogFormat, record: Record, seconds: float = 0.0004, ctx: LogContext = CTX) -> str:
    """The line, as the logger makes it: the values read at completion, the text at the flush."""
    compiled = compile_format(fmt, ctx)
    return compiled.render(compiled.capture(record, seconds))


def text(fmt: str, record: Record | None = None, seconds: float = 0.0004, *, omit: bool = False) -> str:
    return write(LogFormat(text=fmt, omit_empty_values=omit), record or Record(), seconds)


def line(template: Mapping[str, object], record: Record | None = None, *, omit: bool = False) -> str:
    return write(LogFormat(json=json_object(template), omit_empty_values=omit), record or Record())


# -- the grammar -------------------------------------------------------------------------------------
def test_a_format_string_is_literals_and_operators() -> None:
    assert parse_format("[%START_TIME(%s.%3f)%] %REQ(USER-AGENT):5% 100%%\n") == [
        "[", Command("START_TIME", "%s.%3f", None), "] ", Command("REQ", "USER-AGENT", 5), " 100%\n"]


@pytest.mark.parametrize(("fmt", "reason"), [
    ("100%", "no valid operator at position 3"),
    ("%req(:path)%", "no valid operator at position 0"),
    ("%DYNAMIC_METADATA(a:b)%", "%DYNAMIC_METADATA% is not supported by meshpy"),
    ("%CEL(request.path)%", "%CEL% is not supported by meshpy"),
    ("%REQ%", "%REQ% needs an argument"),
    ("%PROTOCOL(x)%", "%PROTOCOL% takes no argument"),
    ("%UPSTREAM_HOST:10%", "%UPSTREAM_HOST% takes no argument and no length"),
    ("%START_TIME:3%", "%START_TIME% takes no length"),
    ("%REQ(A?B?C)%", "at most one alternative header"),
    ("%START_TIME(%Y%n)%", "cannot hold a newline"),
])
def test_a_bad_format_string_says_why(fmt: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_format(fmt)
    assert reason in str(caught.value)


def test_a_json_template_reports_the_key_of_a_bad_value() -> None:
    fmt = LogFormat(json=json_object({"ok": "%PROTOCOL%", "nested": {"list": ["x", "%NOPE%"]}}))
    assert format_issues(fmt) == [("nested.list[1]", "operator %NOPE% is not supported by meshpy")]
    assert format_issues(LogFormat()) == [("", "needs a text format or a JSON format, not both")]


# -- text lines ----------------------------------------------------------------------------------------
def test_envoys_default_line() -> None:
    assert write(ENVOY_TEXT, Record()) == (
        '[2026-12-08T03:53:34.813Z] "GET /a?q=1 HTTP/1.1" 200 - 0 279 0 0 "-" "probe/1.0" '
        '"cf61590a-dd78-4e7a-b278-d781e1325cf8" "example.com" "127.0.0.1:45727"\n')


def test_a_local_reply_writes_dashes_where_values_are_missing() -> None:
    record = Record(resp_status=404, flag="NR", bytes_out=0, upstream=None, response={})
    record.request.pop("user-agent")
    assert write(ENVOY_TEXT, record, 0.0) == (
        '[2026-12-08T03:53:34.813Z] "GET /a?q=1 HTTP/1.1" 404 NR 0 0 0 - "-" "-" '
        '"cf61590a-dd78-4e7a-b278-d781e1325cf8" "example.com" "-"\n')


def test_omit_empty_values_writes_nothing_for_a_missing_value() -> None:
    record = Record()
    assert text("[%REQ(X-MISSING)%][%RESP(X-NOPE)%][%UPSTREAM_HOST%]\n", record, omit=True) == \
        "[][][127.0.0.1:45727]\n"
    assert text("[%REQ(X-MISSING)%]", record) == "[-]"


def test_header_alternative_length_and_empty_value() -> None:
    record = Record()
    record.request["x-empty"] = ""
    assert text("%REQ(USER-AGENT):5%|%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%|%REQ(X-EMPTY)%|%REQ(X-NO?X-NONE)%",
                record) == "probe|/a?q=1||-"
    record.request["x-envoy-original-path"] = "/rw/x"
    assert text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):3%", record) == "/rw"


def test_operators_of_the_stream() -> None:
    record = Record(flag="UF,URX", resp_status=503, bytes_in=11, trailers={"grpc-status": "14"})
    assert text("%RESPONSE_FLAGS%|%RESPONSE_FLAGS_LONG%|%BYTES_RECEIVED%|%DURATION%|%TRAILER(GRPC-STATUS)%|"
                "%UPSTREAM_CLUSTER%|%UPSTREAM_LOCAL_ADDRESS%|%HOSTNAME%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|"
                "%ROUTE_NAME%|%%", record, 1.2349) == \
        "UF,URX|UpstreamConnectionFailure,UpstreamRetryLimitExceeded|11|1234|14|demo|127.0.0.1:36224|vm|1|-|%"


def test_addresses_and_tls() -> None:
    tls = TlsInfo(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", sni="api.test", alpn="h2",
                  peer_uris=("spiffe://a/b", "spiffe://c/d"), peer_subject="CN=caf\u00e9")
    info = ConnectionInfo(peer="::1", peer_port=5, local="10.0.0.2", local_port=80,
                          original_destination=("10.9.9.9", 8080), listener="web", direction="inbound",
                          tls=tls)
    fmt = ("%DOWNSTREAM_REMOTE_ADDRESS%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_REMOTE_PORT%|"
           "%DOWNSTREAM_LOCAL_ADDRESS%|%DOWNSTREAM_LOCAL_PORT%|%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%|"
           "%REQUESTED_SERVER_NAME%|%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_TLS_CIPHER%|%DOWNSTREAM_PEER_URI_SAN%|"
           "%DOWNSTREAM_PEER_SUBJECT%")
    # The original destination is the local address of a redirected connection; a subject's UTF-8
    # comes out as its bytes.
    assert text(fmt, Record(info=info)) == (
        "[::1]:5|::1|5|10.9.9.9:8080|8080|[::1]:5|api.test|TLSv1.3|TLS_AES_128_GCM_SHA256|"
        "spiffe://a/b,spiffe://c/d|CN=caf\u00c3\u00a9")
    assert text("%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_PEER_URI_SAN%|%REQUESTED_SERVER_NAME%") == "-|-|-"


def test_connection_ids_are_per_connection() -> None:
    ctx = LogContext(hostname="h")
    fmt = LogFormat(text="%CONNECTION_ID%")
    a, b = Record(), Record()
    b.info = ConnectionInfo(peer="127.0.0.2", peer_port=1, local="", local_port=0,
                            original_destination=None, listener="web", direction="unspecified")
    assert [write(fmt, r, 0, ctx) for r in (a, a, b, a)] == ["1", "1", "2", "1"]


# -- START_TIME ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "expected"), [
    (None, "2026-12-08T03:53:34.813Z"),
    ("%Y/%m/%d %H:%M:%S.%3f|%s|%6f|%9f|%f|%1f|%E3S|%z|%Z|%T",
     "2026/12/08 03:53:34.813|1796702014|813717|813717000|813717000|8|34.813|+0000|UTC|03:53:34"),
    ("%E6S|%E*S|%3f%3f|%Ez|%%|%e|%j|%a %b", "34.813717|34.813717|813813|+00:00|%| 8|342|Tue Dec"),
])
def test_start_time_as_envoy_writes_it(spec: str | None, expected: str) -> None:
    """(Envoy 1.40's output for these specifiers, at 03:53:34.813717 UTC.)"""
    assert StartTime(spec)(T0) == expected


def test_start_time_trims_trailing_zeros_for_all_digits() -> None:
    assert StartTime("%E*S")(1796702014.7524) == "34.7524"
    assert StartTime("%E*S")(1796702014.0) == "34"


# -- JSON lines ----------------------------------------------------------------------------------------
def test_json_keys_sorted_values_typed() -> None:
    out = line({"z": "%RESPONSE_CODE%", "a": "%REQ(:METHOD)%", "nested": {"d": "%DURATION%",
                "m": "%REQ(X-MISSING)%", "both": "%REQ(:METHOD)% %REQ(X-MISSING)%"},
                "list": ["%BYTES_SENT%", "x", 1], "n": None, "b": True, "flags": "%RESPONSE_FLAGS%",
                "svc": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "pct": "100%%", "lit": "plain"})
    assert out == ('{"a":"GET","b":true,"flags":"-","list":[279,"x",1],"lit":"plain","n":null,'
                   '"nested":{"both":"GET -","d":0,"m":null},"pct":"100%","svc":"0","z":200}\n')
    assert json.loads(out)["z"] == 200


def test_json_number_constants_as_envoy_writes_them() -> None:
    """A whole number within 32 bits is a number; others are written as strings (Envoy 1.40)."""
    out = json.loads(line({"a": 2147483647, "b": 2147483648, "f": -2147483648, "g": -2147483649, "h": 0,
                           "l": 123456.789, "n": 1e-7, "k": 1e16, "neg": -2}))
    assert out == {"a": 2147483647, "b": "2147483648", "f": -2147483648, "g": "-2147483649", "h": 0,
                   "l": "123456.789", "n": "1e-07", "k": "1e+16", "neg": -2}


def test_json_omit_empty_values() -> None:
    template = {"a": "%REQ(:METHOD)%", "m": "%REQ(X-MISSING)%", "nested": {"m": "%REQ(X-MISSING)%"},
                "both": "%REQ(X-MISSING)%%REQ(X-MISSING)%", "list": ["%REQ(X-MISSING)%"],
                "e": "%REQ(X-EMPTY)%"}
    record = Record()
    record.request["x-empty"] = ""
    assert line(template, record, omit=True) == '{"a":"GET","both":"","e":"","list":[]}\n'
    record.request.pop(":method")
    assert line({"m": "%REQ(:METHOD)%"}, record, omit=True) == "{}\n"


def test_json_strings_are_escaped_and_keep_their_bytes() -> None:
    record = Record()
    record.request["user-agent"] = 'q"\\\tcaf\xc3\xa9'  # the header's bytes, one char each
    out = line({"ua": "%REQ(USER-AGENT)%", "lit": "caf\u00e9"}, record)
    assert out == '{"lit":"caf\xc3\xa9","ua":"q\\"\\\\\\tcaf\xc3\xa9"}\n'
    assert json.loads(out.encode("latin-1")) == {"lit": "caf\u00e9", "ua": 'q"\\\tcaf\u00e9'}
