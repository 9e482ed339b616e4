"""The API of user-written HTTP filters (docs/filters.md has the guide).

A filter is a class named by import path in a listener's `filters:`; meshpy makes one instance per
listener and config and keeps it across reloads while its class and config are unchanged (so state it
holds, a cache or counters, survives them). It runs on the routes where it is on, after routing and
before the request goes upstream, in the listener's order:

    from meshpy.filters import CONTINUE, HttpFilter, Request, Verdict

    class ApiKey(HttpFilter):
        def __init__(self, config):
            super().__init__(config)
            self.keys = set(config["keys"])       # raise ValueError here to refuse a config

        def on_request(self, request: Request) -> Verdict:
            if request.headers.get("x-api-key") in self.keys:
                return CONTINUE
            return request.reply(401, b"missing or unknown API key\\n")

Hooks are plain functions called on the event loop: they must not block. A filter that needs to wait
(an outside check) returns HOLD and later calls `request.resume()` or `request.reply(...)`, from a
callback or a task of its own. A hook that raises gives the client a 500 with the response flag `FE`;
it is logged and counted (`meshpy_downstream_rq_filter_errors_total`), and the proxy goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

from meshpy.ports import ConnectionInfo
from meshpy.runtime.snapshot import EMPTY, Snapshot

if TYPE_CHECKING:
    from meshpy.stack.exchange import Exchange


@final
class Verdict:
    """What `on_request` decided: CONTINUE, HOLD, or the REPLIED that `request.reply` returns."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CONTINUE: Final = Verdict("CONTINUE")  # on to the next filter, then upstream
HOLD: Final = Verdict("HOLD")  # wait: the filter calls request.resume() or request.reply() later
REPLIED: Final = Verdict("REPLIED")  # answered by request.reply(): nothing more runs

# Framing and the routing key are the proxy's: a filter that changed them would make the request mean
# something else to the upstream than it did to the proxy.
_PROTECTED: Final = frozenset({"content-length", "transfer-encoding", "host", "connection", "upgrade",
                               # read by the proxy as the request arrived: a change would be lost
                               "x-request-id", "x-forwarded-for", "x-forwarded-proto", "expect"})


class Headers:
    """A request's or response's header fields, changed in place. Names are case-insensitive; values
    are str (latin-1 on the wire)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for n, v in self._fields:
            if n == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self._fields if n == key]

    def items(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._fields]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def set(self, name: str, value: str) -> None:
        """Replace every field `name` by one with `value`."""
        self.remove(name)
        self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._fields.append((_checked(name), _value(name, value)))

    def remove(self, name: str) -> None:
        key = _checked(name)
        self._fields[:] = [h for h in self._fields if h[0] != key]


class Trailers(Headers):
    """A response's trailers (`Request.response_trailers`): as Headers, and `clear()` drops them all."""

    __slots__ = ()

    def clear(self) -> None:
        self._fields.clear()


def _value(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"invalid character in the value of {name!r}")
    return value.encode("latin-1")


