"""benchmarks/micro_stack_h2.py runs its exchanges in full: every scenario, both proxy codecs, one call
and several in flight (the benchmark checks each answer itself and raises on a broken one)."""

from __future__ import annotations

import asyncio

import micro_stack_h2
import pytest

from meshpy.codec.h2session import nghttp2_error

CODECS = ["h2", pytest.param("nghttp2", marks=pytest.mark.skipif(
    nghttp2_error() is not None, reason="libnghttp2 does not load here"))]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("grpc", [True, False], ids=["grpc-unary", "h2-get"])
@pytest.mark.parametrize("concurrency", [1, 4])
def test_calls_are_answered_in_full(codec: str, grpc: bool, concurrency: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        async def make() -> micro_stack_h2.Bench:
            return micro_stack_h2.Bench(loop, grpc, codec, "h2", concurrency)

        bench = loop.run_until_complete(make())
        total, peers = micro_stack_h2.run(bench, 40, loop)
        assert bench.answered == 40
        assert 0 < peers < total
    finally:
        loop.close()
