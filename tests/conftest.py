"""Shared fixtures. Integration tests use real processes on 127.0.0.1 (see tests/kit.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The repository root too: HTTP filter classes are named by import path (tests.filter_kit:Boom,
# config.filters.api_key:ApiKeyFilter), as meshpy processes started by the tests find them.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from kit import LOOPS, DemoUpstream, free_port


@pytest.fixture(scope="session")
def demo() -> Iterator[DemoUpstream]:
    up = DemoUpstream(free_port(), "demo").start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def demo_b() -> Iterator[DemoUpstream]:
    up = DemoUpstream(free_port(), "demo-b").start()
    yield up
    up.stop()


@pytest.fixture(scope="module", params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """The core suite runs on uvloop and on the standard asyncio loop."""
    return str(request.param)
