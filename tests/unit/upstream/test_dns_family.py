"""A DNS cluster's dns_lookup_family (Envoy's): which of a name's addresses become hosts. The
resolver's answers are given here (this machine's names have IPv4 addresses only); what meshpy asks
it for (the family) and keeps of its answers is what is tested."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from meshpy.model.types import Address, Cluster, DnsLookupFamily, Endpoint
from meshpy.telemetry.metrics import Metrics
from meshpy.upstream.cluster import ClusterRuntime

V4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80))
V4B = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 80))
V6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", 80, 0, 0))


def resolved(family: DnsLookupFamily, answers: list[Any]) -> tuple[list[str], int]:
    loop = asyncio.new_event_loop()
    asked: list[int] = []

    async def getaddrinfo(host: str, port: int, *, family: int = 0, type: int = 0) -> list[Any]:
        asked.append(family)
        return [a for a in answers if family in (socket.AF_UNSPEC, a[0])]

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign,assignment]
    model = Cluster(name="c", discovery="strict_dns", dns_lookup_family=family,
                    endpoints=(Endpoint(address=Address(host="svc.example", port=80)),))
    try:
        runtime = ClusterRuntime(model, Metrics().cluster("c"), loop)
        entries = loop.run_until_complete(runtime._resolve())
    finally:
        loop.close()
    return [e[0][0] for e in entries], asked[0]  # (an entry: ((ip, port), weight, name))


@pytest.mark.parametrize(("family", "answers", "hosts", "asked"), [
    ("all", [V6, V4, V4B], ["fd00::1", "10.0.0.1", "10.0.0.2"], socket.AF_UNSPEC),
    ("auto", [V4, V6, V4B], ["fd00::1"], socket.AF_UNSPEC),  # Envoy's default: IPv6 when there is any
    ("auto", [V4, V4B], ["10.0.0.1", "10.0.0.2"], socket.AF_UNSPEC),
    ("v4_preferred", [V6, V4, V4B], ["10.0.0.1", "10.0.0.2"], socket.AF_UNSPEC),
    ("v4_preferred", [V6], ["fd00::1"], socket.AF_UNSPEC),
    ("v4_only", [V6, V4], ["10.0.0.1"], socket.AF_INET),
    ("v6_only", [V6, V4], ["fd00::1"], socket.AF_INET6),
])
def test_the_family_decides_the_hosts(family: DnsLookupFamily, answers: list[Any], hosts: list[str],
                                      asked: int) -> None:
    assert resolved(family, answers) == (hosts, asked)
