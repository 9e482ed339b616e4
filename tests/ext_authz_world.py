"""Authorization services for the ext_authz tests: an HTTP one and a gRPC one (envoy.service.auth.v3
on grpcio), each recording what it was asked and answering by the request's path:
- `/deny...`: denied (HTTP 403 / gRPC PERMISSION_DENIED) with a body and headers;
- `/fail...`: the service fails (HTTP 503 / gRPC UNAVAILABLE);
- `/slow...`: answers after 0.6 s (past the filters' timeouts);
- anything else: allowed, with headers for the upstream and the client, and
  `x-envoy-auth-headers-to-remove: x-secret` (HTTP) / headers_to_remove (gRPC).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2


class HttpAuthz:
    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.seen.append({"method": self.command, "path": self.path, "body": body,
                                   "headers": {k.lower(): v for k, v in self.headers.items()}})
                if "/slow" in self.path:
                    time.sleep(0.6)
                if "/deny" in self.path:
                    self._answer(403, b"denied by policy", [
                        ("www-authenticate", "Bearer"), ("x-reason", "test"), ("content-type", "text/plain")])
                elif "/fail" in self.path:
                    self._answer(503, b"down", [])
                else:
                    self._answer(200, b"", [("x-current-user", "alice"), ("x-extra", "client-side"),
                                            ("x-envoy-auth-headers-to-remove", "x-secret"),
                                            ("x-dropped", "never")])

            def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HttpAuthz:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcAuthz(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, port: int, unix: str = "") -> None:
        """On 127.0.0.1:`port`, or on the Unix socket `unix` when given."""
        self.port = port
        self.seen: list[external_auth_pb2.CheckRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{unix}" if unix else f"127.0.0.1:{port}")

    def start(self) -> GrpcAuthz:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)

    def Check(self, request: external_auth_pb2.CheckRequest,
              context: grpc.ServicerContext) -> external_auth_pb2.CheckResponse:
        self.seen.append(request)
        path = request.attributes.request.http.path
        if "/slow" in path:
            time.sleep(0.6)
        if "/fail" in path:
            context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        out = external_auth_pb2.CheckResponse()
        if "/deny" in path:
            out.status.CopyFrom(status_pb2.Status(code=code_pb2.PERMISSION_DENIED))
            out.denied_response.status.code = 401
            out.denied_response.body = "denied by policy"
            out.denied_response.headers.append(base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key="x-reason", value="test")))
            return out
        out.status.CopyFrom(status_pb2.Status(code=code_pb2.OK))
        ok = out.ok_response
        ok.headers.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-current-user",
                                                                                 value="alice")))
        option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-tag", value="added"))
        option.append.value = True
        ok.headers.append(option)
        ok.headers_to_remove.append("x-secret")
        ok.response_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="x-extra", value="client-side")))
        return out
