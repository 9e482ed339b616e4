"""gRPC's interop client cases (doc/interop-test-descriptions.md in grpc/grpc, "Client"), each a function
of an `Interop`: grpcio on a channel to meshpy, which routes to the interop server (server.py).

Each asserts what the description says. Where that could hold without the proxy doing anything (a
cancellation or a deadline the client library decides alone), a case also checks the server's side:
that the call reached it through the proxy, and ended there too. Some cases add a raw HTTP/2 look at
what grpcio hides (the compressed flag of a response message).
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from interop.protos import Protos
from interop.server import ECHO_INITIAL, ECHO_TRAILING, MARK, SERVICE, CallRecord, InteropServer
from interop.tap import StreamRecord
from interop.wire import Call, GrpcWire

T = 10.0  # every call's deadline, unless a case is about deadlines
REQ_SIZES = (27182, 8, 1828, 45904)
RESP_SIZES = (31415, 9, 2653, 58979)
LARGE_REQ, LARGE_RESP = 271828, 314159


@dataclass
class Interop:
    pb: Protos
    channel: grpc.Channel
    server: InteropServer
    port: int  # meshpy's listener

    @property
    def stub(self) -> Any:
        return self.pb.services.TestServiceStub(self.channel)

    def payload(self, size: int) -> Any:
        return self.pb.messages.Payload(body=bytes(size))

    def large_request(self, **fields: Any) -> Any:
        return self.pb.messages.SimpleRequest(response_size=LARGE_RESP, payload=self.payload(LARGE_REQ),
                                              **fields)

    def duplex_request(self, response_size: int | None, request_size: int = 0, **fields: Any) -> Any:
        params = [] if response_size is None else [self.pb.messages.ResponseParameters(size=response_size)]
        return self.pb.messages.StreamingOutputCallRequest(
            response_parameters=params, payload=self.payload(request_size), **fields)


class Requests:
    """A request stream the case feeds as it goes: iterating waits for the next `put` or the `close`."""

    _END = object()

    def __init__(self) -> None:
        self._q: queue.Queue[object] = queue.Queue()

    def put(self, message: Any) -> None:
        self._q.put(message)

    def close(self) -> None:
        self._q.put(self._END)

    def __iter__(self) -> Iterator[Any]:
        while (m := self._q.get()) is not self._END:
            yield m


def fails_with(code: grpc.StatusCode, call: Callable[[], object]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == code, f"{err.code()} ({err.details()!r}), not {code}"
        return err
    raise AssertionError(f"the call succeeded, not {code}")


def mark() -> tuple[tuple[str, str]]:
    """Metadata that tells this call from every other, at the server and on the wire."""
    return ((MARK, uuid.uuid4().hex),)


def _server_call(it: Interop, marked: tuple[tuple[str, str]], timeout: float = 5.0) -> CallRecord:
    """The server's record of the call that came with the metadata `marked`, once it arrived."""
    deadline = time.monotonic() + timeout
    while not (calls := it.server.marked(marked[0][1])):
        assert time.monotonic() < deadline, "the call never reached the server"
        time.sleep(0.01)
    (rec,) = calls
    return rec


def _ends_cancelled(it: Interop, marked: tuple[tuple[str, str]]) -> None:
    """The cancellation reached the server as one: meshpy reset the call's stream, with no END_STREAM
    first (a server would take that for the request's normal end); and the server's call is over."""
    tap = it.server.tap

    def wire() -> list[StreamRecord]:
        return tap.with_header(MARK, marked[0][1])

    assert tap.wait(lambda: any(r.reset is not None for r in wire()), 5), \
        f"no RST_STREAM to the server: {wire()}"
    (stream,) = wire()
    assert not stream.ended, f"the cancelled call's request was ended (END_STREAM) before its reset: {stream}"
    rec = _server_call(it, marked)
    assert rec.ended.wait(5), f"{rec.method} still runs on the server: the end did not reach it"


# -- the cases ----------------------------------------------------------------------------------------------
def empty_unary(it: Interop) -> None:
    marked = mark()
    reply = it.stub.EmptyCall(it.pb.empty.Empty(), timeout=T, metadata=marked)
    assert isinstance(reply, it.pb.empty.Empty)
    assert reply.ByteSize() == 0
    assert _server_call(it, marked).method == "EmptyCall"


def large_unary(it: Interop) -> None:
    reply = it.stub.UnaryCall(it.large_request(), timeout=T)
    assert reply.payload.body == bytes(LARGE_RESP)


