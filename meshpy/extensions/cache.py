"""Envoy's HTTP cache filter (`envoy.extensions.filters.http.cache.v3.CacheConfig`) with its in-memory
store (`envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig`), as Envoy 1.40 runs
them; docs/filter-cache.md has the guide, meshpy.extensions.cache_headers the HTTP rules.

Per request:
- A request with a body, a conditional header (if-none-match, if-modified-since, if-range), an
  Authorization, a method other than GET and HEAD, or no host goes on untouched. One that is looked
  up and must go upstream on a route without a cluster (direct_response, redirect) is answered 404,
  as Envoy 1.40 answers it (its filter sends such requests upstream itself).
- Otherwise it is looked up (key: scheme, host, path with query; plus the varied headers of an
  answer stored with Vary). A fresh entry answers it here: the stored status, headers and body, with
  `age`, and for a Range of one span a 206 (or 416) cut from it; flag RFCF. A stale one sends the
  request upstream with if-none-match (its etag) and if-modified-since (its last-modified, else its
  date); a 304 then becomes the stored answer, its headers refreshed by the 304's, and the entry is
  refreshed too (unless the 304 names another etag). Anything else is the new answer.
- An upstream answer to a GET that the request's cache-control allows storing (no no-store) is
  stored when meshpy.extensions.cache_headers.storable says so, once its body is complete.

`ignore_request_cache_control_header` makes the request's cache-control and pragma count for nothing.
`key_creator_params` is accepted and changes nothing, as in Envoy 1.40 (which builds its key from host,
path and scheme only); `max_body_bytes`, which Envoy 1.40 does not enforce, bounds what is stored here.
The store is the filter instance's (meshpy.extensions.cache_store): kept across reloads while the
config is unchanged, bounded in bytes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from envoy.extensions.filters.http.cache.v3 import cache_pb2
from envoy.extensions.http.cache.simple_http_cache.v3 import config_pb2 as simple_pb2

from meshpy.extensions import Extension, parsed
from meshpy.extensions.cache_headers import (
    RequestCacheControl,
    age,
    http_time,
    joined,
    now,
    ranges,
    requires_validation,
    scheme,
    servable,
    storable,
    updated,
)
from meshpy.extensions.cache_store import Entry, Key, Store
from meshpy.extensions.strings import any_of, check_matcher
from meshpy.filters import CONTINUE, Headers, HttpFilter, Request, Response, Verdict
from meshpy.xds.translate_base import Issues, child, item

SIMPLE = simple_pb2.SimpleHttpCacheConfig.DESCRIPTOR.full_name
CAPACITY = 32 << 20  # bytes one filter's store keeps, bodies and heads
MAX_ENTRY = 4 << 20  # the largest body stored when max_body_bytes does not say
FLAG = "RFCF"  # Envoy's response flag for an answer from the cache
_KEY_PARAMS = {"exclude_scheme", "exclude_host", "query_parameters_included", "query_parameters_excluded"}


def check(issues: Issues, msg: Any, path: str) -> None:
    # key_creator_params: Envoy 1.40 accepts it and keys by host, path and scheme all the same; so does
    # meshpy (tests/integration/test_cache_envoy.py shows the binary ignoring it).
    issues.fields(msg, path, {"typed_config", "disabled", "allowed_vary_headers", "key_creator_params",
                              "max_body_bytes", "ignore_request_cache_control_header"})
    if msg.HasField("key_creator_params"):
        issues.fields(msg.key_creator_params, child(path, "key_creator_params"), _KEY_PARAMS)
    for i, matcher in enumerate(msg.allowed_vary_headers):
        check_matcher(issues, matcher, item(child(path, "allowed_vary_headers"), i))
    if msg.disabled.value:
        return
    if not msg.HasField("typed_config"):
        issues.add(child(path, "typed_config"), "is required unless disabled is true (as in Envoy)")
    elif msg.typed_config.TypeName() != SIMPLE:
        issues.add(child(path, "typed_config"), f"{msg.typed_config.TypeName() or 'an empty type'} is not "
                                                f"supported by meshpy (only {SIMPLE})")
    else:
        simple = simple_pb2.SimpleHttpCacheConfig()
        msg.typed_config.Unpack(simple)
        issues.fields(simple, child(path, "typed_config"), set())


EXTENSION = Extension(message=cache_pb2.CacheConfig, cls="meshpy.extensions.cache:Cache", check=check,
                      choose=lambda msg: "meshpy.extensions.cache:CacheOff" if msg.disabled.value
                      else "meshpy.extensions.cache:Cache")

_HIT, _MISS, _VALIDATING, _VALIDATED = range(4)


class _Lookup:
    """This filter's part of one request."""

    __slots__ = ("allows_insert", "body", "collected", "entry", "fields", "head", "key", "mode", "served",
                 "status", "stored_at")

    def __init__(self, key: Key, fields: list[tuple[str, str]], allows_insert: bool, head: bool) -> None:
        self.key = key
        self.fields = fields  # the request's headers at the lookup (what a Vary reads)
        self.allows_insert = allows_insert
        self.head = head
        self.mode = _MISS
        self.entry: Entry | None = None  # the stored answer served or being validated
        self.served: list[tuple[str, str]] = []  # the head of an answer from the cache
        self.body: list[bytes] | None = None  # an answer being collected for the store
        self.collected = 0
        self.status = 0
        self.stored_at = 0.0


