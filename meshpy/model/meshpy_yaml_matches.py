"""Route matches in the meshpy YAML: path (prefix, exact path, regex), headers, query, methods.

Split from `meshpy_yaml_routes`. Regexes are Python `re` patterns, compiled here so that a bad one is
a config error rather than a failure on the first request.
"""

from __future__ import annotations

import re
from typing import Any

from meshpy.model.routes import (
    HeaderMatch,
    PathMatchKind,
    QueryMatch,
    RouteMatch,
    StringMatch,
    StringMatchKind,
)
from meshpy.model.yaml_reader import Reader, as_bool, as_name, as_str, child, item
from meshpy.model.yaml_values import yaml_kind

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")  # RFC 9110 token, lower-cased
_PATH_KINDS = ("prefix", "path", "regex")
_MATCH_KEYS = (*_PATH_KINDS, "case_sensitive", "headers", "query", "methods", "connect")
_KIND_OF: dict[str, PathMatchKind] = {"prefix": "prefix", "path": "path", "regex": "regex"}
_STRING_KINDS: tuple[StringMatchKind, ...] = ("exact", "prefix", "suffix", "contains", "regex", "present")


def compile_regex(pattern: object) -> str:
    """A regex string that Python's `re` accepts (the dialect meshpy matches with)."""
    text = as_str(pattern)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regex {text!r}: {exc}") from None
    return text


def header_name(value: object, *, pseudo: bool = False) -> str:
    name = as_str(value).lower()
    bare = name[1:] if pseudo and name.startswith(":") else name
    if not TOKEN.fullmatch(bare):
        raise ValueError(f"{name!r} is not a valid header name")
    return name


def absolute_path(value: object) -> str:
    text = as_str(value)
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with /")
    return text


def read_match(r: Reader, node: object, path: str) -> RouteMatch:
    if isinstance(node, str):
        return RouteMatch(path=absolute_path(node)) if node.startswith("/") else _bad_match(r, path, node)
    f = r.mapping(node, path, _MATCH_KEYS)
    if f is None:
        return RouteMatch()
    kinds = f.present(*_PATH_KINDS)
    connect = f.get("connect", as_bool, False)
    if connect:
        for key in f.present(*_PATH_KINDS, "case_sensitive", "query", "methods"):
            r.error(f.at(key), "does not apply to a CONNECT match (a CONNECT request has no path)")
    if len(kinds) > 1:
        r.error(path, f"has {' and '.join(kinds)}; a match has at most one of prefix, path, regex")
    parsers = {"prefix": absolute_path, "path": _exact_path, "regex": compile_regex}
    values = {kind: f.get(kind, parsers[kind], "/") for kind in kinds}  # check each one written
    kind = kinds[0] if kinds else "prefix"
    case_sensitive = f.get("case_sensitive", as_bool, True)
    if kind == "regex" and not case_sensitive:
        r.error(f.at("case_sensitive"), "does not apply to regex; use (?i) in the pattern")
    return RouteMatch(
        path_kind=_KIND_OF[kind],
        path=values.get(kind, "/"),
        case_sensitive=case_sensitive,
        headers=tuple(_header_matches(r, f.raw("headers"), f.at("headers"))) if "headers" in f else (),
        query=tuple(_query_matches(r, f.raw("query"), f.at("query"))) if "query" in f else (),
        methods=tuple(_methods(r, f.raw("methods"), f.at("methods"))) if "methods" in f else (),
        connect=connect,
    )


def _bad_match(r: Reader, path: str, node: str) -> RouteMatch:
    r.error(path, f"{node!r} must start with / (a string match is a path prefix)")
    return RouteMatch()


def _exact_path(value: object) -> str:
    text = absolute_path(value)
    if "?" in text:
        raise ValueError("path matches ignore the query string; match query parameters with query:")
    return text


