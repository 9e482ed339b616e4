"""The HTTP caching rules of Envoy 1.40's cache filter (source/extensions/filters/http/cache:
cacheability_utils, cache_headers_utils, http_cache, range_utils, cache_entry_utils), on header lists
of (lowercase name, value) str pairs. No I/O; meshpy.extensions.cache applies them.

Where Envoy's parsing has quirks that change an answer, they are kept (each checked against the binary
in tests/integration/test_cache_envoy.py): directive names are compared without case but a blank
before `=` spoils the directive, `max-age=+5` counts, a quoted value is unquoted only when both quotes
are there, the first `max-age` wins and `s-maxage` replaces it, ages are whole seconds (so `max-age=0`
is fresh for the rest of its second), a stored answer without Date is as old as the epoch, and a Range
header is read only when it has one range.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Fields = Sequence[tuple[str, str]]

# Statuses a response may be stored with (cacheability_utils.cc; RFC 7231 6.1, 7538, 7725).
CACHEABLE_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 451, 501})
# A request with one of these goes upstream untouched (the filter does not answer conditional requests).
CONDITIONAL = ("if-none-match", "if-modified-since", "if-range")
# Envoy keeps these in one header-map entry each: repeated lines are read (and stored) joined by ",".
_JOINED = frozenset({"cache-control", "pragma", "expires", "date", "age", "etag", "last-modified"})
# Kept as they were when a 304 refreshes a stored answer (cache_entry_utils.cc).
_NOT_UPDATED = frozenset({"content-range", "content-length", "etag", "vary"})
_BLANKS = " \t\n\v\f\r"
_INT64 = (1 << 63) - 1
_U64 = (1 << 64) - 1
FOREVER = float("inf")  # max-stale without a value


def joined(fields: Fields, name: str) -> str | None:
    """The header's value as Envoy reads it: None when absent; repeated lines of the names Envoy keeps
    in one entry joined by a comma, else the first line."""
    values = [v for n, v in fields if n == name]
    if not values:
        return None
    return ",".join(values) if name in _JOINED else values[0]


def _atoi(text: str) -> int | None:
    """absl::SimpleAtoi into a 64-bit long: blanks around, an optional sign, decimal digits."""
    text = text.strip(_BLANKS)
    digits = text[1:] if text[:1] in "+-" else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(text)
    return value if -_INT64 - 1 <= value <= _INT64 else None


def _duration(argument: str) -> float | None:
    if len(argument) > 1 and argument[0] == '"' and argument[-1] == '"':
        argument = argument[1:-1]
    value = _atoi(argument)
    return float(value) if value is not None and value >= 0 else None


def _directives(value: str) -> Iterable[tuple[str, str]]:
    for part in value.split(","):
        directive, _, argument = part.strip(_BLANKS).partition("=")
        yield directive.lower(), argument


@dataclass(slots=True)
class RequestCacheControl:
    must_validate: bool = False
    no_store: bool = False
    max_age: float | None = None
    min_fresh: float | None = None
    max_stale: float | None = None

    @classmethod
    def of(cls, fields: Fields) -> RequestCacheControl:
        """The request's directives; without cache-control, `pragma: no-cache` alone counts."""
        out = cls()
        value = joined(fields, "cache-control") or ""
        if not value:
            pragma = joined(fields, "pragma") or ""
            out.must_validate = any(d == "no-cache" for d, _ in _directives(pragma))
            return out
        for directive, argument in _directives(value):
            if directive == "no-cache":
                out.must_validate = True
            elif directive == "no-store":
                out.no_store = True
            elif directive == "max-age":
                out.max_age = _duration(argument)
            elif directive == "min-fresh":
                out.min_fresh = _duration(argument)
            elif directive == "max-stale":
                out.max_stale = FOREVER if not argument else _duration(argument)
        return out


@dataclass(slots=True)
class ResponseCacheControl:
    must_validate: bool = False
    no_store: bool = False
    no_stale: bool = False
    max_age: float | None = None

    @classmethod
    def of(cls, fields: Fields) -> ResponseCacheControl:
        out = cls()
        for directive, argument in _directives(joined(fields, "cache-control") or ""):
            if directive == "no-cache":
                out.must_validate = True
            elif directive in ("must-revalidate", "proxy-revalidate"):
                out.no_stale = True
            elif directive in ("no-store", "private"):
                out.no_store = True
            elif directive == "s-maxage" or (directive == "max-age" and out.max_age is None):
                out.max_age = _duration(argument)  # (the first max-age; s-maxage wins over it)
        return out