def _checked(name: str) -> bytes:
    lowered = name.lower()
    if lowered in _PROTECTED:
        raise ValueError(f"{name!r} belongs to the proxy: a filter may read it, not change it")
    key = lowered.encode("latin-1")
    if not key or key.translate(None, b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"):
        raise ValueError(f"{name!r} is not a header name")
    return key


# The client connection a request came on (peer, local and original destination addresses, the
# listener and its direction): the one every downstream connection carries.
Connection = ConnectionInfo


class Request:
    """The request a filter sees: read it, change its headers, answer it, or hold and resume it."""

    __slots__ = ("_ex", "_held_body", "_passed_in", "_passed_out", "_responding", "_response", "_resume_at",
                 "headers", "state")

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex
        # The filters that leave this request's body (in) or response's body (out) as it comes.
        self._passed_in: set[HttpFilter] | None = None
        self._passed_out: set[HttpFilter] | None = None
        # Where the chain goes on after HOLD: 0 not held, -1 resume() came before HOLD was returned.
        self._resume_at = 0
        self._responding = False  # in on_response: reply() is for on_request
        self._response: Response | None = None  # the response head the filters see (one per exchange)
        self._held_body: list[bytes] | None = None  # the body kept while a filter holds its head
        self.headers = Headers(ex.headers)
        self.state: dict[str, Any] = {}  # per request, shared by the filters of its chain

    @property
    def method(self) -> str:
        return self._ex.method.decode("latin-1")

    @property
    def path(self) -> str:
        """The path and query, as the client sent them."""
        return self._ex.path

    @property
    def authority(self) -> str:
        return self._ex.authority

    @property
    def peer(self) -> str:
        """The client's address (the connection's, not X-Forwarded-For)."""
        return self._ex.down.peer

    @property
    def connection(self) -> Connection:
        """The client connection (described when first asked, then kept for the connection)."""
        return self._ex.down.connection_info()

    @property
    def runtime(self) -> Snapshot:
        """Envoy's layered runtime as it is now (meshpy.runtime.Snapshot: get, get_bool, get_int,
        get_float, fraction by key); empty without one."""
        live = self._ex.cfg.runtime
        return live.snapshot if live is not None else EMPTY

    @property
    def protocol(self) -> str:
        """HTTP/1.0, HTTP/1.1 or HTTP/2, as the client spoke."""
        return "HTTP/1.0" if self._ex.http10 else self._ex.PROTOCOL

    @property
    def has_body(self) -> bool:
        """Whether a body follows the request head (HTTP/1.1: a content-length above 0 or chunked;
        HTTP/2: the head did not end the stream)."""
        return self._ex.has_body()

    def pass_body(self, flt: HttpFilter) -> None:
        """`flt` (the filter calling: `self`) leaves this request's body as it comes: its
        on_request_body is not called for it, and where no other filter may change the body, the
        request keeps its Content-Length upstream. Call it before the request goes upstream (from
        on_request)."""
        if self._passed_in is None:
            self._passed_in = set()
        self._passed_in.add(flt)

    @property
    def forwards(self) -> bool:
        """Whether the route sends the request upstream: False on a `direct` or `redirect` route, which
        Envoy filters that need a route action (CORS) pass by."""
        route = self._ex.route
        return route is not None and route.forward

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
              flag: str = "", local_reply: bool = True) -> Verdict:
        """Answer here; the request goes no further. Return what this returns from on_request.
        `flag`: the response flag the access log and metrics show (Envoy's, e.g. UAEX for a request
        an authorization service refused); none by default. `local_reply`: False sends the answer as
        a response the filter makes itself rather than a local reply (Envoy's encodeHeaders from a
        filter, as for CORS's preflight answer): without the route's `response_headers` edits, and to
        a gRPC client as it is rather than as a gRPC status."""
        if self._responding:
            raise RuntimeError("reply() answers a request: call it from on_request (or after HOLD)")
        if not 200 <= status <= 599:
            raise ValueError(f"status must be from 200 to 599, got {status}")
        extra = [(_checked(n), _value(n, v)) for n, v in (headers or {}).items()]
        self._ex.filter_reply(status, body, extra, flag, local_reply)
        return REPLIED

    def resume(self) -> None:
        """Go on after HOLD: the next filter, then upstream. Does nothing once the request has ended
        (the client left) or was answered."""
        self._ex.filter_resume()

    @property
    def response_trailers(self) -> Trailers | None:
        """The response's trailers (an HTTP/2 upstream's, gRPC's grpc-status among them), to read,
        change or drop (`clear()`) from `on_response_body` when `end` is True, before they go to the
        client; None when the response has none (yet). An HTTP/2 client gets what is left; an
        HTTP/1.1 client never gets trailers."""
        fields = self._ex.trailers
        return Trailers(fields) if fields else None


