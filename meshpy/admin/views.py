"""What each admin path answers, as plain functions of the host and the query string (no I/O here).

Paths and bodies follow Envoy's admin interface where it has the same thing, so scripts and probes
written for Envoy keep working: `/ready` answers `LIVE` with 200 and anything else with 503,
`/quitquitquit` and `/drain_listeners` answer `OK`, `/clusters?format=text` writes Envoy's
`cluster::host:port::stat::value` lines. One difference, on purpose: `/clusters` defaults to JSON (Envoy
defaults to text), because that is what people and tests read here; `?format=text` gives Envoy's form.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import meshpy
from meshpy.telemetry.metrics import Metrics

__all__ = ["ENDPOINTS", "AdminHost", "Endpoint", "Response", "View"]

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


class AdminHost(Protocol):
    """What the admin listener needs from the app.

    `state()` returns one of Envoy's server states: "PRE_INITIALIZING", "INITIALIZING", "LIVE",
    "DRAINING". `/ready` is 200 only for "LIVE" (Envoy's readiness semantics: a draining proxy must
    leave the load balancer). A state string rather than `is_ready() -> bool`, so the probe body can
    say why it is not ready.
    """

    metrics: Metrics

    def state(self) -> str: ...

    def config_dump(self) -> dict[str, Any]:
        """The live config, JSON-able (non-JSON leaves are rendered with str())."""
        ...

    def clusters_view(self) -> list[dict[str, Any]]:
        """One dict per cluster: `name`, `endpoints`: [{`address`, `health` ("healthy", or Envoy's
        flags such as "/failed_active_hc"), `active_requests`, `active_connections`,
        `idle_connections`, optionally `hostname` and `weight`}], and optionally `circuit_breakers`
        ({resource: {`in_use`, `limit`}})."""
        ...

    def drain_listeners(self, inbound_only: bool = False, graceful: bool = True) -> None: ...

    def certs_view(self) -> dict[str, Any]:
        """Envoy's /certs: {"certificates": [{"ca_cert": [...], "cert_chain": [...]}, ...]}."""
        ...

    def quit(self) -> None:
        """Start an orderly shutdown. Called after the `OK` answer has been handed to the transport."""
        ...

    def runtime_view(self) -> dict[str, Any]:
        """Envoy's /runtime: {"layers": [names], "entries": {key: {"final_value", "layer_values"}}}."""
        ...

    def runtime_modify(self, pairs: list[tuple[str, str]]) -> str | None:
        """Set (or, with an empty value, remove) keys in the runtime's admin layer; why not, or None."""
        ...


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    close: bool = False  # close the connection once written
    after: Callable[[], None] | None = None  # run with loop.call_soon once the response is written
    headers: tuple[tuple[str, str], ...] = ()


View = Callable[[AdminHost, Mapping[str, list[str]]], Response]


@dataclass(frozen=True, slots=True)
class Endpoint:
    methods: frozenset[str]
    view: View
    help: str


def text(body: str, status: int = 200, **kw: Any) -> Response:
    return Response(status, body.encode(), TEXT, **kw)


def _json(value: Any) -> Response:
    # default=str: a host that leaves an Address or an enum in its dump still gets a readable answer.
    return Response(200, (json.dumps(value, indent=2, default=str) + "\n").encode(), JSON)


