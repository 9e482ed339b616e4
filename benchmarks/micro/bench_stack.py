"""A full request through the HTTP/1.1 stack in process (micro_stack.py's setup): the client's request
into Http1Downstream, routing, the pooled upstream connection, the upstream's response back, the
response written, stats and timers; without and with an access log. No sockets, no syscalls except
the access log's write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from micro_stack import CONFIG, REQUEST, RESPONSE, Stack, build
from pytest_benchmark.fixture import BenchmarkFixture

from meshpy.telemetry.accesslog import AccessLogger

pytestmark = pytest.mark.benchmark(group="stack")

# Requests completed per event-loop iteration, for the access log. The logger formats and writes its
# batch in a call_soon callback, i.e. once per loop iteration, so its cost per request depends on how
# many completions share one; 32 stands for a busy proxy with a few dozen keep-alive clients.
BATCH = 32
ROUNDS = 1000


def _warm_up(stack: Stack) -> tuple[int, int]:
    """One request through `stack`; the bytes it wrote downstream and upstream. They are the same for
    every request (the upstream's response carries its own Date), so totals can be checked exactly."""
    stack.down.data_received(REQUEST)
    stack.up.data_received(RESPONSE)
    down_bytes, up_bytes = stack.down_t.written, stack.up_t.written
    # The response passes as the upstream's bytes, minus its hop-by-hop `Connection: keep-alive`.
    assert down_bytes == len(RESPONSE) - len(b"Connection: keep-alive\r\n") and up_bytes > len(REQUEST) // 2
    return down_bytes, up_bytes


def _assert_served(stack: Stack, requests: int, down_bytes: int, up_bytes: int) -> None:
    """Every request went upstream and every response came back, whole, with keep-alive intact."""
    assert stack.down_t.written == requests * down_bytes
    assert stack.up_t.written == requests * up_bytes
    assert not stack.down_t.closed and not stack.up_t.closed
    assert stack.listener.stats.rq_by_code[200] == requests
    assert stack.cluster.stats.rq_by_code[200] == requests
    assert stack.listener.stats.rq_active == 0


def _request_fn(stack: Stack, logger: AccessLogger | None) -> tuple[Callable[[], None], list[int]]:
    """One request per call. With a logger, every BATCH requests it gets flushed as the loop's
    call_soon callback would flush it at the end of the iteration. Why not run the loop instead: a
    uvloop run_forever/stop cycle costs ~25 us of setup that a loop which keeps running never pays,
    and it would land in the access-log row. The counter costs ~30 ns, noise against a request."""
    feed_down, feed_up = stack.down.data_received, stack.up.data_received
    flush = logger.flush if logger is not None else None
    count = [0]

    def request() -> None:
        feed_down(REQUEST)
        feed_up(RESPONSE)
        count[0] += 1
        if flush is not None and count[0] % BATCH == 0:
            flush()

    return request, count


def bench_request(benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop) -> None:
    """The data path alone: the figure benchmarks/micro_stack.py prints."""
    stack = build(loop)
    down_bytes, up_bytes = _warm_up(stack)
    request, count = _request_fn(stack, None)
    # Same rounds and iterations as the access-log row, so the two differ only by the log.
    benchmark.pedantic(request, rounds=ROUNDS, iterations=BATCH, warmup_rounds=20)
    _assert_served(stack, count[0] + 1, down_bytes, up_bytes)


def bench_request_with_access_log(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """With a JSON access log to a file: log() per request (a tuple, an append, a call_soon per
    batch), and per BATCH requests one formatting pass and one write() of the batch."""
    log_path = tmp_path / "access.log"
    anchor = "    address: 127.0.0.1:1\n"
    config = CONFIG.replace(anchor, f"{anchor}    access_log: {log_path}\n")
    stack = build(loop, config)
    try:
        (logger,) = stack.loggers
        down_bytes, up_bytes = _warm_up(stack)
        # Every round of BATCH consecutive calls holds exactly one flush, whatever the call count's
        # offset, so the per-request mean carries 1/BATCH of a batch's formatting and write.
        request, count = _request_fn(stack, logger)
        benchmark.pedantic(request, rounds=ROUNDS, iterations=BATCH, warmup_rounds=20)
        requests = count[0] + 1
        _assert_served(stack, requests, down_bytes, up_bytes)
        logger.flush()  # the partial batch of the last calls
        assert logger.written == requests and logger.dropped == 0
    finally:
        stack.close()
    lines = log_path.read_bytes().splitlines()
    assert len(lines) == requests
    last = json.loads(lines[-1])
    assert (last["method"], last["path"], last["response_code"]) == ("GET", "/hello", 200)
    assert last["upstream_host"] and last["bytes_sent"] == 100
