"""Key pairs for Envoy nodes, served over SDS: who a stream is (its bearer token), the secrets its
snapshot gains, and renewal at half life."""

from __future__ import annotations

import asyncio

from control.ca import CertificateAuthority
from control.ca_auth import BootstrapTokens
from control.ca_files import self_signed_root
from control.cache import SECRET, make_snapshot
from control.node_identity import NodeIdentities, bearer
from meshpy.identity.spiffe import SpiffeId


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def identities(clock: Clock) -> NodeIdentities:
    ca = CertificateAuthority(self_signed_root("test.local"), trust_domain="test.local", default_ttl=100.0)
    tokens = BootstrapTokens({"orders-token-0123456789": ("shop", "orders")})
    return NodeIdentities(ca, tokens, clock=clock)


def test_bearer() -> None:
    assert bearer([("authorization", "Bearer abc")]) == "abc"
    assert bearer([("Authorization", "bearer  abc ")]) == "abc"
    assert bearer([("authorization", "Basic abc")]) is None
    assert bearer([]) is None and bearer(None) is None
    assert bearer([("authorization", "Bearer a"), ("authorization", "Bearer b")]) is None


def test_identify_by_token() -> None:
    ids = identities(Clock())
    who = asyncio.run(ids.identify([("authorization", "Bearer orders-token-0123456789")], "n"))
    assert who == SpiffeId("test.local", "shop", "orders")
    assert asyncio.run(ids.identify([("authorization", "Bearer nope-nope-nope-nope")], "n")) is None
    assert asyncio.run(ids.identify([], "n")) is None


def test_overlay_and_renewal_at_half_life() -> None:
    clock = Clock()
    ids = identities(clock)
    who = SpiffeId("test.local", "shop", "orders")
    base = make_snapshot({})
    first = ids.overlay(base, who)
    secrets = first.of(SECRET)
    assert set(secrets) == {"default", "ROOTCA"}
    assert ids.overlay(base, who) is first  # made once per pair
    assert "PRIVATE KEY" in secrets["default"].tls_certificate.private_key.inline_string
    assert "BEGIN CERTIFICATE" in secrets["ROOTCA"].validation_context.trusted_ca.inline_string
    assert not ids.due()
    clock.now += 51  # past half of the 100 s lifetime
    assert ids.due()
    second = ids.overlay(base, who)
    assert second.type_versions[SECRET] != first.type_versions[SECRET] and ids.issued == 2
    assert not ids.due()
