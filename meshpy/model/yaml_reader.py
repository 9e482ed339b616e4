"""The machinery for reading a parsed YAML document into the model while collecting every issue.

A person fixing a config wants the whole list at once, so reading never stops at the first problem:
a bad value is recorded with its path and replaced by a placeholder, reading goes on, and the caller
raises `ConfigError` with everything at the end. Placeholders never escape: any recorded issue means
no model is returned.

Scalar converters (`as_str`, `as_bool`, ...) raise `ValueError` with a reason, like the parsers in
`yaml_values`; `Fields.get` turns that into an issue at the field's path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from meshpy.errors import ConfigIssue
from meshpy.model.yaml_values import parse_duration, yaml_kind

T = TypeVar("T")
D = TypeVar("D")

# PyYAML reads YAML 1.1, where a bare `off`, `no` or `false` is the boolean False: accept all of them,
# plus null, wherever a value can be switched off.
_OFF_WORDS = frozenset({"off", "none", "disabled"})


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


class Reader:
    """Issues found so far, plus the aliases that map model paths back to where they were written.

    Cross-reference checks (`model.check`) speak in model paths (`listeners[0].virtual_hosts[0]...`);
    short forms make those differ from the YAML (`listeners[0].routes[2]`), so each short form records
    an alias and `to_yaml` rewrites a model path by its longest aliased prefix.
    """

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self._aliases: dict[str, str] = {}

    def error(self, path: str, reason: str) -> None:
        self.issues.append(ConfigIssue(path, reason))

    def alias(self, model_path: str, yaml_path: str) -> None:
        if model_path != yaml_path:
            self._aliases[model_path] = yaml_path

    def to_yaml(self, model_path: str) -> str:
        best = ""
        for prefix in self._aliases:
            if len(prefix) > len(best) and _is_under(model_path, prefix):
                best = prefix
        return self._aliases[best] + model_path[len(best) :] if best else model_path

    def reported_near(self, path: str) -> bool:
        """Whether an issue was already recorded at `path`, above it or below it: a cross-reference
        problem there is most likely a consequence of that issue (a cluster name that failed to
        parse, a split whose every entry was invalid), not news."""
        return any(_is_under(path, issue.path) or _is_under(issue.path, path) for issue in self.issues)

    def mapping(
        self,
        value: object,
        path: str,
        allowed: Collection[str] | None,
        misplaced: Mapping[str, str] | None = None,
    ) -> Fields | None:
        """The mapping at `path`, checked for unknown keys unless `allowed` is None (a mapping of names
        to values, like `split: {v1: 90}`); None (with an issue) if it is not a mapping."""
        if not isinstance(value, Mapping):
            self.error(path, f"expected a mapping, got a {yaml_kind(value)}")
            return None
        return Fields(self, path, value, allowed, misplaced or {})

    def sequence(self, value: object, path: str, *, allow_single: bool = False) -> list[Any]:
        """The list at `path`. With `allow_single`, a lone scalar or mapping counts as a one-item list,
        so `domains: api.example.com` reads like `domains: [api.example.com]`."""
        if isinstance(value, list):
            return value
        if allow_single and value is not None:
            return [value]
        self.error(path, f"expected a list, got a {yaml_kind(value)}")
        return []


class Fields:
    """One YAML mapping being read. Unknown keys are reported as soon as it is opened, with the
    closest known key as a suggestion, or with a specific reason for keys that belong elsewhere
    (`idle_timeout` on an http listener)."""

    def __init__(
        self,
        reader: Reader,
        path: str,
        data: Mapping[Any, Any],
        allowed: Collection[str] | None,
        misplaced: Mapping[str, str],
    ) -> None:
        self.reader = reader
        self.path = path
        self.data = data
        if allowed is not None:
            self._check_keys(allowed, misplaced)

    def _check_keys(self, allowed: Collection[str], misplaced: Mapping[str, str]) -> None:
        reader, path = self.reader, self.path
        for key in self.data:
            if not isinstance(key, str):
                reader.error(child(path, str(key)), f"keys must be strings, got a {yaml_kind(key)}")
            elif key in misplaced:
                reader.error(child(path, key), misplaced[key])
            elif key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                reader.error(child(path, key), f"unknown key{hint}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def at(self, key: str) -> str:
        return child(self.path, key)

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def present(self, *keys: str) -> list[str]:
        return [key for key in keys if key in self.data]

    def get(self, key: str, parse: Callable[[Any], T], default: D) -> T | D:
        """The parsed value of `key`, or `default` when it is absent or invalid (invalid is recorded)."""
        if key not in self.data:
            return default
        try:
            return parse(self.data[key])
        except ValueError as exc:
            self.reader.error(self.at(key), str(exc))
            return default

    def require(self, key: str, parse: Callable[[Any], T], placeholder: D) -> T | D:
        if key not in self.data:
            self.reader.error(self.path, f"missing required key {key!r}")
            return placeholder
        return self.get(key, parse, placeholder)


# Scalar converters. Each raises ValueError with a reason.


def as_str(value: object) -> str:
    """A string; numbers are taken as written (`x-version: 2`) since YAML made them numbers, not the
    author. Booleans are refused because `on`/`yes` turning into True is a YAML trap, not intent."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bool):
        raise ValueError("expected a string, got a boolean (quote it: YAML reads yes/no/on/off as booleans)")
    raise ValueError(f"expected a string, got a {yaml_kind(value)}")


def as_name(value: object) -> str:
    """A non-empty name without surrounding whitespace."""
    if not isinstance(value, str):
        raise ValueError(f"expected a name, got a {yaml_kind(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError(f"{value!r} has leading or trailing whitespace")
    return value


def as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got a {yaml_kind(value)}")
    return value


def as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got a {yaml_kind(value)}")
    return value


def as_positive_int(value: object) -> int:
    number = as_int(value)
    if number < 1:
        raise ValueError(f"must be a positive integer, got {number}")
    return number


def as_non_negative_int(value: object) -> int:
    number = as_int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def is_off(value: object) -> bool:
    return value is None or value is False or (isinstance(value, str) and value.strip().lower() in _OFF_WORDS)


def as_duration(value: object) -> float:
    """A duration that cannot be switched off (0 allowed)."""
    if is_off(value):
        raise ValueError("cannot be turned off; give a duration like 5s")
    return parse_duration(value)


def as_positive_duration(value: object) -> float:
    seconds = as_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def as_route_idle_timeout(value: object) -> float:
    """A route's idle timeout: `off`, null or 0 give 0.0, "none for this route" (Envoy's 0s)."""
    if is_off(value):
        return 0.0
    return as_duration(value)


def as_optional_timeout(value: object) -> float | None:
    """A timeout where `off`, null or 0 mean "no timeout", as 0 does in Envoy."""
    if is_off(value):
        return None
    return parse_duration(value) or None
