"""A Kubernetes API server for tests: list and watch of Services, EndpointSlices, Pods, ConfigMaps and
Namespaces over real HTTP on 127.0.0.1, as the real one speaks them, with the faults a control plane must
survive; ConfigMaps are also created, read and replaced (tests/kubeapi_writes.py).

- list: `{kind}List` with `metadata.resourceVersion`, paged with `limit` / `continue`, filtered by a
  `fieldSelector` on `metadata.name` / `metadata.namespace`;
- watch (`?watch=1&resourceVersion=N`): the events after N from the history, then live ones, one JSON
  line each (`{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`), ended after
  `timeoutSeconds`;
- a watch from a version older than the history gets what the real server sends: a 200 with an ERROR
  event carrying a Status of code 410 (or, with `gone_as_status`, an HTTP 410);
- TokenReview (POST, as the control plane's CA checks a pod's token): tokens the test registered with
  `add_token` belong to that service account and carry their audiences (by default `meshpy-ca`, what
  `meshpy inject`'s projected token asks for); a review's audiences (none: the API server's own) are
  intersected with the token's, and an empty intersection, or any other token, is
  `status.authenticated: false`, as the real server answers; `ignores_audiences` plays an API server
  that answers as if none had been asked, and `reviews` keeps every review's spec;
- the test changes objects (`apply`, `delete`), expires every watch (`expire`), cuts every connection
  (`drop`), refuses connections for a while (`refuse` / `accept`), answers errors (`fail_next`) and
  refuses writes in a namespace (`deny` / `allow`).

`ThreadedKubeApi` runs one in a thread of its own, for tests that drive processes synchronously; the
objects tests give it are built by tests/kubeobjects.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from kubeapi_writes import (
    CONFIGMAPS,
    NAMESPACES,
    PODS,
    SERVICES,
    SLICES,
    Writes,
    selects,
    status,
    write_kubeconfig,
)

from meshpy.identity.spiffe import DEFAULT_TOKEN_AUDIENCE

__all__ = ["CONFIGMAPS", "NAMESPACES", "PODS", "SERVICES", "SLICES", "FakeKubeApi", "ThreadedKubeApi",
           "status", "write_kubeconfig"]
_LIST_KIND = {SERVICES: ("ServiceList", "v1"), SLICES: ("EndpointSliceList", "discovery.k8s.io/v1"),
              PODS: ("PodList", "v1"), CONFIGMAPS: ("ConfigMapList", "v1"),
              NAMESPACES: ("NamespaceList", "v1")}
_KIND = {SERVICES: "Service", SLICES: "EndpointSlice", PODS: "Pod", CONFIGMAPS: "ConfigMap",
         NAMESPACES: "Namespace"}
_PREFIX = {SERVICES: "/api/v1", SLICES: "/apis/discovery.k8s.io/v1", PODS: "/api/v1", CONFIGMAPS: "/api/v1",
           NAMESPACES: "/api/v1"}
_CLUSTER_SCOPED = {NAMESPACES}
API_AUDIENCE = "https://kubernetes.default.svc"  # what the API server takes a token without audience for
_END = object()


@dataclass(eq=False)  # kept in a set, by identity
class _Watch:
    kind: str
    namespace: str | None
    request: web.Request
    fields: str = ""  # its fieldSelector
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class FakeKubeApi(Writes):
    def __init__(self) -> None:
        self.version = 1000
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {kind: {} for kind in _LIST_KIND}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (version, kind, type, object)
        self.oldest = 0  # a watch from a version below this is too old (410 Gone)
        self.gone_as_status = False
        self.watches: set[_Watch] = set()
        self.requests: list[tuple[str, dict[str, str], str]] = []  # (path, query, authorization)
        self.failures: list[int] = []
        self.refusing = False
        # For TokenReview: token -> (namespace, account, the audiences it was made for).
        self.tokens: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self.ignores_audiences = False
        self.reviews: list[dict[str, Any]] = []
        self.denied: dict[str, int] = {}  # namespace -> the status every write there gets
        self.writes: list[tuple[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, port: int = 0, extra_routes: Sequence[web.RouteDef] = ()) -> FakeKubeApi:
        app = web.Application()
        app.router.add_routes(extra_routes)
        for kind, prefix in _PREFIX.items():
            app.router.add_get(f"{prefix}/{kind}", self._handler(kind))
            if kind not in _CLUSTER_SCOPED:
                app.router.add_get(f"{prefix}/namespaces/{{ns}}/{kind}", self._handler(kind))
        app.router.add_routes(self.write_routes())
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self.accept(port)
        return self

    async def accept(self, port: int | None = None) -> None:
        """Listen (again, on the same port after `refuse`)."""
        assert self._runner is not None
        self.refusing = False
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port if port is None else port)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Connections refused from now until `accept`; open watches are cut, and a request on a
        connection kept alive from before is cut too (a client's pool may hold one, and a watch
        opened on it would otherwise see what happens while the API is away)."""
        self.refusing = True
        self.drop()
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        self.drop()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what tests do ----------------------------------------------------------------------------
    def apply(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])  # a Namespace is in none
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        event = "MODIFIED" if key in self.store[kind] else "ADDED"
        self.store[kind][key] = obj
        self._record(kind, event, obj)
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.store[kind].pop((namespace, name))
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self._record(kind, "DELETED", obj)

    def delete_quietly(self, kind: str, namespace: str, name: str) -> None:
        """Deleted while no watch hears it: only a list shows it is gone (call after `expire`)."""
        del self.store[kind][(namespace, name)]
        self.version += 1

    def expire(self) -> None:
        """The history is compacted: every open watch gets ERROR 410 and ends, and a watch from any
        version before the current one is refused the same way."""
        self.oldest = self.version
        for w in list(self.watches):
            w.queue.put_nowait({"type": "ERROR", "object": self._gone()})
            w.queue.put_nowait(_END)

    def bookmark(self) -> None:
        for w in list(self.watches):
            w.queue.put_nowait({"type": "BOOKMARK", "object": {
                "kind": _KIND[w.kind],
                "metadata": {"resourceVersion": str(self.version)}}})

    def drop(self) -> None:
        """Cut every open watch connection, mid-stream, without the end of the chunked body."""
        for w in list(self.watches):
            if w.request.transport is not None:
                w.request.transport.abort()
            w.queue.put_nowait(_END)

    def add_token(self, token: str, namespace: str, service_account: str,
                  audiences: Sequence[str] = (DEFAULT_TOKEN_AUDIENCE,)) -> None:
        """`token` is this service account's, made for `audiences`, as a projected token would be."""
        self.tokens[token] = (namespace, service_account, tuple(audiences))

    def fail_next(self, *statuses: int) -> None:
        """The next requests are answered with these HTTP statuses (and a Status body), in order."""
        self.failures.extend(statuses)

    def watch_requests(self, kind: str) -> list[dict[str, str]]:
        return [q for path, q, _ in self.requests if path.endswith("/" + kind) and _is_watch(q)]

    def list_requests(self, kind: str) -> list[dict[str, str]]:
        return [q for path, q, _ in self.requests if path.endswith("/" + kind) and not _is_watch(q)]

    # -- the protocol -----------------------------------------------------------------------------
    def _gone(self) -> dict[str, Any]:
        return status(410, "Expired", f"too old resource version (oldest is {self.oldest})")

    def _record(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        self.history.append((self.version, kind, event, obj))
        namespace = obj["metadata"].get("namespace", "")
        for w in list(self.watches):
            if w.kind == kind and w.namespace in (None, namespace) and selects(obj, w.fields):
                w.queue.put_nowait({"type": event, "object": obj})

    def _handler(self, kind: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            query = dict(request.query)
            self.requests.append((request.path, query, request.headers.get("Authorization", "")))
            if self.refusing:
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPServiceUnavailable()
            if self.failures:
                code = self.failures.pop(0)
                return web.json_response(status(code, "InternalError", "injected failure"), status=code)
            namespace = request.match_info.get("ns")
            if _is_watch(query):
                return await self._watch(request, kind, namespace, query)
            return self._list(kind, namespace, query)
        return handle

    async def _token_review(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query), request.headers.get("Authorization", "")))
        if self.failures:
            code = self.failures.pop(0)
            return web.json_response(status(code, "InternalError", "injected failure"), status=code)
        review = await request.json()
        spec = review.get("spec") or {}
        self.reviews.append(spec)
        owner = self.tokens.get(spec.get("token", ""))
        wanted = [API_AUDIENCE] if self.ignores_audiences else (spec.get("audiences") or [API_AUDIENCE])
        granted = [a for a in wanted if owner is not None and a in owner[2]]
        # As the real server answers: 201 with the review's status; a bad token is not an HTTP error.
        if owner is None:
            result: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        elif not granted:
            result = {"authenticated": False, "error": f"invalid bearer token, token audiences "
                      f"{list(owner[2])} is invalid for the target audiences {wanted}"}
        else:
            ns, sa, _ = owner
            result = {"authenticated": True, "audiences": granted,
                      "user": {"username": f"system:serviceaccount:{ns}:{sa}", "uid": f"uid-{ns}-{sa}",
                               "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                          "system:authenticated"]}}
        return web.json_response({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"creationTimestamp": None}, "spec": spec, "status": result},
                                 status=201)

    def _list(self, kind: str, namespace: str | None, query: dict[str, str]) -> web.Response:
        items = [o for (ns, _), o in sorted(self.store[kind].items())
                 if namespace in (None, ns) and selects(o, query.get("fieldSelector", ""))]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items)
        page = items[start:start + limit]
        name, api_version = _LIST_KIND[kind]
        meta: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": name, "apiVersion": api_version, "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, kind: str, namespace: str | None,
                     query: dict[str, str]) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or self.version)
        if since < self.oldest and self.gone_as_status:
            return web.json_response(self._gone(), status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        w = _Watch(kind, namespace, request, query.get("fieldSelector", ""))
        if since < self.oldest:
            w.queue.put_nowait({"type": "ERROR", "object": self._gone()})
            w.queue.put_nowait(_END)
        else:
            # Registered and replayed in one step (no await between): no event is lost or sent twice.
            self.watches.add(w)
            for version, k, event, obj in self.history:
                where = obj["metadata"].get("namespace", "")
                if version > since and k == kind and namespace in (None, where) and selects(obj, w.fields):
                    w.queue.put_nowait({"type": event, "object": obj})
        seconds = float(query.get("timeoutSeconds") or 1800)
        try:
            async with asyncio.timeout(seconds):
                while (event := await w.queue.get()) is not _END:
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (TimeoutError, ConnectionError):
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        finally:
            self.watches.discard(w)
        return response


def _is_watch(query: dict[str, str]) -> bool:
    return query.get("watch", "").lower() in ("1", "true")


class ThreadedKubeApi:
    """A FakeKubeApi on an event loop in its own thread; `call` runs one of its methods there."""

    def __init__(self) -> None:
        self.api = FakeKubeApi()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedKubeApi:
        self._thread.start()
        self.call(self.api.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.api.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.api.port

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


# -- as a process of its own ----------------------------------------------------------------------
# `python tests/kubeapi.py serve --port P --objects FILE.json` serves the objects in FILE (a JSON list of
# {"kind": "services"|"endpointslices"|"pods"|"configmaps"|"namespaces", "object": {...}}) on
# 127.0.0.1:P, for a control plane in another network namespace than the test's. The same port takes
# the test's changes:
#   POST /_test/apply   {"kind": ..., "object": {...}}         -> the object as stored (ADDED or MODIFIED)
#   POST /_test/delete  {"kind": ..., "namespace": ..., "name": ...}  (DELETED; 404 if there is none)
#   POST /_test/token   {"token": ..., "namespace": ..., "service_account": ..., "audiences": [...]?}
# It prints "serving on 127.0.0.1:P" once it listens, and stops on SIGTERM or SIGINT.
_KINDS = {**{kind: kind for kind in _KIND}, **{name: kind for kind, name in _KIND.items()}}


def control_routes(api: FakeKubeApi) -> list[web.RouteDef]:
    """The test-control routes of the serve mode, changing `api`'s objects as the methods above do."""

    async def body(request: web.Request) -> tuple[str, dict[str, Any]]:
        try:
            data = await request.json()
            return _KINDS[data["kind"]], data
        except (ValueError, KeyError, TypeError) as err:
            raise web.HTTPBadRequest(text=f"bad request: {err!r}\n") from err

    async def apply(request: web.Request) -> web.Response:
        kind, data = await body(request)
        try:
            return web.json_response(api.apply(kind, data["object"]))
        except (KeyError, TypeError) as err:
            raise web.HTTPBadRequest(text=f"bad object: {err!r}\n") from err

    async def delete(request: web.Request) -> web.Response:
        kind, data = await body(request)
        try:
            api.delete(kind, data["namespace"], data["name"])
        except KeyError as err:
            raise web.HTTPNotFound(text=f"no such object: {err!r}\n") from err
        return web.json_response({"deleted": [kind, data["namespace"], data["name"]]})

    async def token(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            audiences = [str(a) for a in data.get("audiences", [DEFAULT_TOKEN_AUDIENCE])]
            api.add_token(str(data["token"]), str(data["namespace"]), str(data["service_account"]), audiences)
        except (ValueError, KeyError, TypeError) as err:
            raise web.HTTPBadRequest(text=f"bad request: {err!r}\n") from err
        return web.json_response({"token": "added"})

    return [web.post("/_test/apply", apply), web.post("/_test/delete", delete),
            web.post("/_test/token", token)]


async def serve(port: int, objects: list[dict[str, Any]]) -> None:
    import signal

    api = FakeKubeApi()
    for item in objects:
        api.apply(_KINDS[item["kind"]], item["object"])
    await api.start(port, extra_routes=control_routes(api))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving on 127.0.0.1:{api.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await api.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="kubeapi.py", description="the fake Kubernetes API, as a process")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve objects on 127.0.0.1, with /_test/apply, /_test/delete and "
                                       "/_test/token")
    run.add_argument("--port", type=int, default=0)
    run.add_argument("--objects", type=Path, help="JSON list of {kind, object}")
    args = parser.parse_args(argv)
    objects = json.loads(args.objects.read_text()) if args.objects else []
    asyncio.run(serve(args.port, objects))


if __name__ == "__main__":
    main()
