"""What the soak counts: per protocol, requests sent, answered, lost and why; when each origin was down
(so that a WebSocket or TCP session cut by an origin's death is told from one cut by the proxy); the
config versions the clients saw; the chaos done."""

from __future__ import annotations

import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Failure examples kept for the report, per protocol and kind of failure (every failure is counted, and
# with a workdir logged; only the first few of each kind are described in the report).
EXAMPLES_PER_KIND = 10
# A session counts as cut by an origin's restart when that origin went down within this many seconds of
# the cut (the kernel's reset and the proxy's close take a moment to reach the client).
CUT_SLACK_S = 1.0


class Clock:
    """Seconds since the soak started, on the monotonic clock."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


@dataclass
class Tally:
    """One protocol (or one kind of traffic). `lost`: requests that should have been answered and were
    not; `expected`: failures the proxy cannot prevent (a tunnel through an origin that died, a TCP
    connection to an endpoint that was down: TCP proxies connect once), never counted as lost."""

    name: str
    idempotent: bool = True
    sent: int = 0
    ok: int = 0
    lost: int = 0
    expected: int = 0
    client_retries: int = 0  # requests the protocol says are safe to resend (GOAWAY, REFUSED_STREAM)
    skipped: int = 0  # not sent: too many in flight (the client, not the proxy, fell behind)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))

    def success(self, ms: float) -> None:
        self.ok += 1
        self.latencies_ms.append(ms)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else 0.0

        return {"sent": self.sent, "ok": self.ok, "lost": self.lost if self.idempotent else 0,
                "failed": self.lost, "expected": self.expected, "client_retries": self.client_retries,
                "skipped": self.skipped, "idempotent": self.idempotent, "failures": dict(self.kinds),
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(lat[-1], 2) if lat else 0.0}


@dataclass
class Downtime:
    origin: str
    down: float  # when the stop began
    up: float | None = None  # when it listened again


class Stats:
    """Everything the clients and the chaos record, shared by both (one event loop, no locks)."""

    def __init__(self, clock: Clock, log: Path | None = None) -> None:
        self.clock = clock
        self.log = log  # every failure, one JSON line each, as it happens (for a look during a long run)
        self.tallies: dict[str, Tally] = {}
        self.examples: list[dict[str, Any]] = []
        self._examples_per_kind: dict[tuple[str, str], int] = {}
        self.unreachable: list[dict[str, Any]] = []  # an origin that was up did not accept a connect
        self.failures_total = 0
        self.versions: dict[str, set[str]] = {"x-soak-file": set(), "x-soak-xds": set()}
        self.downtimes: list[Downtime] = []
        self.events: list[dict[str, Any]] = []
        self.chaos: Counter[str] = Counter()
        self.chaos_errors: list[str] = []

    def tally(self, name: str, idempotent: bool = True) -> Tally:
        if name not in self.tallies:
            self.tallies[name] = Tally(name, idempotent)
        return self.tallies[name]

    def failure(self, tally: Tally, kind: str, detail: str, listener: str, expected: bool = False) -> None:
        if expected:
            tally.expected += 1
            tally.kinds[f"expected: {kind}"] += 1
        else:
            tally.lost += 1
            tally.kinds[kind] += 1
        self.failures_total += 1
        example = {"t": round(self.clock.now(), 3), "protocol": tally.name, "listener": listener,
                   "kind": kind, "detail": detail[:300], "expected": expected}
        per_kind = self._examples_per_kind
        key = (tally.name, kind)
        per_kind[key] = per_kind.get(key, 0) + 1
        if per_kind[key] <= EXAMPLES_PER_KIND:
            self.examples.append(example)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(json.dumps(example) + "\n")

    def saw(self, headers: dict[str, str]) -> None:
        for name, seen in self.versions.items():
            value = headers.get(name)
            if value is not None:
                seen.add(value)

    # --- chaos ---

    def event(self, kind: str, **details: Any) -> None:
        self.chaos[kind] += 1
        self.events.append({"t": round(self.clock.now(), 3), "kind": kind, **details})

    def origin_down(self, origin: str) -> Downtime:
        d = Downtime(origin, self.clock.now())
        self.downtimes.append(d)
        return d

    def origin_cut(self, origin: str, start: float, end: float) -> bool:
        """Whether `origin` went down while a session on it ran (from `start` to its failure at `end`)."""
        return any(d.origin == origin and start - CUT_SLACK_S <= d.down <= end + CUT_SLACK_S
                   for d in self.downtimes)

    def settled(self, origin: str, at: float) -> bool:
        """Whether `origin` has been listening again for a while at `at` (not being stopped or started)."""
        return all(d.up is not None and d.up + CUT_SLACK_S <= at
                   for d in self.downtimes if d.origin == origin)

    def any_down(self, start: float, end: float) -> str | None:
        """An origin that was down (or going down) at some moment between `start` and `end`."""
        for d in self.downtimes:
            up = d.up if d.up is not None else float("inf")
            if d.down - CUT_SLACK_S <= end and up + CUT_SLACK_S >= start:
                return d.origin
        return None

    def totals(self) -> tuple[int, int, int]:
        """(sent, ok, lost) over the idempotent tallies."""
        tallies = [t for t in self.tallies.values() if t.idempotent]
        return (sum(t.sent for t in tallies), sum(t.ok for t in tallies), sum(t.lost for t in tallies))
