"""One direction of one request's Lua run (Envoy's StreamHandleWrapper): its state, the calls of the
handle that wait (body(), bodyChunks(), trailers(), httpCall()) or end it (respond()), and the
resumption of its coroutine when what it waits for comes.

The state machine is Envoy's (source/extensions/filters/http/lua/lua_filter.cc): a script runs until
it ends or waits; a wait for the whole body or an httpCall's answer holds the request (or the
response's head), a wait for a body chunk or for trailers lets the head go on. An error ends the
script: it is logged ("script log: ...") and counted, and the stream goes on as if the script had
ended, as Envoy does.

The functions named in BRIDGE are called from Lua (meshpy.extensions.lua_prelude) with the stream as
their first argument; they return a value and an error message (None when there is none), and never
call back into Lua.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from meshpy.extensions import lua_calls
from meshpy.extensions.lua_runtime import DONE, ERROR, Bridge, text

if TYPE_CHECKING:
    from meshpy.extensions.lua import Lua
    from meshpy.filters import Request, Response

log = logging.getLogger("meshpy.lua")

RUNNING, WAIT_BODY, WAIT_CHUNK, WAIT_TRAILERS, HTTP_CALL, RESPONDED, ENDED = range(7)
WAIT = -1  # what a bridge returns for "yield, and ask again when resumed" (body chunks count from 1)
BUFFER_LIMIT = 1 << 20  # Envoy's default per-connection buffer limit, which bounds a buffered body
_FRAMED = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade",
                     b"proxy-connection"})


class Stream:
    """A script's run on a request (`response` None) or on its response."""

    __slots__ = ("answer", "body", "body_changed", "buffered_body", "call", "chunk", "chunk_no",
                 "chunk_pending", "co", "end_stream", "flt", "headers_continued", "held", "keys", "reply",
                 "request", "response", "saw_body", "sent", "state")

    def __init__(self, flt: Lua, request: Request, response: Response | None, end_stream: bool) -> None:
        self.flt = flt
        self.request = request
        self.response = response
        self.end_stream = end_stream
        self.state = RUNNING
        self.co: Any = None
        self.saw_body = False
        self.buffered_body = False
        self.headers_continued = False
        self.body: bytearray | None = None  # the body as buffered for body() (or held for an httpCall)
        self.body_changed = False
        self.chunk = bytearray()
        self.chunk_no = 0
        self.chunk_pending = False
        self.reply: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self.call: asyncio.Task[None] | None = None
        self.answer: tuple[Any, Any] = (None, None)
        self.keys: dict[bytes, Any] | None = None  # importPublicKey's keys, by their DER bytes
        self.held = False  # the filter holds the request (HOLD) or the response's head for the script
        self.sent = 0  # bytes of `body` that went on before the script saw them (a pipelined body)

    @property
    def waiting(self) -> bool:
        return self.state not in (RUNNING, ENDED)

    # -- running the coroutine ----------------------------------------------------------------------
    def start(self, fn: Any) -> None:
        self.flt.executions += 1
        self.co, kind, value = self.flt.script.start(fn, self)
        self._after(kind, value)

    def resume(self, *args: Any) -> None:
        self.state = RUNNING
        kind, value = self.flt.script.resume(self.co, *args)
        self._after(kind, value)

    def _after(self, kind: bytes, value: Any) -> None:
        if kind == DONE:
            self.state = ENDED
            self.co = None
        elif kind == ERROR:
            self.fail(text(value))
        elif self.state == RUNNING:  # (a wait the bridges did not ask for cannot happen)
            self.fail("script performed an unexpected yield")

    def fail(self, message: str) -> None:
        """The script's error: logged and counted; the stream goes on without it (Envoy's scriptError)."""
        self.flt.errors += 1
        log.error("script log: %s", message)
        self.state = ENDED
        self.co = None
        self.reply = None

    def close(self) -> None:
        call = self.call
        self.call = None
        if call is not None and not call.done():
            call.cancel()
        self.co = None
        self.state = ENDED

    # -- what the stream's hooks feed it -------------------------------------------------------------
    def data(self, chunk: bytes, end: bool) -> bytes:
        """A piece of the body (`end`: the last call, `chunk` empty): what goes on in its place."""
        if end:
            self.end_stream = True
        else:
            self.saw_body = True
        state = self.state
        if state == WAIT_CHUNK:
            if end:
                self.resume()  # the iterator's end
                return b""
            self.chunk = bytearray(chunk)
            self.chunk_no += 1
            self.chunk_pending = True
            self.resume()
            out = bytes(self.chunk)
            self.chunk = bytearray()
            return out
        if state in (WAIT_BODY, HTTP_CALL):
            # Held: the body waits here for the script (body()) or for the call's answer.
            if self.body is None:
                self.body = bytearray()
            self.body += chunk
            if len(self.body) > BUFFER_LIMIT:
                return self._too_large()
            if end and state == WAIT_BODY:
                self.resume()
            return b""
        if state == WAIT_TRAILERS and end:
            self.resume()  # trailers(): meshpy shows none
        return chunk

    def _too_large(self) -> bytes:
        self.close()
        if self.response is None:  # as Envoy's buffer limit on a request: 413
            self.request._ex.filter_reply(413, b"Payload Too Large", [])
            return b""
        raise RuntimeError(f"the response body is larger than {BUFFER_LIMIT} bytes, the most a Lua "
                           "script's body() buffers")


