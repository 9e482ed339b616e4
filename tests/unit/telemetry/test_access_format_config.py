"""Access logs as config: Envoy's loggers, formats and filters (HCM, TCP proxy, admin) and the meshpy
YAML `access_log` forms, into the model; what meshpy cannot do is an issue naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.access_log import (
    ENVOY_TEXT,
    MESHPY_JSON,
    AccessLog,
    AndFilter,
    DurationFilter,
    HeaderFilter,
    LogFormat,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    StatusFilter,
    json_object,
)
from meshpy.model.load import load_text
from meshpy.model.routes import HeaderMatch, StringMatch
from meshpy.xds.translate import load_bootstrap

FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
AT = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log"


def bootstrap(logs: list[Any], *, tcp: bool = False, admin: dict[str, Any] | None = None) -> dict[str, Any]:
    if tcp:
        config: dict[str, Any] = {"@type": TCP, "stat_prefix": "t", "cluster": "demo", "access_log": logs}
    else:
        config = {"@type": HCM, "stat_prefix": "web", "access_log": logs, "http_filters": [
            {"name": "router", "typed_config": {"@type": ROUTER}}], "route_config": {"virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                              "route": {"cluster": "demo"}}]}]}}
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}}
    out = {"static_resources": {
        "listeners": [{"name": "web",
                       "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}},
                       "filter_chains": [{"filters": [{"name": "f", "typed_config": config}]}]}],
        "clusters": [{"name": "demo", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "demo", "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}}]}}
    if admin is not None:
        out["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}, **admin}
    return out


def logs_of(logs: list[Any], **kw: Any) -> tuple[AccessLog, ...]:
    config = load_bootstrap(bootstrap(logs, **kw))
    lis = config.listeners[0]
    opts = lis.http if lis.http is not None else lis.tcp
    assert opts is not None
    return opts.access_logs


def issues_of(logs: list[Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(bootstrap(logs))
    return [(i.path, i.reason) for i in caught.value.issues]


def file_log(**config: Any) -> dict[str, Any]:
    return {"name": "f", "typed_config": {"@type": FILE, "path": "/tmp/a.log", **config}}


# -- Envoy -----------------------------------------------------------------------------------------------
def test_a_logger_without_a_format_writes_envoys_default_line() -> None:
    assert logs_of([file_log(), {"name": "s", "typed_config": {"@type": STDOUT}},
                    {"name": "e", "typed_config": {"@type": STDERR}}]) == (
        AccessLog(path="/tmp/a.log", format=ENVOY_TEXT), AccessLog(path=None, format=ENVOY_TEXT),
        AccessLog(path="/dev/stderr", format=ENVOY_TEXT))
    assert logs_of([file_log()], tcp=True) == (AccessLog(path="/tmp/a.log", format=ENVOY_TEXT),)


def test_substitution_format_strings() -> None:
    text = {"text_format_source": {"inline_string": "%REQ(:PATH)% %RESPONSE_CODE%\n"},
            "omit_empty_values": True, "content_type": "text/plain",
            "json_format_options": {"sort_properties": True}}
    template = {"code": "%RESPONSE_CODE%", "up": {"host": "%UPSTREAM_HOST%"}, "n": 1,
                "tags": ["a", "%PROTOCOL%"]}
    got = logs_of([file_log(log_format=text), file_log(log_format={"text_format": "%PROTOCOL%\n"}),
                   file_log(log_format={"json_format": template})])
    assert [g.format for g in got] == [
        LogFormat(text="%REQ(:PATH)% %RESPONSE_CODE%\n", omit_empty_values=True),
        LogFormat(text="%PROTOCOL%\n"),
        LogFormat(json=json_object(template)),
    ]


def test_the_file_loggers_older_format_fields() -> None:
    got = logs_of([file_log(format="%PROTOCOL%\n"), file_log(format=""),
                   file_log(json_format={"a": "%BYTES_SENT%"}),
                   file_log(typed_json_format={"b": "%BYTES_SENT%"})])
    assert [g.format for g in got] == [LogFormat(text="%PROTOCOL%\n"), ENVOY_TEXT,
                                       LogFormat(json=json_object({"a": "%BYTES_SENT%"})),
                                       LogFormat(json=json_object({"b": "%BYTES_SENT%"}))]


def test_filters() -> None:
    def cmp(kind: str, op: str, value: int) -> dict[str, Any]:
        return {kind: {"comparison": {"op": op, "value": {"default_value": value}}}}
    flt = {"or_filter": {"filters": [cmp("status_code_filter", "GE", 500), {"and_filter": {"filters": [
        cmp("duration_filter", "LE", 1000), {"not_health_check_filter": {}},
        {"response_flag_filter": {"flags": ["UF", "NR"]}},
        {"header_filter": {"header": {"name": "x-debug", "string_match": {"exact": "1"}}}}]}}]}}
    (log,) = logs_of([{**file_log(), "filter": flt}])
    assert log.filter == OrFilter(filters=(StatusFilter(op="ge", value=500), AndFilter(filters=(
        DurationFilter(op="le", value=1000), NotHealthCheckFilter(), ResponseFlagFilter(flags=("UF", "NR")),
        HeaderFilter(header=HeaderMatch(name="x-debug", match=StringMatch(kind="exact", value="1")))))))


@pytest.mark.parametrize(("log", "path", "reason"), [
    (file_log(log_format={"text_format": "%DYNAMIC_METADATA(a:b)%"}),
     "[0].typed_config.log_format.text_format", "%DYNAMIC_METADATA% is not supported by meshpy"),
    (file_log(log_format={"json_format": {"a": {"b": "%UPSTREAM_HOST:3%"}}}),
     "[0].typed_config.log_format.json_format.a.b", "%UPSTREAM_HOST% takes no argument and no length"),
    (file_log(log_format={"text_format": "x", "formatters": [{"name": "cel", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel"}}]}),
     "[0].typed_config.log_format.formatters", "not supported by meshpy"),
    (file_log(log_format={"text_format_source": {"filename": "/etc/fmt"}}),
     "[0].typed_config.log_format.text_format_source.filename", "not supported by meshpy"),
    (file_log(format="100%"), "[0].typed_config.format", "no valid operator at position 3"),
    ({**file_log(), "filter": {"runtime_filter": {"runtime_key": "k"}}}, "[0].filter.runtime_filter",
     "not supported by meshpy"),
    ({**file_log(), "filter": {"traceable_filter": {}}}, "[0].filter.traceable_filter",
     "not supported by meshpy"),
    ({**file_log(), "filter": {"status_code_filter": {"comparison": {"op": "GE", "value": {
        "default_value": 500, "runtime_key": "access_log.error_status"}}}}},
     "[0].filter.status_code_filter.comparison.value.runtime_key", "runtime override"),
    ({**file_log(), "filter": {"response_flag_filter": {"flags": ["XX"]}}},
     "[0].filter.response_flag_filter.flags[0]", "not one of Envoy's response flags"),
    ({"name": "g", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"}},
     "[0].typed_config", "HttpGrpcAccessLogConfig is not supported by meshpy"),
])
def test_what_meshpy_cannot_do_is_an_issue_at_its_path(log: dict[str, Any], path: str, reason: str) -> None:
    found = issues_of([log])
    assert [p for p, _ in found] == [AT + path], found
    assert reason in found[0][1]


def test_the_admin_access_log_and_its_older_path() -> None:
    admin = {"access_log": [file_log(), {"name": "n", "typed_config": {"@type": FILE, "path": "/dev/null"}}],
             "access_log_path": "/var/log/admin.log"}
    config = load_bootstrap(bootstrap([], admin=admin))
    assert config.admin.access_logs == (AccessLog(path="/tmp/a.log", format=ENVOY_TEXT),
                                        AccessLog(path="/var/log/admin.log", format=ENVOY_TEXT))
    quiet = load_bootstrap(bootstrap([], admin={"access_log_path": "/dev/null"}))
    assert quiet.admin.access_logs == ()
    bad = copy.deepcopy(bootstrap([], admin={"access_log": [file_log(format="%NOPE%")]}))
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(bad)
    assert [i.path for i in caught.value.issues] == ["admin.access_log[0].typed_config.format"]


# -- meshpy YAML -----------------------------------------------------------------------------------------
def yaml_logs(access_log: str) -> tuple[AccessLog, ...]:
    config = load_text(f"""