# -- dates and ages -------------------------------------------------------------------------------
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), 1)}
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                "october", "november", "december")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_W = r"([A-Za-z]+)"
_T = r"(\d{1,2}):(\d{1,2}):(\d{1,2})"
_FORMATS = (  # IMF-fixdate, RFC 850, asctime (cache_headers_utils.cc, absl::ParseTime)
    (re.compile(rf"{_W},\s*(\d{{1,2}})\s+{_W}\s+([+-]?\d+)\s+{_T}\s+GMT"), "dmy"),
    (re.compile(rf"{_W},\s*(\d{{1,2}})-{_W}-(\d{{2}})\s+{_T}\s+GMT"), "dmy2"),
    (re.compile(rf"{_W}\s+{_W}\s+(\d{{1,2}})\s+{_T}\s+([+-]?\d+)"), "mdy"),
)


def _name(text: str, short: Sequence[str], full: Sequence[str]) -> int | None:
    low = text.lower()
    for i, (s, f) in enumerate(zip(short, full, strict=True)):
        if low in (s, f):
            return i
    return None


def http_time(value: str | None) -> float | None:
    """An HTTP date as seconds since the epoch; None when absent or in none of the three formats."""
    if value is None:
        return None
    text = value.strip(_BLANKS)
    for pattern, order in _FORMATS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        g = m.groups()
        if order == "mdy":
            weekday, month_name, day, hh, mi, ss, year_text = g
        else:
            weekday, day, month_name, year_text, hh, mi, ss = g
        year = int(year_text)
        if order == "dmy2":
            year += 1900 if year >= 69 else 2000
        month = _name(month_name, tuple(_MONTHS), _MONTH_NAMES)
        if _name(weekday, _DAYS, _DAY_NAMES) is None or month is None:
            return None
        fields = (int(day), int(hh), int(mi), int(ss))
        if not (1 <= fields[0] <= 31 and fields[1] <= 23 and fields[2] <= 59 and fields[3] <= 60):
            return None
        try:
            return float(_timegm(year, month + 1, *fields))
        except (OverflowError, ValueError):
            return None
    return None


def _timegm(year: int, month: int, day: int, hh: int, mi: int, ss: int) -> int:
    """Seconds since the epoch of a UTC civil time (days past a month's end roll over, as cctz's)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + hh * 3600 + mi * 60 + ss


def age(fields: Fields, response_time: float, now: float) -> int:
    """The Age of a stored answer now, in whole seconds (RFC 9111 4.2.3, the response delay taken as
    nought): the larger of its Date's distance to its arrival and its own Age, plus its time here."""
    date = http_time(joined(fields, "date")) or 0.0
    own = _atoi(joined(fields, "age") or "")
    apparent = max(0.0, response_time - date)
    corrected = max(apparent, float(own if own is not None else 0))
    return int(corrected + (now - response_time))


def requires_validation(request: RequestCacheControl, fields: Fields, current_age: int) -> bool:
    """Whether a stored answer must be validated upstream before it is served (http_cache.cc)."""
    response = ResponseCacheControl.of(fields)
    if response.must_validate or request.must_validate or \
            (request.max_age is not None and request.max_age < current_age):
        return True
    if response.max_age is not None:
        lifetime = response.max_age
    else:
        lifetime = (http_time(joined(fields, "expires")) or 0.0) - (http_time(joined(fields, "date")) or 0.0)
    if current_age > lifetime:
        allowed = request.max_stale is not None and request.max_stale > current_age - lifetime
        return response.no_stale or not allowed
    return request.min_fresh is not None and request.min_fresh > lifetime - current_age


# -- what may be served and stored ------------------------------------------------------------------
def servable(method: str, path: str, authority: str, fields: Fields) -> bool:
    """Whether a request (without a body) may be answered from the cache: GET or HEAD, with a path and
    a host, without Authorization, without a conditional header, over http or https."""
    if any(n in CONDITIONAL for n, _ in fields):
        return False
    if not path or not authority or any(n == "authorization" for n, _ in fields):
        return False
    return method in ("GET", "HEAD") and scheme(fields) is not None


