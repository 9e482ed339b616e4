"""Envoy's external authorization filter (envoy.filters.http.ext_authz): each request is checked by an
outside service (OPA, an auth server of your own) over gRPC (envoy.service.auth.v3.Authorization/Check)
or HTTP before it goes upstream; the service allows it (perhaps with header changes), denies it (the
client gets the service's status, headers and body, with the response flag UAEX), or fails (an error:
`status_on_error`, 403 by default, unless `failure_mode_allow`).

The request is held while the check runs (the filter API's HOLD). With `with_request_body` the body is
gathered first, up to `max_request_bytes` (past that: 413, unless `allow_partial_message` sends what
came). A route's ExtAuthzPerRoute turns the filter off there or adds `context_extensions`. The calls go
through meshpy.upstream.side_calls to the named cluster (or a google_grpc target), bounded by the
service's timeout (Envoy's default: 200 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from meshpy import extensions
from meshpy.extensions import ext_authz_calls as calls
from meshpy.extensions import ext_authz_config as config_rules
from meshpy.extensions.runtime_flags import Fraction, field
from meshpy.extensions.strings import any_of
from meshpy.filters import CONTINUE, HOLD, HttpFilter, Request, Response, Verdict
from meshpy.upstream.side_calls import SideCallError, SideClient

log = logging.getLogger("meshpy.ext_authz")
_DEFAULT_TIMEOUT = 0.2
_PER_ROUTE = "_per_route"  # the merged config's key for a route's ExtAuthzPerRoute
_STATE = "ext_authz"  # request.state: this filter's call and what it keeps for the response


class ExtAuthz(HttpFilter):
    keeps_body_length = True  # the body is read for the check, never changed

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        config = dict(config)
        route = config.pop(_PER_ROUTE, None)
        msg = extensions.parsed(EXTENSION, config)
        context: dict[str, str] = {}
        if route is not None:
            per_route = extensions.parsed(EXTENSION, route, route=True)
            context = dict(per_route.check_settings.context_extensions)
            self.body_buffering = not per_route.check_settings.disable_request_body_buffering
        else:
            self.body_buffering = True
        self.context = context
        self.failure_mode_allow = msg.failure_mode_allow
        self.failure_header = msg.failure_mode_allow_header_add
        self.status_on_error = msg.status_on_error.code or 403
        self.peer_certificate = msg.include_peer_certificate
        self.allowed = any_of(msg.allowed_headers.patterns) if msg.HasField("allowed_headers") else None
        self.disallowed = any_of(msg.disallowed_headers.patterns) if msg.HasField("disallowed_headers") \
            else None
        self.with_body = msg.HasField("with_request_body")
        self.max_body = msg.with_request_body.max_request_bytes
        self.partial = msg.with_request_body.allow_partial_message
        self.pack_as_bytes = msg.with_request_body.pack_as_bytes
        self.enabled = Fraction(field(msg, "filter_enabled"), True)  # (its runtime key read per request)
        self.client = SideClient()
        self.http: calls.HttpCheck | None = None
        self.grpc_target: tuple[str, int] | str | None = None
        if msg.HasField("http_service"):
            svc = msg.http_service
            self.http = calls.HttpCheck(svc, self.allowed, self.disallowed)
            self.cluster = svc.server_uri.cluster
            self.timeout = _seconds(svc.server_uri.timeout) if svc.server_uri.HasField("timeout") else \
                _DEFAULT_TIMEOUT
        else:
            grpc = msg.grpc_service
            self.cluster = grpc.envoy_grpc.cluster_name
            self.authority = (grpc.envoy_grpc.authority or grpc.envoy_grpc.cluster_name).encode()
            if grpc.HasField("google_grpc"):
                self.grpc_target = config_rules.target(grpc.google_grpc.target_uri)
                self.authority = grpc.google_grpc.target_uri.encode()
            self.timeout = _seconds(grpc.timeout) if grpc.HasField("timeout") else _DEFAULT_TIMEOUT
            self.metadata = [(m.key.lower().encode(), m.value.encode()) for m in grpc.initial_metadata]

    @classmethod
    def route_config(cls, listener: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
        return {**listener, _PER_ROUTE: route}

    def on_request(self, request: Request) -> Verdict:
        if not self.enabled.on(request):
            return CONTINUE
        if self.with_body and self.body_buffering:
            gathering = request.state.get(_STATE)
            if gathering is None:  # the body is still to come: its end starts the check
                request.state[_STATE] = _Gathering()
                return HOLD
            if isinstance(gathering, _Gathering):  # (some of) the body came before routing
                gathering.held = True
                if gathering.ended or len(gathering.body) >= self.max_body:
                    gathering.started = True
                    self._start(request, gathering.body)
                return HOLD
        self._start(request, None)
        return HOLD

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        gathering = request.state.get(_STATE)
        if gathering is None:  # (a body that came whole before the request was routed)
            gathering = request.state[_STATE] = _Gathering(held=False)
        if not isinstance(gathering, _Gathering) or gathering.started:
            return None
        gathering.body += chunk
        gathering.ended = end
        full = len(gathering.body) >= self.max_body
        if full and not self.partial and (not end or len(gathering.body) > self.max_body):
            gathering.started = True  # Envoy's buffer limit: the request is too large to check
            request.reply(413, b"Payload Too Large")
            return None
        if (end or full) and gathering.held:
            gathering.started = True
            self._start(request, gathering.body)
        return None

    def _start(self, request: Request, body: bytes | None) -> None:
        task = asyncio.get_running_loop().create_task(self._check(request, body))
        request.state[_STATE] = task

    async def _check(self, request: Request, body: bytes | None) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                decision = await self._call(request, body)
        except (TimeoutError, OSError, SideCallError, ValueError) as err:
            log.debug("ext_authz call to %s failed: %s", self.cluster or self.grpc_target, err)
            decision = calls.ERROR_DECISION
        except asyncio.CancelledError:
            return  # the client went away
        self._apply(request, decision)

    async def _call(self, request: Request, body: bytes | None) -> calls.Decision:
        """`body`: what was gathered (None: bodies are not sent); at most max_request_bytes go."""
        if not body:
            body = None  # a request without a body is not buffered in Envoy: nothing said of one
        partial = body is not None and len(body) >= self.max_body  # (Envoy's test: the buffer is full)
        if body is not None:
            body = body[:self.max_body]
        if self.http is not None:
            cluster = request._ex.cfg.clusters.get(self.cluster)
            if cluster is None:
                return calls.ERROR_DECISION
            method, path, fields = self.http.request(request, self.timeout)
            answer = await self.client.call(cluster, method, path, request.authority.encode("latin-1"),
                                            fields, body or b"")
            return self.http.decision(answer)
        message = calls.check_request(request, body, self.pack_as_bytes, self.peer_certificate, self.context,
                                      self.allowed, self.disallowed, partial)
        called = await self.client.grpc(request._ex.cfg.clusters, self.cluster, self.grpc_target,
                                        calls.CHECK_PATH, self.authority, message, self.metadata,
                                        self.timeout)
        return calls.ERROR_DECISION if called is None else calls.grpc_decision(called)

    def _apply(self, request: Request, d: calls.Decision) -> None:
        request.state.pop(_STATE, None)
        if d.kind == calls.OK:
            try:
                for name in d.remove_headers:
                    if not name.startswith(":") and name != "host":
                        request.headers.remove(name)
                for name, value in d.set_headers:
                    request.headers.set(name, value)
                for name, value in d.append_headers:
                    # Onto the value there, comma-joined; nothing when there is none (as Envoy).
                    there = request.headers.get_all(name)
                    if there:
                        request.headers.set(name, ",".join([*there, value]))
            except ValueError as err:  # a header the proxy keeps (host, content-length, ...)
                log.warning("ext_authz: %s", err)
            if d.response_headers:
                request.state[_STATE] = d.response_headers
            request.resume()
        elif d.kind == calls.DENIED:
            request.reply(_status(d.status), d.body, _reply_headers(d.reply_headers), flag="UAEX")
        elif self.failure_mode_allow:
            if self.failure_header:
                request.headers.set("x-envoy-auth-failure-mode-allowed", "true")
            request.resume()
        else:
            request.reply(_status(self.status_on_error), b"", flag="UAEX")

    def on_response(self, request: Request, response: Response) -> None:
        added = request.state.get(_STATE)
        if isinstance(added, list):
            for name, value in added:
                with contextlib.suppress(ValueError):  # a framing header: the proxy's own
                    response.headers.add(name, value)

    def on_complete(self, request: Request) -> None:
        task = request.state.pop(_STATE, None)
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()


class ExtAuthzNoBody(ExtAuthz):
    """The filter without a request body hook, for configs that check the head only: a route whose
    chain has a body hook sends its body on without a content-length, which this one never needs."""

    on_request_body = HttpFilter.on_request_body


class _Gathering:
    __slots__ = ("body", "ended", "held", "started")

    def __init__(self, held: bool = True) -> None:
        self.body = b""
        self.held = held  # on_request has run (and holds the request)
        self.started = False
        self.ended = False


def _status(code: int) -> int:
    return code if 200 <= code <= 599 else 403


def _reply_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith(":") or name in ("host", "date"):
            continue
        out[name] = value
    return out


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def _class(msg: Any) -> str:
    return "meshpy.extensions.ext_authz:ExtAuthz" if msg.HasField("with_request_body") else \
        "meshpy.extensions.ext_authz:ExtAuthzNoBody"


EXTENSION = extensions.Extension(
    message=config_rules.ExtAuthzConfig, cls="meshpy.extensions.ext_authz:ExtAuthz", check=config_rules.check,
    route_message=config_rules.ExtAuthzPerRoute, route_check=config_rules.check_route, choose=_class)
