"""Lua states for Envoy's Lua filter and Lua cluster specifier, on PyPI's lupa: LuaJIT 2.1, as Envoy
links (Lua 5.1 where a platform's lupa has no LuaJIT).

One `Script` is one Lua state with one script loaded (Envoy's PerLuaCodeSetup): the script's top level
runs once, when the config is loaded, and its globals live as long as the filter's config. Each
request runs the script's function in a coroutine of its own; a coroutine that waits (for a body,
for an httpCall's answer) yields, and meshpy resumes it when what it waits for has come, on the event
loop, without blocking it.

Strings cross between Lua and Python as bytes (no encoding: header values and bodies are bytes to
both). Python objects handed to Lua (the stream a handle acts on) are opaque there: no attribute of
a Python object can be read or set from Lua.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

try:  # LuaJIT, as Envoy; a platform whose lupa wheel has none gets Lua 5.1, the language LuaJIT speaks
    from lupa import luajit21 as lupa_lua
except ImportError:  # pragma: no cover - every wheel built for x86-64 and arm64 Linux has LuaJIT
    from lupa import lua51 as lupa_lua

from meshpy.extensions.lua_prelude import PRELUDE

LuaError = lupa_lua.LuaError
Bridge = dict[str, Callable[..., Any]]

# What a run of a coroutine came to (the driver's first result).
DONE, WAIT, ERROR = b"done", b"wait", b"error"
# API calls of Envoy's that meshpy does not make: a script that names one is refused at load.
_REFUSED = {
    "setHttp1ReasonPhrase": "meshpy's HTTP/1.1 writer sends the standard reason phrase",
    "setUpstreamOverrideHost": "meshpy's balancers take no host override",
    "clearRouteCache": "meshpy routes a request once, before its filters",
    "filterState": "meshpy has no filter state objects",
    "dynamicTypedMetadata": "meshpy keeps no typed metadata",
    "connectionStreamInfo": "meshpy has no connection-level stream info",
}
_CALLED = re.compile(r"[:.]\s*(" + "|".join(_REFUSED) + r")\s*\(")


class ScriptError(ValueError):
    """A script that does not load (a syntax error, an error in its top level) or asks for what
    meshpy does not do."""


def _no_attributes(obj: object, name: object, setting: bool) -> object:
    raise AttributeError(f"a Lua script cannot reach Python attributes ({name!r})")


class Script:
    """One Lua state running one script."""

    __slots__ = ("code", "driver", "runtime")

    def __init__(self, code: str, bridge: Bridge) -> None:
        refused = _CALLED.search(_without_comments(code))
        if refused is not None:
            name = refused.group(1)
            raise ScriptError(f"the script calls {name}(), which meshpy does not support ({_REFUSED[name]})")
        self.code = code
        self.runtime = lupa_lua.LuaRuntime(encoding=None, unpack_returned_tuples=True, register_eval=False,
                                           register_builtins=False, attribute_filter=_no_attributes)
        functions = self.runtime.table_from({name.encode(): fn for name, fn in bridge.items()})
        self.driver = self.runtime.execute(PRELUDE, functions)
        ok, err = self.driver.load(code.encode())
        if not ok:
            raise ScriptError(_text(err))

    def function(self, name: str) -> Any:
        """The script's global function `name`, or None."""
        return self.driver[b"global"](name.encode())

    def start(self, fn: Any, stream: object, route: bool = False) -> tuple[Any, bytes, Any]:
        """Run `fn(handle)` in a new coroutine: the coroutine (with its handle), DONE/WAIT/ERROR and
        its value."""
        co, handle, kind, value = self.driver.start(fn, stream, route)
        return (co, handle), kind, value

    def resume(self, co: tuple[Any, Any], *args: Any) -> tuple[bytes, Any]:
        kind, value = self.driver.step(co[0], co[1], *args)
        return kind, value

    def table(self, values: Any) -> Any:
        """A Lua table of `values` (a dict or list, nested; strings as bytes)."""
        return self.runtime.table_from(values, recursive=True)

    def flat(self, pairs: list[tuple[bytes, bytes]]) -> Any:
        """A list of pairs as Lua reads header lists: {name, value, name, value, ...}."""
        return self.runtime.table_from([x for pair in pairs for x in pair])


def lua_values(value: Any) -> Any:
    """JSON (a protobuf Struct's) as Lua takes it: strings as bytes, whole numbers as numbers."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return {k.encode(): lua_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lua_values(v) for v in value]
    return value


def text(value: object) -> str:
    return _text(value)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _without_comments(code: str) -> str:
    return re.sub(r"--\[(=*)\[.*?\]\1\]|--[^\n]*", "", code, flags=re.S)


def check_source(code: str) -> str | None:
    """Why `code` does not load, or None (a state made for the check, then dropped)."""
    try:
        Script(code, {})
    except ScriptError as err:
        return str(err)
    except LuaError as err:  # (the state itself failed: out of memory)
        return _text(err)
    return None
