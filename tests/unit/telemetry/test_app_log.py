"""meshpy's own log lines in an Envoy bootstrap's application_log_config format (spdlog flags)."""

from __future__ import annotations

import json
import logging

import pytest

from meshpy.telemetry.app_log import JsonFormatter, PatternFormatter, compile_pattern, pattern_problem


def record(msg: str = "config live", level: int = logging.INFO) -> logging.LogRecord:
    r = logging.LogRecord("meshpy.xds", level, "/src/meshpy/app.py", 42, msg, None, None, func="apply")
    r.created = 1_765_000_000.123456  # 2025-12-06T05:46:40.123456Z
    r.msecs = 123.456
    return r


def test_istio_pattern() -> None:
    line = PatternFormatter("%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %s:%#\t%v").format(record())
    assert line == "2025-12-06T05:46:40.123456Z\tinfo\tenvoy meshpy.xds app.py:42\tconfig live"


@pytest.mark.parametrize(("pattern", "expected"), [
    ("[%e] %L %%", "[123] W %"), ("%j", 'a \\"b\\"\\nc'), ("%_", 'a "b"\\nc'), ("%D %!", "12/06/25 apply")])
def test_flags(pattern: str, expected: str) -> None:
    assert PatternFormatter(pattern).format(record('a "b"\nc', logging.WARNING)) == expected


def test_json_lines() -> None:
    out = json.loads(JsonFormatter((("level", "%l"), ("msg", "%v"))).format(record()))
    assert out == {"level": "info", "msg": "config live"}


def test_unknown_flags_are_named() -> None:
    assert pattern_problem("%Q") == "%Q is not a log pattern flag meshpy knows"
    assert pattern_problem("abc %") == "a pattern may not end with %"
    assert pattern_problem("%v") is None
    assert len(compile_pattern("x%vy")) == 3
