"""Envoy's Lua filter (envoy.filters.http.lua): a script's `envoy_on_request(request_handle)` and
`envoy_on_response(response_handle)` run on every request and response of the routes where the
filter is on, with Envoy's stream handle API (docs/filter-lua.md lists what meshpy has).

One Lua state per filter config (a listener's, or a route's LuaPerRoute with a script of its own):
the script loads when the config does (an error in it is the config's), and each request runs in a
coroutine of that state. A script that waits (body(), httpCall()) holds the request, or the
response's head, as Envoy does, and goes on when the body or the answer has come; the event loop
never waits for it. A script's error is logged and counted, and the request goes on as if the script
had ended, as in Envoy.

LuaPerRoute: `disabled` turns the filter off; `name` runs the listener's source_codes entry of that
name (none of that name: nothing runs); `source_code` a script of the route's own; `filter_context`
is what handle:filterContext() reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from envoy.extensions.filters.http.lua.v3 import lua_pb2

from meshpy import extensions
from meshpy.extensions.lua_bridge import BRIDGE, settle_request_headers
from meshpy.extensions.lua_runtime import Script, check_source, lua_values
from meshpy.extensions.lua_stream import ENDED, HTTP_CALL, RESPONDED, WAIT_BODY, Stream
from meshpy.filters import CONTINUE, HOLD, REPLIED, HttpFilter, Request, Response, Verdict
from meshpy.upstream.side_calls import SideClient
from meshpy.xds.translate_base import Issues, child

log = logging.getLogger("meshpy.lua")
_PER_ROUTE = "_per_route"  # the merged config's key for a route's LuaPerRoute


class Lua(HttpFilter):
    keeps_body_length = True  # a request body changes only while held whole: its length is then set

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        config = dict(config)
        route = config.pop(_PER_ROUTE, None)
        msg = extensions.parsed(EXTENSION, config)
        code: str | None = _default_code(msg)
        self.context: str | None = None
        if route is not None:
            per_route = extensions.parsed(EXTENSION, route, route=True)
            if per_route.HasField("filter_context"):
                self.context = json.dumps(extensions.as_json(per_route)["filter_context"])
            if per_route.name:
                source = msg.source_codes.get(per_route.name)
                code = read_source(source) if source is not None else None
            elif per_route.HasField("source_code"):
                code = read_source(per_route.source_code)
        self.script = Script(code or "", BRIDGE)
        self.on_request_fn = self.script.function("envoy_on_request") if code else None
        self.on_response_fn = self.script.function("envoy_on_response") if code else None
        self.key = f"envoy.lua.{id(self)}"
        self.client = SideClient()
        self.executions = 0
        self.errors = 0
        self._name: str | None = None
        self._tables: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def route_config(cls, listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
        return {**listener, _PER_ROUTE: route}

    # -- the request ----------------------------------------------------------------------------------
    def on_request(self, request: Request) -> Verdict:
        fn = self.on_request_fn
        if fn is None:
            request.pass_body(self)
            return CONTINUE
        settle_request_headers(request._ex)
        s = Stream(self, request, None, not request.has_body)
        early = request.state.pop(self.key + ".early", None)
        if early is not None:  # a pipelined request's body, run through the hooks before routing
            s.body, s.end_stream, s.saw_body, s.buffered_body, s.sent = bytearray(early[0]), early[1], True, \
                True, len(early[0])
        request.state[self.key] = s
        s.start(fn)
        state = s.state
        if state == RESPONDED:
            return self._reply(s)
        if state in (WAIT_BODY, HTTP_CALL):
            s.held = True
            return HOLD
        if state == ENDED:
            request.pass_body(self)
        else:  # waiting for body chunks or trailers: the head goes on (Envoy's Continue)
            s.headers_continued = True
        return CONTINUE

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        s: Stream | None = request.state.get(self.key)
        if s is None:  # before routing (a pipelined request): kept, for body() to see
            early = request.state.setdefault(self.key + ".early", [b"", False])
            early[0] += chunk
            early[1] = end
            return None
        if s.state == ENDED and not s.held:
            return None
        out = s.data(chunk, end)
        if s.held and s.state not in (WAIT_BODY, HTTP_CALL):
            self.went_on(s, in_hook=True)
        return out

    def went_on(self, s: Stream, in_hook: bool = False) -> None:
        """A held request's script ended or no longer holds it: answered, or the body it held goes
        on (at its length, where the script changed a whole body) and the request with it."""
        request = s.request
        s.held = False
        if s.state == RESPONDED:
            self._reply(s)
            return
        s.headers_continued = True
        ex = request._ex
        body = s.body
        s.body = None
        if s.state == ENDED:
            request.pass_body(self)  # (the script is done with it: the rest goes on as it comes)
        if body is not None:
            if s.body_changed and s.sent:
                log.warning("script log: meshpy: the body came before the request was routed (pipelined) "
                            "and went on unchanged")
            elif s.body_changed and s.end_stream:
                _set_length(ex, len(body))
            ex._forward_body(bytes(body[s.sent:]) if not s.body_changed else bytes(body))
        if in_hook:
            asyncio.get_running_loop().call_soon(request.resume)  # after the hook's own return
        else:
            request.resume()

    def _reply(self, s: Stream) -> Verdict:
        assert s.reply is not None
        status, fields, body = s.reply
        s.reply = None
        s.state = ENDED
        s.request._ex.filter_reply(status, body, fields)
        return REPLIED

    # -- the response -----------------------------------------------------------------------------------
    def on_response(self, request: Request, response: Response) -> None:
        fn = self.on_response_fn
        if fn is None:
            response.pass_body()
            return
        key = self.key + ".response"
        old = request.state.get(key)
        if old is not None:  # (a second head: an answer of the proxy's own after a failure)
            old.close()
        s = request.state[key] = Stream(self, request, response, not response.has_body)
        s.start(fn)
        if s.state == WAIT_BODY:
            response.hold()  # the head waits for the body and the script's last word on it
            s.held = True
        elif s.state == ENDED:
            response.pass_body()
        else:
            s.headers_continued = True

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        s: Stream | None = request.state.get(self.key + ".response")
        if s is None or (s.state == ENDED and not s.held):
            return None
        out = s.data(chunk, end)
        if s.held and s.state != WAIT_BODY:
            s.held = False
            s.headers_continued = True
            body, s.body = s.body, None
            return bytes(body or b"")
        return out

    def on_complete(self, request: Request) -> None:
        for key in (self.key, self.key + ".response"):
            s = request.state.pop(key, None)
            if isinstance(s, Stream):
                s.close()

    # -- for the bridges ----------------------------------------------------------------------------
    def background(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lua_table(self, raw: str | None) -> Any:
        """A JSON object (route metadata, filter_context) as a Lua table of this filter's state."""
        if raw is None:
            return None
        table = self._tables.get(raw)
        if table is None:
            table = self._tables[raw] = self.script.table(lua_values(json.loads(raw)))
        return table

    def name_for(self, request: Request) -> str:
        """This filter's name in the listener's chain (what route metadata is keyed by)."""
        if self._name is None:
            route = request._ex.route
            for f in route.filters if route is not None else ():
                if getattr(f, "user", None) is self:
                    self._name = f.name
        return self._name or ""


