"""Micro-benchmark: RouteTable.match in a table of 1,000+ routes (50 virtual hosts x 20 prefix routes,
plus four small virtual hosts for the other shapes: distinct prefix lengths, method conditions,
a catch-all and a header-matched route).

Run: .venv/bin/python benchmarks/micro_routes.py
(benchmarks/micro/bench_routes.py runs the same table and cases under pytest-benchmark.)

Prints the best-of-5 time per lookup in ns. The machine is shared and noisy: compare the ratios between
lines (and against `baseline dict lookup`), not absolute numbers across runs.
"""

from __future__ import annotations

import timeit

from meshpy.model.routes import (
    ForwardAction,
    HeaderMatch,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatch,
    VirtualHost,
)
from meshpy.routing.table import RouteTable

VHOSTS = 50
ROUTES_PER_VHOST = 20


def prefix_route(prefix: str) -> Route:
    return Route(name=prefix, match=RouteMatch(path=prefix), action=ForwardAction(cluster="c"))


def build() -> RouteTable:
    vhosts = []
    for i in range(VHOSTS):
        # Same-length prefixes, as service paths usually are: the run gets indexed.
        routes = tuple(prefix_route(f"/svc{i}/api{j:02d}/") for j in range(ROUTES_PER_VHOST))
        vhosts.append(VirtualHost(name=f"vh{i}", domains=(f"svc{i}.example.com",), routes=routes))
    # Every prefix has its own length: the run is matched by one regex alternation.
    distinct = tuple(prefix_route("/r" + "x" * j + "/") for j in range(ROUTES_PER_VHOST))
    vhosts.append(VirtualHost(name="distinct", domains=("distinct.example.com",), routes=distinct))
    # Routes with a method condition are not folded into a run: the plain linear scan.
    linear = tuple(
        Route(
            name=f"m{j}",
            match=RouteMatch(path=f"/m{j:02d}/", methods=("GET",)),
            action=ForwardAction(cluster="c"),
        )
        for j in range(ROUTES_PER_VHOST)
    )
    vhosts.append(VirtualHost(name="linear", domains=("linear.example.com",), routes=linear))
    # The common sidecar shape: one catch-all route.
    vhosts.append(VirtualHost(name="catchall", domains=("*",), routes=(prefix_route("/"),)))
    # A header-matched route in front of the catch-all (canary by header).
    canary = Route(
        name="canary",
        match=RouteMatch(
            path="/", headers=(HeaderMatch(name="x-canary", match=StringMatch(kind="exact", value="1")),)
        ),
        action=ForwardAction(cluster="canary"),
    )
    vhosts.append(
        VirtualHost(name="canary", domains=("canary.example.com",), routes=(canary, prefix_route("/")))
    )
    return RouteTable(RouteConfig(name="bench", virtual_hosts=tuple(vhosts)))


HEADERS = [
    (b"host", b"svc.example.com"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"x-request-id", b"5a4f0f3c-3a59-4d0e-9d67-5d0e0f9c4a11"),
    (b"x-canary", b"1"),
]

# (label, authority, path, name of the route that must win; None: no route matches).
CASES: list[tuple[str, str, str, str | None]] = [
    ("first route, first vhost", "svc0.example.com", "/svc0/api00/items?id=1", "/svc0/api00/"),
    (
        "last route, last vhost (indexed)",
        f"svc{VHOSTS - 1}.example.com",
        f"/svc{VHOSTS - 1}/api19/items?id=1",
        f"/svc{VHOSTS - 1}/api19/",
    ),
    (
        "last route, 20 distinct lengths (regex)",
        "distinct.example.com",
        "/r" + "x" * 19 + "/items",
        "/r" + "x" * 19 + "/",
    ),
    ("last of 20 routes with methods (linear scan)", "linear.example.com", "/m19/items", "m19"),
    ("no route in vhost (indexed)", "svc7.example.com", "/nothing/here", None),
    ("catch-all '/' via '*' domain", "anything.local:8080", "/some/path", "/"),
    ("header-matched route", "canary.example.com", "/x", "canary"),
]


def main() -> None:
    table = build()
    routes = sum(len(vh.routes) for vh in table.virtual_hosts)
    print(f"route table: {len(table.virtual_hosts)} virtual hosts, {routes} routes")
    d = {f"svc{i}.example.com": i for i in range(VHOSTS)}
    baseline = timeit.Timer("d.get(k)", globals={"d": d, "k": "svc7.example.com"})
    rows = [("baseline dict lookup", baseline)]
    for label, authority, path, expected in CASES:
        route = table.match(authority, path, "GET", HEADERS)
        assert (route.name if route is not None else None) == expected, label
        timer = timeit.Timer(
            "m(a, p, 'GET', h)", globals={"m": table.match, "a": authority, "p": path, "h": HEADERS}
        )
        rows.append((label, timer))
    for label, timer in rows:
        number, _ = timer.autorange()
        best = min(timer.repeat(repeat=5, number=number)) / number
        print(f"{label:45s} {best * 1e9:8.0f} ns/lookup")


if __name__ == "__main__":
    main()