def client_compressed_unary(it: Interop) -> None:
    bool_value = it.pb.messages.BoolValue
    none, gzip = grpc.Compression.NoCompression, grpc.Compression.Gzip
    # The feature probe: uncompressed, though the server is told to expect it compressed.
    probe = it.large_request(expect_compressed=bool_value(value=True))
    fails_with(grpc.StatusCode.INVALID_ARGUMENT,
               lambda: it.stub.UnaryCall(probe, timeout=T, compression=none))
    reply = it.stub.UnaryCall(it.large_request(expect_compressed=bool_value(value=True)), timeout=T,
                              compression=gzip)
    assert reply.payload.body == bytes(LARGE_RESP)
    reply = it.stub.UnaryCall(it.large_request(expect_compressed=bool_value(value=False)), timeout=T,
                              compression=none)
    assert reply.payload.body == bytes(LARGE_RESP)


def server_compressed_unary(it: Interop) -> None:
    for compressed in (True, False):
        request = it.large_request(response_compressed=it.pb.messages.BoolValue(value=compressed))
        assert it.stub.UnaryCall(request, timeout=T).payload.body == bytes(LARGE_RESP)
        # grpcio hides the message flags: the same call over raw HTTP/2 shows them (with no payload in
        # the request: the raw client does not do flow control).
        request.ClearField("payload")
        call = _raw_unary(it, request.SerializeToString())
        assert call.status == 0, (call.headers, call.trailers)
        messages = call.messages()
        assert [flag for flag, _ in messages] == [int(compressed)], \
            f"response_compressed={compressed}: message flags {[f for f, _ in messages]}"
        reply = it.pb.messages.SimpleResponse.FromString(messages[0][1])
        assert reply.payload.body == bytes(LARGE_RESP)


def _raw_unary(it: Interop, request: bytes) -> Call:
    wire = GrpcWire(it.port)
    try:
        sid = wire.start(f"/{SERVICE}/UnaryCall", request)
        assert wire.wait(lambda: wire.calls[sid].over), f"no answer over raw HTTP/2: {wire.calls[sid]}"
        return wire.calls[sid]
    finally:
        wire.close()


def client_streaming(it: Interop) -> None:
    requests = (it.pb.messages.StreamingInputCallRequest(payload=it.payload(n)) for n in REQ_SIZES)
    reply = it.stub.StreamingInputCall(requests, timeout=T)
    assert reply.aggregated_payload_size == 74922


def server_streaming(it: Interop) -> None:
    m = it.pb.messages
    request = m.StreamingOutputCallRequest(
        response_parameters=[m.ResponseParameters(size=n) for n in RESP_SIZES])
    call = it.stub.StreamingOutputCall(request, timeout=T)
    replies = list(call)
    assert [len(r.payload.body) for r in replies] == list(RESP_SIZES)
    assert all(r.payload.body == bytes(len(r.payload.body)) for r in replies)
    assert call.code() == grpc.StatusCode.OK


def ping_pong(it: Interop) -> None:
    requests = Requests()
    try:
        call = it.stub.FullDuplexCall(iter(requests), timeout=T)
        for req_size, resp_size in zip(REQ_SIZES, RESP_SIZES, strict=True):
            requests.put(it.duplex_request(resp_size, req_size))
            assert len(next(call).payload.body) == resp_size
        requests.close()
        assert list(call) == []  # exactly four
        assert call.code() == grpc.StatusCode.OK
    finally:
        requests.close()


def empty_stream(it: Interop) -> None:
    call = it.stub.FullDuplexCall(iter(()), timeout=T)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK


def cancel_after_begin(it: Interop) -> None:
    requests = Requests()  # nothing is ever sent
    marked = mark()
    try:
        future = it.stub.StreamingInputCall.future(iter(requests), timeout=T, metadata=marked)
        _server_call(it, marked)  # begun: the server has the call's headers
        future.cancel()
        assert future.cancelled()
        assert future.code() == grpc.StatusCode.CANCELLED
        _ends_cancelled(it, marked)
    finally:
        requests.close()


def cancel_after_first_response(it: Interop) -> None:
    requests = Requests()
    marked = mark()
    try:
        call = it.stub.FullDuplexCall(iter(requests), timeout=T, metadata=marked)
        requests.put(it.duplex_request(31415, 27182))
        assert len(next(call).payload.body) == 31415
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
        fails_with(grpc.StatusCode.CANCELLED, lambda: next(call))
        _ends_cancelled(it, marked)
    finally:
        requests.close()