def _set_length(ex: Any, length: int) -> None:
    """A whole request body the script changed goes with its new length (Envoy's setBytes sets
    content-length), not chunked."""
    value = b"%d" % length
    if any(h[0] == b"content-length" for h in ex.headers):
        ex.headers[:] = [(n, value if n == b"content-length" else v) for n, v in ex.headers]
    else:
        ex.headers[:] = [h for h in ex.headers if h[0] != b"transfer-encoding"]
        ex.headers.append((b"content-length", value))
    ex.facts.content_length = length
    ex.facts.chunked = False


# -- config ---------------------------------------------------------------------------------------------
def read_source(source: Any) -> str:
    """A DataSource's text: inline, or a file read as the config loads (as Envoy reads it)."""
    kind = source.WhichOneof("specifier")
    if kind == "inline_string":
        return str(source.inline_string)
    if kind == "inline_bytes":
        return bytes(source.inline_bytes).decode("utf-8", "replace")
    if kind == "filename":
        with open(source.filename, encoding="utf-8", errors="replace") as f:
            return f.read()
    return ""


def _default_code(msg: Any) -> str | None:
    if msg.HasField("default_source_code"):
        return read_source(msg.default_source_code)
    return msg.inline_code or None


def _check_source(issues: Issues, source: Any, path: str) -> None:
    issues.fields(source, path, {"inline_string", "inline_bytes", "filename"})
    try:
        code = read_source(source)
    except OSError as err:
        issues.add(path, f"cannot read the script: {err.strerror or err}")
        return
    problem = check_source(code)
    if problem is not None:
        issues.add(path, f"the script does not load: {problem}")


def check(issues: Issues, msg: Any, path: str) -> None:
    issues.fields(msg, path, {"inline_code", "source_codes", "default_source_code", "stat_prefix",
                              # meshpy never routes a request again after its filters (docs/filter-lua.md)
                              "clear_route_cache"})
    if msg.HasField("default_source_code"):
        if msg.inline_code:
            issues.add(path, "only one of inline_code or default_source_code can be set")
        _check_source(issues, msg.default_source_code, child(path, "default_source_code"))
    elif msg.inline_code:
        problem = check_source(msg.inline_code)
        if problem is not None:
            issues.add(child(path, "inline_code"), f"the script does not load: {problem}")
    for name, source in sorted(msg.source_codes.items()):
        _check_source(issues, source, f"{path}.source_codes[{name!r}]")


def check_route(issues: Issues, msg: Any, path: str) -> bool:
    """LuaPerRoute: True when it turns the filter off on the route."""
    issues.fields(msg, path, {"disabled", "name", "source_code", "filter_context"})
    if msg.HasField("source_code"):
        _check_source(issues, msg.source_code, child(path, "source_code"))
    return bool(msg.disabled)


EXTENSION = extensions.Extension(
    message=lua_pb2.Lua, cls="meshpy.extensions.lua:Lua", check=check,
    route_message=lua_pb2.LuaPerRoute, route_check=check_route)
