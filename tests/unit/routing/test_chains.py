"""Filter chain selection: Envoy's order of criteria and its most-specific-wins rule, the default
chain, and matches that no connection could tell apart."""

from __future__ import annotations

import pytest

from meshpy.model.tls import ChainMatch
from meshpy.routing.chains import ChainSelector, Facts, duplicate_matches


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "destination": "10.0.0.1",
        "destination_port": 443,
        "source": "10.1.2.3",
        "source_port": 40000,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_server_names_exact_before_the_longest_wildcard() -> None:
    sel = ChainSelector(
        [
            ChainMatch(server_names=("*.example.com",)),
            ChainMatch(server_names=("a.example.com",)),
            ChainMatch(server_names=("*.a.example.com",)),
            ChainMatch(),
        ]
    )
    assert sel.select(facts(server_name="a.example.com")) == 1
    assert sel.select(facts(server_name="x.a.example.com")) == 2
    assert sel.select(facts(server_name="b.example.com")) == 0
    assert sel.select(facts(server_name="other.org")) == 3
    assert sel.select(facts()) == 3
    assert sel.needs_hello


def test_an_earlier_criterion_wins_over_a_later_one() -> None:
    # The destination port is decided first: a chain for port 443 beats one naming the SNI on any port.
    sel = ChainSelector([ChainMatch(server_names=("a.example.com",)), ChainMatch(destination_port=443)])
    assert sel.select(facts(server_name="a.example.com")) == 1
    assert sel.select(facts(server_name="a.example.com", destination_port=8443)) == 0


def test_no_fallback_once_a_criterion_narrowed_the_chains() -> None:
    sel = ChainSelector([ChainMatch(destination_port=443, server_names=("a.example.com",)), ChainMatch()])
    assert sel.select(facts(server_name="b.example.com")) is None  # as Envoy: closed


def test_the_default_chain_serves_what_nothing_matches() -> None:
    sel = ChainSelector(
        [ChainMatch(destination_port=443, server_names=("a.example.com",)), ChainMatch()], default_last=True
    )
    assert sel.select(facts(server_name="b.example.com")) == 1
    assert sel.select(facts(server_name="a.example.com")) == 0


def test_transport_and_application_protocols() -> None:
    sel = ChainSelector(
        [
            ChainMatch(transport_protocol="tls", application_protocols=("h2",)),
            ChainMatch(transport_protocol="tls"),
            ChainMatch(transport_protocol="raw_buffer"),
        ]
    )
    assert sel.select(facts(transport_protocol="tls", application_protocols=("h2", "http/1.1"))) == 0
    assert sel.select(facts(transport_protocol="tls", application_protocols=("http/1.1",))) == 1
    assert sel.select(facts()) == 2


@pytest.mark.parametrize(
    ("source", "want"), [("10.1.2.3", 1), ("10.9.9.9", 0), ("192.168.0.1", 2), ("::ffff:10.1.2.3", 1)]
)
def test_source_prefixes_longest_first(source: str, want: int) -> None:
    sel = ChainSelector(
        [
            ChainMatch(source_prefix_ranges=("10.0.0.0/8",)),
            ChainMatch(source_prefix_ranges=("10.1.0.0/16",)),
            ChainMatch(),
        ]
    )
    assert sel.select(facts(source=source)) == want


def test_destination_prefix_and_source_port() -> None:
    sel = ChainSelector(
        [
            ChainMatch(prefix_ranges=("10.0.0.0/24",), source_ports=(40000,)),
            ChainMatch(prefix_ranges=("10.0.0.0/24",)),
        ]
    )
    assert sel.select(facts()) == 0
    assert sel.select(facts(source_port=1)) == 1
    assert sel.select(facts(destination="10.0.1.1")) is None


def test_duplicates_are_found_value_by_value() -> None:
    assert duplicate_matches([ChainMatch(server_names=("a", "b")), ChainMatch(server_names=("c", "B"))]) == [
        (0, 1)
    ]
    assert duplicate_matches([ChainMatch(), ChainMatch(transport_protocol="tls")]) == []
    assert duplicate_matches([ChainMatch(), ChainMatch()]) == [(0, 1)]
