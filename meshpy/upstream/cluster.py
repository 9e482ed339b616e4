"""Clusters at run time: hosts, their pools, round robin, and DNS resolution in the background.

A `ClusterRuntime` outlives config reloads while its model is unchanged, so pools stay warm; the
manager rebuilds only clusters whose definition changed and closes the ones removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.endpoints import DEFAULT_GROUP, NO_LOCALITY, Locality
from meshpy.model.types import Cluster, Endpoint
from meshpy.model.unix_address import SockAddr, sock_address
from meshpy.tasks import TaskOwner
from meshpy.telemetry.metrics import ClusterStats, Metrics
from meshpy.telemetry.tls_stats import TlsStats
from meshpy.transport.connector import Connector
from meshpy.transport.tls_contexts import ClientContext, client_context
from meshpy.upstream.balancers import DestinationBalancer, smooth_weighted_order
from meshpy.upstream.gauges import cluster_gauges
from meshpy.upstream.health import HealthChecker
from meshpy.upstream.outlier import OutlierDetector
from meshpy.upstream.pool import ConnPool
from meshpy.upstream.pool_alpn import AlpnHostPool, host_pool
from meshpy.upstream.priority import LocalSite, cluster_balancer, flat_in_service, uses_tiers

log = logging.getLogger("meshpy.upstream")

# A host as the cluster's endpoints give it: (address, weight, name from config[, its Endpoint: priority,
# locality, health check target]).
HostEntry = tuple[SockAddr, int, str] | tuple[SockAddr, int, str, Endpoint | None]


def _static_hosts(model: Cluster) -> list[HostEntry]:
    """A static cluster's hosts; a Unix socket's (Envoy's pipe) address and name are its path (the
    endpoint's `hostname`, when it has one, names it as in Envoy)."""
    return [(sock_address(e.address), e.weight, e.hostname or e.address.path or e.address.host, e)
            for e in model.endpoints]


class Host:
    """One upstream endpoint with its pool, and what outlier detection keeps about it."""

    __slots__ = (
        "active_requests", "address", "c_5xx", "c_gateway", "c_local", "eject_count", "ejected", "endpoint",
        "ewma", "ewma_at", "hc_fails", "hc_healthy", "hc_passes", "hostname", "joined", "pool", "rq_fail",
        "rq_ok", "uneject", "weight",
    )  # fmt: skip

    def __init__(self, pool: ConnPool, weight: int, hostname: str, endpoint: Endpoint | None = None) -> None:
        self.pool = pool
        self.address = pool.address
        self.weight = weight
        self.hostname = hostname  # the endpoint's hostname, else the DNS name, else the address
        self.endpoint = endpoint  # where it came from in config (None: an original_dst destination)
        self.active_requests = 0
        # Outlier detection: consecutive failures, this interval's results, ejection state.
        self.c_5xx = self.c_gateway = self.c_local = 0
        self.rq_ok = self.rq_fail = 0
        self.ejected = False
        self.eject_count = 0
        self.uneject: asyncio.Handle | None = None
        self.joined: float | None = None  # when it joined, while in a slow-start window
        self.hc_healthy = True  # active health checking's verdict (healthy until a check says not)
        self.hc_fails = self.hc_passes = 0
        self.ewma = self.ewma_at = 0.0  # peak EWMA latency (seconds) and when it was last updated

    @property
    def health(self) -> str:
        """Envoy's health flags, as /clusters shows them."""
        flags = ("/failed_active_hc" if not self.hc_healthy else "") + (
            "/failed_outlier_check" if self.ejected else "")
        return flags or "healthy"

    @property
    def label(self) -> str:
        # (meshpy.model.unix_address.label, inlined: access logs ask for it on every request)
        address = self.pool.address
        if isinstance(address, str):  # a Unix socket: its path, as Envoy names the host
            return address
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterRuntime:
    __slots__ = (
        "_by_address", "_loop", "_order", "_rr", "_task", "balancer", "budget", "busy", "by_destination",
        "connector", "cx_limit", "epoch", "health", "hosts", "model", "outlier", "pending_limit", "resolved",
        "retries_active", "retry_limit", "rq_limit", "site", "stats", "tasks",
    )  # fmt: skip

    def __init__(self, model: Cluster, stats: ClusterStats, loop: asyncio.AbstractEventLoop,
                 tasks: TaskOwner | None = None, tls_stats: TlsStats | None = None,
                 site: LocalSite | None = None) -> None:
        self.model = model
        self.site = site  # this proxy's locality and own cluster, for zone-aware routing
        self.epoch = 0  # rebuilds of its balancing, which zone-aware clusters following this one watch
        # Its DNS loop, health checks and its pools' connects (a runtime alone owns its own).
        self.tasks = tasks if tasks is not None else TaskOwner(loop)
        self.stats = stats
        if model.protocol == "auto" and model.tls is None:  # (the loaders refuse it where it is written)
            raise ConfigError([ConfigIssue("protocol", "auto needs TLS: ALPN chooses HTTP/2 or HTTP/1.1")])
        # Opens every connection to the endpoints: pools, TCP proxy, CONNECT tunnels, health checks.
        # (A change of connect timeout or socket options makes a new runtime: see ClusterManager.)
        tls = client_context(model.tls, "tls") if model.tls is not None else None
        self.connector = Connector(loop, model.connect_timeout, model.tcp_keepalive, tls, tls_stats)
        # The circuit breakers, as plain attributes: the request path reads rq_limit on every request.
        breakers = model.circuit_breakers
        self.cx_limit = breakers.max_connections
        self.pending_limit = breakers.max_pending_requests
        self.rq_limit = breakers.max_requests
        self.retry_limit = breakers.max_retries
        self.budget = breakers.retry_budget
        self.retries_active = 0  # retries waiting out their back-off (what the budget bounds, as Envoy)
        self.busy = 0  # requests on an upstream connection, kept by the pools (for max_requests)
        self._loop = loop
        self.hosts: list[Host] = []
        self._order: list[Host] = []
        self._rr = 0
        self._task: asyncio.Task[None] | None = None
        # Set once the hosts are known (at once for static clusters; after the first DNS answer,
        # good or bad, for DNS ones): the app waits on it before it reports ready, as Envoy does.
        self.resolved = asyncio.Event()
        od = model.outlier_detection
        self.outlier = OutlierDetector(self, od, loop) if od is not None else None
        self.by_destination = model.discovery == "original_dst"
        # None: the round robin below
        self.balancer = DestinationBalancer(model.load_balancing) if self.by_destination else \
            cluster_balancer(model, site)
        self.health: HealthChecker | None = None  # started by start()
        # original_dst (Envoy's ORIGINAL_DST): no endpoints of its own; a host per destination seen,
        # made on first use and dropped once it holds no connection (see evict_idle).
        self._by_address: dict[SockAddr, Host] = {}
        if self.by_destination:
            self.resolved.set()
        if model.discovery == "static":
            self.resolved.set()
            self._set_hosts(_static_hosts(model))

    def start(self) -> None:
        hc = self.model.health_check
        if hc is not None and self.health is None:
            self.health = HealthChecker(self, hc)
        if self.model.discovery in ("strict_dns", "logical_dns") and self._task is None:
            self._task = self.tasks.spawn(self._dns_loop(), name=f"dns:{self.model.name}")

    def retarget(self, model: Cluster) -> None:
        """A static cluster's new endpoints. Hosts kept keep their pools; the pools of hosts gone
        finish what they hold (see HostPool.close)."""
        self.model = model
        balancer = self.balancer
        if uses_tiers(model, self.site) != (balancer is not None and balancer.tiered):
            self.balancer = cluster_balancer(model, self.site)  # priorities came or went
        self._set_hosts(_static_hosts(model))

    def connections(self) -> int:
        """Upstream connections open or opening, over every host (for max_connections)."""
        return sum(h.pool.total for h in self.hosts)

    def pending(self) -> int:
        """Requests waiting for a connection, over every host (for max_pending_requests)."""
        return sum(h.pool.pending for h in self.hosts)

    def breaker_state(self) -> dict[str, tuple[int, int]]:
        """Each circuit breaker as (in use, limit), for /clusters and the gauges."""
        return {
            "connections": (self.connections(), self.cx_limit),
            "pending_requests": (self.pending(), self.pending_limit),
            "requests": (self.busy, self.rq_limit),
            "retries": (self.retries_active, self.retry_cap()),
        }

    def retry_cap(self) -> int:
        """How many requests may be in retry at once: the budget's share of the active requests (at
        least its floor), or max_retries when the budget is off."""
        budget = self.budget
        if budget is None:
            return self.retry_limit
        return max(budget.min_concurrency, int(budget.percent * self.stats.rq_active / 100))

    def pick(self, key: int | None = None) -> Host | None:
        """The cluster's balancer's choice (`key`: the request's hash, for ring_hash and maglev)."""
        if self.balancer is not None:
            return self.balancer.pick(key)
        return self.round_robin()

    def host_for(self, destination: tuple[str, int] | None) -> Host | None:
        """An original_dst cluster's host for a connection's original destination (None: the
        connection was not redirected, so there is nowhere to send it but back to this proxy)."""
        if destination is None:
            return None
        host = self._by_address.get(destination)
        if host is None:
            self._set_hosts([*((h.address, 1, h.hostname, None) for h in self.hosts),
                             (destination, 1, destination[0], None)])
            host = self.hosts[-1]
        return host

    def round_robin(self) -> Host | None:
        """Smooth weighted round robin: the order list holds each host `weight` times. The request path
        calls this itself when the cluster has no other balancer."""
        order = self._order
        if not order:
            return None
        i = self._rr
        if i >= len(order):
            i = 0
        self._rr = i + 1
        return order[i]

    def close(self) -> None:
        if self.outlier is not None:
            self.outlier.close()
        if self.health is not None:
            self.health.close()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for h in self.hosts:
            h.pool.close()

    def evict_idle(self, now: float) -> None:
        timeout = self.model.pool_idle_timeout
        for h in self.hosts:
            h.pool.evict_idle(now, timeout if timeout is not None else float("inf"))
        if self.by_destination:  # forget destinations nothing is connected to any more
            kept = [h for h in self.hosts if h.pool.total or h.pool.pending or h.active_requests]
            if len(kept) != len(self.hosts):
                self._set_hosts([(h.address, 1, h.hostname, None) for h in kept])

    def _set_hosts(self, entries: Iterable[HostEntry]) -> None:
        old = {h.pool.address: h for h in self.hosts}
        hosts: list[Host] = []
        for address, weight, name, *more in entries:
            endpoint = more[0] if more else None
            h = old.pop(address, None)
            if h is not None:
                h.weight = weight
                h.endpoint = endpoint
            else:
                h = Host(host_pool(self.model, self._loop, address, self.stats, self.connector, self,
                                   self.tasks), weight, name, endpoint)
                if self.hosts and self.model.load_balancing.slow_start is not None:
                    h.joined = time.monotonic()  # joined a running cluster: it warms up
            hosts.append(h)
        for gone in old.values():
            gone.pool.close()
        self.hosts = hosts
        if self.by_destination:
            self._by_address = {h.address: h for h in hosts}
        if self.health is not None:
            self.health.hosts_changed()
        self.rebuild_order()

    def rebuild_order(self) -> None:
        """The balancer's order over the endpoints in service (not ejected), or over all of them when
        too few are (Envoy's panic threshold: better some load on a doubtful endpoint than all of it on
        the few left). A tiered balancer (priorities, localities) sorts that out itself."""
        self.epoch += 1
        balancer = self.balancer
        if balancer is not None and balancer.tiered:
            balancer.rebuild(self.hosts)
            return
        usable = flat_in_service(self.hosts, self.model)
        if balancer is not None:
            balancer.rebuild(usable)
        self._order = smooth_weighted_order(usable)
        self._rr = 0

    async def _resolve(self) -> list[HostEntry]:
        out: list[HostEntry] = []
        endpoints = self.model.endpoints
        if self.model.discovery == "logical_dns":
            endpoints = endpoints[:1]  # LOGICAL_DNS: one logical host, the first address wins
        family = self.model.dns_lookup_family
        ask = socket.AF_INET if family == "v4_only" else socket.AF_INET6 if family == "v6_only" else \
            socket.AF_UNSPEC
        for ep in endpoints:
            infos = await self._loop.getaddrinfo(ep.address.host, ep.address.port, family=ask,
                                                 type=socket.SOCK_STREAM)
            if family in ("auto", "v4_preferred"):
                # Envoy's AUTO: the IPv6 addresses if there are any, else the IPv4 ones; V4_PREFERRED
                # the other way round.
                first = socket.AF_INET6 if family == "auto" else socket.AF_INET
                preferred = [i for i in infos if i[0] == first]
                infos = preferred or infos
            seen: list[str] = []
            for _family, _t, _p, _c, sockaddr in infos:
                ip = str(sockaddr[0])
                if ip not in seen:
                    seen.append(ip)
            if self.model.discovery == "logical_dns":
                seen = seen[:1]
            out.extend(((ip, ep.address.port), ep.weight, ep.hostname or ep.address.host, ep) for ip in seen)
        return out

    async def _dns_loop(self) -> None:
        while True:
            try:
                entries = await self._resolve()
            except (OSError, UnicodeError) as err:
                log.warning("cluster %s: DNS resolution failed: %s", self.model.name, err)
            else:
                if self.model.discovery == "logical_dns" and self.hosts and entries:
                    # LOGICAL_DNS keeps one host and its pool; only new connections use the new address.
                    pool = self.hosts[0].pool
                    pool.address = entries[0][0]
                else:
                    self._set_hosts(entries)
            self.resolved.set()
            await asyncio.sleep(self.model.dns_refresh_rate)


class ClusterManager:
    """Owns every ClusterRuntime; `reconcile` swaps in a new set of cluster definitions."""

    def __init__(self, metrics: Metrics, loop: asyncio.AbstractEventLoop,
                 tasks: TaskOwner | None = None) -> None:
        self._metrics = metrics
        self._loop = loop
        self._tasks = tasks if tasks is not None else TaskOwner(loop)
        metrics.add_callback_collector(lambda: cluster_gauges(self.clusters))
        self.clusters: dict[str, ClusterRuntime] = {}
        self._retargets: dict[str, Cluster] = {}  # endpoint-only changes, done by `commit`
        self._site = self._next_site = LocalSite("", NO_LOCALITY)
        self._tls_updates: dict[str, ClientContext] = {}  # contexts made again from changed files
        self._sweeper: asyncio.Task[None] | None = None

    def reconcile(self, models: Iterable[Cluster], refresh_tls: bool = False, local_cluster: str = "",
                  locality: Locality = NO_LOCALITY) -> dict[str, ClusterRuntime]:
        """Build the runtime set for `models`, reusing unchanged clusters. Returns the new mapping;
        the caller publishes it with the Snapshot, then calls `retire` for the old ones. `refresh_tls`:
        clusters kept get TLS contexts made again from their files (used from `commit` on).
        `local_cluster` and `locality`: the proxy's own cluster and locality, for zone-aware routing
        (when they change, every cluster is made again)."""
        new: dict[str, ClusterRuntime] = {}
        self._retargets = {}
        self._tls_updates = {}
        site = self._site
        if (local_cluster, locality) != (site.cluster, site.locality):
            site = LocalSite(local_cluster, locality)
        self._next_site = site
        issues: list[ConfigIssue] = []
        for i, m in enumerate(models):
            cur = self.clusters.get(m.name) if site is self._site else None
            if cur is not None and cur.model == m:
                new[m.name] = cur
                if refresh_tls and m.tls is not None:
                    try:
                        self._tls_updates[m.name] = client_context(m.tls, "tls")
                    except ConfigError as err:
                        issues.extend(ConfigIssue(f"clusters[{i}].{x.path}", x.reason) for x in err.issues)
            elif cur is not None and cur.model.discovery == m.discovery == "static" and replace(
                cur.model, endpoints=m.endpoints
            ) == m:
                # Only the endpoints changed (an EDS update, mostly): the runtime stays, hosts that
                # remain keep their pools and connections, and it happens at commit.
                new[m.name] = cur
                self._retargets[m.name] = m
            else:
                try:
                    rt = ClusterRuntime(m, self._metrics.cluster(m.name), self._loop, self._tasks,
                                        self._metrics.tls.cluster(m.name) if m.tls is not None else None,
                                        site)
                except ConfigError as err:  # TLS material that cannot be used
                    issues.extend(ConfigIssue(f"clusters[{i}].{x.path}", x.reason) for x in err.issues)
                    continue
                rt.start()
                new[m.name] = rt
        if issues:
            self.discard(new)
            raise ConfigError(issues)
        return new

    def commit(self, new: dict[str, ClusterRuntime]) -> None:
        site = self._site = self._next_site
        site.local = new.get(site.cluster)  # zone-aware routing compares with this one
        updates, self._tls_updates = self._tls_updates, {}
        for name, ctx in updates.items():
            new[name].connector.tls = ctx  # new connections only: the pooled ones keep theirs
        retargets, self._retargets = self._retargets, {}
        for name, model in retargets.items():
            new[name].retarget(model)
        for name, rt in self.clusters.items():
            if new.get(name) is not rt:
                rt.close()
                if name not in new:
                    self._metrics.forget_cluster(name)
        self.clusters = new
        if self._sweeper is None:
            self._sweeper = self._tasks.spawn(self._sweep(), name="pool-sweeper")

    def discard(self, new: dict[str, ClusterRuntime]) -> None:
        """Undo `reconcile` for a config that was not committed."""
        self._retargets = {}
        self._tls_updates = {}
        for name, rt in new.items():
            if self.clusters.get(name) is not rt:
                rt.close()

    async def _sweep(self) -> None:
        # One periodic sweep instead of a timer per released connection: release stays O(1).
        while True:
            await asyncio.sleep(1.0)
            now = self._loop.time()
            for rt in self.clusters.values():
                rt.evict_idle(now)

    def view(self) -> list[dict[str, Any]]:
        """Every cluster's live state (health, ejections, breakers per endpoint), for /clusters."""
        return [
            {
                "name": name,
                "type": rt.model.discovery,
                "protocol": rt.model.protocol,
                "circuit_breakers": {k: {"in_use": used, "limit": limit}
                                     for k, (used, limit) in rt.breaker_state().items()},
                "endpoints": [
                    {
                        "address": h.label, "hostname": h.hostname, "weight": h.weight, "health": h.health,
                        **({"priority": h.endpoint.group.priority, "locality": str(h.endpoint.group.locality)}
                           if h.endpoint is not None and h.endpoint.group != DEFAULT_GROUP else {}),
                        "active_requests": h.active_requests, "active_connections": h.pool.total,
                        "idle_connections": h.pool.idle_count,
                        # auto: what ALPN agreed on last (None before the first connection)
                        **({"protocol": h.pool.protocol} if isinstance(h.pool, AlpnHostPool) else {}),
                    }
                    for h in rt.hosts
                ],
            }
            for name, rt in self.clusters.items()
        ]

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for rt in self.clusters.values():
            rt.close()
        self.clusters = {}

    async def wait_closed(self) -> None:
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
