"""meshpy's own log lines in the format an Envoy bootstrap's `application_log_config` asks for: Envoy's
spdlog pattern flags (`%Y-%m-%dT%T.%fZ\t%l\tenvoy %n\t%v`, Istio's), as text or as the values of a
JSON object. Compiled once into a list of pieces, so a log line costs one pass.

Times are UTC (Envoy prints the host's local time; a proxy's host or container runs on UTC as a rule,
and Istio's pattern writes the `Z` itself). The flags: %Y %m %d %H %M %S %e (ms) %f (us) %F (ns) %T
(%H:%M:%S) %D (%m/%d/%y) %z %l (level, Envoy's names) %L (its letter) %n (logger) %v (message) %_ and
%j (the message escaped: newlines, or for JSON) %t (thread) %P (pid) %g %s (source file, full and
short) %# (line) %! (function) %%. Any other flag is a config error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable

Piece = Callable[[logging.LogRecord], str] | str
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
           logging.CRITICAL: "critical"}


def _level(r: logging.LogRecord) -> str:
    return _LEVELS.get(r.levelno, r.levelname.lower())


def _utc(fmt: str) -> Callable[[logging.LogRecord], str]:
    return lambda r: time.strftime(fmt, time.gmtime(r.created))


_FLAGS: dict[str, Callable[[logging.LogRecord], str]] = {
    "Y": _utc("%Y"), "m": _utc("%m"), "d": _utc("%d"), "H": _utc("%H"), "M": _utc("%M"), "S": _utc("%S"),
    "T": _utc("%H:%M:%S"), "D": _utc("%m/%d/%y"), "z": lambda r: "+00:00",
    "e": lambda r: f"{int(r.msecs):03d}",
    "f": lambda r: f"{int((r.created % 1) * 1e6):06d}",
    "F": lambda r: f"{int((r.created % 1) * 1e6) * 1000:09d}",
    "l": _level, "L": lambda r: _level(r)[:1].upper(),
    "n": lambda r: r.name,
    "v": lambda r: r.getMessage(),
    "_": lambda r: r.getMessage().replace("\n", "\\n"),
    "j": lambda r: json.dumps(r.getMessage())[1:-1],
    "t": lambda r: str(r.thread or 0), "P": lambda r: str(os.getpid()),
    "g": lambda r: r.pathname, "s": lambda r: r.filename, "#": lambda r: str(r.lineno),
    "!": lambda r: r.funcName,
}


def compile_pattern(pattern: str) -> list[Piece]:
    """The pattern as literal strings and flag functions; ValueError for an unknown flag."""
    pieces: list[Piece] = []
    literal: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c != "%":
            literal.append(c)
            i += 1
            continue
        flag = pattern[i + 1:i + 2]
        i += 2
        if flag == "%":
            literal.append("%")
            continue
        fn = _FLAGS.get(flag)
        if fn is None:
            raise ValueError(f"%{flag} is not a log pattern flag meshpy knows" if flag else
                             "a pattern may not end with %")
        if literal:
            pieces.append("".join(literal))
            literal = []
        pieces.append(fn)
    if literal:
        pieces.append("".join(literal))
    return pieces


def pattern_problem(pattern: str) -> str | None:
    try:
        compile_pattern(pattern)
    except ValueError as err:
        return str(err)
    return None


def _render(pieces: list[Piece], record: logging.LogRecord) -> str:
    return "".join(p if isinstance(p, str) else p(record) for p in pieces)


class PatternFormatter(logging.Formatter):
    """A log line as the pattern says; an exception's traceback follows it, as Python prints one."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pieces = compile_pattern(pattern)

    def format(self, record: logging.LogRecord) -> str:
        line = _render(self.pieces, record)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """A log line as a JSON object of the given keys, each value a pattern."""

    def __init__(self, fields: tuple[tuple[str, str], ...]) -> None:
        super().__init__()
        self.fields = [(key, compile_pattern(p)) for key, p in fields]

    def format(self, record: logging.LogRecord) -> str:
        out = {key: _render(pieces, record) for key, pieces in self.fields}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


_DEFAULT: list[logging.Formatter | None] = [None]  # the handlers' own formatter, kept to go back to


def apply(pattern: str | None, json_fields: tuple[tuple[str, str], ...]) -> None:
    """Format the root logger's handlers' lines so (None and no fields: meshpy's own format again)."""
    root = logging.getLogger()
    formatter: logging.Formatter | None
    if json_fields:
        formatter = JsonFormatter(json_fields)
    elif pattern is not None:
        formatter = PatternFormatter(pattern)
    else:
        formatter = _DEFAULT[0]
    for handler in root.handlers:
        if _DEFAULT[0] is None:
            _DEFAULT[0] = handler.formatter
        handler.setFormatter(formatter)
