"""TLS counters per listener and per cluster (Envoy's `ssl.*` stats), and the certificates in use
with their expiry, exported at scrape time like the rest of meshpy's metrics.

Envoy's names map to meshpy's: ssl.handshake -> meshpy_<side>_tls_handshakes_total{version},
ssl.ciphers.X -> meshpy_<side>_tls_ciphers_total{cipher}, ssl.session_reused ->
meshpy_<side>_tls_sessions_reused_total, ssl.connection_error / fail_verify_no_cert / fail_verify_error
/ fail_verify_san (and meshpy's handshake_timeout) -> meshpy_<side>_tls_failures_total{reason},
ssl.no_certificate -> meshpy_<side>_tls_no_certificate_total; the listener's no_filter_chain_match ->
meshpy_downstream_cx_no_chain_match_total.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshpy.transport.tls_material import CertInfo

FAILURE_REASONS = (
    "connection_error",
    "fail_verify_no_cert",
    "fail_verify_error",
    "fail_verify_san",
    "handshake_timeout",
)


class TlsStats:
    """The TLS counters of one listener or cluster. Handshakes are rare next to requests: dicts are
    cheap enough here and keep the label values open (versions, ciphers)."""

    __slots__ = ("ciphers", "failures", "name", "no_certificate", "no_chain_match", "reused", "versions")

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: defaultdict[str, int] = defaultdict(int)
        self.ciphers: defaultdict[str, int] = defaultdict(int)
        self.failures: defaultdict[str, int] = defaultdict(int)
        self.reused = 0
        self.no_certificate = 0
        self.no_chain_match = 0

    def handshake(self, version: str, cipher: str, reused: bool, peer_certificate: bool) -> None:
        self.versions[version] += 1
        self.ciphers[cipher] += 1
        if reused:
            self.reused += 1
        if not peer_certificate:
            self.no_certificate += 1

    def handshakes(self) -> int:
        return sum(self.versions.values())


@dataclass(frozen=True, slots=True)
class InUse:
    """A certificate a context serves or trusts, for /certs and the expiry gauges."""

    context: str  # "listener <name>" or "cluster <name>"
    role: str  # "certificate" or "ca"
    source: str
    info: CertInfo


class TlsRegistry:
    """Every listener's and cluster's TlsStats, and the certificates of the live config."""

    def __init__(self) -> None:
        self.listeners: dict[str, TlsStats] = {}
        self.clusters: dict[str, TlsStats] = {}
        self.in_use: tuple[InUse, ...] = ()

    def listener(self, name: str) -> TlsStats:
        stats = self.listeners.get(name)
        if stats is None:
            stats = self.listeners[name] = TlsStats(name)
        return stats

    def cluster(self, name: str) -> TlsStats:
        stats = self.clusters.get(name)
        if stats is None:
            stats = self.clusters[name] = TlsStats(name)
        return stats

    def families(self) -> Iterator[Metric]:
        for side, key, table in (
            ("downstream", "listener", self.listeners),
            ("upstream", "cluster", self.clusters),
        ):
            stats = list(table.values())
            if not stats:
                continue
            shakes = CounterMetricFamily(
                f"meshpy_{side}_tls_handshakes_total",
                "TLS handshakes completed, by protocol version.",
                labels=[key, "version"],
            )
            ciphers = CounterMetricFamily(
                f"meshpy_{side}_tls_ciphers_total",
                "TLS handshakes completed, by cipher suite.",
                labels=[key, "cipher"],
            )
            failures = CounterMetricFamily(
                f"meshpy_{side}_tls_failures_total",
                "TLS handshakes that failed, by reason.",
                labels=[key, "reason"],
            )
            reused = CounterMetricFamily(
                f"meshpy_{side}_tls_sessions_reused_total",
                "TLS handshakes that resumed a session.",
                labels=[key],
            )
            nocert = CounterMetricFamily(
                f"meshpy_{side}_tls_no_certificate_total",
                "TLS handshakes where the peer presented no certificate.",
                labels=[key],
            )
            for s in stats:
                for version, n in sorted(s.versions.items()):
                    shakes.add_metric([s.name, version], n)
                for cipher, n in sorted(s.ciphers.items()):
                    ciphers.add_metric([s.name, cipher], n)
                for reason in sorted(set(FAILURE_REASONS) | set(s.failures)):
                    failures.add_metric([s.name, reason], s.failures.get(reason, 0))
                reused.add_metric([s.name], s.reused)
                nocert.add_metric([s.name], s.no_certificate)
            yield from (shakes, ciphers, failures, reused, nocert)
            if side == "downstream":
                nomatch = CounterMetricFamily(
                    "meshpy_downstream_cx_no_chain_match_total",
                    "Connections closed because no filter chain matched them.",
                    labels=[key],
                )
                for s in stats:
                    nomatch.add_metric([s.name], s.no_chain_match)
                yield nomatch
        if self.in_use:
            expiry = GaugeMetricFamily(
                "meshpy_tls_certificate_expiration_timestamp_seconds",
                "When a certificate in use expires (Unix time).",
                labels=["context", "role", "serial", "subject"],
            )
            for c in self.in_use:
                expiry.add_metric(
                    [c.context, c.role, c.info.serial, c.info.subject], c.info.not_after.timestamp()
                )
            yield expiry
            first = min(c.info.not_after.timestamp() for c in self.in_use)
            days = GaugeMetricFamily(
                "meshpy_tls_days_until_first_certificate_expiring",
                "Days until the first certificate in use expires (Envoy's "
                "server.days_until_first_cert_expiring).",
            )
            days.add_metric([], max(0, int((first - time.time()) // 86400)))
            yield days
