"""Load balancers other than the cluster's built-in smooth weighted round robin.

Each is rebuilt (`rebuild`) whenever the set of endpoints in service changes, so that `pick` is cheap:
least request compares `choice_count` random endpoints by requests in flight over weight (Envoy's
power of two choices); random draws by weight; ring hash and Maglev map a request's hash to an
endpoint so that a key stays on one endpoint and about 1/N of the keys move when one of N leaves;
peak EWMA (Linkerd's) compares two random endpoints by a moving average of their latency that jumps
up at once on a slow answer and decays over `decay` seconds, times their requests in flight. Slow
start scales a new endpoint's weight up over its window.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from meshpy.model.types import LoadBalancing

if TYPE_CHECKING:
    from meshpy.upstream.cluster import Host


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process, unlike Python's own hash())."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class Balancer(ABC):
    hashed = False  # whether pick() wants a request hash
    by_destination = False  # original_dst: the host is where the connection was going, not a choice
    measures = False  # whether done() wants each answer's latency
    tiered = False  # priorities and localities (meshpy.upstream.priority): rebuilt from all the hosts

    def __init__(self, config: LoadBalancing) -> None:
        self.config = config
        self.hosts: list[Host] = []

    def rebuild(self, hosts: list[Host]) -> None:
        self.hosts = hosts

    @abstractmethod
    def pick(self, key: int | None = None) -> Host | None:
        """An endpoint for a request (`key`: its hash, for the hashing balancers); None if none."""

    def done(self, host: Host, seconds: float) -> None:
        """An answer from `host` after `seconds`. Only balancers with `measures` learn from it (the
        request path asks that flag first), so the others keep nothing."""
        return None

    def weight(self, host: Host) -> float:
        """The host's weight, scaled down while it is in its slow-start window."""
        slow = self.config.slow_start
        if slow is None or host.joined is None:
            return float(host.weight)
        age = time.monotonic() - host.joined
        if age >= slow.window:
            host.joined = None  # warmed up: no more work for this host
            return float(host.weight)
        factor = max(slow.min_weight_percent / 100.0, (age / slow.window) ** (1.0 / slow.aggression))
        return float(host.weight * factor)


def smooth_weighted_order(hosts: list[Host]) -> list[Host]:
    """One cycle of smooth weighted round robin (nginx's): heavy hosts spread out, not bunched.
    Precomputed per host-set change so that `pick` is an index increment."""
    weights = [max(1, min(h.weight, 128)) for h in hosts]
    total = sum(weights)
    current = [0] * len(hosts)
    order: list[Host] = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        order.append(hosts[best])
    return order


