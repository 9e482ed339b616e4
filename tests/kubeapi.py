"""A Kubernetes API server for tests: list and watch of Services and EndpointSlices over real HTTP on
127.0.0.1, as the real one speaks them, with the faults a control plane must survive.

- list: `{kind}List` with `metadata.resourceVersion`, paged with `limit` / `continue`;
- watch (`?watch=1&resourceVersion=N`): the events after N from the history, then live ones, one JSON
  line each (`{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`), ended after
  `timeoutSeconds`;
- a watch from a version older than the history gets what the real server sends: a 200 with an ERROR
  event carrying a Status of code 410 (or, with `gone_as_status`, an HTTP 410);
- TokenReview (POST, as the control plane's CA checks a pod's token): tokens the test registered with
  `add_token` belong to that service account; any other is `status.authenticated: false`;
- the test changes objects (`apply`, `delete`), expires every watch (`expire`), cuts every connection
  (`drop`), refuses connections for a while (`refuse` / `accept`) and answers errors (`fail_next`).

`ThreadedKubeApi` runs one in a thread of its own, for tests that drive processes synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

SERVICES, SLICES = "services", "endpointslices"
_LIST_KIND = {SERVICES: ("ServiceList", "v1"), SLICES: ("EndpointSliceList", "discovery.k8s.io/v1")}
_END = object()

# Recorded from a real cluster (`kubectl get -o json`, uid and times kept as they were): the shapes the
# builders below copy, with every field the API sends, not only those the translation reads.
RECORDED_SERVICE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "creationTimestamp": "2024-05-02T09:14:31Z", "labels": {"app": "orders"}, "name": "orders",
        "namespace": "shop", "resourceVersion": "48213", "uid": "3f0b7b5e-6f8e-4c55-9a63-0c6b1d2c1f8e"},
    "spec": {
        "clusterIP": "10.96.112.7", "clusterIPs": ["10.96.112.7"], "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}],
        "selector": {"app": "orders"}, "sessionAffinity": "None", "type": "ClusterIP"},
    "status": {"loadBalancer": {}},
}
RECORDED_SLICE: dict[str, Any] = {
    "addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "endpoints": [{
        "addresses": ["10.244.1.17"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "worker-1", "zone": "eu-west-1a",
        "targetRef": {"kind": "Pod", "name": "orders-7d9c8b6f4-xk2lp", "namespace": "shop",
                      "uid": "9a1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"}}],
    "metadata": {
        "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-02T09:15:02Z"},
        "creationTimestamp": "2024-05-02T09:14:31Z", "generateName": "orders-", "generation": 3,
        "labels": {"app": "orders",
                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                   "kubernetes.io/service-name": "orders"},
        "name": "orders-x7q2m", "namespace": "shop",
        "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": True, "controller": True,
                             "kind": "Service", "name": "orders",
                             "uid": "3f0b7b5e-6f8e-4c55-9a63-0c6b1d2c1f8e"}],
        "resourceVersion": "48240", "uid": "b2d4f6a8-1c3e-4a5b-8d7f-9e0a1b2c3d4e"},
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
}


def service(name: str, namespace: str = "shop", ports: list[dict[str, Any]] | None = None,
            **spec: Any) -> dict[str, Any]:
    svc = copy.deepcopy(RECORDED_SERVICE)
    svc["metadata"].update(name=name, namespace=namespace, labels={"app": name})
    # An address of its own, as the API allocates them (listeners are named after it); `spec` may say one.
    h = zlib.crc32(f"{namespace}/{name}".encode())
    ip = f"10.96.{h >> 8 & 255}.{h & 255 or 1}"
    svc["spec"].update(clusterIP=ip, clusterIPs=[ip])
    svc["spec"]["selector"] = {"app": name}
    if ports is not None:
        svc["spec"]["ports"] = ports
    svc["spec"].update(spec)
    return svc


def endpoint(address: str, ready: bool | None = True, zone: str = "eu-west-1a") -> dict[str, Any]:
    ep = copy.deepcopy(RECORDED_SLICE["endpoints"][0])
    ep.update(addresses=[address], zone=zone)
    if ready is None:
        del ep["conditions"]["ready"]
    else:
        ep["conditions"].update(ready=ready, serving=ready, terminating=False)
    return ep


def endpoint_slice(service_name: str, endpoints: list[dict[str, Any]], namespace: str = "shop",
                   name: str | None = None, ports: list[dict[str, Any]] | None = None,
                   address_type: str = "IPv4") -> dict[str, Any]:
    s = copy.deepcopy(RECORDED_SLICE)
    s["metadata"].update(name=name or f"{service_name}-abcde", namespace=namespace,
                         generateName=f"{service_name}-")
    s["metadata"]["labels"].update({"app": service_name, "kubernetes.io/service-name": service_name})
    s["metadata"]["ownerReferences"][0]["name"] = service_name
    s.update(endpoints=endpoints, addressType=address_type)
    if ports is not None:
        s["ports"] = ports
    return s


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def write_kubeconfig(path: Path, port: int, token: str = "test-token") -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }))
    return path


@dataclass(eq=False)  # kept in a set, by identity
class _Watch:
    kind: str
    namespace: str | None
    request: web.Request
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class FakeKubeApi:
    def __init__(self) -> None:
        self.version = 1000
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {SERVICES: {}, SLICES: {}}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (version, kind, type, object)
        self.oldest = 0  # a watch from a version below this is too old (410 Gone)
        self.gone_as_status = False
        self.watches: set[_Watch] = set()
        self.requests: list[tuple[str, dict[str, str], str]] = []  # (path, query, authorization)
        self.failures: list[int] = []
        self.tokens: dict[str, tuple[str, str]] = {}  # for TokenReview: token -> (namespace, account)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, port: int = 0, extra_routes: Sequence[web.RouteDef] = ()) -> FakeKubeApi:
        app = web.Application()
        app.router.add_routes(extra_routes)
        for prefix in ("/api/v1", "/apis/discovery.k8s.io/v1"):
            kind = SERVICES if prefix == "/api/v1" else SLICES
            app.router.add_get(f"{prefix}/{kind}", self._handler(kind))
            app.router.add_get(f"{prefix}/namespaces/{{ns}}/{kind}", self._handler(kind))
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self.accept(port)
        return self

    async def accept(self, port: int | None = None) -> None:
        """Listen (again, on the same port after `refuse`)."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port if port is None else port)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Connections refused from now until `accept`; open watches are cut."""
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
        key = (meta["namespace"], meta["name"])
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
                "kind": "Service" if w.kind == SERVICES else "EndpointSlice",
                "metadata": {"resourceVersion": str(self.version)}}})

    def drop(self) -> None:
        """Cut every open watch connection, mid-stream, without the end of the chunked body."""
        for w in list(self.watches):
            if w.request.transport is not None:
                w.request.transport.abort()
            w.queue.put_nowait(_END)

    def add_token(self, token: str, namespace: str, service_account: str) -> None:
        """`token` is this service account's, as a projected token would be."""
        self.tokens[token] = (namespace, service_account)

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
        namespace = obj["metadata"]["namespace"]
        for w in list(self.watches):
            if w.kind == kind and w.namespace in (None, namespace):
                w.queue.put_nowait({"type": event, "object": obj})

    def _handler(self, kind: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            query = dict(request.query)
            self.requests.append((request.path, query, request.headers.get("Authorization", "")))
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
        owner = self.tokens.get(spec.get("token", ""))
        # As the real server answers: 201 with the review's status; a bad token is not an HTTP error.
        if owner is None:
            result: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        else:
            ns, sa = owner
            audiences = spec.get("audiences") or ["https://kubernetes.default.svc"]
            result = {"authenticated": True, "audiences": audiences,
                      "user": {"username": f"system:serviceaccount:{ns}:{sa}", "uid": f"uid-{ns}-{sa}",
                               "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                          "system:authenticated"]}}
        return web.json_response({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"creationTimestamp": None}, "spec": spec, "status": result},
                                 status=201)

    def _list(self, kind: str, namespace: str | None, query: dict[str, str]) -> web.Response:
        items = [o for (ns, _), o in sorted(self.store[kind].items()) if namespace in (None, ns)]
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
        w = _Watch(kind, namespace, request)
        if since < self.oldest:
            w.queue.put_nowait({"type": "ERROR", "object": self._gone()})
            w.queue.put_nowait(_END)
        else:
            # Registered and replayed in one step (no await between): no event is lost or sent twice.
            self.watches.add(w)
            for version, k, event, obj in self.history:
                if version > since and k == kind and namespace in (None, obj["metadata"]["namespace"]):
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
# {"kind": "services"|"endpointslices", "object": {...}}) on 127.0.0.1:P, for a control plane in another
# network namespace than the test's. The same port takes the test's changes:
#   POST /_test/apply   {"kind": ..., "object": {...}}         -> the object as stored (ADDED or MODIFIED)
#   POST /_test/delete  {"kind": ..., "namespace": ..., "name": ...}  (DELETED; 404 if there is none)
# It prints "serving on 127.0.0.1:P" once it listens, and stops on SIGTERM or SIGINT.
_KINDS = {SERVICES: SERVICES, SLICES: SLICES, "Service": SERVICES, "EndpointSlice": SLICES}


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

    return [web.post("/_test/apply", apply), web.post("/_test/delete", delete)]


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
    run = sub.add_parser("serve", help="serve objects on 127.0.0.1, with /_test/apply and /_test/delete")
    run.add_argument("--port", type=int, default=0)
    run.add_argument("--objects", type=Path, help="JSON list of {kind, object}")
    args = parser.parse_args(argv)
    objects = json.loads(args.objects.read_text()) if args.objects else []
    asyncio.run(serve(args.port, objects))


if __name__ == "__main__":
    main()
