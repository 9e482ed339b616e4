"""Envoy's Lua cluster specifier (envoy.router.cluster_specifier_plugin.lua): a route whose cluster a
script names per request. The script's `envoy_on_route(route_handle)` reads the request's headers
(`route_handle:headers():get(name)`, values of a repeated name joined by commas) and may look at a
cluster (`route_handle:getCluster(name)`: numConnections(), numRequests(), numPendingRequests(), or
nil for no such cluster), and returns the cluster's name. An error in it, or a result that is not a
string, sends the request to `default_cluster`, as Envoy does (logged); a name that is no cluster is
answered 503 (NC) by the router.

The route's cluster is chosen as the request goes upstream, after the HTTP filters (Envoy chooses it
as it routes, before them: the same unless a filter changed the headers the script reads).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from envoy.extensions.router.cluster_specifiers.lua.v3 import lua_pb2

from meshpy.extensions.lua_runtime import DONE, Bridge, Script, ScriptError, text
from meshpy.model.routes import LuaClusterSpecifier
from meshpy.xds.translate_base import Issues, child

if TYPE_CHECKING:
    from meshpy.stack.exchange import Exchange

log = logging.getLogger("meshpy.lua")
LUA_CONFIG = "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"


class LuaClusterPlugin:
    """One route's script, loaded once (one Lua state), run per request."""

    __slots__ = ("default", "fn", "script")

    def __init__(self, spec: LuaClusterSpecifier) -> None:
        self.script = Script(spec.source_code, _BRIDGE)
        self.fn = self.script.function("envoy_on_route")
        if self.fn is None:
            raise ScriptError("envoy_on_route() function not found. Lua will not hook cluster specifier.")
        self.default = spec.default_cluster

    def cluster(self, ex: Exchange | None) -> str:
        if ex is None:
            return self.default
        _co, kind, value = self.script.start(self.fn, ex, True)
        if kind != DONE:
            log.error("script log: %s, use default cluster", text(value) if value is not None else
                      "script performed an unexpected yield")
            return self.default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # (lua_isstring: a number is a string to Lua)
        if not isinstance(value, bytes):
            log.error("script log: return value is not string, use default cluster")
            return self.default
        return value.decode("latin-1")


def _get(ex: Exchange, name: bytes) -> bytes | None:
    name = name.lower()
    if name == b":authority":
        return ex.authority.encode("latin-1")
    if name == b":path":
        return ex.path.encode("latin-1")
    if name == b":method":
        return ex.method
    if name == b":scheme":
        return ex.cfg.scheme
    values = [v for k, v in ex.headers if k == name and k != b"host"]
    return b",".join(values) if values else None


def _get_cluster(ex: Exchange, name: bytes) -> Any:
    cluster = ex.cfg.clusters.get(name.decode("latin-1"))
    return None if cluster is None else cluster


def _cluster_count(cluster: Any, which: int) -> int:
    stats = cluster.stats
    if which == 1:
        return int(stats.rq_active)
    if which == 2:
        return int(getattr(stats, "rq_pending_active", 0))
    return int(getattr(stats, "cx_active", 0))


_BRIDGE: Bridge = {"rget": _get, "getcluster": _get_cluster, "cluster": _cluster_count}


def translate(issues: Issues, extension: Any, path: str) -> LuaClusterSpecifier | None:
    """A TypedExtensionConfig naming a cluster specifier plugin: the Lua one, checked (its script must
    load and define envoy_on_route); None (an issue) for any other."""
    issues.fields(extension, path, {"name", "typed_config"})
    any_msg = extension.typed_config
    where = child(path, "typed_config")
    if any_msg.TypeName() != LUA_CONFIG:
        issues.add(where, f"{any_msg.TypeName() or 'a plugin without a type'} is not supported by meshpy "
                          "(the Lua cluster specifier is)")
        return None
    msg = lua_pb2.LuaConfig()
    any_msg.Unpack(msg)
    issues.fields(msg, where, {"source_code", "default_cluster"})
    from meshpy.extensions.lua import read_source

    source = child(where, "source_code")
    issues.fields(msg.source_code, source, {"inline_string", "inline_bytes", "filename"})
    try:
        code = read_source(msg.source_code)
    except OSError as err:
        issues.add(source, f"cannot read the script: {err.strerror or err}")
        return None
    spec = LuaClusterSpecifier(source_code=code, default_cluster=msg.default_cluster)
    try:
        LuaClusterPlugin(spec)
    except ScriptError as err:
        issues.add(source, f"the script does not load: {err}")
        return None
    return spec
