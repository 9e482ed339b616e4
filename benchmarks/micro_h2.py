"""The ceiling for meshpy's HTTP/2: what the h2 library itself costs per request, in memory.

    python benchmarks/micro_h2.py [--requests 20000] [--relaxed]

A client and a server H2Connection talk through byte strings, one request at a time on fresh stream
ids of one connection (GET with a few headers, a 100-byte response): no sockets, no event loop,
nothing of meshpy. Reported: microseconds per request on the server side alone (what a proxy's
downstream pays), on the client side alone (its upstream), and both. `--relaxed` turns off the header
validation and normalisation that h2 does for its caller (meshpy validates requests itself), to see
what that is worth. The HTTP/2 work holds meshpy to at most 1.5x h2's own cost.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events

REQUEST_HEADERS = [
    (":method", "GET"), (":path", "/hello"), (":scheme", "http"), (":authority", "service.local"),
    ("user-agent", "h2load"), ("accept", "*/*"),
]  # fmt: skip
RESPONSE_HEADERS = [(":status", "200"), ("content-type", "text/plain"), ("content-length", "100")]
BODY = b"x" * 100
Fields = list[tuple[str, str]]
# The gRPC shape: a unary call with a 10-byte message each way and grpc-status in trailers.
GRPC_REQUEST = [
    (":method", "POST"), (":scheme", "http"), (":path", "/bench.Echo/Unary"), (":authority", "service.local"),
    ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "h2load"),
]  # fmt: skip
GRPC_RESPONSE = [(":status", "200"), ("content-type", "application/grpc")]
GRPC_TRAILERS = [("grpc-status", "0")]
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"


def connections(relaxed: bool) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    def config(client_side: bool) -> h2.config.H2Configuration:
        strict = not relaxed
        return h2.config.H2Configuration(
            client_side=client_side, validate_inbound_headers=strict, validate_outbound_headers=strict,
            normalize_inbound_headers=strict, normalize_outbound_headers=strict)

    client = h2.connection.H2Connection(config(True))
    server = h2.connection.H2Connection(config(False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the SETTINGS ACK
    return client, server


def run(n: int, relaxed: bool, grpc: bool = False) -> tuple[float, float]:
    """Seconds per request spent in (client, server)."""
    if grpc:
        return _measure(n, relaxed, lambda _i: GRPC_REQUEST, GRPC_RESPONSE, GRPC_MESSAGE, GRPC_MESSAGE,
                        GRPC_TRAILERS)
    return _measure(n, relaxed, lambda _i: REQUEST_HEADERS, RESPONSE_HEADERS, b"", BODY, [])


def _measure(n: int, relaxed: bool, request: Callable[[int], Fields], response: Fields, body: bytes,
             answer: bytes, trailers: Fields) -> tuple[float, float]:
    """Seconds per request in (client, server): request `i` is `request(i)` with `body`; the answer is
    `response`, `answer` and, when there are any, `trailers`."""
    client, server = connections(relaxed)
    in_client = in_server = 0.0
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, request(i), end_stream=not body)
        if body:
            client.send_data(sid, body, end_stream=True)
        wire = client.data_to_send()
        t1 = clock()
        for event in server.receive_data(wire):
            if isinstance(event, h2.events.DataReceived):
                server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                server.send_headers(event.stream_id, response)
                server.send_data(event.stream_id, answer, end_stream=not trailers)
                if trailers:
                    server.send_headers(event.stream_id, trailers, end_stream=True)
        wire = server.data_to_send()
        t2 = clock()
        done = False
        for event in client.receive_data(wire):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            done = done or isinstance(event, h2.events.StreamEnded)
        server.receive_data(client.data_to_send())  # window updates back to the server
        t3 = clock()
        assert done, "the response did not end"
        in_client += (t1 - t0) + (t3 - t2)
        in_server += t2 - t1
    return in_client / n, in_server / n


# What the proxy's two HTTP/2 sides see in benchmarks/h2_bench.py, header for header: h2load's request
# (pair "down": meshpy is the server), the same request with the headers meshpy adds on its way
# upstream, a new x-request-id every time (pair "up": meshpy is the client), and nginx's answer.
_H2LOAD = [(":scheme", "http"), (":authority", "127.0.0.1:10000"), ("accept", "*/*"),
           ("accept-encoding", "gzip, deflate"), ("user-agent", "h2load nghttp2/1.52.0")]
_NGINX = [("server", "nginx/1.22.1"), ("date", "Tue, 01 Dec 2026 04:00:00 GMT")]
_SHAPES: dict[str, tuple[Fields, Fields, bytes, bytes, Fields]] = {
    # name: (request headers, response headers, request body, response body, trailers)
    "h2-get": ([(":method", "GET"), (":path", "/hello"), *_H2LOAD],
               [(":status", "200"), *_NGINX, ("content-type", "text/plain"), ("content-length", "10")],
               b"", b"hello h2!\n", []),
    "grpc-unary": ([(":method", "POST"), (":path", "/bench.Echo/Unary"), *_H2LOAD, ("content-length", "10"),
                    ("content-type", "application/grpc"), ("te", "trailers")],
                   [(":status", "200"), *_NGINX, ("content-type", "application/grpc")],
                   GRPC_MESSAGE, b"hello-grpc", [("grpc-status", "0")]),
}


def _exchange(n: int, relaxed: bool, shape: str, upstream: bool) -> tuple[float, float]:
    """Seconds per request in (client, server) for one of the proxy's sides in `shape`."""
    request, response, body, answer, trailers = _SHAPES[shape]

    def headers(i: int) -> Fields:
        if not upstream:
            return request
        return [*request, ("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"),
                ("x-request-id", f"5e1a9c3e-0b7d-4c2f-9a55-{i:012x}")]

    return _measure(n, relaxed, headers, response, body, answer, trailers)


def proxy_ceiling(shape: str, n: int) -> float:
    """Seconds per request that h2 alone spends for a proxy in `shape` (relaxed validation, as in
    meshpy): the server side of the client's connection, plus for gRPC (HTTP/2 upstream too) the
    client side of the upstream connection. Best of three runs."""
    def once() -> float:
        cost = _exchange(n, True, shape, upstream=False)[1]
        if shape == "grpc-unary":
            cost += _exchange(n, True, shape, upstream=True)[0]
        return cost

    once()
    return min(once() for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--relaxed", action="store_true", help="no header validation or normalisation")
    ap.add_argument("--grpc", action="store_true", help="a gRPC-shaped unary call (POST, trailers)")
    args = ap.parse_args()
    run(500, args.relaxed, args.grpc)  # warm up
    best = min((run(args.requests // 5, args.relaxed, args.grpc) for _ in range(5)), key=sum)
    client, server = best
    mode = ("relaxed" if args.relaxed else "default") + (", gRPC unary" if args.grpc else "")
    print(f"h2 {h2.__version__} ({mode}): server {server * 1e6:.1f} us, client {client * 1e6:.1f} us, "
          f"both {(client + server) * 1e6:.1f} us per request")


if __name__ == "__main__":
    main()