def _methods(r: Reader, node: object, path: str) -> list[str]:
    methods: list[str] = []
    for i, value in enumerate(r.sequence(node, path, allow_single=True)):
        try:
            method = as_str(value).upper()
            if not TOKEN.fullmatch(method.lower()):
                raise ValueError(f"{method!r} is not an HTTP method")
            methods.append(method)
        except ValueError as exc:
            r.error(item(path, i), str(exc))
    return methods


def _header_matches(r: Reader, node: object, path: str) -> list[HeaderMatch]:
    found: list[HeaderMatch] = []
    for at, name, spec in _matcher_items(r, node, path):
        try:
            name = header_name(name, pseudo=True)
        except ValueError as exc:
            r.error(at, str(exc))
            continue
        match, invert = _string_match(r, spec, at, allow_invert=True)
        found.append(HeaderMatch(name=name, match=match, invert=invert))
    return found


def _query_matches(r: Reader, node: object, path: str) -> list[QueryMatch]:
    found: list[QueryMatch] = []
    for at, name, spec in _matcher_items(r, node, path):
        try:
            name = as_name(name)  # query parameter names are case-sensitive, unlike header names
        except ValueError as exc:
            r.error(at, str(exc))
            continue
        match, _ = _string_match(r, spec, at, allow_invert=False)
        found.append(QueryMatch(name=name, match=match))
    return found


def _matcher_items(r: Reader, node: object, path: str) -> list[tuple[str, Any, Any]]:
    """(path, name, spec) for `{name: value-or-spec}` and for `[{name: ..., exact: ...}, ...]`."""
    if isinstance(node, dict):
        return [(child(path, str(name)), name, spec) for name, spec in node.items()]
    items: list[tuple[str, Any, Any]] = []
    for i, entry in enumerate(r.sequence(node, path)):
        if not isinstance(entry, dict) or "name" not in entry:
            r.error(
                item(path, i),
                "expected a mapping with a name"
                if isinstance(entry, dict)
                else f"expected a mapping, got a {yaml_kind(entry)}",
            )
            continue
        items.append((item(path, i), entry["name"], {k: v for k, v in entry.items() if k != "name"}))
    return items


def _string_match(r: Reader, spec: object, path: str, *, allow_invert: bool) -> tuple[StringMatch, bool]:
    if not isinstance(spec, dict):
        try:
            return StringMatch(kind="exact", value=as_str(spec)), False
        except ValueError as exc:
            r.error(path, f"{exc}; or give a mapping like {{prefix: ...}} or {{present: true}}")
            return StringMatch(kind="present"), False
    keys = (*_STRING_KINDS, "ignore_case", *(("invert",) if allow_invert else ()))
    f = r.mapping(spec, path, keys, {} if allow_invert else {"invert": "query matches cannot be inverted"})
    kinds = [k for k in _STRING_KINDS if f is not None and k in f]
    if f is None or len(kinds) != 1:
        if f is not None:
            r.error(path, f"needs exactly one of {', '.join(_STRING_KINDS)}")
        return StringMatch(kind="present"), False
    kind = kinds[0]
    invert = f.get("invert", as_bool, False)
    ignore_case = f.get("ignore_case", as_bool, False)
    if ignore_case and kind in ("regex", "present"):
        r.error(f.at("ignore_case"), f"does not apply to {kind}" + (" (use (?i))" if kind == "regex" else ""))
    if kind == "present":
        present = f.get("present", as_bool, True)
        if not present and not allow_invert:
            r.error(f.at("present"), "query matches cannot require absence")
        return StringMatch(kind="present"), invert != (not present)  # present: false == present + invert
    parse = compile_regex if kind == "regex" else as_str
    value = f.get(kind, parse, "")
    if kind in ("prefix", "suffix", "contains") and kind in f and value == "":
        r.error(f.at(kind), "must not be empty")
    return StringMatch(kind=kind, value=value, ignore_case=ignore_case), invert


# For other readers of string matches (SAN matchers in meshpy.model.meshpy_yaml_tls).
string_match = _string_match
