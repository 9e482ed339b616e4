"""RouteTable.match in a table of 1,043 routes: micro_routes.py's table and cases, one row per case."""

from __future__ import annotations

import pytest
from micro_routes import CASES, HEADERS, VHOSTS, build
from pytest_benchmark.fixture import BenchmarkFixture

from meshpy.routing.table import RouteTable

pytestmark = pytest.mark.benchmark(group="routes")


@pytest.fixture(scope="module")
def table() -> RouteTable:
    # Built once: compiling 1,043 routes is config-time work, not what is measured.
    return build()


def bench_baseline_dict_lookup(benchmark: BenchmarkFixture) -> None:
    """The floor: one dict probe through the same benchmark call overhead as a lookup."""
    d = {f"svc{i}.example.com": i for i in range(VHOSTS)}
    assert benchmark(d.get, "svc7.example.com") == 7


@pytest.mark.parametrize(
    ("authority", "path", "expected"),
    [pytest.param(a, p, e, id=label) for label, a, p, e in CASES],
)
def bench_route_lookup(
    benchmark: BenchmarkFixture, table: RouteTable, authority: str, path: str, expected: str | None
) -> None:
    assert sum(len(vh.routes) for vh in table.virtual_hosts) >= 1000
    route = benchmark(table.match, authority, path, "GET", HEADERS)
    assert (route.name if route is not None else None) == expected
