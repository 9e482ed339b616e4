"""Envoy route matchers and header edits -> model: RouteMatch, HeaderMatch, QueryMatch, HeaderEdits.

Split from `translate_routes` to keep each module readable on a few screens; the route reader is the
only caller.
"""

from __future__ import annotations

import re
from typing import Any

from meshpy.model.routes import (
    NO_EDITS,
    HeaderAppend,
    HeaderEdits,
    HeaderMatch,
    HeaderValue,
    PathMatchKind,
    QueryMatch,
    RouteMatch,
    StringMatch,
    StringMatchKind,
)
from meshpy.model.yaml_values import is_field_name
from meshpy.xds.translate_base import UNSUPPORTED, Issues, child, item, regex, wrapped

_ROUTE_MATCH = frozenset({"prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters",
                          "connect_matcher", "grpc"})
# Envoy's `grpc: {}` route match: a gRPC request, by its content-type: application/grpc, or with a
# `+codec` after it (not with parameters; not application/grpc-web, which its own filter turns into
# gRPC first). Envoy also asks for POST, but routes before any method check, so GET matches too.
GRPC_CONTENT_TYPE = HeaderMatch(name="content-type",
                                match=StringMatch(kind="regex", value=r"application/grpc(\+.*)?"))
_HEADER_MATCHER = frozenset(
    {
        "name",
        "exact_match",
        "safe_regex_match",
        "present_match",
        "prefix_match",
        "suffix_match",
        "contains_match",
        "string_match",
        "invert_match",
    }
)
_LEGACY_HEADER_KINDS: dict[str, StringMatchKind] = {
    "exact_match": "exact",
    "prefix_match": "prefix",
    "suffix_match": "suffix",
    "contains_match": "contains",
}
_STRING_KINDS: dict[str, StringMatchKind] = {
    "exact": "exact",
    "prefix": "prefix",
    "suffix": "suffix",
    "contains": "contains",
}
# HeaderValueOption.HeaderAppendAction numbers, in proto order.
_APPEND_ACTIONS: dict[int, HeaderAppend] = {
    0: "append",  # APPEND_IF_EXISTS_OR_ADD
    1: "add_if_absent",  # ADD_IF_ABSENT
    2: "overwrite",  # OVERWRITE_IF_EXISTS_OR_ADD
    3: "overwrite_if_exists",  # OVERWRITE_IF_EXISTS
}
# An HTTP method token: what `methods` holds. Anything else stays a `:method` header match.
_METHOD = re.compile(r"[A-Z]+")
_METHOD_ALTERNATION = re.compile(r"\^?\(?([A-Z]+(?:\|[A-Z]+)*)\)?\$?")


def route_match(issues: Issues, msg: Any, path: str) -> RouteMatch:
    issues.fields(msg, path, _ROUTE_MATCH)
    kind = msg.WhichOneof("path_specifier")
    case_sensitive = bool(wrapped(msg, "case_sensitive", True))
    path_kind: PathMatchKind
    if kind == "prefix":
        path_kind, pattern = "prefix", msg.prefix
    elif kind == "path":
        path_kind, pattern = "path", msg.path
    elif kind == "safe_regex":
        path_kind, pattern = "regex", regex(issues, msg.safe_regex, child(path, "safe_regex"))
        # Envoy documents case_sensitive as not applying to safe_regex: the regex decides alone.
        case_sensitive = True
    elif kind == "connect_matcher":
        issues.fields(msg.connect_matcher, child(path, "connect_matcher"), ())
        path_kind, pattern = "prefix", "/"
    else:
        if kind is None:
            issues.add(path, "one of prefix, path, safe_regex or connect_matcher is required")
        return RouteMatch()
    headers = [
        header_match(issues, header, item(child(path, "headers"), i)) for i, header in enumerate(msg.headers)
    ]
    query = tuple(
        _query_match(issues, param, item(child(path, "query_parameters"), i))
        for i, param in enumerate(msg.query_parameters)
    )
    if msg.HasField("grpc"):
        issues.fields(msg.grpc, child(path, "grpc"), ())
        headers.append(GRPC_CONTENT_TYPE)
    methods, headers = _methods_from_headers(headers)
    return RouteMatch(
        path_kind=path_kind,
        path=pattern,
        case_sensitive=case_sensitive,
        headers=tuple(headers),
        query=query,
        methods=methods,
        connect=kind == "connect_matcher",
    )


def _methods_from_headers(headers: list[HeaderMatch]) -> tuple[tuple[str, ...], list[HeaderMatch]]:
    """Lift a lone `:method` matcher that names methods exactly (`GET`, or a regex `^(GET|HEAD)$`)
    into `methods`, the model's direct form, so model -> protos -> model round-trips. Anything fancier
    (inverted, case-insensitive, several `:method` matchers) stays a header match, which means the same."""
    on_method = [h for h in headers if h.name == ":method"]
    if len(on_method) != 1:
        return (), headers
    header = on_method[0]
    match = header.match
    if header.invert or match.ignore_case:
        return (), headers
    if match.kind == "exact" and _METHOD.fullmatch(match.value):
        methods: tuple[str, ...] = (match.value,)
    elif match.kind == "regex" and (found := _METHOD_ALTERNATION.fullmatch(match.value)):
        methods = tuple(found.group(1).split("|"))
    else:
        return (), headers
    return methods, [h for h in headers if h is not header]