listeners:
  - name: web
    address: 127.0.0.1:8000
    access_log: {access_log}
    routes: [{{match: /, cluster: demo}}]
clusters: {{demo: 127.0.0.1:9000}}
""")
    assert config.listeners[0].http is not None
    return config.listeners[0].http.access_logs


def test_meshpy_yaml_keeps_its_json_line_and_gains_envoys_formats() -> None:
    assert yaml_logs("[stdout, stderr, /var/log/a.log]") == (
        AccessLog(path=None), AccessLog(path="/dev/stderr"), AccessLog(path="/var/log/a.log"))
    assert AccessLog(path=None).format == MESHPY_JSON
    assert yaml_logs("""
      - {path: stdout, format: text}
      - {path: /var/log/a.log, format: "%REQ(:METHOD)% %RESPONSE_CODE%", omit_empty_values: true}
      - {path: stderr, json_format: {code: "%RESPONSE_CODE%", up: {host: "%UPSTREAM_HOST%"}}}
      - {path: stdout, format: json}""") == (
        AccessLog(path=None, format=ENVOY_TEXT),
        AccessLog(path="/var/log/a.log", format=LogFormat(text="%REQ(:METHOD)% %RESPONSE_CODE%\n",
                                                          omit_empty_values=True)),
        AccessLog(path="/dev/stderr", format=LogFormat(json=json_object(
            {"code": "%RESPONSE_CODE%", "up": {"host": "%UPSTREAM_HOST%"}}))),
        AccessLog(path=None, format=MESHPY_JSON))


@pytest.mark.parametrize(("access_log", "message"), [
    ('{path: stdout, format: "%NOPE%"}', "listeners[0].access_log.format: operator %NOPE% is not supported"),
    ('{path: stdout, json_format: {a: {b: "%REQ%"}}}',
     "listeners[0].access_log.json_format.a.b: %REQ% needs"),
    ("{path: stdout, format: text, json_format: {a: b}}", "format and json_format are exclusive"),
    ("{format: text}", "listeners[0].access_log: missing required key 'path'"),
    ("{path: stdout, formt: text}", "listeners[0].access_log.formt: unknown key (did you mean 'format'?)"),
    ("{path: stdout, omit_empty_values: true}", "not to meshpy's JSON line"),
])
def test_meshpy_yaml_errors_name_the_key(access_log: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        yaml_logs(access_log)
    assert message in str(caught.value)


def test_meshpy_yaml_admin_access_log() -> None:
    config = load_text("admin: {address: 127.0.0.1:9901, access_log: {path: stdout, format: text}}\n")
    assert config.admin.access_logs == (AccessLog(path=None, format=ENVOY_TEXT),)


def test_the_control_plane_writes_what_the_translator_reads() -> None:
    from control.sources.export_access_log import access_log

    logs = (
        AccessLog(path=None),  # meshpy's JSON line, as a json_format
        AccessLog(path="/dev/stderr", format=LogFormat(json=json_object({"a": {"b": "%PROTOCOL%"}, "n": 3}),
                                                       omit_empty_values=True)),
        AccessLog(path="/tmp/a.log", format=ENVOY_TEXT, filter=OrFilter(filters=(
            StatusFilter(op="ne", value=200), AndFilter(filters=(DurationFilter(op="ge", value=5),
                                                                NotHealthCheckFilter())),
            ResponseFlagFilter(flags=("UF",)),
            HeaderFilter(header=HeaderMatch(name="x-a", match=StringMatch(kind="prefix", value="v"))),
            HeaderFilter(header=HeaderMatch(name="x-b", match=StringMatch(kind="present"), invert=True))))),
    )
    assert logs_of([access_log(log) for log in logs]) == logs
