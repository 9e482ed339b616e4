"""Envoy's StringMatcher (envoy.type.matcher.v3) for built-in filters: checked at load, compiled to a
predicate once, so that a request pays one call per matcher."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from meshpy.xds.translate_base import Issues, checked_pattern, child

Predicate = Callable[[str], bool]


def check_matcher(issues: Issues, matcher: Any, path: str) -> None:
    issues.fields(matcher, path, {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
    if matcher.HasField("safe_regex"):
        issues.fields(matcher.safe_regex, child(path, "safe_regex"), {"google_re2", "regex"})
        checked_pattern(issues, matcher.safe_regex.regex, child(path, "safe_regex.regex"))
    elif matcher.WhichOneof("match_pattern") is None:
        issues.add(path, "one of exact, prefix, suffix, contains or safe_regex is required")


def check_list(issues: Issues, matchers: Any, path: str) -> None:
    """A ListStringMatcher."""
    issues.fields(matchers, path, {"patterns"})
    for i, m in enumerate(matchers.patterns):
        check_matcher(issues, m, f"{path}.patterns[{i}]")


def predicate(matcher: Any) -> Predicate:
    """A checked StringMatcher as a function of the value."""
    kind = matcher.WhichOneof("match_pattern")
    fold = matcher.ignore_case
    if kind == "safe_regex":
        compiled = re.compile(matcher.safe_regex.regex)
        return lambda s: compiled.fullmatch(s) is not None
    want: str = getattr(matcher, kind)
    if fold:
        want = want.lower()
    tests: dict[str, Callable[[str, str], bool]] = {
        "exact": lambda s, w: s == w, "prefix": lambda s, w: s.startswith(w),
        "suffix": lambda s, w: s.endswith(w), "contains": lambda s, w: w in s}
    test = tests[kind]
    if fold:
        return lambda s: test(s.lower(), want)
    return lambda s: test(s, want)


def any_of(matchers: Iterable[Any]) -> Predicate:
    """True when any matcher of the list matches (none: never)."""
    tests = tuple(predicate(m) for m in matchers)
    return lambda s: any(t(s) for t in tests)
