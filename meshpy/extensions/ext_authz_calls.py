"""The authorization service's side of Envoy's ext_authz: the check as an HTTP request or as a gRPC
CheckRequest (envoy.service.auth.v3), and its answer as a Decision.

HTTP, as Envoy's raw HTTP client has it: the request goes with the client's method, its path after
`path_prefix`, its authority, and of its headers only `authorization` and those the allowed lists
match; `content-length` says the body sent (0 without one). A 200 allows (the allowed upstream headers
go onto the request; `x-envoy-auth-headers-to-remove` names headers to take off it), a 5xx is an error,
anything else denies with the service's status, body and (unless listed otherwise) headers.

gRPC: Authorization/Check with the request's attributes; status OK allows with ok_response's header
changes, any other status denies with denied_response's status (403 by default), headers and body; a
call that fails (transport, timeout, a non-OK gRPC status) is an error.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf.message import DecodeError

from meshpy.extensions.strings import Predicate, any_of
from meshpy.filters import Request
from meshpy.upstream.side_calls import SideCallError, SideResponse

log = logging.getLogger("meshpy.ext_authz")
OK, DENIED, ERROR = "ok", "denied", "error"
CHECK_PATH = b"/envoy.service.auth.v3.Authorization/Check"
# Never copied from the service's answer as they are: the proxy frames its own reply.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
                      "proxy-connection", "te", "trailer"})
_REMOVE = "x-envoy-auth-headers-to-remove"
_ALWAYS = frozenset({"authorization", ":method", ":path", ":authority", "host"})


@dataclass(slots=True)
class Decision:
    kind: str
    status: int = 403
    body: bytes = b""
    set_headers: list[tuple[str, str]] = field(default_factory=list)  # upstream, replacing
    append_headers: list[tuple[str, str]] = field(default_factory=list)  # upstream, added
    remove_headers: list[str] = field(default_factory=list)  # upstream
    response_headers: list[tuple[str, str]] = field(default_factory=list)  # the client's response (ok)
    reply_headers: list[tuple[str, str]] = field(default_factory=list)  # the denial's


ERROR_DECISION = Decision(ERROR)


class HttpCheck:
    """The HTTP service: which headers go, and what of the answer is kept."""

    def __init__(self, svc: Any, allowed: Predicate | None, disallowed: Predicate | None) -> None:
        self.prefix = svc.path_prefix
        req, resp = svc.authorization_request, svc.authorization_response
        self.listed = any_of(req.allowed_headers.patterns)
        self.allowed, self.disallowed = allowed, disallowed
        self.add = [(h.key.lower(), h.value) for h in req.headers_to_add]
        self.upstream = any_of(resp.allowed_upstream_headers.patterns)
        self.upstream_append = any_of(resp.allowed_upstream_headers_to_append.patterns)
        self.on_success = any_of(resp.allowed_client_headers_on_success.patterns)
        client = resp.allowed_client_headers.patterns
        if client:
            listed_client = any_of(client)
            framing = {":status", "content-length", "www-authenticate", "location"}
            self.client: Predicate = lambda name: name in framing or listed_client(name)
        else:
            self.client = lambda name: name not in (":authority", "host")

    def sent(self, name: str) -> bool:
        """Whether the check carries the client's header `name`."""
        if self.disallowed is not None and self.disallowed(name):
            return False
        return name in _ALWAYS or self.listed(name) or (self.allowed is not None and self.allowed(name))

    def request(self, request: Request, timeout: float) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
        """The method, path and other headers of the check. Envoy's async client marks it internal
        and says its timeout, as its router would."""
        fields: list[tuple[bytes, bytes]] = [(b"x-envoy-internal", b"true"),
                                             (b"x-envoy-expected-rq-timeout-ms", b"%d" % (timeout * 1000))]
        for name, value in joined(request):
            if name not in ("content-length", "host") and self.sent(name):
                fields.append((name.encode("latin-1"), value.encode("latin-1")))
        for name, value in self.add:
            fields = [f for f in fields if f[0] != name.encode("latin-1")]
            fields.append((name.encode("latin-1"), value.encode("latin-1")))
        path = (self.prefix + request.path).encode("latin-1")
        return request.method.encode("latin-1"), path, fields

    def decision(self, answer: SideResponse) -> Decision:
        status = answer.status
        if status >= 500:
            return ERROR_DECISION
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers]
        if status == 200:
            d = Decision(OK, 200)
            for name, value in headers:
                if name == _REMOVE:
                    d.remove_headers += [h.strip().lower() for h in value.split(",") if h.strip()]
                    continue
                if name in _FRAMING or name in ("date", "server", "content-type"):
                    continue
                if self.upstream(name):
                    d.set_headers.append((name, value))
                if self.upstream_append(name):
                    d.append_headers.append((name, value))
                if self.on_success(name):
                    d.response_headers.append((name, value))
            return d
        d = Decision(DENIED, status, answer.body)
        d.reply_headers = [(n, v) for n, v in headers
                           if n not in _FRAMING and n != _REMOVE and self.client(n)]
        return d


