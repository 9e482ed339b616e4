"""Runtime values as Envoy 1.40 reads them: a static or RTDS layer's protobuf Struct, flattened to
dotted keys, and the text of a disk layer's file or an admin layer's `/runtime_modify` value.

Envoy keeps, for each key, the text it shows in `/runtime` and what that text reads as (see
meshpy.model.runtime.Entry), following `SnapshotImpl::createEntry`:
- a number sets the double; an integral one under 2^31 the boolean too (0 is false); a non-negative
  one the unsigned integer (truncated: 3.7 reads as 3);
- a boolean is only a boolean, shown as `true`/`false`;
- a map with `numerator` (and a `denominator` of HUNDRED, TEN_THOUSAND or MILLION) is a fractional
  percent, shown as protobuf's debug text;
- a string is read as a double only (`"true"` is not a boolean, `"{numerator: 5}"` not a fraction:
  Envoy 1.40 dropped those readings of strings);
- a list or null reads as nothing.
File and admin text is YAML first, read by yaml-cpp's rules (not PyYAML's): plain `y`/`yes`/`on`/
`true` and their opposites are booleans, plain integers (with 0x and 0 prefixes) fit for int32 are
numbers and larger ones strings, anything else a string; quoted scalars are strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from meshpy.model.runtime import Entry

__all__ = ["RuntimeValueError", "debug_text", "entry", "flatten", "from_text", "number_text", "six_digits"]

_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_INT_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1
_YAML_BOOLS = {"y": True, "yes": True, "true": True, "on": True, "n": False, "no": False, "false": False,
               "off": False}
# std::stringstream with the base left to the prefix: 0x hex, 0 octal, else decimal.
_YAML_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)[ \t\r\n]*")
_MARKER = "goo.gle/debugstr    \n"  # what protobuf's DebugString starts with (Envoy shows it as is)


class RuntimeValueError(ValueError):
    """A value Envoy refuses: a list or null in a static layer, text that is not YAML."""


def six_digits(value: float) -> str:
    """A double as absl::StrCat writes it (six significant digits): Envoy's text for numbers."""
    return f"{value:.6g}"


def number_text(value: float) -> str:
    """How Envoy shows a number of a YAML bootstrap's static layer: an int32 one as absl writes a double
    (six significant digits: 1000000 is `1e+06`); yaml-cpp hands Envoy other numbers as strings, shown
    as written (a bootstrap in JSON would show those with six digits too; the value is the same)."""
    if not math.isfinite(value) or (value.is_integer() and -_INT_MAX - 1 <= value <= _INT_MAX):
        return six_digits(value)
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value)


def entry(value: Any, raw: str = "") -> Entry:
    """The entry for a JSON-like value (a protobuf Value read into Python). `raw`: the text it came
    from, when there was one (a file, an admin value): shown instead of the value's own rendering, and
    what a string is read from."""
    if isinstance(value, bool):
        return Entry(raw or ("true" if value else "false"), boolean=value)
    if isinstance(value, int | float):
        return _number(float(value), raw or number_text(float(value)))
    if isinstance(value, Mapping):
        return Entry(raw or debug_text(value), fraction=_fraction(value))
    if isinstance(value, str):
        text = raw or value
        number = _atod(text)
        return _number(number, text) if number is not None else Entry(text)
    return Entry(raw)  # a list or null: shown, read as nothing


def _number(value: float, raw: str) -> Entry:
    boolean = integer = None
    if math.isfinite(value):
        if -_INT_MAX - 1 <= value < _INT_MAX and value == math.trunc(value):
            boolean = value != 0
        if 0 <= value <= _UINT64_MAX:
            integer = min(int(value), _UINT64_MAX)
    return Entry(raw, boolean=boolean, integer=integer, number=value)


def _atod(text: str) -> float | None:
    """absl::SimpleAtod: surrounding whitespace allowed, a leading + too; no digit separators, no hex."""
    s = text.strip(" \t\n\v\f\r")
    if not s or "_" in s or s[:2].lower() in ("0x", "-0x", "+0x") or s.startswith(("+-", "++")):
        return None
    try:
        return float(s)
    except ValueError:
        return None