class Response:
    """The response head a filter sees in on_response: its status, and its headers to change. The same
    object is passed to every filter's on_response for one response."""

    __slots__ = ("_held", "_passed", "has_body", "headers", "status")

    def __init__(self, status: int, fields: list[tuple[bytes, bytes]], has_body: bool = True) -> None:
        self.status = status
        self.headers = Headers(fields)
        # Whether a body follows the head: not for a HEAD request's answer, a 204 or 304, a
        # content-length of 0, or an HTTP/2 head that ends the stream (gRPC's trailers-only answer).
        self.has_body = has_body
        self._passed = False
        self._held = False

    def hold(self, *, bodiless: bool = False) -> None:
        """The head waits for the body's end (as an Envoy filter that stops the headers and buffers
        the body): the body hooks run as the body comes, what they return is kept, and once every
        on_response_body has seen `end`, the response goes to the client with the status and headers
        this object has then (keep it, e.g. in request.state, to change them from the body hook) and
        the kept body, sized by its content-length. Nothing to wait for when `has_body` is False:
        the head goes on at once, unless `bodiless` (an upstream's answer only): then the body hooks
        see `end` at once and what they return is the body, for a filter that answers a head without
        one by a whole response (a cache turning a 304 into the response it validated)."""
        if self.has_body or bodiless:
            self._held = True

    def pass_body(self) -> None:
        """This filter leaves this response's body as it comes: its on_response_body is not called
        for it, and where no other filter may change the body, the response keeps its
        Content-Length (as an Envoy filter that decides, at the head, not to touch the body)."""
        self._passed = True


class HttpFilter:
    """Subclass it and override the hooks you need; a hook not overridden costs nothing."""

    # A filter whose on_request_body only reads the body (returns None, or the chunk itself) sets
    # this: the request then keeps its Content-Length upstream.
    keeps_body_length = False
    # The same for on_response_body (a held head is sized by its kept body whatever this says): the
    # response keeps its Content-Length to the client.
    keeps_response_length = False
    # Where both a virtual host and its route give a config: by default the route's, merged with the
    # listener's by route_config (as most Envoy filters read only the most specific per-route config).
    # True: the virtual host's is merged with the listener's, then the route's with that (as Envoy's
    # CORS filter reads every level).
    route_config_levels = False
    # An instance whose config gives it nothing to do sets this (in __init__): the routes that would
    # run it leave it out of their chain, so it costs their requests nothing (a rate limit filter on
    # a route where no rate limit applies).
    inert = False

    def __init__(self, config: dict[str, Any]) -> None:
        """`config`: the filter's `config:` mapping (the route's own where a route gives one). Raise
        ValueError (or any exception) to refuse it: the config is then not loaded, naming this filter."""
        self.config = config

    @classmethod
    def route_config(cls, listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
        """The config this filter runs with on a virtual host or route that gives `route`, where the
        listener gives `listener`. By default the route's replaces the listener's; a filter whose
        per-route config only says part of it (as Envoy's per-route configs do) merges here."""
        return route

    def on_request(self, request: Request) -> Verdict:
        return CONTINUE

    def on_response(self, request: Request, response: Response) -> None:
        """The response head, before it goes to the client (upstream answers and the proxy's own)."""

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        """A piece of the request body as it arrives, before it goes upstream; once more with `end`
        True (and `chunk` empty) when the body is over. Return None to pass `chunk` on unchanged, or
        the bytes to send in its place (b"" drops it; at the end, bytes to add). It may answer with
        `request.reply()` while no response has started; it cannot hold. On a route where this hook
        is on, the request goes upstream without its Content-Length (chunked to HTTP/1.1), since its
        length may change, unless every such filter there has `keeps_body_length` or passed this
        request's body (`request.pass_body`)."""
        return None

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        """A piece of the response body (upstream answers and the proxy's own), as `on_request_body`;
        the response goes to the client without its Content-Length where this hook is on, unless
        every such filter passed this response's body (`response.pass_body` in on_response)."""
        return None

    def on_complete(self, request: Request) -> None:
        """The exchange is over (answered, failed or abandoned by the client): release what you hold."""