def header_match(issues: Issues, msg: Any, path: str) -> HeaderMatch:
    issues.fields(msg, path, _HEADER_MATCHER)
    name = msg.name.lower()
    if not name:
        issues.add(child(path, "name"), "must not be empty")
    elif not is_field_name(name):  # (matched as latin-1 bytes: `x€` crashed the route table)
        issues.add(child(path, "name"), f"{name!r} is not a valid header name")
    kind = msg.WhichOneof("header_match_specifier")
    invert = msg.invert_match
    if kind == "string_match":
        match = string_match(issues, msg.string_match, child(path, "string_match"))
    elif kind in _LEGACY_HEADER_KINDS:
        match = StringMatch(kind=_LEGACY_HEADER_KINDS[kind], value=getattr(msg, kind))
    elif kind == "safe_regex_match":
        match = StringMatch(kind="regex", value=regex(issues, msg.safe_regex_match, child(path, kind)))
    elif kind == "present_match":
        match = StringMatch(kind="present")
        # `present_match: false` means "must be absent": present, inverted (and invert_match flips it).
        invert = invert != (not msg.present_match)
    elif kind is None:
        # Envoy treats a matcher with no specifier as "the header is present".
        match = StringMatch(kind="present")
    else:  # range_match: already reported by `fields`
        match = StringMatch(kind="present")
    return HeaderMatch(name=name, match=match, invert=invert)


def _query_match(issues: Issues, msg: Any, path: str) -> QueryMatch:
    issues.fields(msg, path, {"name", "string_match", "present_match"})
    if not msg.name:
        issues.add(child(path, "name"), "must not be empty")
    if msg.WhichOneof("query_parameter_match_specifier") == "string_match":
        match = string_match(issues, msg.string_match, child(path, "string_match"))
    else:
        # Envoy checks presence when neither is set, and absence for `present_match: false`, which
        # QueryMatch cannot say (it has no invert).
        if msg.HasField("present_match") and not msg.present_match:
            issues.add(child(path, "present_match"), f"false (parameter absent) is {UNSUPPORTED}")
        match = StringMatch(kind="present")
    return QueryMatch(name=msg.name, match=match)


def string_match(issues: Issues, msg: Any, path: str) -> StringMatch:
    issues.fields(msg, path, {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
    kind = msg.WhichOneof("match_pattern")
    if kind in _STRING_KINDS:
        return StringMatch(kind=_STRING_KINDS[kind], value=getattr(msg, kind), ignore_case=msg.ignore_case)
    if kind == "safe_regex":
        # Envoy documents ignore_case as having no effect on safe_regex.
        return StringMatch(kind="regex", value=regex(issues, msg.safe_regex, child(path, "safe_regex")))
    if kind is None:
        issues.add(path, "one of exact, prefix, suffix, contains or safe_regex is required")
    return StringMatch(kind="exact")


def header_edits(issues: Issues, msg: Any, path: str, direction: str) -> HeaderEdits:
    """`{direction}_headers_to_add` / `_to_remove` of a route, virtual host or route configuration."""
    add_name, remove_name = f"{direction}_headers_to_add", f"{direction}_headers_to_remove"
    added = tuple(
        header_value(issues, option, item(child(path, add_name), i))
        for i, option in enumerate(getattr(msg, add_name))
    )
    removed = []
    for i, name in enumerate(getattr(msg, remove_name)):
        _check_editable(issues, name, item(child(path, remove_name), i))
        removed.append(name.lower())
    if not added and not removed:
        return NO_EDITS
    return HeaderEdits(add=added, remove=tuple(removed))


def header_value(issues: Issues, option: Any, path: str) -> HeaderValue:
    """A HeaderValueOption: a literal header to add, and how."""
    issues.fields(option, path, {"header", "append", "append_action"})
    header = option.header
    header_path = child(path, "header")
    issues.fields(header, header_path, {"key", "value", "raw_value"})
    _check_editable(issues, header.key, child(header_path, "key"))
    if header.raw_value:
        try:
            raw = header.raw_value.decode()
        except UnicodeDecodeError:
            issues.add(child(header_path, "raw_value"), "must be UTF-8")
            raw = ""
        value = _literal(issues, raw, child(header_path, "raw_value"))
    else:
        value = _literal(issues, header.value, child(header_path, "value"))
    if not value and not option.keep_empty_value:  # keep_empty_value is reported by `fields`
        # Envoy drops an empty value unless keep_empty_value is set; neither is modelled.
        issues.add(header_path, "an empty header value is not supported by meshpy")
    if option.HasField("append"):
        if option.append_action:
            issues.add(path, "append and append_action cannot both be set")
        # The deprecated BoolValue: true (its default) appends, false overwrites.
        append: HeaderAppend = "append" if option.append.value else "overwrite"
    else:
        append = _APPEND_ACTIONS.get(option.append_action, "append")
    return HeaderValue(name=header.key.lower(), value=value, append=append)


def _check_editable(issues: Issues, name: str, path: str) -> None:
    # Envoy refuses to add or remove pseudo-headers and Host through header edits.
    if not name:
        issues.add(path, "must not be empty")
    elif name.startswith(":") or name.lower() == "host":
        issues.add(path, f"{name} cannot be edited")
    elif not is_field_name(name):
        # As meshpy's YAML: a name that is no RFC 9110 token would not survive HTTP/1.1 (`x b:` makes
        # another field of the line) and one beyond latin-1 cannot be written at all (found by fuzzing).
        issues.add(path, f"{name!r} is not a valid header name")


def _literal(issues: Issues, value: str, path: str) -> str:
    """Envoy runs header values through its substitution formatter, where `%...%` is a command and
    `%%` a literal percent sign. meshpy has no formatter: plain values only, `%%` unescaped."""
    if "\r" in value or "\n" in value or "\x00" in value:
        # Envoy's HTTP_HEADER_VALUE rule refuses them too; written out, CRLF would add a header line.
        issues.add(path, "header values must not contain CR, LF or NUL")
    if "%" not in value:
        return value
    if "%" in value.replace("%%", ""):
        issues.add(path, "header formatters are not supported (write %% for a literal %)")
    return value.replace("%%", "%")
