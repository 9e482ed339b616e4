"""Keep a local copy of one kind of Kubernetes object in step with the API: list, then watch.

The client-go reflector's contract, on kubernetes_asyncio: a list gives every object and a
resourceVersion; a watch from that version gives each change after it. A watch that ends normally (its
timeoutSeconds ran out) is started again from the last version seen, bookmarks included, so nothing is
listed again. A watch whose version the API no longer has (410 Gone, as an HTTP status or an ERROR event)
is answered by listing again and replacing the copy whole: an object deleted while nobody was watching
is gone after that. Any other failure (connection refused or reset, a 5xx, a stalled stream) waits a
jittered, doubling delay and lists again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from control.sources.kubernetes_resources import Key, Object, key_of

log = logging.getLogger("meshpy.control.kubernetes")

LIST_PAGE = 500  # objects per list request: a big cluster's list arrives in pages, not one huge body
WATCH_SECONDS = 300  # what client-go asks for (it randomizes 5-10 minutes); the API ends the watch then
REQUEST_TIMEOUT = 30.0  # a list page, or connecting a watch; and how long past WATCH_SECONDS a stream may lag
QUICK_END = 1.0  # a watch that ends sooner than this with nothing in it counts as a failure (no busy loop)

Lister = Callable[..., Awaitable[Any]]
Shape = Callable[[Object], Object]


class Backoff:
    """Delays of `first` doubling up to `most`, each one drawn between half and all of it (so that a
    fleet of control planes does not come back in step)."""

    def __init__(self, first: float = 0.5, most: float = 30.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.first, self.most, self.rng = first, most, rng
        self._next = first

    def delay(self) -> float:
        d = self._next * (0.5 + self.rng() / 2)
        self._next = min(self._next * 2, self.most)
        return d

    def reset(self) -> None:
        self._next = self.first


@dataclass
class Counters:
    """For /metrics; shared by the watchers of one source."""

    events: dict[str, int] = field(default_factory=dict)  # by kind
    unchanged: dict[str, int] = field(default_factory=dict)  # of those, the ones that changed nothing kept
    resyncs: int = 0
    errors: int = 0


class WatchError(Exception):
    """The stream said something that is not a watch event, or ended at once."""


class Reflector:
    """`objects` mirrors one kind (in one namespace, or all); `on_change` is called after each change
    of it, and `synced` is true from the first complete list on. With `shape`, each object is kept as
    `shape` makes it (what the source reads of it), and an event that leaves that as it was is counted
    but changes nothing: no `on_change`, so no translation. With `field_selector` (as the API takes it,
    `metadata.name=x`), only the objects it selects are listed and watched."""

    def __init__(self, kind: str, lister: Lister, on_change: Callable[[], None], counters: Counters, *,
                 namespace: str | None = None, watch_seconds: int = WATCH_SECONDS,
                 request_timeout: float = REQUEST_TIMEOUT, backoff: Backoff | None = None,
                 shape: Shape | None = None, field_selector: str | None = None) -> None:
        self.kind, self.lister, self.on_change, self.counters = kind, lister, on_change, counters
        self.shape, self.field_selector = shape, field_selector
        self.namespace = namespace
        self.watch_seconds, self.request_timeout = watch_seconds, request_timeout
        self.backoff = backoff or Backoff()
        self.objects: dict[Key, Object] = {}
        self.synced = False
        self._fresh = False  # listed, and no watch event since
        which = f"{kind} {field_selector}" if field_selector else kind
        self.what = f"{which} in {namespace}" if namespace else f"{which} (all namespaces)"

    def _args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"namespace": self.namespace} if self.namespace else {}
        if self.field_selector:
            args["field_selector"] = self.field_selector
        return args

    async def run(self) -> None:
        """Forever; only cancellation ends it."""
        listed_before = gone_before = False
        while True:
            try:
                if listed_before:
                    self.counters.resyncs += 1
                listed_before = True
                version = await self.list()
                while True:
                    version = await self.watch(version)
            except ApiException as err:
                # A 410 again, with nothing in between, is the API refusing what it just listed, not an
                # expiry: it waits like any other failure instead of listing again at once, forever.
                if err.status == 410 and not (gone_before and self._fresh):
                    gone_before = True
                    log.info("%s: watch expired (410 Gone: %s); listing again", self.what, err.reason)
                    continue
                gone_before = False
                await self._failed(f"API error {err.status} {err.reason}")
            except Exception as err:
                # Anything else (refused, reset, a malformed object) waits and lists again: one bad answer
                # must not end the watch for good. Cancellation is not an Exception and still ends it.
                gone_before = False
                await self._failed(f"{type(err).__name__}: {err}")

    async def _failed(self, why: str) -> None:
        self.counters.errors += 1
        delay = self.backoff.delay()
        log.warning("%s: %s; listing again in %.1fs", self.what, why, delay)
        await asyncio.sleep(delay)

    async def list(self) -> str:
        """Replace `objects` with the API's, page by page; the list's resourceVersion."""
        items: dict[Key, Object] = {}
        page: str | None = None
        while True:
            body = await self._list_page(page)
            for item in body.get("items") or ():
                items[key_of(item)] = self.shape(item) if self.shape is not None else item
            meta = body.get("metadata") or {}
            page = meta.get("continue")
            if not page:
                break
        version = str(meta["resourceVersion"])
        self.objects = items
        self._fresh = True
        first = not self.synced
        self.synced = True
        log.info("%s: %s %d objects at version %s", self.what, "listed" if first else "resynced",
                 len(items), version)
        self.on_change()
        return version

    async def _list_page(self, page: str | None) -> dict[str, Any]:
        # Raw JSON rather than models (see kubernetes_resources); the client checks no status then.
        async with asyncio.timeout(self.request_timeout):
            resp = await self.lister(**self._args(), limit=LIST_PAGE, _continue=page, _preload_content=False,
                                     _request_timeout=self.request_timeout)
            try:
                if resp.status != 200:
                    raise ApiException(status=resp.status, reason=(await resp.text())[:200])
                body = await resp.json()
            finally:
                resp.release()
        if not isinstance(body, dict):
            raise WatchError(f"a list answered with a {type(body).__name__}")
        return body

    async def watch(self, version: str) -> str:
        """Apply the changes after `version` until the API ends the watch; the last version seen."""
        started, applied = time.monotonic(), 0
        # The server ends the watch after watch_seconds; a stream silent for longer than that is dead
        # (a half-open connection), which only a read deadline finds out.
        deadline = aiohttp.ClientTimeout(connect=self.request_timeout, sock_connect=self.request_timeout,
                                         sock_read=self.watch_seconds + self.request_timeout)
        # return_type "object": events keep the raw JSON, as the list does.
        async with watch.Watch(return_type="object") as w:
            stream = w.stream(self.lister, **self._args(), resource_version=version,
                              allow_watch_bookmarks=True, timeout_seconds=self.watch_seconds,
                              _request_timeout=deadline)
            async for event in stream:
                self._apply(event)
                applied += 1
                self._fresh = False
                version = str(w.resource_version or version)
        if not applied and time.monotonic() - started < QUICK_END:
            raise WatchError("the watch ended as soon as it began")
        self.backoff.reset()  # a watch that lasted or brought something: the API is fine again
        return version

    def _apply(self, event: Any) -> None:
        if not isinstance(event, dict) or "type" not in event:
            raise WatchError(f"not a watch event: {str(event)[:200]!r}")
        kind = event["type"]
        if kind == "BOOKMARK":
            return  # only its resourceVersion matters, which the Watch keeps
        obj = event["raw_object"]
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise WatchError(f"unknown watch event type {kind!r}")
        self.counters.events[self.kind] = self.counters.events.get(self.kind, 0) + 1
        if kind == "DELETED":
            self.objects.pop(key_of(obj), None)
        else:
            kept = self.shape(obj) if self.shape is not None else obj
            key = key_of(kept)
            if self.shape is not None and self.objects.get(key) == kept:
                # Most of a pod's events are its status (probes, restarts): nothing kept changed.
                self.counters.unchanged[self.kind] = self.counters.unchanged.get(self.kind, 0) + 1
                return
            self.objects[key] = kept
        self.on_change()
