"""Shared fixtures. Integration tests use real processes on 127.0.0.1 (see tests/kit.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before any test module imports Envoy's protos: importing meshpy loads Envoy 1.40's definitions of
# the files xds-protos has older ones of (meshpy/xds/protos).
import meshpy  # noqa: F401

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


@pytest.fixture(scope="session")
def grpc_upstream() -> Iterator[int]:
    """grpcio's echo server (tests/grpc_echo.py): its port."""
    import grpc_echo  # grpcio only for the tests that ask

    port = free_port()
    server = grpc_echo.start(port)
    yield port
    server.stop(0)


@pytest.fixture(scope="module", params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """The core suite runs on uvloop and on the standard asyncio loop."""
    return str(request.param)


# The HTTP/2 and gRPC modules: `make test` runs them a second time on the portable codec
# (MESHPY_HTTP2_CODEC=h2 pytest -m h2codec), as the core suite runs on both event loops.
H2_MODULES = frozenset({
    "test_http2_downstream", "test_h2_stream_errors", "test_grpc_proxy", "test_grpc_interop",
    "test_grpc_differential", "test_h2_malformed_envoy", "test_websocket", "test_sniffing", "test_limits",
    "test_unsized_bodies", "test_tls_alpn", "test_tls_grpc", "test_connect_tunnel", "test_soak_findings",
    "test_filter_bodies", "test_health_checks", "test_grpc_deadlines",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in H2_MODULES:
            item.add_marker(pytest.mark.h2codec)
