"""A real grpcio server for tests, with raw-bytes methods (no generated code needed):
/echo.Echo/Unary, /echo.Echo/ServerStream, /echo.Echo/ClientStream, /echo.Echo/Bidi, and
/echo.Echo/Fail (answers the status named by the request, e.g. b"NOT_FOUND:why"),
/echo.Echo/Sleep (sleeps the milliseconds named by the request), /echo.Echo/Flaky (fails UNAVAILABLE on
every odd call with the same message)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "echo.Echo"


def _unary(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("x-served-by", "grpc-echo"),))
    return request


def _server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    count = int(request or b"3")
    for i in range(count):
        yield b"part-%d" % i


def _client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    total = 0
    n = 0
    for r in requests:
        total += len(r)
        n += 1
    return b"%d messages, %d bytes" % (n, total)


def _bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for r in requests:
        yield r.upper()


def _fail(request: bytes, context: Any) -> bytes:
    name, _, message = request.decode().partition(":")
    context.abort(grpc.StatusCode[name], message)
    raise AssertionError("not reached")


_FLAKY_CALLS: dict[bytes, int] = {}


def _flaky(request: bytes, context: Any) -> bytes:
    """Every first call with a given message fails UNAVAILABLE (in a trailers-only answer)."""
    _FLAKY_CALLS[request] = _FLAKY_CALLS.get(request, 0) + 1
    if _FLAKY_CALLS[request] % 2:
        context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
    return b"at last"


def _sleep(request: bytes, context: Any) -> bytes:
    time.sleep(int(request) / 1000)
    return b"slept"


def add_handlers(server: grpc.Server, health: dict[str, int] | None = None) -> None:
    """The echo service (and grpc.health.v1.Health) on `server`. `health`: service name -> status
    (1 SERVING, 2 NOT_SERVING) answered by /grpc.health.v1.Health/Check; a test may change it while
    the server runs."""
    states = health if health is not None else {}

    def check(request: bytes, context: Any) -> bytes:
        service = request[2:].decode() if request[:1] == b"\x0a" else ""
        return b"\x08" + bytes([states.get(service, 1)])

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
        "Flaky": grpc.unary_unary_rpc_method_handler(_flaky),
    }
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}),
    ))


def start(port: int, health: dict[str, int] | None = None) -> grpc.Server:
    """The echo service in the clear on 127.0.0.1:`port` (see add_handlers for `health`)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 8 << 20),
                                  ("grpc.max_send_message_length", 8 << 20)])
    add_handlers(server, health)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server
