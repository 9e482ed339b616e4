"""Which filter chain of a listener serves a connection: Envoy's filter_chain_match, criterion by
criterion in Envoy's order (destination port, destination address, server name, transport protocol,
application protocols, source address, source port). At each criterion the chains that name the
connection's value most specifically stay (an exact port, the longest prefix, the exact name before
the longest wildcard); when none names it, the chains that leave the criterion empty stay; when none
of those either, no chain serves the connection and it is closed.

Pure and run once per connection, on the facts the listener gathered (addresses, and when a chain
needs them the client's first bytes: TLS or not, SNI, ALPN or the sniffed HTTP version).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshpy.model.tls import ChainMatch

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known of a connection when its chain is chosen."""

    destination: str
    destination_port: int
    source: str
    source_port: int
    transport_protocol: str = "raw_buffer"  # "tls" when the first bytes are a TLS ClientHello
    server_name: str = ""
    application_protocols: tuple[str, ...] = ()


def _networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@dataclass(frozen=True, slots=True)
class _Compiled:
    index: int
    match: ChainMatch
    destinations: tuple[Network, ...]
    sources: tuple[Network, ...]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _longest_prefix(
    chains: list[_Compiled], ranges: Callable[[_Compiled], tuple[Network, ...]], text: str
) -> list[_Compiled]:
    address = _address(text)
    best = -1
    found: list[_Compiled] = []
    for c in chains:
        for net in ranges(c):
            if address is not None and address.version == net.version and address in net:
                if net.prefixlen > best:
                    best, found = net.prefixlen, [c]
                elif net.prefixlen == best and c not in found:
                    found.append(c)
    return found or [c for c in chains if not ranges(c)]


def _server_names(chains: list[_Compiled], name: str) -> list[_Compiled]:
    name = name.lower().rstrip(".")
    if name:
        exact = [c for c in chains if name in c.match.server_names]
        if exact:
            return exact
        labels = name.split(".")
        for i in range(1, len(labels)):  # "*.b.c" before "*.c": the longest wildcard wins
            wildcard = "*." + ".".join(labels[i:])
            found = [c for c in chains if wildcard in c.match.server_names]
            if found:
                return found
    return [c for c in chains if not c.match.server_names]


def _application(chains: list[_Compiled], offered: tuple[str, ...]) -> list[_Compiled]:
    for protocol in offered:  # the client's order: its first protocol that a chain names
        found = [c for c in chains if protocol in c.match.application_protocols]
        if found:
            return found
    return [c for c in chains if not c.match.application_protocols]


class ChainSelector:
    """The chains of one listener, in the order given (index 0: the listener's own). With
    `default_last`, the last is Envoy's default_filter_chain: it takes no part in the matching and
    serves what no other chain matches."""

    __slots__ = ("_chains", "_default", "needs_hello")

    def __init__(self, matches: Sequence[ChainMatch], default_last: bool = False) -> None:
        self._chains = [
            _Compiled(i, m, _networks(m.prefix_ranges), _networks(m.source_prefix_ranges))
            for i, m in enumerate(matches)
        ]
        self._default = len(self._chains) - 1 if default_last and self._chains else None
        if self._default is not None:
            del self._chains[-1]
        self.needs_hello = any(m.needs_hello() for m in matches)

    def select(self, facts: Facts) -> int | None:
        """The index of the chain that serves a connection with `facts`; None: no chain does."""
        chains = self._chains
        port = [c for c in chains if c.match.destination_port == facts.destination_port]
        chains = port or [c for c in chains if c.match.destination_port is None]
        chains = _longest_prefix(chains, lambda c: c.destinations, facts.destination)
        chains = _server_names(chains, facts.server_name)
        protocol = [c for c in chains if c.match.transport_protocol == facts.transport_protocol]
        chains = protocol or [c for c in chains if not c.match.transport_protocol]
        chains = _application(chains, facts.application_protocols)
        chains = _longest_prefix(chains, lambda c: c.sources, facts.source)
        source_port = [c for c in chains if facts.source_port in c.match.source_ports]
        chains = source_port or [c for c in chains if not c.match.source_ports]
        return chains[0].index if chains else self._default


def duplicate_matches(matches: Sequence[ChainMatch]) -> list[tuple[int, int]]:
    """Pairs of chains that some connection would match equally (Envoy refuses such a listener). As
    Envoy builds its match tree, each list criterion is taken value by value: chains naming
    ["a", "b"] and ["b", "c"] with everything else alike collide on "b"."""
    seen: dict[tuple[object, ...], int] = {}
    pairs: list[tuple[int, int]] = []
    for i, m in enumerate(matches):
        for key in itertools.product(
            (m.destination_port,),
            m.prefix_ranges or ("",),
            [n.lower() for n in m.server_names] or [""],
            (m.transport_protocol,),
            m.application_protocols or ("",),
            m.source_prefix_ranges or ("",),
            m.source_ports or (0,),
        ):
            first = seen.setdefault(key, i)
            if first != i and (first, i) not in pairs:
                pairs.append((first, i))
    return pairs
