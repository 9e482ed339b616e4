"""model AccessLog -> Envoy access logger (the inverse of meshpy.xds.translate_access_log): the file,
stdout or stderr logger, its format as a SubstitutionFormatString, and its filter."""

from __future__ import annotations

from typing import Any

from control.sources.export_authz import string_matcher
from meshpy.model.access_log import (
    AccessLog,
    AndFilter,
    DurationFilter,
    HeaderFilter,
    JsonObject,
    JsonValue,
    LogFilter,
    LogFormat,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    StatusFilter,
)

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


def access_log(log: AccessLog) -> dict[str, Any]:
    config: dict[str, Any]
    if log.path == "/dev/stderr":
        name, config = "stderr", {"@type": STDERR_LOG}
    elif log.path:
        name, config = "file", {"@type": FILE_LOG, "path": log.path}
    else:
        name, config = "stdout", {"@type": STDOUT_LOG}
    config["log_format"] = log_format(log.format)
    out: dict[str, Any] = {"name": name, "typed_config": config}
    if log.filter is not None:
        out["filter"] = log_filter(log.filter)
    return out


def log_format(fmt: LogFormat) -> dict[str, Any]:
    out: dict[str, Any] = {"omit_empty_values": fmt.omit_empty_values}
    if fmt.json is not None:
        out["json_format"] = _json(fmt.json)
    else:
        out["text_format_source"] = {"inline_string": fmt.text}
    return out


def _json(value: JsonValue) -> Any:
    if isinstance(value, JsonObject):
        return {k: _json(v) for k, v in value.fields}
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


def log_filter(flt: LogFilter) -> dict[str, Any]:
    if isinstance(flt, (StatusFilter, DurationFilter)):
        kind = "status_code_filter" if isinstance(flt, StatusFilter) else "duration_filter"
        return {kind: {"comparison": {"op": flt.op.upper(), "value": {"default_value": flt.value}}}}
    if isinstance(flt, NotHealthCheckFilter):
        return {"not_health_check_filter": {}}
    if isinstance(flt, ResponseFlagFilter):
        return {"response_flag_filter": {"flags": list(flt.flags)}}
    if isinstance(flt, HeaderFilter):
        h = flt.header
        match: dict[str, Any] = {"present_match": True} if h.match.kind == "present" else {
            "string_match": string_matcher(h.match)}
        return {"header_filter": {"header": {"name": h.name, "invert_match": h.invert, **match}}}
    kind = "and_filter" if isinstance(flt, AndFilter) else "or_filter"
    assert isinstance(flt, (AndFilter, OrFilter))
    return {kind: {"filters": [log_filter(f) for f in flt.filters]}}