class CacheOff(HttpFilter):
    """`disabled: true`: Envoy's filter then does nothing, and so costs nothing here."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        parsed(EXTENSION, config)


class Cache(HttpFilter):
    keeps_response_length = True  # it reads answers to store them; a body it serves is sized by meshpy

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        msg = parsed(EXTENSION, config)
        self.vary_allowed = any_of(msg.allowed_vary_headers)
        self.ignore_request_control = msg.ignore_request_cache_control_header
        max_entry = msg.max_body_bytes or MAX_ENTRY
        self.store = Store(CAPACITY, min(max_entry, CAPACITY))
        self._key = f"envoy.cache.{id(self)}"

    # -- the request --------------------------------------------------------------------------------
    def on_request(self, request: Request) -> Verdict:
        if request.has_body:
            return CONTINUE
        fields = request.headers.items()
        method = request.method
        if not servable(method, request.path, request.authority, fields):
            return CONTINUE
        control = RequestCacheControl() if self.ignore_request_control else RequestCacheControl.of(fields)
        key = (scheme(fields) or "http", request.authority, request.path)
        state = _Lookup(key, fields, not control.no_store, method == "HEAD")
        request.state[self._key] = state
        entry = self.store.lookup(key, fields, self.vary_allowed)
        if entry is None:
            return self._upstream(request)
        state.entry = entry
        current = age(entry.headers, entry.response_time, now())
        if requires_validation(control, entry.headers, current):
            if not request.forwards:
                return self._upstream(request)
            state.mode = _VALIDATING
            etag = joined(entry.headers, "etag")
            if etag is not None:
                request.headers.set("if-none-match", etag)
            modified = joined(entry.headers, "last-modified")
            if not http_time(modified):
                modified = joined(entry.headers, "date") or ""  # (Envoy sends it even empty)
            request.headers.set("if-modified-since", modified or "")
            return CONTINUE
        return self._hit(request, state, entry, current)

    @staticmethod
    def _upstream(request: Request) -> Verdict:
        """A request the cache sends upstream. Envoy 1.40's filter sends it itself, to the route's
        cluster: on a route without one (direct_response, redirect) it answers 404 with no body
        instead (`cache_no_route`), and so does meshpy."""
        return CONTINUE if request.forwards else request.reply(404)

    def _hit(self, request: Request, state: _Lookup, entry: Entry, current: int) -> Verdict:
        state.mode = _HIT
        status, body = entry.status, entry.body
        served = _with(entry.headers, "age", str(current))
        span = ranges(state.fields, len(body))
        if span is not None and not span.satisfiable:
            status, body = 416, b""
            served.append(("content-range", f"bytes */{len(entry.body)}"))
        elif span is not None and len(span.spans) == 1:
            begin, end = span.spans[0]
            status, body = 206, body[begin:end]
            served.append(("content-range", f"bytes {begin}-{end - 1}/{len(entry.body)}"))
        state.served = served
        # The head given here is provisional (one line per name): on_response puts the stored one in.
        first: dict[str, str] = {}
        for name, value in served:
            if _settable(name):
                first.setdefault(name, value)
        return request.reply(status, body, first, flag=FLAG, local_reply=False)

    # -- the response -------------------------------------------------------------------------------
    def on_response(self, request: Request, response: Response) -> None:
        state: _Lookup | None = request.state.get(self._key)
        if state is None:
            response.pass_body()
            return
        if state.mode == _HIT:
            _replace(response, state.served)
            response.pass_body()
            return
        entry = state.entry
        if state.mode == _VALIDATING and response.status == 304 and entry is not None:
            self._validated(request, state, entry, response)
            return
        items = response.headers.items() if state.allows_insert and not state.head else None
        if items is not None and storable(response.status, items, self.vary_allowed):
            state.body = []
            state.status = response.status
            state.served = items
            state.stored_at = now()
        else:
            response.pass_body()

    def _validated(self, request: Request, state: _Lookup, entry: Entry, response: Response) -> None:
        """A 304 to the validation: the stored answer goes out instead, under the 304's headers and
        those of its own that the 304 does not have; the entry takes the merged head, and the time of
        the 304 as the base of its age (unless the 304 names another etag)."""
        state.mode = _VALIDATED
        h = response.headers
        fresh_etag = h.get("etag")
        for name, value in entry.headers:
            if name != "age" and _settable(name) and name not in h:
                h.add(name, value)  # (one line per name, as Envoy's setCopy: the first one)
        merged = h.items()
        if fresh_etag is None or fresh_etag == joined(entry.headers, "etag"):
            stored = self.store.entry_for(state.key, state.fields, self.vary_allowed)
            if stored is not None:
                self.store.refresh(stored, updated(stored.headers, merged), now())
        response.status = entry.status
        response.hold(bodiless=True)

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        state: _Lookup | None = request.state.get(self._key)
        if state is None:
            return None
        if state.mode == _VALIDATED:
            return state.entry.body if end and state.entry is not None and not state.head else b""
        body = state.body
        if body is None:
            return None
        if chunk:
            state.collected += len(chunk)
            if state.collected > self.store.max_entry:
                state.body = None  # too large to keep: it goes on to the client, not into the store
                return None
            body.append(chunk)
        if end:
            state.body = None
            entry = Entry(state.status, state.served, b"".join(body), state.stored_at)
            self.store.insert(state.key, entry, state.fields, self.vary_allowed)
        return None


def _with(fields: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    """`fields` with `name` set to `value`: in place of its first line, else at the end."""
    out = [(n, v) for n, v in fields if n != name]
    at = next((i for i, (n, _) in enumerate(fields) if n == name), None)
    if at is None:
        out.append((name, value))
    else:
        out.insert(at, (name, value))
    return out


def _replace(response: Response, served: list[tuple[str, str]]) -> None:
    """An answer from the cache takes the stored head: its lines in their order, none of meshpy's
    provisional ones (a second date, a content-type the stored answer has not)."""
    h = response.headers
    for name in {n for n, _ in served} | {"content-type"}:
        if _settable(name):
            h.remove(name)
    for name, value in served:
        if _settable(name):
            h.add(name, value)


@lru_cache(maxsize=256)
def _settable(name: str) -> bool:
    """Whether a filter may set this header (not one of the framing and other fields that belong to
    the proxy, which meshpy states itself)."""
    try:
        Headers([]).add(name, "")
    except ValueError:
        return False
    return True