def ready(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    state = host.state()
    return text(f"{state}\n", 200 if state == "LIVE" else 503)


def prometheus(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    body, content_type = host.metrics.render()
    return Response(200, body, content_type)


def config_dump(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    return _json(host.config_dump())


def server_info(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    return _json(
        {"version": meshpy.__version__, "state": host.state(), "config_version": host.metrics.config_version}
    )


# Our endpoint keys -> Envoy's per-host stat names in `/clusters` text output.
_TEXT_STATS = (
    ("active_connections", "cx_active"),
    ("active_requests", "rq_active"),
    ("idle_connections", "cx_idle"),
)


def clusters_text(view: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for cluster in view:
        name = cluster["name"]
        for ep in cluster.get("endpoints", ()):
            prefix = f"{name}::{ep['address']}::"
            for key, stat in _TEXT_STATS:
                lines.append(f"{prefix}{stat}::{int(ep.get(key, 0))}")
            for optional in ("hostname", "weight"):  # Envoy prints both; the host may not know them
                if optional in ep:
                    lines.append(f"{prefix}{optional}::{ep[optional] if ep[optional] is not None else ''}")
            lines.append(f"{prefix}health_flags::{ep.get('health', 'healthy')}")
    return "".join(line + "\n" for line in lines)


def clusters(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    view = host.clusters_view()
    fmt = query.get("format", ["json"])[-1]
    if fmt == "text":
        return text(clusters_text(view))
    if fmt != "json":
        return text(f"unknown format {fmt!r}: use json or text\n", 400)
    return _json({"clusters": view})


def certs(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    return _json(host.certs_view())


def drain_listeners(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    # Envoy's flags: `inboundonly` (listeners of traffic_direction INBOUND), `graceful` (after the
    # drain time; without it listeners stop accepting at once).
    host.drain_listeners(inbound_only="inboundonly" in query, graceful="graceful" in query)
    return text("OK\n")


def quitquitquit(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    # Answer first: quit() may close the admin listener, and the client is owed its OK.
    return text("OK\n", close=True, after=host.quit)


def runtime(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    # Envoy's shape and its one-space indent; keys sorted (Envoy's order is its hash map's).
    body = json.dumps(host.runtime_view(), indent=1, sort_keys=True) + "\n"
    return Response(200, body.encode(), JSON)


_MODIFY_USAGE = ("usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                 "       or send the parameters as form values\n"
                 "use an empty value to remove a previously added override")


def runtime_modify(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    if not query:
        return text(_MODIFY_USAGE, 400)
    # Envoy's words and status for what it does not take (no admin layer, a value that is not YAML),
    # and the same status for a value meshpy refuses.
    error = host.runtime_modify([(key, values[0]) for key, values in query.items()])
    return text("OK\n") if error is None else text(error, 503)


def index(host: AdminHost, query: Mapping[str, list[str]]) -> Response:
    width = max(len(p) for p in ENDPOINTS)
    lines = [f"meshpy {meshpy.__version__} admin\n\n"]
    for path, ep in ENDPOINTS.items():
        method = "POST" if "POST" in ep.methods else "GET"
        lines.append(f"{method:4} {path:{width}}  {ep.help}\n")
    return text("".join(lines))


_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})

ENDPOINTS: dict[str, Endpoint] = {
    "/": Endpoint(_GET, index, "this list"),
    "/ready": Endpoint(_GET, ready, "200 LIVE when serving, 503 and the state otherwise"),
    "/server_info": Endpoint(_GET, server_info, "version, state and live config version (JSON)"),
    "/stats/prometheus": Endpoint(_GET, prometheus, "metrics in Prometheus text format"),
    "/metrics": Endpoint(_GET, prometheus, "same as /stats/prometheus"),
    "/config_dump": Endpoint(_GET, config_dump, "the live config (JSON)"),
    "/clusters": Endpoint(_GET, clusters, "upstream hosts and their state (JSON; ?format=text for Envoy's)"),
    "/certs": Endpoint(_GET, certs, "TLS certificates in use: names, serials, days until expiry (JSON)"),
    "/drain_listeners": Endpoint(_POST, drain_listeners, "stop accepting (?inboundonly, ?graceful)"),
    "/quitquitquit": Endpoint(_POST, quitquitquit, "shut down gracefully"),
    "/runtime": Endpoint(_GET, runtime, "Envoy's layered runtime: layers and values (JSON)"),
    "/runtime_modify": Endpoint(_POST, runtime_modify, "set runtime values in the admin layer (?key=value; "
                                                       "empty: remove)"),
}