def scheme(fields: Fields) -> str | None:
    """The request's scheme as the key holds it: x-forwarded-proto as the connection manager left it."""
    value = (joined(fields, "x-forwarded-proto") or "http").lower()
    return value if value in ("http", "https") else None


def vary_values(fields: Fields) -> list[str] | None:
    """The names the answer varies on, sorted and unique; None when it has no (non-empty) Vary."""
    lines = [v for n, v in fields if n == "vary"]
    if not lines or not lines[0]:
        return None
    return sorted({t for line in lines for t in (p.strip(_BLANKS) for p in line.split(",")) if t})


def storable(status: int, fields: Fields, vary_allowed: Callable[[str], bool]) -> bool:
    """Whether an answer may be stored: a cacheable status, not no-store or private, a lifetime to go
    by (no-cache, max-age or s-maxage, or both Date and Expires), and a Vary of allowed names only."""
    control = ResponseCacheControl.of(fields)
    names = {n for n, _ in fields}
    lifetime = control.must_validate or control.max_age is not None or \
        ("date" in names and "expires" in names)
    if control.no_store or status not in CACHEABLE_STATUSES or not lifetime:
        return False
    varied = vary_values(fields)
    return varied is None or all(v != "*" and vary_allowed(v) for v in varied)


def vary_key(varied: Sequence[str], vary_allowed: Callable[[str], bool], request: Fields) -> str | None:
    """What tells apart the answers that vary on `varied` for this request: each name and the request's
    values of it; None when a name is not allowed (then nothing is stored or found)."""
    out = ["vary-id\n"]
    for name in varied:
        if not vary_allowed(name):
            return None
        key = name.lower()
        out.append(f"{name}\r{chr(13).join(v for n, v in request if n == key)}\n")
    return "".join(out)


def updated(stored: Fields, fresh: Fields) -> list[tuple[str, str]]:
    """A stored head refreshed by a validating answer's: each name the answer has replaces the stored
    lines of that name (in place of the first), but for content-length, content-range, etag and vary."""
    out = list(stored)
    replaced: set[str] = set()
    for name, value in fresh:
        if name in _NOT_UPDATED:
            continue
        if name in replaced:
            out.append((name, value))
            continue
        replaced.add(name)
        at = next((i for i, (n, _) in enumerate(out) if n == name), None)
        out = [h for h in out if h[0] != name]
        out.insert(len(out) if at is None else at, (name, value))
    return out


# -- ranges ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ranges:
    satisfiable: bool
    spans: tuple[tuple[int, int], ...]  # [begin, end) each


def _digits(text: str) -> tuple[int | None, str]:
    """range_utils' readAndRemoveLeadingDigits, with its overflow test on 64 bits."""
    value = used = 0
    for ch in text:
        if not ("0" <= ch <= "9"):
            break
        new = (value * 10 + ord(ch) - 48) & _U64
        if new // 8 < value:
            return None, text
        value = new
        used += 1
    return (value, text[used:]) if used else (None, text)


def ranges(fields: Fields, length: int) -> Ranges | None:
    """The request's Range against a stored body of `length` bytes; None when there is no Range, more
    than one, or one Envoy does not read (not `bytes=`, two ranges, malformed): then it is ignored."""
    values = [v for n, v in fields if n == "range"]
    if len(values) != 1 or not values[0].startswith("bytes="):
        return None
    pieces = values[0][6:].split(",", 1)
    if len(pieces) > 1:
        return None
    first, rest = _digits(pieces[0])
    if not rest.startswith("-"):
        return None
    last, rest = _digits(rest[1:])
    if rest or (first is None and last is None):
        return None
    first = _U64 if first is None else first
    last = _U64 if last is None else last
    if first != _U64 and first > last:
        return None
    if length == 0:
        return Ranges(False, ())
    spans: list[tuple[int, int]] = []
    if first == _U64:  # a suffix: the last `last` bytes
        if last >= length:
            return Ranges(True, ())
        if last:
            spans.append((length - last, length))
    elif first < length:
        if last >= length - 1:
            if first == 0:
                return Ranges(True, ())
            spans.append((first, length))
        else:
            spans.append((first, last + 1))
    return Ranges(bool(spans), tuple(spans))


def now() -> float:
    """Wall-clock time: ages are measured against Date headers."""
    return time.time()