# -- bridges: the handle's calls that wait or end the script -------------------------------------------
def body(s: Stream, always: bool) -> tuple[int | None, bytes | None]:
    if s.end_stream:
        if not s.buffered_body and s.saw_body:
            return None, b"cannot call body() after body has been streamed"
        if s.body is None:
            if not always:
                return 0, None
            s.body = bytearray()
        return 1, None
    if s.saw_body:
        return None, b"cannot call body() after body streaming has started"
    s.state = WAIT_BODY
    s.buffered_body = True
    return WAIT, None


def chunks(s: Stream) -> bytes | None:
    if s.saw_body:
        return b"cannot call bodyChunks after body processing has begun"
    return None


def chunk(s: Stream) -> tuple[int | None, bytes | None]:
    if s.chunk_pending:
        s.chunk_pending = False
        return s.chunk_no, None
    if s.end_stream:
        return 0, None
    s.state = WAIT_CHUNK
    return WAIT, None


def trailers(s: Stream) -> tuple[int | None, bytes | None]:
    if s.end_stream:
        # A response's trailers (an HTTP/2 upstream's); a request's are not shown to filters.
        return (1 if s.response is not None and s.request._ex.trailers else 0), None
    s.state = WAIT_TRAILERS
    return WAIT, None


def _buffer(s: Stream, which: Any) -> bytearray | None:
    if which == b"body":
        return s.body
    if which == s.chunk_no and s.state == RUNNING:
        return s.chunk
    return None


def blen(s: Stream, which: Any) -> tuple[int | None, bytes | None]:
    buf = _buffer(s, which)
    if buf is None:
        return None, b"object used outside of proper scope"
    return len(buf), None


def bget(s: Stream, which: Any, index: int, length: int) -> tuple[bytes | None, bytes | None]:
    buf = _buffer(s, which)
    if buf is None:
        return None, b"object used outside of proper scope"
    if index < 0 or length < 0 or index + length > len(buf):
        return None, b"index/length must be >= 0 and (index + length) must be <= buffer size"
    return bytes(buf[index:index + length]), None


def bset(s: Stream, which: Any, data: bytes) -> tuple[int | None, bytes | None]:
    buf = _buffer(s, which)
    if buf is None:
        return None, b"object used outside of proper scope"
    if which != b"body" and len(data) != len(buf) and s.response is None and \
            s.request._ex.facts.content_length is not None:
        # The head went on with its content-length: a chunk of another length would misframe it.
        return None, b"meshpy: setBytes() on a chunk of a body with a content-length must keep its length"
    buf[:] = data
    if which == b"body":
        s.body_changed = True
    return len(buf), None


def respond(s: Stream, fields: Any, body: bytes | None) -> bytes | None:
    if s.response is not None:
        return b"respond not currently supported in the response path"
    if s.headers_continued:
        return b"respond() cannot be called if headers have been continued"
    pairs = _pairs(fields)
    status = next((v for k, v in pairs if k == b":status"), b"")
    if not status.isdigit() or not 200 <= int(status) < 600:
        return b":status must be between 200-599"
    fields = []
    for name, value in pairs:
        if name.startswith(b":") or name in _FRAMED:
            continue  # (the proxy frames its answer, as Envoy sets content-length over the script's)
        if b"\r" in value or b"\n" in value or b"\0" in value or not name or \
                name.translate(None, b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"):
            return b"meshpy: respond() was given an invalid header: " + name
        fields.append((name, value))
    s.reply = (int(status), fields, body or b"")
    s.state = RESPONDED
    return None


def call(s: Stream, cluster: bytes, fields: Any, body: bytes | None, timeout_ms: int, asynchronous: bool,
         xff: bool) -> bytes | None:
    """httpCall(): starts the call; the script waits for its answer unless `asynchronous`."""
    ex = s.request._ex
    runtime = ex.cfg.clusters.get(cluster.decode("latin-1"))
    if runtime is None:
        return b"http call cluster invalid. Must be configured"
    pairs = _pairs(fields)
    names = {k for k, _ in pairs}
    if not {b":path", b":method", b":authority"} <= names:
        return b"http call headers must include ':path', ':method', and ':authority'"
    if s.response is not None and not asynchronous:
        return b"meshpy: httpCall() waits for its answer on the request path only (asynchronous on responses)"
    if not asynchronous and s.headers_continued:
        return b"meshpy: httpCall() cannot hold a request whose head went on (after bodyChunks or trailers)"
    timeout = timeout_ms / 1000 if timeout_ms > 0 else None
    coro = lua_calls.http_call(s.flt.client, runtime, pairs, body, timeout, xff)
    loop = asyncio.get_running_loop()
    if asynchronous:
        s.flt.background(loop.create_task(lua_calls.quietly(coro)))
        return None
    s.state = HTTP_CALL
    s.call = loop.create_task(_answered(s, coro))
    return None


async def _answered(s: Stream, coro: Any) -> None:
    status, fields, data = await coro
    if s.call is None or s.state != HTTP_CALL:
        return  # the request ended meanwhile
    s.call = None
    script = s.flt.script
    s.answer = (script.flat([(b":status", b"%d" % status), *fields]), data or None)
    s.resume()
    s.answer = (None, None)
    if s.held and s.state not in (WAIT_BODY, HTTP_CALL):
        s.flt.went_on(s)


def answer(s: Stream) -> tuple[Any, Any]:
    return s.answer


def _pairs(fields: Any) -> list[tuple[bytes, bytes]]:
    values = list(fields.values())
    return [(values[i].lower(), values[i + 1]) for i in range(0, len(values) - 1, 2)]


BRIDGE: Bridge = {"body": body, "chunks": chunks, "chunk": chunk, "trailers": trailers, "blen": blen,
          "bget": bget, "bset": bset, "respond": respond, "call": call, "answer": answer}
