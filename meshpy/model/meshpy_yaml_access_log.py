"""meshpy YAML `access_log`: where each line goes and what it says (docs/access-logs.md).

    access_log: stdout                      # meshpy's JSON line (the default format)
    access_log: [stdout, /var/log/web.log]
    access_log:
      - path: /var/log/web.log
        format: text                        # Envoy's default line
      - path: stderr
        format: "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %DURATION%"
      - path: stdout
        json_format: {code: "%RESPONSE_CODE%", path: "%REQ(:PATH)%"}
        omit_empty_values: true

A format string that does not end with a newline gets one (Envoy writes a format exactly as given; a
line without its newline runs into the next one, which is never what a YAML author meant).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshpy.model.access_log import ENVOY_TEXT, MESHPY_JSON, AccessLog, LogFormat, format_issues, json_object
from meshpy.model.yaml_reader import Reader, as_bool, child, is_off, item
from meshpy.model.yaml_values import yaml_kind

_KEYS = ("path", "format", "json_format", "omit_empty_values")
_STREAMS = {"stdout": None, "-": None, "stderr": "/dev/stderr"}


def read_access_logs(r: Reader, node: object, path: str) -> tuple[AccessLog, ...]:
    """`off`, one log or a list of them; each a path (`stdout`, `stderr` or a file) or a mapping."""
    if is_off(node):
        return ()
    logs: list[AccessLog] = []
    for i, value in enumerate(r.sequence(node, path, allow_single=True)):
        at = item(path, i) if isinstance(node, list) else path
        if isinstance(value, Mapping):
            log = _long_form(r, value, at)
            if log is not None:
                logs.append(log)
        elif not isinstance(value, str) or not value.strip() or is_off(value):
            got = repr(value) if isinstance(value, str) else f"a {yaml_kind(value)}"
            r.error(at, f"expected stdout, stderr, a file path or a mapping, got {got}")
        else:
            logs.append(AccessLog(path=_destination(value)))
    return tuple(logs)


def _destination(value: str) -> str | None:
    value = value.strip()
    return _STREAMS.get(value, value)


def _long_form(r: Reader, node: Mapping[object, object], at: str) -> AccessLog | None:
    f = r.mapping(node, at, _KEYS)
    if f is None:
        return None
    where = f.raw("path")
    if not isinstance(where, str) or not where.strip():
        r.error(f.at("path") if "path" in f else at,
                "expected stdout, stderr or a file path" if "path" in f else "missing required key 'path'")
        return None
    omit = f.get("omit_empty_values", as_bool, False)
    if "format" in f and "json_format" in f:
        r.error(at, "format and json_format are exclusive: give one")
        return None
    if "json_format" in f:
        raw = f.raw("json_format")
        if not isinstance(raw, Mapping):
            r.error(f.at("json_format"), f"expected a mapping, got a {yaml_kind(raw)}")
            return None
        try:
            fmt = LogFormat(json=json_object(dict(raw)), omit_empty_values=omit)
        except ValueError as err:
            r.error(f.at("json_format"), str(err))
            return None
        return _checked(r, AccessLog(path=_destination(where), format=fmt), f.at("json_format"))
    text = f.raw("format") if "format" in f else "json"
    if not isinstance(text, str):
        r.error(f.at("format"), f"expected json, text or a format string, got a {yaml_kind(text)}")
        return None
    if text == "json":
        if omit:
            r.error(f.at("omit_empty_values"), "applies to text and json_format, not to meshpy's JSON line")
        fmt = MESHPY_JSON
    elif text == "text":
        fmt = LogFormat(text=ENVOY_TEXT.text, omit_empty_values=omit)
    else:
        fmt = LogFormat(text=text if text.endswith("\n") else text + "\n", omit_empty_values=omit)
    return _checked(r, AccessLog(path=_destination(where), format=fmt), f.at("format"))


def _checked(r: Reader, log: AccessLog, at: str) -> AccessLog | None:
    problems = format_issues(log.format)
    for where, reason in problems:
        r.error(child(at, where) if where else at, reason)
    return None if problems else log
