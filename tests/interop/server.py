"""gRPC's interop TestService (doc/interop-test-descriptions.md in grpc/grpc, "Server"), in grpcio,
in threads of the test process, behind a `WireTap` (tests/interop/tap.py): `port` is the tap's.

Server features: EmptyCall, UnaryCall, StreamingOutputCall, StreamingInputCall, FullDuplexCall,
CompressedResponse, CompressedRequest (from the tap: grpcio does not show a handler the compressed
flag), Echo Status, Echo Metadata, ResponseParameters.interval_us. `UnimplementedCall` has no handler,
and grpc.testing.UnimplementedService none at all: grpcio answers UNIMPLEMENTED as any server would.

Each call leaves a `CallRecord`, so a test can see what the server saw: that a call arrived, and that
it is over. (Not how: grpcio may end a cancelled call's request stream as if the client had ended it;
tests read a reset on the wire from the tap.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from interop.protos import Protos
from interop.tap import WireTap

SERVICE = "grpc.testing.TestService"
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
MARK = "x-interop-mark"  # metadata a case may add, to find its call among the server's and the tap's
_CODES = {s.value[0]: s for s in grpc.StatusCode}
BIG = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]


@dataclass
class CallRecord:
    method: str
    metadata: dict[str, str | bytes]
    ended: threading.Event = field(default_factory=threading.Event)  # the RPC is over, however


class InteropServer:
    def __init__(self, pb: Protos) -> None:
        self.pb = pb
        self.calls: list[CallRecord] = []
        self._lock = threading.Lock()
        m, e = pb.messages, pb.empty
        handlers = {
            "EmptyCall": grpc.unary_unary_rpc_method_handler(
                self.empty_call, e.Empty.FromString, e.Empty.SerializeToString),
            "UnaryCall": grpc.unary_unary_rpc_method_handler(
                self.unary_call, m.SimpleRequest.FromString, m.SimpleResponse.SerializeToString),
            "StreamingOutputCall": grpc.unary_stream_rpc_method_handler(
                self.streaming_output_call, m.StreamingOutputCallRequest.FromString,
                m.StreamingOutputCallResponse.SerializeToString),
            "StreamingInputCall": grpc.stream_unary_rpc_method_handler(
                self.streaming_input_call, m.StreamingInputCallRequest.FromString,
                m.StreamingInputCallResponse.SerializeToString),
            "FullDuplexCall": grpc.stream_stream_rpc_method_handler(
                self.full_duplex_call, m.StreamingOutputCallRequest.FromString,
                m.StreamingOutputCallResponse.SerializeToString),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=BIG)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.grpc_port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.tap = WireTap(self.grpc_port)
        self.port = self.tap.port

    def stop(self) -> None:
        self.tap.close()
        self.server.stop(0).wait(5)

    # -- what the server saw ---------------------------------------------------------------------------
    def marked(self, mark: str) -> list[CallRecord]:
        """The calls that came with the metadata `MARK: mark` (tests/interop/cases.py sets it)."""
        with self._lock:
            return [c for c in self.calls if c.metadata.get(MARK) == mark]

    def _begin(self, method: str, context: Any) -> CallRecord:
        rec = CallRecord(method, {k: v for k, v in context.invocation_metadata()})
        if not context.add_callback(rec.ended.set):
            rec.ended.set()  # over already (a deadline of a nanosecond): no callback will come
        with self._lock:
            self.calls.append(rec)
        return rec

    # -- features ----------------------------------------------------------------------------------------
    @staticmethod
    def _echo_metadata(rec: CallRecord, context: Any) -> None:
        """Echo Metadata: the initial key back in the initial metadata, the trailing one in trailers."""
        if ECHO_INITIAL in rec.metadata:
            context.send_initial_metadata(((ECHO_INITIAL, rec.metadata[ECHO_INITIAL]),))
        if ECHO_TRAILING in rec.metadata:
            context.set_trailing_metadata(((ECHO_TRAILING, rec.metadata[ECHO_TRAILING]),))

    @staticmethod
    def _echo_status(status: Any, context: Any) -> None:
        """Echo Status: end the call with the status asked for (code 0 is no status)."""
        if status.code:
            context.abort(_CODES[status.code], status.message)

    def _check_compressed(self, request: Any, context: Any, path: str) -> None:
        """CompressedRequest: INVALID_ARGUMENT when the request's compression is not the expected."""
        wire = self.tap.claim(path, request.SerializeToString())
        if wire is None:
            context.abort(grpc.StatusCode.INTERNAL, "the wire tap did not see this request")
        compressed = bool(wire.flags[0]) and wire.headers.get("grpc-encoding", "identity") != "identity"
        if request.expect_compressed.value and not compressed:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Expected compressed request")
        if not request.expect_compressed.value and compressed:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Expected uncompressed request")

    def _payload(self, size: int) -> Any:
        return self.pb.messages.Payload(body=bytes(size))

    # -- methods -------------------------------------------------------------------------------------------
    def empty_call(self, request: Any, context: Any) -> Any:
        self._begin("EmptyCall", context)
        return self.pb.empty.Empty()

    def unary_call(self, request: Any, context: Any) -> Any:
        rec = self._begin("UnaryCall", context)
        self._echo_metadata(rec, context)
        if request.HasField("expect_compressed"):
            self._check_compressed(request, context, f"/{SERVICE}/UnaryCall")
        if request.HasField("response_compressed"):  # CompressedResponse
            context.set_compression(grpc.Compression.Gzip if request.response_compressed.value
                                    else grpc.Compression.NoCompression)
        self._echo_status(request.response_status, context)
        return self.pb.messages.SimpleResponse(payload=self._payload(request.response_size),
                                               server_id="meshpy-interop")

    def _responses(self, request: Any) -> Iterator[Any]:
        """One answer for each ResponseParameters, each after its interval_us."""
        for params in request.response_parameters:
            if params.interval_us:
                time.sleep(params.interval_us / 1e6)
            yield self.pb.messages.StreamingOutputCallResponse(payload=self._payload(params.size))

    def streaming_output_call(self, request: Any, context: Any) -> Iterator[Any]:
        rec = self._begin("StreamingOutputCall", context)
        self._echo_metadata(rec, context)
        self._echo_status(request.response_status, context)
        yield from self._responses(request)

    def streaming_input_call(self, requests: Iterable[Any], context: Any) -> Any:
        rec = self._begin("StreamingInputCall", context)
        self._echo_metadata(rec, context)
        total = sum(len(r.payload.body) for r in requests)  # (ends, or raises, when the call is cancelled)
        return self.pb.messages.StreamingInputCallResponse(aggregated_payload_size=total)

    def full_duplex_call(self, requests: Iterable[Any], context: Any) -> Iterator[Any]:
        rec = self._begin("FullDuplexCall", context)
        self._echo_metadata(rec, context)
        for request in requests:  # with no response_parameters: a server that sleeps till the next one
            self._echo_status(request.response_status, context)
            yield from self._responses(request)