def _fraction(fields: Mapping[str, Any]) -> tuple[int, int] | None:
    """Envoy's parseFractionValue: `numerator` (a number) and `denominator` (one of the names), nothing
    else; a numerator that is not a number counts as 0."""
    numerator, denominator = 0, 100
    for key, value in fields.items():
        if key == "numerator":
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                numerator = max(0, min(int(value), 2**32 - 1))
        elif key == "denominator" and isinstance(value, str) and value in _DENOMINATORS:
            denominator = _DENOMINATORS[value]
        else:
            return None
    return numerator, denominator


def flatten(struct: Mapping[str, Any], on_value: Callable[[str, Any], None] | None = None,
            prefix: str = "") -> dict[str, Entry]:
    """A static or RTDS layer: nested maps become dotted keys (`{a: {b: 1}}` is `a.b`), except maps that
    hold a `numerator` or a `denominator`, and empty ones, which are values (fractional percents).
    `on_value(key, value)` sees each leaf (the feature flag checks). RuntimeValueError for a list or a
    null, as Envoy ("Invalid runtime entry value for KEY"), and for a key given twice."""
    out: dict[str, Entry] = {}
    for name, value in sorted(struct.items()):  # (a Struct's order is its map's: none to keep)
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, Mapping) and value and "numerator" not in value and "denominator" not in value:
            for sub, e in flatten(value, on_value, key).items():
                _put(out, sub, e)
            continue
        if value is None or isinstance(value, list):
            raise RuntimeValueError(f"Invalid runtime entry value for {key}")
        if on_value is not None:
            on_value(key, value)
        _put(out, key, entry(value))
    return out


def _put(out: dict[str, Entry], key: str, e: Entry) -> None:
    if key in out:
        # Envoy keeps whichever its map yields first: not something to rely on.
        raise RuntimeValueError(f"{key} is given twice (once through a nested map)")
    out[key] = e


def from_text(text: str) -> Entry:
    """A disk file's value or an admin value: its YAML reading, shown as the text itself."""
    return entry(yaml_value(text), text)


def yaml_value(text: str) -> Any:
    """`text` as yaml-cpp reads it into a protobuf Value (the first document; empty text is null)."""
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            return _node(node)
    except yaml.YAMLError as exc:
        raise RuntimeValueError(f"not YAML: {exc}".replace("\n", " ")) from None
    return None


def _node(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {str(_node(k)): _node(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_node(v) for v in node.value]
    text = str(node.value)
    if getattr(node, "style", None) is not None:  # quoted, or a block scalar: a string, whatever it says
        return text
    if node.tag == "tag:yaml.org,2002:null":
        return None
    if (text.islower() or text.isupper() or text.istitle()) and text.lower() in _YAML_BOOLS:
        return _YAML_BOOLS[text.lower()]
    if _YAML_INT.fullmatch(text):
        digits = text.strip()
        sign = -1 if digits.startswith("-") else 1
        body = digits.lstrip("+-")
        base = 16 if body[:2].lower() == "0x" else 8 if body[:1] == "0" and len(body) > 1 else 10
        value = sign * int(body, base)
        if -(2**63) <= value < 2**63:
            # Envoy: numbers only within int32; larger ones become their decimal text.
            return value if -_INT_MAX - 1 <= value <= _INT_MAX else str(value)
    return text


def debug_text(fields: Mapping[str, Any]) -> str:
    """A Struct as protobuf's DebugString writes it (fields in key order), which is how Envoy shows a
    map value (a fractional percent) in `/runtime`."""
    return _MARKER + _struct_text(fields, "")


def _struct_text(fields: Mapping[str, Any], indent: str) -> str:
    inner = indent + "  "
    return "".join(f'{indent}fields {{\n{inner}key: "{_escape(k)}"\n{inner}value {{\n'
                   f"{_value_text(fields[k], inner + '  ')}{inner}}}\n{indent}}}\n" for k in sorted(fields))


def _value_text(value: Any, indent: str) -> str:
    if value is None:
        return f"{indent}null_value: NULL_VALUE\n"
    if isinstance(value, bool):
        return f"{indent}bool_value: {'true' if value else 'false'}\n"
    if isinstance(value, int | float):
        v = float(value)
        text = str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)
        return f"{indent}number_value: {text}\n"
    if isinstance(value, str):
        return f'{indent}string_value: "{_escape(value)}"\n'
    if isinstance(value, Mapping):
        return f"{indent}struct_value {{\n{_struct_text(value, indent + '  ')}{indent}}}\n"
    items = "".join(f"{indent}  values {{\n{_value_text(v, indent + '    ')}{indent}  }}\n" for v in value)
    return f"{indent}list_value {{\n{items}{indent}}}\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
