"""Micro-benchmarks of meshpy's per-request hot path, under pytest-benchmark.

Run from the repository root (pytest-benchmark is in the `dev` extra):

    .venv/bin/pytest benchmarks/micro --benchmark-only -q

Each group prints its own table (min, median, mean, stddev per call, auto-scaled to ns/us/ms):

    codec    parse of a ~8-header request head with httptools, rewrite for the upstream, both
    routes   RouteTable.match in a table of 1,043 routes (benchmarks/micro_routes.py's table)
    pool     HostPool checkout + release of one idle upstream connection
    metrics  one request's stats update, meshpy against prometheus_client; a scrape of 120 series sets
    stack    a full request through Http1Downstream/Exchange/UpstreamHttp1 on fake transports,
             without and with an access log (benchmarks/micro_stack.py's setup)

Useful options: `-k routes` (one group), `--benchmark-save=NAME` then `--benchmark-compare` (before and
after a change), `--benchmark-min-rounds=20` (steadier figures). The machine is shared and noisy:
compare rows of one run with each other (and with the baseline rows), not absolute figures across runs.
Every benchmark also asserts what its code produced, so a broken hot path fails here instead of
getting faster.

pytest.ini beside this file sets python_files = bench_*.py, so the main test suite never collects these.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

# The ad-hoc scripts in benchmarks/ (micro_stack.py, micro_routes.py, micro_metrics.py) stay runnable on
# their own and hold the fixtures' builders, so the suite and the scripts measure the very same setup.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A uvloop loop (what meshpy runs on), not running: the benchmarks drive the protocols directly."""
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()
