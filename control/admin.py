"""The control plane's admin listener: /ready, /metrics (Prometheus), /nodes (JSON), and the CA's
/ca paths (control/ca_admin.py: its status, and a root rotation's steps).

A few requests a minute from probes and scrapers, off any data path: plain asyncio streams, one request
per connection, are enough here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from control.ads import AdsServer, NodeStatus
from control.ca_admin import CaAdmin
from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, SnapshotCache

SHORT = {LISTENER: "lds", ROUTE: "rds", CLUSTER: "cds", ENDPOINT: "eds", SECRET: "sds"}
PUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_HEAD = 8 * 1024


class _Collector(Collector):
    """Reads the ADS server's counters at scrape time: nothing is kept twice, nothing runs per push."""

    def __init__(self, ads: AdsServer, loads: dict[str, int]) -> None:
        self.ads = ads
        self.loads = loads

    def collect(self) -> Iterator[Any]:
        c = self.ads.counters
        yield GaugeMetricFamily("meshpy_control_connected_nodes", "ADS streams open now",
                                value=len(self.ads.nodes))
        for name, value, doc in (("pushes", c.pushes, "DiscoveryResponses sent"),
                                 ("acks", c.acks, "responses ACKed by clients"),
                                 ("nacks", c.nacks, "responses rejected (NACKed) by clients")):
            yield CounterMetricFamily(f"meshpy_control_{name}", doc, value=value)
        loads = CounterMetricFamily("meshpy_control_source_loads", "source versions read, by result",
                                    labels=["result"])
        for result, n in sorted(self.loads.items()):
            loads.add_metric([result], n)
        yield loads
        samples = sorted(c.push_to_ack_seconds)
        buckets = [(str(b), float(sum(1 for s in samples if s <= b))) for b in PUSH_BUCKETS]
        buckets.append(("+Inf", float(len(samples))))
        yield HistogramMetricFamily("meshpy_control_push_to_ack_seconds",
                                    "time from a push to its ACK (the latest 1,000)",
                                    buckets=buckets, sum_value=sum(samples))


def nodes_view(ads: AdsServer) -> list[dict[str, Any]]:
    def current(key: int, status: NodeStatus) -> dict[str, str]:
        snap = ads.snapshot_for(status, key)  # with the stream's key: a node's own SDS secrets count too
        # Secrets only when there are some: most nodes subscribe to none, and never ACK that type.
        return {} if snap is None else {SHORT[t]: v for t, v in sorted(snap.type_versions.items())
                                        if t != SECRET or snap.of(SECRET)}

    return [{"node": s.node_id, "cluster": s.cluster, "snapshot": current(key, s),
             "connected_seconds": round(time.time() - s.connected_at, 1),
             "acked": {SHORT.get(t, t): v for t, v in sorted(s.acked.items())},
             "last_nack": s.last_nack}
            for key, s in sorted(ads.nodes.items(), key=lambda item: item[1].node_id)]


def is_loopback(peername: object) -> bool:
    """Whether a peer address (as asyncio gives it) is on loopback; anything unreadable is not."""
    if not isinstance(peername, tuple) or not peername:
        return False
    try:
        return ipaddress.ip_address(str(peername[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class ControlAdmin:
    def __init__(self, ads: AdsServer, cache: SnapshotCache, loads: dict[str, int],
                 collectors: Sequence[Collector] = (), ca: CaAdmin | None = None) -> None:
        """`collectors`: the sources' own metrics (the Kubernetes watches', for one); `ca`: the /ca paths."""
        self.ads, self.cache, self.ca = ads, cache, ca
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(ads, loads))
        for collector in collectors:
            self.registry.register(collector)

    def answer(self, path: str, method: str = "GET", local: bool = True) -> tuple[int, str, bytes]:
        """`local`: the peer is on loopback (changes to the CA are taken from there only)."""
        if self.ca is not None:
            answer = self.ca.answer(method, path, local)
            if answer is not None:
                return answer
        path = path.split("?", 1)[0]
        if path == "/ready":
            ok = self.cache.ready
            return (200, "text/plain", b"LIVE\n") if ok else (503, "text/plain", b"no config yet\n")
        if path in ("/metrics", "/stats/prometheus"):
            return 200, "text/plain; version=0.0.4", generate_latest(self.registry)
        if path == "/nodes":
            return 200, "application/json", json.dumps(nodes_view(self.ads), indent=1).encode() + b"\n"
        return 404, "text/plain", b"not found: try /ready, /metrics, /nodes, /ca\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head[:MAX_HEAD].split(b" ", 2)
            local = is_loopback(writer.get_extra_info("peername"))
            status, ctype, body = self.answer(parts[1].decode("latin-1"), parts[0].decode("latin-1"), local) \
                if len(parts) == 3 else (400, "text/plain", b"bad request\n")
            reason = b"OK" if status == 200 else b"Error"
            writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n"
                         b"\r\n%s" % (status, reason, ctype.encode(), len(body), body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