def timeout_on_sleeping_server(it: Interop) -> None:
    requests = Requests()
    try:
        call = it.stub.FullDuplexCall(iter(requests), timeout=0.001)  # the description's 1 ms
        requests.put(it.duplex_request(None, 27182))
        fails_with(grpc.StatusCode.DEADLINE_EXCEEDED, lambda: list(call))
    finally:
        requests.close()
    # The same with a deadline that surely lets the call reach the sleeping server: the deadline ends
    # it there as well, not only in the client.
    requests = Requests()
    marked = mark()
    try:
        call = it.stub.FullDuplexCall(iter(requests), timeout=0.5, metadata=marked)
        requests.put(it.duplex_request(None, 27182))
        fails_with(grpc.StatusCode.DEADLINE_EXCEEDED, lambda: list(call))
        assert _server_call(it, marked).ended.wait(5), "the sleeping server still has the call"
    finally:
        requests.close()


def custom_metadata(it: Interop) -> None:
    metadata = ((ECHO_INITIAL, "test_initial_metadata_value"), (ECHO_TRAILING, b"\xab\xab\xab"))

    def check(initial: Any, trailing: Any) -> None:
        assert (ECHO_INITIAL, "test_initial_metadata_value") in tuple(initial or ()), initial
        assert (ECHO_TRAILING, b"\xab\xab\xab") in tuple(trailing or ()), trailing

    reply, call = it.stub.UnaryCall.with_call(it.large_request(), metadata=metadata, timeout=T)
    assert len(reply.payload.body) == LARGE_RESP
    check(call.initial_metadata(), call.trailing_metadata())
    stream = it.stub.FullDuplexCall(iter([it.duplex_request(LARGE_RESP, LARGE_REQ)]), metadata=metadata,
                                    timeout=T)
    assert [len(r.payload.body) for r in stream] == [LARGE_RESP]
    assert stream.code() == grpc.StatusCode.OK
    check(stream.initial_metadata(), stream.trailing_metadata())


def _status_echoed(it: Interop, message: str, duplex: bool) -> None:
    status = it.pb.messages.EchoStatus(code=2, message=message)
    err = fails_with(grpc.StatusCode.UNKNOWN, lambda: it.stub.UnaryCall(
        it.pb.messages.SimpleRequest(response_status=status), timeout=T))
    assert err.details() == message
    if duplex:
        err = fails_with(grpc.StatusCode.UNKNOWN, lambda: list(it.stub.FullDuplexCall(
            iter([it.duplex_request(None, response_status=status)]), timeout=T)))
        assert err.details() == message


def status_code_and_message(it: Interop) -> None:
    _status_echoed(it, "test status message", duplex=True)


def special_status_message(it: Interop) -> None:
    _status_echoed(it, "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n",
                   duplex=False)


def _answered_by_the_server(it: Interop, path: str, call: Callable[[tuple[tuple[str, str]]], object]) -> None:
    """UNIMPLEMENTED from the server itself: the call (made with the metadata it is given) went through
    meshpy to it."""
    marked = mark()
    fails_with(grpc.StatusCode.UNIMPLEMENTED, lambda: call(marked))
    assert [r.path for r in it.server.tap.with_header(MARK, marked[0][1])] == [path], \
        f"{path} did not reach the server"


def unimplemented_method(it: Interop) -> None:
    _answered_by_the_server(it, f"/{SERVICE}/UnimplementedCall",
                            lambda md: it.stub.UnimplementedCall(it.pb.empty.Empty(), timeout=T, metadata=md))


def unimplemented_service(it: Interop) -> None:
    stub = it.pb.services.UnimplementedServiceStub(it.channel)
    _answered_by_the_server(it, "/grpc.testing.UnimplementedService/UnimplementedCall",
                            lambda md: stub.UnimplementedCall(it.pb.empty.Empty(), timeout=T, metadata=md))


CASES: dict[str, Callable[[Interop], None]] = {f.__name__: f for f in (
    empty_unary, large_unary, client_streaming, server_streaming, ping_pong, empty_stream, cancel_after_begin,
    cancel_after_first_response, timeout_on_sleeping_server, custom_metadata, status_code_and_message,
    special_status_message, unimplemented_method, unimplemented_service, client_compressed_unary,
    server_compressed_unary)}
