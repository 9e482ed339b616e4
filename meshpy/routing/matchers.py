"""Compiled matchers for the route table: domains, path prefix runs, strings, headers, query parameters.

Everything here is built once when a route table is compiled and then only called. The per-request
state (`RequestView`) is created lazily by the table, and only for a route that actually has header,
query or method conditions, so the common route (a path prefix and nothing else) never pays for it.

Semantics follow Envoy 1.40 (`HeaderUtility::matchHeaders`, `ConfigUtility::matchQueryParams`,
`StringMatcherImpl`, plus behaviour observed on the binary):

- A header that appears on several lines matches when any one line matches; `invert` flips that
  result. (Checked against the envoy 1.40 binary: lines `x: a` and `x: b` match `exact: b` and do not
  match `exact: "a,b"`; older Envoy documentation describes a ","-joined value instead.)
- An absent header matches only a `present` matcher that is inverted (Envoy's `present_match: false`);
  every value matcher fails on an absent header, inverted or not (`treat_missing_header_as_empty` is
  not modelled).
- `ignore_case` applies to exact/prefix/suffix/contains; Envoy ignores it for regexes, and so do we.
  (Known difference: `str.lower` also folds latin-1 letters such as 0xC9; Envoy folds ASCII only.)
- Regexes must match the whole value (RE2 FullMatch in Envoy; `re.fullmatch` here).
- Query parameters are split on "&" and at the first "=", not percent-decoded (Envoy's
  `parseQueryString`); a key without "=" has the value ""; the first occurrence of a key is matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar, final

from meshpy.errors import ConfigError
from meshpy.model.routes import HeaderMatch, QueryMatch, StringMatch

StringTest = Callable[[str], bool]
T = TypeVar("T")

_SUBSTITUTION = re.compile(r"\\(.)", re.DOTALL)

# Pseudo-header codes: these are not on the HTTP/1 wire, they come from the request line.
_NOT_PSEUDO: Final = 0
_METHOD: Final = 1
_AUTHORITY: Final = 2
_PATH: Final = 3
_SCHEME: Final = 4
_PSEUDO = {":method": _METHOD, ":authority": _AUTHORITY, ":path": _PATH, ":scheme": _SCHEME}


def config_text(value: str) -> str:
    """A config string in the same form as a wire value decoded as latin-1.

    Wire bytes are decoded as latin-1 (one char per byte); Envoy compares config strings byte-wise
    against the wire, and config strings are UTF-8. Re-decoding the UTF-8 bytes as latin-1 makes a
    non-ASCII config value compare equal to exactly the bytes Envoy would accept.
    """
    return value.encode("utf-8").decode("latin-1")


def compile_regex(pattern: str, path: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError.at(path, f"invalid regex {pattern!r}: {exc}") from None


def compile_string_match(sm: StringMatch, path: str) -> StringTest | None:
    """A one-argument test for a value, or None for `present` (existence is the whole test)."""
    kind = sm.kind
    if kind == "present":
        return None
    if kind == "regex":
        # Envoy: ignore_case "has no effect for safe_regex".
        fullmatch = compile_regex(sm.value, path).fullmatch
        return lambda s: fullmatch(s) is not None
    v = config_text(sm.value)
    if sm.ignore_case:
        v = v.lower()
        if kind == "exact":
            return lambda s: s.lower() == v
        if kind == "prefix":
            return lambda s: s.lower().startswith(v)
        if kind == "suffix":
            return lambda s: s.lower().endswith(v)
        if kind == "contains":
            return lambda s: v in s.lower()
    else:
        if kind == "exact":
            return v.__eq__  # a C slot, cheaper to call than a lambda
        if kind == "prefix":
            return lambda s: s.startswith(v)
        if kind == "suffix":
            return lambda s: s.endswith(v)
        if kind == "contains":
            return lambda s: v in s
    raise ConfigError.at(path, f"unknown string match kind {kind!r}")


def split_path(path: str) -> tuple[str, str]:
    """(path without query and fragment, query string without "?" and fragment)."""
    q = path.find("?")
    if q < 0:
        h = path.find("#")
        return (path, "") if h < 0 else (path[:h], "")
    head = path[:q]
    h = head.find("#")
    if h >= 0:  # "#" before "?": the "?" belongs to the fragment
        return head[:h], ""
    query = path[q + 1 :]
    h = query.find("#")
    return head, (query if h < 0 else query[:h])


def parse_query(query: str) -> dict[str, str]:
    """First value of each key, Envoy's `parseQueryString` rules (no decoding, blanks kept)."""
    params: dict[str, str] = {}
    if not query:
        return params
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if name not in params:
            params[name] = value if eq else ""
    return params


