"""Envoy's leniencies in reading a config, applied before protobuf's JSON parser sees it.

Envoy reads YAML and JSON through protobuf's C++ JSON parser with case-insensitive enums, and that
parser takes shapes Python's `json_format` refuses. Real configs rely on them (checked one by one with
`envoy --mode validate`), so meshpy rewrites them into the canonical form first:

- an enum by name in any case (`type: static`, `codec_type: auto`), or by number;
- a single value where a repeated field is expected (`domains: "*"`, `filter_chains: {filters: ...}`);
- a Duration as `{seconds: 60, nanos: 5}` (either as a number or a string);
- a wrapper (UInt32Value, BoolValue, ...) as `{value: 5}`;
- a bool as the string `"true"` or `"false"`.

The walk follows the message descriptors, into `typed_config` and other Any fields whose `@type`
resolves, and says what is wrong with a value of the wrong kind in meshpy's words, at its path (a
word where a number goes, a list where one value goes). Anything else it does not recognise is left
for the parser to judge; the input is never changed in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import descriptor_pool  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.descriptor import Descriptor, FieldDescriptor  # type: ignore[import-untyped, unused-ignore]

from meshpy.errors import ConfigIssue
from meshpy.xds.translate_base import child, item

_WRAPPERS = frozenset(f"google.protobuf.{n}" for n in (
    "BoolValue", "BytesValue", "DoubleValue", "FloatValue", "Int32Value", "Int64Value", "StringValue",
    "UInt32Value", "UInt64Value"))
# Messages whose JSON form is not a plain object of their fields: left to the parser as they are.
_OPAQUE = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue",
                     "google.protobuf.Timestamp", "google.protobuf.FieldMask", "google.protobuf.Empty"})
_DURATION = "google.protobuf.Duration"
_ANY = "google.protobuf.Any"
_BOOL_STRINGS = {"true": True, "false": False}


class _Walk:
    __slots__ = ("problems", "resolve")

    def __init__(self, resolve: Callable[[str], Descriptor | None]) -> None:
        self.resolve = resolve
        self.problems: list[ConfigIssue] = []


def lenient(data: Any, message: Descriptor, resolve: Callable[[str], Descriptor | None],
            path: str = "") -> tuple[Any, list[ConfigIssue]]:
    """`data` (a mapping for `message`) in the form json_format reads, as Envoy would have read it,
    and the values of the wrong kind found on the way. `resolve` finds an Any's message by type URL
    (None when unknown: that subtree is left alone)."""
    w = _Walk(resolve)
    return _message(w, data, message, path), w.problems


def _message(w: _Walk, data: Any, desc: Descriptor, path: str) -> Any:
    name = desc.full_name
    if name in _OPAQUE:
        return data
    if not isinstance(data, Mapping):
        w.problems.append(ConfigIssue(path, f"must be a mapping (of {name}'s fields), got {_kind(data)}"))
        return data
    if name == _ANY:
        return _any(w, data, path)
    fields = _fields(desc)
    out = {}
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        out[key] = value if field is None else _field(w, value, field, child(path, key))
    return out


def _any(w: _Walk, data: Mapping[str, Any], path: str) -> Any:
    url = data.get("@type")
    if not isinstance(url, str):
        return data
    desc = w.resolve(url)
    if desc is None:
        return data
    if desc.full_name in _WRAPPERS or desc.full_name == _DURATION or desc.full_name in _OPAQUE:
        # Well-known types keep their JSON under `value` inside an Any.
        if "value" not in data:
            return data
        return {**data, "value": _single(w, data["value"], desc, child(path, "value"))}
    body = _message(w, {k: v for k, v in data.items() if k != "@type"}, desc, path)
    return {"@type": url, **body}


def _field(w: _Walk, value: Any, field: FieldDescriptor, path: str) -> Any:
    if field.is_repeated:
        if _is_map(field):
            if not isinstance(value, Mapping):
                w.problems.append(ConfigIssue(path, f"must be a mapping, got {_kind(value)}"))
                return value
            value_field = field.message_type.fields_by_name["value"]
            return {k: _value(w, v, value_field, child(path, str(k))) for k, v in value.items()}
        if not isinstance(value, list):
            return [_value(w, value, field, path)]  # Envoy takes one value for a list of them
        return [_value(w, v, field, item(path, i)) for i, v in enumerate(value)]
    return _value(w, value, field, path)


def _value(w: _Walk, value: Any, field: FieldDescriptor, path: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _single(w, value, field.message_type, path)
    if value is None:
        return value  # (null: the field's default, as json_format and Envoy read it)
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(w, value, field, path)
    return _scalar(w, value, kind, path)


def _single(w: _Walk, value: Any, desc: Descriptor, path: str) -> Any:
    """One value of a message type, well-known types included."""
    name = desc.full_name
    if name in _WRAPPERS:
        if isinstance(value, Mapping) and set(value) == {"value"}:
            value = value["value"]  # `{value: 5}` for a UInt32Value
        if value is None:
            return value
        return _scalar(w, value, desc.fields_by_name["value"].type, path)
    if name == _DURATION:
        return _duration(w, value, path)
    if value is None:
        return value
    return _message(w, value, desc, path)


_INTS = frozenset({FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT32,
                   FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64})
_UINTS = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
                    FieldDescriptor.TYPE_FIXED64})
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


def _scalar(w: _Walk, value: Any, kind: int, path: str) -> Any:
    if kind == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, str):
            value = _BOOL_STRINGS.get(value, value)
        if not isinstance(value, bool):
            w.problems.append(ConfigIssue(path, f"must be true or false, got {_kind(value)}"))
        return value
    if kind in _INTS or kind in _UINTS:
        number = value
        if isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                number = None
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        if not isinstance(number, int) or isinstance(number, bool):
            w.problems.append(ConfigIssue(path, f"must be an integer, got {_kind(value)}"))
        elif kind in _UINTS and number < 0:
            w.problems.append(ConfigIssue(path, f"must not be negative, got {number}"))
        return value
    if kind in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            w.problems.append(ConfigIssue(path, f"must be a number, got {_kind(value)}"))
        return value
    if kind == FieldDescriptor.TYPE_STRING and isinstance(value, Mapping | list):
        w.problems.append(ConfigIssue(path, f"must be a string, got {_kind(value)}"))
    return value


def _kind(value: Any) -> str:
    """A value as an error names it."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _duration(w: _Walk, value: Any, path: str) -> Any:
    """`{seconds: S, nanos: N}` as the string json_format reads (`S.NNNNNNNNNs`)."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, Mapping) or not value or not set(value) <= {"seconds", "nanos"}:
        w.problems.append(ConfigIssue(path, f"must be a duration such as 5s or 0.25s, got {_kind(value)}"))
        return value
    try:
        seconds = int(value.get("seconds", 0))
        nanos = int(value.get("nanos", 0))
    except (TypeError, ValueError):
        return value  # (the parser says what is wrong with it)
    if isinstance(value.get("seconds", 0), bool) or isinstance(value.get("nanos", 0), bool):
        return value
    total = seconds * 1_000_000_000 + nanos
    sign = "-" if total < 0 else ""
    whole, frac = divmod(abs(total), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}s" if frac else f"{sign}{whole}s"


def _enum(w: _Walk, value: Any, field: FieldDescriptor, path: str) -> Any:
    """An enum by name in any case, as Envoy reads them, or by number."""
    values = field.enum_type.values_by_name
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in values:
            return value
        folded = {n.upper(): n for n in values}
        if value.upper() in folded:
            return folded[value.upper()]
    names = ", ".join(values)
    if isinstance(value, str):
        w.problems.append(ConfigIssue(path, f"unknown value {value!r} (one of {names}, in any case)"))
    else:
        w.problems.append(ConfigIssue(path, f"must be one of {names} (in any case), got {_kind(value)}"))
    return value


def _fields(desc: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by proto name and by JSON name (json_format takes both)."""
    cached = _FIELDS.get(desc.full_name)
    if cached is None:
        cached = {}
        for f in desc.fields:
            cached[f.name] = f
            cached[f.json_name] = f
        _FIELDS[desc.full_name] = cached
    return cached


_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _is_map(field: FieldDescriptor) -> bool:
    msg = field.message_type
    return msg is not None and msg.GetOptions().map_entry


def resolver(import_type: Callable[[str], bool]) -> Callable[[str], Descriptor | None]:
    """A `resolve` for `lenient`: the default pool's message for a type URL, importing the generated
    module that defines it when it is not loaded yet (`import_type`)."""
    pool = descriptor_pool.Default()

    def resolve(url: str) -> Descriptor | None:
        name = url.rsplit("/", 1)[-1]
        try:
            return pool.FindMessageTypeByName(name)
        except KeyError:
            pass
        if not import_type(url):
            return None
        try:
            return pool.FindMessageTypeByName(name)
        except KeyError:
            return None

    return resolve
