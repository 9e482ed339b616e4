"""Envoy access loggers -> model AccessLog: the file, stdout and stderr loggers with their formats
(SubstitutionFormatString, and FileAccessLog's older format fields) and filters, for the HTTP
connection manager, the TCP proxy and the admin (admin.access_log, and the older access_log_path).

A logger without a format writes Envoy's default line (model.access_log.ENVOY_TEXT), as Envoy does;
meshpy's own JSON line is the meshpy YAML's default only. Formats are checked here against the
operators meshpy fills, so a format meshpy cannot write is an issue at its path, never a line of "-".
"""

from __future__ import annotations

from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import json_format

from meshpy.model.access_log import (
    ENVOY_TEXT,
    RESPONSE_FLAGS,
    AccessLog,
    AndFilter,
    ComparisonOp,
    DurationFilter,
    HeaderFilter,
    LogFilter,
    LogFormat,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    StatusFilter,
    format_issues,
    json_object,
)
from meshpy.xds.translate_base import Issues, child, item, unpack
from meshpy.xds.translate_matchers import header_match

FileAccessLog = file_pb2.FileAccessLog
StdoutAccessLog = stream_pb2.StdoutAccessLog
StderrAccessLog = stream_pb2.StderrAccessLog
ACCESS_LOGGERS = {cls.DESCRIPTOR.full_name: cls for cls in (FileAccessLog, StdoutAccessLog, StderrAccessLog)}
STDERR = "/dev/stderr"

# SubstitutionFormatString: content_type only matters where the format makes a local reply's body
# (Envoy ignores it for access logs), and Envoy 1.40 sorts a JSON line's keys with or without
# json_format_options.sort_properties.
_FORMAT_STRING = frozenset({"text_format", "json_format", "text_format_source", "omit_empty_values",
                            "content_type", "json_format_options"})
_CMP = accesslog_pb2.ComparisonFilter
_OPS: dict[int, ComparisonOp] = {_CMP.EQ: "eq", _CMP.GE: "ge", _CMP.LE: "le", _CMP.NE: "ne"}


def access_logs(issues: Issues, logs: Any, path: str) -> tuple[AccessLog, ...]:
    """The `access_log` list of an HCM, a TCP proxy or the admin."""
    result = []
    for i, log in enumerate(logs):
        log_path = item(path, i)
        issues.fields(log, log_path, {"name", "typed_config", "filter"})
        config_path = child(log_path, "typed_config")
        if not log.HasField("typed_config"):
            issues.add(config_path, "is required")
            continue
        config = unpack(issues, log.typed_config, config_path, ACCESS_LOGGERS)
        if config is None:
            continue
        flt = _filter(issues, log.filter, child(log_path, "filter")) if log.HasField("filter") else None
        if isinstance(config, FileAccessLog):
            issues.fields(config, config_path, {"path", "log_format", "format", "json_format",
                                                "typed_json_format"})
            if not config.path:
                issues.add(child(config_path, "path"), "must not be empty")
            fmt = _file_format(issues, config, config_path)
            result.append(AccessLog(path=config.path, format=fmt, filter=flt))
        else:
            issues.fields(config, config_path, {"log_format"})
            fmt = _log_format(issues, config, config_path)
            result.append(AccessLog(path=None if isinstance(config, StdoutAccessLog) else STDERR,
                                    format=fmt, filter=flt))
    return tuple(result)


def admin_access_logs(issues: Issues, admin: Any) -> tuple[AccessLog, ...]:
    """The admin's loggers: `access_log`, or the older `access_log_path` (a file, Envoy's default line;
    /dev/null, the usual setting, asks for none)."""
    logs = access_logs(issues, admin.access_log, "admin.access_log")
    legacy = admin.access_log_path
    if legacy and legacy != "/dev/null":
        logs += (AccessLog(path=legacy, format=ENVOY_TEXT),)
    # Envoy still opens /dev/null for a logger given it: writing nowhere is the same as no logger.
    return tuple(log for log in logs if log.path != "/dev/null")


def _file_format(issues: Issues, config: Any, path: str) -> LogFormat:
    kind = config.WhichOneof("access_log_format")
    if kind == "format":  # (deprecated) a format string; empty means the default
        return _checked(issues, LogFormat(text=config.format), child(path, "format")) if config.format \
            else ENVOY_TEXT
    if kind in ("json_format", "typed_json_format"):  # (deprecated) both keep value types in 1.40
        return _json(issues, getattr(config, kind), False, child(path, kind))
    return _log_format(issues, config, path)


