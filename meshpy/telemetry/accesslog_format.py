"""A LogFormat compiled once per config, as Envoy 1.40 writes it (meshpy.model.access_log has the
grammar; meshpy.telemetry.accesslog_ops the operators), in two halves: `capture` reads the
operators' values from a finished request into one tuple (at completion, so the request is let go at
once), and `render` makes the line from that tuple (at the batched flush). No format is parsed per
line.

Text: the literal pieces become one %-template, so a line is one `%`; an operator without a value
writes "-" ("" with omit_empty_values).

JSON: keys sorted, as Envoy sorts them. A string value that is one operator keeps its type (numbers
for the numeric operators, null without a value); a string of several pieces is a string, "-" for
each piece without a value. Constant values are serialized once. With omit_empty_values a key whose
operator has no value is left out, an object left empty goes with it, a list keeps its other
elements, and a string of several pieces writes "" for a missing piece. Number constants are written
as Envoy 1.40 writes them from its config: a whole number within 32 bits as a number, others as a
string.

Lines are `str` holding one character per byte (header values arrive as bytes and are decoded
latin-1; config text is re-encoded as UTF-8 bytes here), so the sink encodes them latin-1 unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring  # the C version json.dumps uses; leaves non-ASCII alone
from typing import Any

from meshpy.model.access_log import Command, JsonObject, JsonValue, LogFormat, parse_format
from meshpy.telemetry.accesslog_ops import NUMERIC, Finish, LogContext, Op, Value, make_op

Capture = Callable[[Any, float], list[Value]]  # (record, duration in seconds) -> values
Render = Callable[[list[Value]], str]  # values -> one line
_INT32 = 2**31


class CompiledFormat:
    __slots__ = ("capture", "render")

    def __init__(self, capture: Capture, render: Render) -> None:
        self.capture = capture
        self.render = render


def _bytes_str(s: str) -> str:
    return s.encode("utf-8").decode("latin-1") if not s.isascii() else s


class _Ops:
    """The operators of one format in reading order: what `capture` runs, and the index of each."""

    def __init__(self, ctx: LogContext) -> None:
        self.ctx = ctx
        self.ops: list[Op] = []
        self.finish: dict[int, Finish] = {}

    def add(self, cmd: Command) -> int:
        op, finish = make_op(cmd, self.ctx)
        self.ops.append(op)
        if finish is not None:
            self.finish[len(self.ops) - 1] = finish
        return len(self.ops) - 1

    def capture(self) -> Capture:
        ops = self.ops
        return lambda r, s: [op(r, s) for op in ops]  # (a list: the line is made from it once)

    def text(self, values: list[Value], i: int) -> str | None:
        """The value at `i` as text (None: no value)."""
        v = values[i]
        if v is None:
            return None
        fn = self.finish.get(i)
        return fn(v) if fn is not None else str(v)


def compile_format(fmt: LogFormat, ctx: LogContext) -> CompiledFormat:
    if fmt.text is not None:
        return _text(fmt.text, fmt.omit_empty_values, ctx)
    assert fmt.json is not None
    if fmt.omit_empty_values:
        return _OmittingJson(fmt.json, ctx).compiled()
    return _json(fmt.json, ctx)


def _text(text: str, omit: bool, ctx: LogContext) -> CompiledFormat:
    template: list[str] = []
    ops = _Ops(ctx)
    for seg in parse_format(text):
        if isinstance(seg, str):
            template.append(_bytes_str(seg).replace("%", "%%"))
        else:
            template.append("%s")
            ops.add(seg)
    line = "".join(template)
    empty = "" if omit else "-"
    finish = list(ops.finish.items())

    def render(values: list[Value]) -> str:
        if finish:
            values = values[:]  # (a batch may be rendered twice: see AccessLogger._each)
            for i, fn in finish:
                if values[i] is not None:
                    values[i] = fn(values[i])
        return line % tuple([empty if v is None else v for v in values])

    return CompiledFormat(ops.capture(), render)


def _joined(ops: _Ops, text: str, empty: str) -> Callable[[list[Value]], str]:
    """A string value of several pieces, as one JSON string."""
    pieces = [_bytes_str(seg) if isinstance(seg, str) else ops.add(seg) for seg in parse_format(text)]

    def value(values: list[Value]) -> str:
        out = []
        for p in pieces:
            if isinstance(p, str):
                out.append(p)
            else:
                v = ops.text(values, p)
                out.append(empty if v is None else v)
        return encode_basestring("".join(out))

    return value


def _typed(ops: _Ops, cmd: Command) -> Callable[[list[Value]], str | None]:
    """One operator as a JSON value: a number for a numeric operator; None without a value."""
    i = ops.add(cmd)
    if cmd.name in NUMERIC:
        return lambda values: None if values[i] is None else str(values[i])
    return lambda values: None if (v := ops.text(values, i)) is None else encode_basestring(v)


def _template_value(ops: _Ops, value: str, empty: str) -> tuple[bool, Callable[[list[Value]], Any]]:
    """(single operator?, its JSON text from the values)."""
    segs = parse_format(value)
    if len(segs) == 1 and isinstance(segs[0], Command):
        return True, _typed(ops, segs[0])
    return False, _joined(ops, value, empty)


def _constant(value: JsonValue) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if value.is_integer() and -_INT32 <= value < _INT32:
            return str(int(value))
        return encode_basestring(str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value))
    assert isinstance(value, str)
    return encode_basestring(_bytes_str(value))


def _json(obj: JsonObject, ctx: LogContext) -> CompiledFormat:
    """The template flattened: constant JSON text between value slots, joined per line."""
    ops = _Ops(ctx)
    parts: list[str | Callable[[list[Value]], Any]] = []

    def emit(value: JsonValue) -> None:
        if isinstance(value, JsonObject):
            parts.append("{")
            for i, (key, v) in enumerate(value.fields):
                parts.append(("," if i else "") + encode_basestring(_bytes_str(key)) + ":")
                emit(v)
            parts.append("}")
        elif isinstance(value, tuple):
            parts.append("[")
            for i, v in enumerate(value):
                if i:
                    parts.append(",")
                emit(v)
            parts.append("]")
        elif isinstance(value, str) and "%" in value:
            single, fn = _template_value(ops, value, "-")
            parts.append((lambda values: fn(values) or "null") if single else fn)
        else:
            parts.append(_constant(value))

    emit(obj)
    parts.append("\n")
    merged: list[str | Callable[[list[Value]], Any]] = []
    for p in parts:  # adjacent constants as one string
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    slots = [p for p in merged if not isinstance(p, str)]
    template = "".join(p.replace("%", "%%") if isinstance(p, str) else "%s" for p in merged)

    def render(values: list[Value]) -> str:
        return template % tuple([f(values) for f in slots])

    return CompiledFormat(ops.capture(), render)


class _OmittingJson:
    """omit_empty_values: which keys appear depends on the values, so the tree is walked per line."""

    __slots__ = ("_ops", "_root")

    def __init__(self, obj: JsonObject, ctx: LogContext) -> None:
        self._ops = _Ops(ctx)
        self._root = self._node(obj)

    def compiled(self) -> CompiledFormat:
        return CompiledFormat(self._ops.capture(), self.render)

    def _node(self, value: JsonValue) -> Any:
        if isinstance(value, JsonObject):
            return ("{", [(encode_basestring(_bytes_str(k)), self._node(v)) for k, v in value.fields
                          if v is not None])
        if isinstance(value, tuple):
            return ("[", [self._node(v) for v in value if v is not None])
        if isinstance(value, str) and "%" in value:
            return ("value", _template_value(self._ops, value, "")[1])
        return ("const", _constant(value))

    def render(self, values: list[Value]) -> str:
        return (self._value(self._root, values) or "{}") + "\n"

    def _value(self, node: Any, values: list[Value]) -> str | None:
        kind = node[0]
        if kind == "const":
            return str(node[1])
        if kind == "value":
            out: str | None = node[1](values)
            return out
        if kind == "[":
            items = [x for x in (self._value(n, values) for n in node[1]) if x is not None]
            return "[" + ",".join(items) + "]"
        fields = [f"{k}:{x}" for k, n in node[1] if (x := self._value(n, values)) is not None]
        return "{" + ",".join(fields) + "}" if fields else None