class RoundRobinBalancer(Balancer):
    """Round robin as a balancer object, for where one is needed per set of hosts (a priority, a
    locality); a cluster's own round robin is ClusterRuntime.round_robin, the same order."""

    def rebuild(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self._order = smooth_weighted_order(hosts)
        self._next = 0

    def pick(self, key: int | None = None) -> Host | None:
        order = self._order
        if not order:
            return None
        i = self._next
        if i >= len(order):
            i = 0
        self._next = i + 1
        return order[i]


class RandomBalancer(Balancer):
    def rebuild(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        self._uniform = len({h.weight for h in hosts}) <= 1 and self.config.slow_start is None

    def pick(self, key: int | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if self._uniform:
            return hosts[random.randrange(len(hosts))]
        return random.choices(hosts, weights=[self.weight(h) for h in hosts])[0]


class LeastRequestBalancer(Balancer):
    def pick(self, key: int | None = None) -> Host | None:
        hosts = self.hosts
        if len(hosts) < 2:
            return hosts[0] if hosts else None
        best: Host | None = None
        best_load = math.inf
        for h in random.sample(hosts, min(self.config.choice_count, len(hosts))):
            load = (h.active_requests + 1) / max(self.weight(h), 1e-9)
            if load < best_load:
                best, best_load = h, load
        return best


class PeakEwmaBalancer(Balancer):
    measures = True

    def rebuild(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        for h in hosts:
            if h.ewma_at == 0.0:
                h.ewma_at = time.monotonic()

    def pick(self, key: int | None = None) -> Host | None:
        hosts = self.hosts
        if len(hosts) < 2:
            return hosts[0] if hosts else None
        a, b = random.sample(hosts, 2)
        return a if self._cost(a) <= self._cost(b) else b

    def _cost(self, h: Host) -> float:
        # An endpoint never measured costs as much as the slowest one seen, times its load: it gets
        # tried, but a fresh endpoint does not take everything at once.
        latency = h.ewma if h.ewma > 0 else max((x.ewma for x in self.hosts), default=0.0) or 0.001
        return latency * (h.active_requests + 1)

    def done(self, host: Host, seconds: float) -> None:
        now = time.monotonic()
        if seconds > host.ewma:
            host.ewma = seconds  # the peak: a slow answer counts in full at once
        else:
            w = math.exp(-(now - host.ewma_at) / self.config.decay)
            host.ewma = host.ewma * w + seconds * (1.0 - w)
        host.ewma_at = now


class RingHashBalancer(Balancer):
    hashed = True

    POINTS_PER_WEIGHT = 160  # ketama's: a host's points do not depend on the other hosts

    def rebuild(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        total = sum(h.weight for h in hosts) or 1
        # Fixed points per unit of weight, so that one host leaving moves its keys only (about 1/N);
        # ring_size only raises that for clusters too small to fill a ring of that size.
        per_weight = max(self.POINTS_PER_WEIGHT, -(-self.config.ring_size // total))
        points: list[tuple[int, int]] = []
        for i, h in enumerate(hosts):
            replicas = per_weight * h.weight
            label = h.label.encode()
            points.extend((hash64(label + b"_" + str(k).encode()), i) for k in range(replicas))
        points.sort()
        self._hashes = [p for p, _ in points]
        self._owners = [hosts[i] for _, i in points]

    def pick(self, key: int | None = None) -> Host | None:
        if not self.hosts:
            return None
        if key is None:
            return self.hosts[random.randrange(len(self.hosts))]
        i = bisect.bisect_left(self._hashes, key)
        return self._owners[i if i < len(self._owners) else 0]


class MaglevBalancer(Balancer):
    hashed = True

    def rebuild(self, hosts: list[Host]) -> None:
        self.hosts = hosts
        size = self.config.table_size
        table: list[Host | None] = [None] * size
        if hosts:
            perms = []
            for h in hosts:
                label = h.label.encode()
                perms.append((hash64(b"offset" + label) % size, hash64(b"skip" + label) % (size - 1) + 1))
            nexts = [0] * len(hosts)
            top = max(h.weight for h in hosts)
            credit = [0.0] * len(hosts)
            filled = 0
            for turn in itertools.cycle(range(len(hosts))):
                # Weighted Maglev: a host places an entry each time its credit reaches one.
                credit[turn] += hosts[turn].weight / top
                if credit[turn] < 1.0:
                    continue
                credit[turn] -= 1.0
                offset, skip = perms[turn]
                while True:
                    slot = (offset + nexts[turn] * skip) % size
                    nexts[turn] += 1
                    if table[slot] is None:
                        table[slot] = hosts[turn]
                        filled += 1
                        break
                if filled == size:
                    break
        self._table = table

    def pick(self, key: int | None = None) -> Host | None:
        if not self.hosts:
            return None
        if key is None:
            return self.hosts[random.randrange(len(self.hosts))]
        return self._table[key % len(self._table)]


class SlowStartRoundRobin(RandomBalancer):
    """round_robin with slow start: while an endpoint warms up the pick is by weight at random, so
    that its share can grow smoothly; with no endpoint warming it is plain weighted random."""


class DestinationBalancer(Balancer):
    """An original_dst cluster's: there is nothing to choose (ClusterRuntime.host_for finds the host);
    being a balancer keeps the round-robin fast path of other clusters free of a check for it."""

    by_destination = True

    def pick(self, key: int | None = None) -> Host | None:
        return None


def make_balancer(config: LoadBalancing) -> Balancer | None:
    """The balancer for `config`, or None for plain round robin (the cluster's own fast path)."""
    policy = config.policy
    if policy == "round_robin":
        return SlowStartRoundRobin(config) if config.slow_start is not None else None
    kinds: dict[str, type[Balancer]] = {
        "least_request": LeastRequestBalancer, "random": RandomBalancer, "ring_hash": RingHashBalancer,
        "maglev": MaglevBalancer, "peak_ewma": PeakEwmaBalancer,
    }  # fmt: skip
    return kinds[policy](config)
