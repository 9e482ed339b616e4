"""A finished exchange on a route with a Python filter is freed by reference counting: the exchange
and the filters' Request refer to each other while it runs, and that cycle is broken at completion.
Left to the cycle collector, it cost about 3 µs per request (benchmarks/micro_stack.py --filter).
Runs the in-process stack of micro_stack (fake transports) with the collector off."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from micro_stack import FILTER_CONFIG, REQUEST, RESPONSE, build

REQUESTS = 200


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


# A filter that does nothing, and one with state per request and hooks on the response (tests/filter_kit.py).
@pytest.mark.parametrize("filter_class", ["meshpy.filters:HttpFilter", "tests.filter_kit:Counter"])
def test_no_cycle_is_left_per_request(loop: asyncio.AbstractEventLoop, filter_class: str) -> None:
    stack = build(loop, FILTER_CONFIG.replace("meshpy.filters:HttpFilter", filter_class))
    gc.collect()
    gc.disable()
    try:
        for _ in range(REQUESTS):
            stack.down.data_received(REQUEST)
            stack.up.data_received(RESPONSE)
        assert stack.listener.stats.rq_by_code[200] == REQUESTS
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < REQUESTS // 10, f"{unreachable} objects were left to the cycle collector"
