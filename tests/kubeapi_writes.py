"""The writing half of tests/kubeapi.py's fake API server, and what both halves share: ConfigMaps created,
read and replaced (`POST`, `GET` and `PUT` on `/api/v1/namespaces/{ns}/configmaps[/{name}]`) with the
answers of the real API server, field selectors, and the Status bodies of its errors.

- create: 201 with the object as stored (uid, creationTimestamp, resourceVersion filled in); 409
  `AlreadyExists` when the name is taken; 404 `NotFound` in a namespace that does not exist; 403
  `Forbidden` in one being deleted; 400 `BadRequest` for a namespace or resourceVersion in the body that
  does not belong there;
- get: 200, or 404 `NotFound`;
- replace: 200 with the new resourceVersion; 404 `NotFound` (an update never creates a ConfigMap); 409
  `Conflict` when the body's resourceVersion is not the stored one (an empty one replaces whatever is
  there, as the real server allows for ConfigMaps); 400 when the body names another object;
- `deny(namespace, code)`: every write there is answered `code` (403 as for a role without the verb, 409
  as for someone who always writes first), until `allow(namespace)`.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

SERVICES, SLICES, PODS = "services", "endpointslices", "pods"
CONFIGMAPS, NAMESPACES = "configmaps", "namespaces"
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid",
            500: "InternalError"}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def error(code: int, message: str, reason: str | None = None) -> web.Response:
    return web.json_response(status(code, reason or _REASONS.get(code, "Unknown"), message), status=code)


def write_kubeconfig(path: Path, port: int, token: str = "test-token") -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }))
    return path


def selects(obj: dict[str, Any], selector: str) -> bool:
    """Whether `obj` matches a fieldSelector of the fields every kind has (`metadata.name`,
    `metadata.namespace`; `=`, `==` or `!=`, comma-separated); the real server refuses others (400)."""
    meta = obj.get("metadata") or {}
    for term in filter(None, selector.split(",")):
        negate = "!=" in term
        field, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
        if (str(meta.get(field.removeprefix("metadata."), "")) == value) == negate:
            return False
    return True


class Writes:
    """What FakeKubeApi does for writes; it keeps the objects (`store`, `apply`) and the request log."""

    store: dict[str, dict[tuple[str, str], dict[str, Any]]]
    failures: list[int]
    denied: dict[str, int]
    writes: list[tuple[str, str]]  # (method, path) of each create, read and replace

    def apply(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def deny(self, namespace: str, code: int = 403) -> None:
        """Writes in `namespace` are refused with `code` until `allow`."""
        self.denied[namespace] = code

    def allow(self, namespace: str) -> None:
        self.denied.pop(namespace, None)

    def write_routes(self) -> list[web.RouteDef]:
        many = f"/api/v1/namespaces/{{ns}}/{CONFIGMAPS}"
        return [web.post(many, self._create), web.get(many + "/{name}", self._read),
                web.put(many + "/{name}", self._replace)]

    async def _start(self, request: web.Request) -> web.Response | None:
        """Log the request; the answer when it is refused before it is looked at."""
        self.writes.append((request.method, request.path))  # apart from `requests`, its lists and watches
        if self.failures:
            code = self.failures.pop(0)
            return error(code, "injected failure", "InternalError")
        ns = request.match_info["ns"]
        if request.method != "GET" and ns in self.denied:
            code = self.denied[ns]
            what = f'{CONFIGMAPS} "{request.match_info.get("name", "")}"'
            if code == 403:
                verb = "create" if request.method == "POST" else "update"
                return error(403, f'{what} is forbidden: User "system:serviceaccount:meshpy-system:meshpy-'
                             f'control" cannot {verb} resource "{CONFIGMAPS}" in API group "" in the '
                             f'namespace "{ns}"')
            return error(code, f"Operation cannot be fulfilled on {what}: the object has been modified; "
                         "please apply your changes to the latest version and try again")
        return None

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError as err:
            return error(400, f"the body is not JSON: {err}")
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            return error(400, "the body is not an object with metadata")
        return body

    async def _create(self, request: web.Request) -> web.Response:
        refused = await self._start(request)
        if refused is not None:
            return refused
        ns = request.match_info["ns"]
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        meta = body["metadata"]
        if meta.get("namespace", ns) != ns:
            return error(400, "the namespace of the provided object does not match the namespace sent on "
                         "the request")
        if meta.get("resourceVersion"):
            return error(400, "resourceVersion should not be set on objects to be created")
        name = meta.get("name")
        if not name:
            return error(422, f'{_kind(CONFIGMAPS)} "" is invalid: metadata.name: Required value: name or '
                         "generateName is required")
        namespace = self.store[NAMESPACES].get(("", ns))
        if namespace is None:
            return error(404, f'{NAMESPACES} "{ns}" not found')
        if (namespace.get("metadata") or {}).get("deletionTimestamp"):
            return error(403, f'{CONFIGMAPS} "{name}" is forbidden: unable to create new content in '
                         f"namespace {ns} because it is being terminated")
        if (ns, name) in self.store[CONFIGMAPS]:
            return error(409, f'{CONFIGMAPS} "{name}" already exists', "AlreadyExists")
        obj = copy.deepcopy(body)
        obj.update(apiVersion="v1", kind=_kind(CONFIGMAPS))
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp="2024-05-02T10:00:00Z")
        return web.json_response(self.apply(CONFIGMAPS, obj), status=201)

    async def _read(self, request: web.Request) -> web.Response:
        refused = await self._start(request)
        if refused is not None:
            return refused
        key = request.match_info["ns"], request.match_info["name"]
        obj = self.store[CONFIGMAPS].get(key)
        if obj is None:
            return error(404, f'{CONFIGMAPS} "{key[1]}" not found')
        return web.json_response(obj)

    async def _replace(self, request: web.Request) -> web.Response:
        refused = await self._start(request)
        if refused is not None:
            return refused
        key = request.match_info["ns"], request.match_info["name"]
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        meta = body["metadata"]
        if meta.get("name") != key[1] or meta.get("namespace", key[0]) != key[0]:
            return error(400, f"the name of the object ({meta.get('name')}) does not match the name on the "
                         f"URL ({key[1]})")
        stored = self.store[CONFIGMAPS].get(key)
        if stored is None:
            return error(404, f'{CONFIGMAPS} "{key[1]}" not found')
        version = meta.get("resourceVersion")
        if version and version != stored["metadata"]["resourceVersion"]:
            return error(409, f'Operation cannot be fulfilled on {CONFIGMAPS} "{key[1]}": the object has '
                         "been modified; please apply your changes to the latest version and try again")
        obj = copy.deepcopy(body)
        obj.update(apiVersion="v1", kind=_kind(CONFIGMAPS))
        # The server's own fields are its, whatever the body says.
        obj["metadata"].update(namespace=key[0], uid=stored["metadata"]["uid"],
                               creationTimestamp=stored["metadata"]["creationTimestamp"])
        return web.json_response(self.apply(CONFIGMAPS, obj))


def _kind(resource: str) -> str:
    return {CONFIGMAPS: "ConfigMap", NAMESPACES: "Namespace"}[resource]
