"""A listener's filter chains and TLS, compiled: what meshpy.transport.chain_dispatch reads to pick
a connection's chain and terminate its TLS. A listener of one plaintext chain compiles to None and
keeps the direct path."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.types import Listener
from meshpy.routing.chains import ChainSelector, duplicate_matches
from meshpy.transport.chain_dispatch import HELLO_TIMEOUT, ChainRuntime, ListenerChains
from meshpy.transport.tls_contexts import server_contexts

if TYPE_CHECKING:
    from meshpy.routing.compile import HttpListenerConfig
    from meshpy.telemetry.tls_stats import TlsRegistry

# What an http_inspector reports for plaintext: chains matching these need the first bytes sniffed.
_HTTP_PROTOCOLS = frozenset({"http/1.0", "http/1.1", "h2c"})


def compile_chains(
    lm: Listener, own: HttpListenerConfig, make: Callable[[Listener], HttpListenerConfig], tls: TlsRegistry
) -> ListenerChains | None:
    """`own`: the listener's own chain, compiled; `make` compiles a further chain (given as the
    listener with that chain's protocol)."""
    if lm.tls is None and not lm.chains and lm.match.empty():
        return None
    chains = lm.all_chains()
    # Envoy's default_filter_chain serves what no other chain matches: it may repeat another's match.
    clashes = duplicate_matches([c.match for c in (chains[:-1] if lm.default_chain else chains)])
    if clashes:
        first, second = clashes[0]
        raise ConfigError(
            [
                ConfigIssue(
                    "filter_chains",
                    f"chains {chains[first].name!r} and "
                    f"{chains[second].name!r} have the same filter_chain_match: no "
                    f"connection could tell them apart",
                )
            ]
        )
    compiled: list[ChainRuntime] = []
    issues: list[ConfigIssue] = []
    for i, chain in enumerate(chains):
        at = f"chains[{i - 1}]." if i else ""
        try:
            cfg = own
            if i > 0:
                cfg = make(
                    dataclasses.replace(
                        lm,
                        kind=chain.kind,
                        http=chain.http,
                        tcp=chain.tcp,
                        tls=chain.tls,
                        match=chain.match,
                        chains=(),
                    )
                )
            contexts = server_contexts(chain.tls, f"{at}tls") if chain.tls is not None else None
            compiled.append(ChainRuntime(chain.name, cfg, contexts))
        except ConfigError as err:
            issues.extend(
                ConfigIssue(f"{at}{x.path}" if x.path else at.rstrip("."), x.reason) for x in err.issues
            )
    if issues:
        raise ConfigError(issues)
    selector = ChainSelector([c.match for c in chains], lm.default_chain)
    sniff = any(set(c.match.application_protocols) & _HTTP_PROTOCOLS for c in chains)
    waits = [
        c.tls.handshake_timeout for c in chains if c.tls is not None and c.tls.handshake_timeout is not None
    ]
    return ListenerChains(
        selector=selector,
        chains=tuple(compiled),
        inspect=lm.inspect_tls or selector.needs_hello,
        sniff_http=sniff,
        stats=tls.listener(lm.name),
        hello_timeout=min(waits) if waits else HELLO_TIMEOUT,
    )