def _log_format(issues: Issues, config: Any, path: str) -> LogFormat:
    if not config.HasField("log_format"):
        return ENVOY_TEXT
    msg = config.log_format
    at = child(path, "log_format")
    issues.fields(msg, at, _FORMAT_STRING)
    if msg.json_format_options.ListFields():
        issues.fields(msg.json_format_options, child(at, "json_format_options"), {"sort_properties"})
    omit = msg.omit_empty_values
    kind = msg.WhichOneof("format")
    if kind == "text_format":
        return _checked(issues, LogFormat(text=msg.text_format, omit_empty_values=omit),
                        child(at, "text_format"))
    if kind == "text_format_source":
        source, source_at = msg.text_format_source, child(at, "text_format_source")
        issues.fields(source, source_at, {"inline_string", "inline_bytes"})
        which = source.WhichOneof("specifier")
        if which not in ("inline_string", "inline_bytes"):
            if which is None:  # (a file or an environment variable was reported above)
                issues.add(source_at, "needs inline_string or inline_bytes")
            return ENVOY_TEXT
        text = source.inline_string if which == "inline_string" else source.inline_bytes.decode("latin-1")
        return _checked(issues, LogFormat(text=text, omit_empty_values=omit), child(source_at, which))
    if kind == "json_format":
        return _json(issues, msg.json_format, omit, child(at, "json_format"))
    issues.add(at, "one of text_format, text_format_source or json_format is required")
    return ENVOY_TEXT


def _json(issues: Issues, struct: Any, omit: bool, path: str) -> LogFormat:
    try:
        template = json_object(json_format.MessageToDict(struct))
    except ValueError as err:
        issues.add(path, str(err))
        return ENVOY_TEXT
    return _checked(issues, LogFormat(json=template, omit_empty_values=omit), path)


def _checked(issues: Issues, fmt: LogFormat, path: str) -> LogFormat:
    problems = format_issues(fmt)
    for where, reason in problems:
        issues.add(child(path, where) if where else path, reason)
    return ENVOY_TEXT if problems else fmt


def _filter(issues: Issues, msg: Any, path: str) -> LogFilter | None:
    kind = msg.WhichOneof("filter_specifier")
    at = child(path, kind) if kind else path
    if kind in ("status_code_filter", "duration_filter"):
        op, value = _comparison(issues, getattr(msg, kind), at)
        return StatusFilter(op=op, value=value) if kind == "status_code_filter" \
            else DurationFilter(op=op, value=value)
    if kind == "not_health_check_filter":
        # meshpy has no health_check HTTP filter, so no request is answered as a health check.
        return NotHealthCheckFilter()
    if kind == "header_filter":
        issues.fields(msg.header_filter, at, {"header"})
        return HeaderFilter(header=header_match(issues, msg.header_filter.header, child(at, "header")))
    if kind == "response_flag_filter":
        flags = tuple(msg.response_flag_filter.flags)
        for i, flag in enumerate(flags):
            if flag not in RESPONSE_FLAGS:
                issues.add(item(child(at, "flags"), i), f"{flag!r} is not one of Envoy's response flags")
        return ResponseFlagFilter(flags=flags)
    if kind in ("and_filter", "or_filter"):
        inner = getattr(msg, kind).filters
        if len(inner) < 2:
            issues.add(child(at, "filters"), "needs at least 2 filters")
        parts = [_filter(issues, f, item(child(at, "filters"), i)) for i, f in enumerate(inner)]
        kept = tuple(p for p in parts if p is not None)
        return AndFilter(filters=kept) if kind == "and_filter" else OrFilter(filters=kept)
    if kind is None:
        issues.add(path, "needs one filter")
    else:
        issues.add(at, "not supported by meshpy (status_code, duration, not_health_check, header, "
                       "response_flag, and and or filters are)")
    return None


def _comparison(issues: Issues, msg: Any, path: str) -> tuple[ComparisonOp, int]:
    issues.fields(msg, path, {"comparison"})
    cmp, at = msg.comparison, child(path, "comparison")
    issues.fields(cmp, at, {"op", "value"})
    issues.fields(cmp.value, child(at, "value"), {"default_value", "runtime_key"})
    if cmp.value.runtime_key:
        issues.add(child(child(at, "value"), "runtime_key"),
                   "a runtime override of the threshold is not supported by meshpy: use default_value")
    if not cmp.HasField("value"):
        issues.add(child(at, "value"), "is required")
    return _OPS.get(cmp.op, "eq"), cmp.value.default_value