@final
class RequestView:
    """Lazily computed views of one request, shared by the routes tried for it."""

    __slots__ = ("_headers_by_name", "_query", "authority", "headers", "method", "path")

    def __init__(
        self, authority: str, path: str, method: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        self.authority = authority
        self.path = path
        self.method = method
        self.headers = headers
        self._headers_by_name: dict[bytes, list[str] | None] | None = None
        self._query: dict[str, str] | None = None

    def header(self, name: bytes) -> list[str] | None:
        """The values of one header, one per line, latin-1 decoded; None when absent."""
        cache = self._headers_by_name
        if cache is None:
            cache = self._headers_by_name = {}
        elif name in cache:
            return cache[name]
        values = [v.decode("latin-1") for n, v in self.headers if n == name] or None
        cache[name] = values
        return values

    def query(self) -> dict[str, str]:
        q = self._query
        if q is None:
            q = self._query = parse_query(split_path(self.path)[1])
        return q


@final
class HeaderMatcher:
    __slots__ = ("_invert", "_name", "_pseudo", "_test")

    def __init__(self, hm: HeaderMatch, path: str) -> None:
        self._pseudo = _PSEUDO.get(hm.name, _NOT_PSEUDO)
        if hm.name.startswith(":") and self._pseudo == _NOT_PSEUDO:
            raise ConfigError.at(path + ".name", f"unsupported pseudo-header {hm.name!r}")
        self._name = hm.name.lower().encode("latin-1")
        self._test = compile_string_match(hm.match, path + ".match")
        self._invert = hm.invert

    def matches(self, req: RequestView) -> bool:
        pseudo = self._pseudo
        values: list[str] | None
        if pseudo == _NOT_PSEUDO:
            values = req.header(self._name)
        elif pseudo == _METHOD:
            values = [req.method]
        elif pseudo == _PATH:
            values = [req.path]
        elif pseudo == _AUTHORITY:
            values = [req.authority]
        else:
            values = ["http"]  # the listener is plain HTTP; TLS termination is not modelled here
        test = self._test
        if values is None:
            # Envoy: an absent header matches only `present_match: false` (present + invert).
            return test is None and self._invert
        if test is None:
            return not self._invert
        if len(values) == 1:
            return test(values[0]) != self._invert
        return any(map(test, values)) != self._invert


@final
class QueryMatcher:
    __slots__ = ("_name", "_test")

    def __init__(self, qm: QueryMatch, path: str) -> None:
        self._name = config_text(qm.name)
        self._test = compile_string_match(qm.match, path + ".match")

    def matches(self, req: RequestView) -> bool:
        value = req.query().get(self._name)
        if value is None:
            return False
        test = self._test
        return True if test is None else test(value)


def redirect_host(authority: str, scheme: str, new_scheme: str, new_port: str) -> str:
    """Envoy's `processRequestHost`: drop the request's port when the redirect sets one, or when the
    scheme changes and the port was the old scheme's default (http://h:80 -> https://h)."""
    if not authority:
        return authority
    if authority[0] == "[":
        end = authority.rfind("]:")
        end = end + 1 if end >= 0 else -1
    else:
        end = authority.rfind(":")
    if end < 0:
        return authority
    port = authority[end:]
    remove = bool(new_port)
    if new_scheme != scheme:
        remove = remove or (scheme == "https" and port == ":443") or (scheme == "http" and port == ":80")
    return authority[:end] if remove else authority


def re2_substitution(substitution: str, pattern: re.Pattern[str], where: str) -> str:
    """RE2 rewrite strings know only \\0-\\9 and \\\\; Python's \\0 is an octal escape, so spell
    group references as \\g<n>. Validated here so a bad reference fails the config, not a request."""

    def convert(m: re.Match[str]) -> str:
        c = m.group(1)
        if c.isdigit():
            return f"\\g<{c}>"
        if c == "\\":
            return "\\\\"
        raise ConfigError.at(f"{where}.regex_rewrite.substitution", f"invalid escape \\{c}")

    converted = _SUBSTITUTION.sub(convert, substitution)
    try:
        pattern.sub(converted, "")
    except (re.error, IndexError) as exc:
        raise ConfigError.at(f"{where}.regex_rewrite.substitution", str(exc)) from None
    return converted


@final
class DomainIndex(Generic[T]):
    """Envoy's virtual host selection: exact domain, then the longest `*suffix` wildcard, then the
    longest `prefix*` wildcard, then `*`. Case-insensitive; a wildcard stands for at least one char."""

    __slots__ = ("_default", "_exact", "_ignore_port", "_prefixes", "_suffixes", "_wild")

    def __init__(self, ignore_port: bool) -> None:
        self._ignore_port = ignore_port
        self._exact: dict[str, T] = {}
        self._default: T | None = None
        # {length: {wildcard text: value}}: one dict lookup per distinct length, not one per domain.
        self._wild: tuple[dict[int, dict[str, T]], dict[int, dict[str, T]]] = ({}, {})
        self._suffixes: tuple[tuple[int, dict[str, T]], ...] = ()
        self._prefixes: tuple[tuple[int, dict[str, T]], ...] = ()

    def add(self, domain: str, value: T, where: str) -> None:
        d = domain.lower()
        suffixes, prefixes = self._wild
        if d == "*":
            taken = self._default is not None
            self._default = value
        elif d.startswith("*") and "*" not in d[1:]:
            taken = d[1:] in suffixes.get(len(d) - 1, {})
            suffixes.setdefault(len(d) - 1, {})[d[1:]] = value
        elif d.endswith("*") and "*" not in d[:-1]:
            taken = d[:-1] in prefixes.get(len(d) - 1, {})
            prefixes.setdefault(len(d) - 1, {})[d[:-1]] = value
        elif "*" in d or not d:
            raise ConfigError.at(where, f"{domain!r}: a wildcard must be a whole prefix or suffix")
        else:
            taken = d in self._exact
            self._exact[d] = value
        if taken:
            raise ConfigError.at(where, f"duplicate domain {domain!r}")  # Envoy rejects these too
        # Longest first, as Envoy does.
        self._suffixes = tuple(sorted(suffixes.items(), reverse=True))
        self._prefixes = tuple(sorted(prefixes.items(), reverse=True))

    def find(self, authority: str) -> T | None:
        host = authority
        if self._ignore_port:
            # Envoy's HeaderUtility::getPortStart: the last ":" unless it sits inside "[...]" (IPv6).
            colon = host.rfind(":")
            if colon >= 0 and host.rfind("]") < colon:
                host = host[:colon]
        host = host.lower()
        value = self._exact.get(host)
        if value is not None:
            return value
        n = len(host)
        for length, table in self._suffixes:
            if length < n:
                value = table.get(host[n - length :])
                if value is not None:
                    return value
        for length, table in self._prefixes:
            if length < n:
                value = table.get(host[:length])
                if value is not None:
                    return value
        return self._default


@final
class PrefixIndex(Generic[T]):
    r"""A run of consecutive simple, case-sensitive prefix/exact routes, matched in one step.

    Built from (path, is_exact, item) in route order; `lookup` returns the item of the first match.

    Two strategies, both returning the first route of the run that matches, as the linear scan would:
    - by length: one dict per distinct prefix length, keyed by the prefix. The first match is the lowest
      index among path[:length] hits (at most one per length) and the exact-path hit.
    - by regex: an alternation of the escaped prefixes, one group each, in route order. `re.match`
      takes the first alternative that matches at position 0, so `lastindex` names the first matching
      route. Literals only, so no backtracking blow-up; exact paths end in (?=[?#]|\Z).
    Measured (benchmarks/micro_routes.py): a dict probe costs about as much as three or four failed
    alternatives, so the regex is used when there are many distinct lengths.
    """

    __slots__ = ("_by_length", "_exact", "_items", "_regex")

    def __init__(self, entries: Sequence[tuple[str, bool, T]]) -> None:
        self._items = tuple(item for _, _, item in entries)
        by_length: dict[int, dict[str, int]] = {}
        exact: dict[str, int] = {}
        for i, (path, is_exact, _) in enumerate(entries):
            table = exact if is_exact else by_length.setdefault(len(path), {})
            table.setdefault(path, i)  # a duplicate later can never win
        self._by_length = tuple(sorted(by_length.items()))
        self._exact = exact
        self._regex: Callable[[str], re.Match[str] | None] | None = None
        if (len(by_length) + bool(exact)) * 4 > len(entries):
            alternatives = (
                f"({re.escape(path)})" + (r"(?=[?#]|\Z)" if is_exact else "") for path, is_exact, _ in entries
            )
            self._regex = re.compile("|".join(alternatives)).match

    def lookup(self, path: str) -> T | None:
        regex = self._regex
        if regex is not None:
            m = regex(path)
            # Each alternative is exactly one group, so a match always sets lastindex.
            return None if m is None else self._items[m.lastindex - 1]  # type: ignore[operator]
        best = len(self._items)
        n = len(path)
        for length, table in self._by_length:
            if length > n:
                break  # sorted by length: no longer prefix can fit either
            i = table.get(path[:length])
            if i is not None and i < best:
                best = i
        if self._exact:
            i = self._exact.get(split_path(path)[0])
            if i is not None and i < best:
                best = i
        return self._items[best] if best < len(self._items) else None
