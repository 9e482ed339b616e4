"""What every config harness checks once a config (or a translated resource) is in the model: it
compiles the way `meshpy validate` and a config load compile it (the HTTP filter chain and the route
table of each listener), and the compiled table answers a few requests. Config errors are ConfigError
with issues that each say what is wrong; anything else is a crash.
"""

from __future__ import annotations

import math
from typing import Any

from fuzzkit import Finding

from meshpy.errors import ConfigError
from meshpy.model.routes import RouteConfig
from meshpy.model.types import Config
from meshpy.routing.table import RouteTable
from meshpy.stack.filter_chain import ChainBuilder
from meshpy.stack.policy_runtime import PolicyClaims

# Python filter classes the harness lets the chain import: the ones the seeds name. A mutated config
# may name any module, and importing whatever a fuzzer spells is no test of meshpy.
SAFE_FILTER_MODULES = ("config.filters.", "tests.filter_kit:")

REQUESTS: tuple[tuple[str, str, str, list[tuple[bytes, bytes]]], ...] = (
    ("a.test", "/", "GET", []),
    ("api.example.com:8080", "/api/v1/x?q=1", "POST", [(b"content-type", b"application/json")]),
    ("[::1]:80", "/grpc.Service/Method", "POST",
     [(b"content-type", b"application/grpc"), (b"te", b"trailers")]),
    ("", "*", "OPTIONS", []),
    ("b.example.com:443", "b.example.com:443", "CONNECT", []),
    ("x" * 200, "/" + "a" * 300, "GET", [(b"x-canary", b"1"), (b"cookie", b"user=a; b=c")]),
)


def check_issues(err: ConfigError) -> None:
    if not err.issues:
        raise Finding("ConfigError without an issue")
    for issue in err.issues:
        if not isinstance(issue.reason, str) or not issue.reason.strip() or not isinstance(issue.path, str):
            raise Finding(f"ConfigError issue without a reason: {issue!r}")


def _python_classes(value: Any) -> list[str]:
    specs = getattr(value, "filters", ())
    return [s.python_class for s in specs if s.kind == "python"]


def compile_routes(rc: RouteConfig, chain: ChainBuilder | None = None,
                   claims: PolicyClaims | None = None) -> None:
    """The table for `rc`, asked a few requests; ConfigError is a refused config."""
    try:
        table = RouteTable(rc, policies=claims or PolicyClaims(), chain=chain, rand=lambda: 0.5)
    except ConfigError as err:
        check_issues(err)
        return
    for authority, path, method, headers in REQUESTS:
        route = table.match(authority, path, method, headers)
        if route is not None and getattr(route, "forward", False):
            route.pick_cluster()


def compile_config(config: Config) -> None:
    for lm in config.listeners:
        if lm.http is None:
            continue
        claims = PolicyClaims()
        chain = None
        classes = _python_classes(lm.http)
        if all(c.startswith(SAFE_FILTER_MODULES) for c in classes):
            try:
                chain = ChainBuilder(lm.http.filters, claims, lm.name)
            except ConfigError as err:
                check_issues(err)
                continue
        compile_routes(lm.http.route_config, chain, claims)
    for c in config.clusters:
        for ep in getattr(c, "endpoints", ()):
            weight = getattr(ep, "weight", 1)
            if isinstance(weight, float) and not math.isfinite(weight):
                raise Finding(f"cluster {c.name}: endpoint weight {weight}")