def joined(request: Request) -> list[tuple[str, str]]:
    """The request's headers as Envoy's filters see them: repeated names joined by commas, the
    pseudo-headers as HTTP/2 names them (host is :authority), and x-forwarded-proto as the connection
    manager sets it before any filter runs."""
    cfg = request._ex.cfg
    scheme = cfg.scheme.decode()
    out: dict[str, str] = {":authority": request.authority, ":method": request.method,
                           ":path": request.path, ":scheme": scheme}
    for name, value in request.headers.items():
        if name != "host":
            out[name] = f"{out[name]},{value}" if name in out else value
    if cfg.forwarded_proto and "x-forwarded-proto" not in out:
        out["x-forwarded-proto"] = scheme
    return list(out.items())


def _address(msg: Any, host: str, port: int) -> None:
    """An envoy.config.core.v3.Address: a Unix socket's (a path, port 0) is a pipe, as Envoy sends it."""
    if port == 0 and host:
        msg.pipe.path = host
    else:
        msg.socket_address.address = host
        msg.socket_address.port_value = port


def check_request(request: Request, body: bytes | None, pack_as_bytes: bool, peer_certificate: bool,
                  context: dict[str, str], allowed: Predicate | None,
                  disallowed: Predicate | None, partial: bool = False) -> bytes:
    """The serialized CheckRequest for `request`; `body` None when the filter does not send bodies,
    `partial` when the body was cut at max_request_bytes."""
    ctx = attribute_context_pb2.AttributeContext()
    conn = request.connection
    _address(ctx.source.address, conn.peer, conn.peer_port)
    _address(ctx.destination.address, conn.local, conn.local_port)
    tls = conn.tls
    if tls is not None and tls.peer_uris:
        ctx.source.principal = tls.peer_uris[0]
    if tls is not None and tls.local_uris:
        ctx.destination.principal = tls.local_uris[0]
    if peer_certificate and tls is not None and tls.peer_certificate:
        ctx.source.certificate = ssl.DER_cert_to_PEM_cert(tls.peer_certificate)
    now = time.time()
    ctx.request.time.seconds = int(now)
    ctx.request.time.nanos = int((now % 1) * 1e9)
    http = ctx.request.http
    http.method = request.method
    path = request.path
    http.path = path
    http.host = request.authority
    http.scheme = request._ex.cfg.scheme.decode()
    http.protocol = request.protocol
    http.id = request.headers.get("x-request-id") or ""
    length = request.headers.get("content-length")
    http.size = int(length) if length is not None and length.isdigit() else -1
    for name, value in joined(request):
        if (allowed is None or allowed(name)) and not (disallowed is not None and disallowed(name)):
            http.headers[name] = value
    if body is not None:  # with_request_body: Envoy says whether the body was cut
        http.headers["x-envoy-auth-partial-body"] = "true" if partial else "false"
    if body:
        if pack_as_bytes:
            http.raw_body = body
        else:
            http.body = body.decode("utf-8", "replace")
    for key, value in context.items():
        ctx.context_extensions[key] = value
    msg = external_auth_pb2.CheckRequest()
    msg.attributes.CopyFrom(ctx)
    out: bytes = msg.SerializeToString()
    return out


def grpc_decision(answer: SideResponse) -> Decision:
    """A CheckResponse as a Decision; anything else (a failed call) is an error."""
    status = _grpc_status(answer)
    if answer.status != 200 or status != b"0" or len(answer.body) < 5:
        return ERROR_DECISION
    msg = external_auth_pb2.CheckResponse()
    try:
        msg.ParseFromString(answer.body[5:5 + int.from_bytes(answer.body[1:5], "big")])
    except DecodeError:
        return ERROR_DECISION
    if msg.status.code == 0:
        d = Decision(OK, 200)
        ok = msg.ok_response
        for option in ok.headers:
            # HeaderValueOption: `append` true adds beside what is there; unset or false replaces.
            pair = (option.header.key.lower(), option.header.value)
            (d.append_headers if option.append.value else d.set_headers).append(pair)
        d.remove_headers = [h.lower() for h in ok.headers_to_remove]
        d.response_headers = [(o.header.key.lower(), o.header.value) for o in ok.response_headers_to_add]
        if ok.query_parameters_to_set or ok.query_parameters_to_remove:
            log.warning("ext_authz: the service's query parameter changes are not applied by meshpy")
        return d
    denied = msg.denied_response
    d = Decision(DENIED, denied.status.code or 403, denied.body.encode("utf-8"))
    d.reply_headers = [(o.header.key.lower(), o.header.value) for o in denied.headers
                       if o.header.key.lower() not in _FRAMING]
    return d


def _grpc_status(answer: SideResponse) -> bytes | None:
    for k, v in (*answer.trailers, *answer.headers):  # trailers, or a trailers-only answer's head
        if k == b"grpc-status":
            return v
    return None


__all__ = ["CHECK_PATH", "DENIED", "ERROR", "OK", "Decision", "HttpCheck", "SideCallError", "check_request",
           "grpc_decision"]
