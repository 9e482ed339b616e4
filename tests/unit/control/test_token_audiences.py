"""Audience-bound service-account tokens: `meshpy control --token-audiences`, and the TokenReviewer that
asks the Kubernetes API for them and refuses a token made for another audience, for a sidecar's CSR and
an Envoy node's ADS stream alike.

The fake API server (tests/kubeapi.py) answers audiences as the real one does: a token carries the
audiences it was made for; a review names the audiences it wants (none: the API server's own);
`status.audiences` is the intersection, and an empty one is `authenticated: false`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubeapi import API_AUDIENCE, FakeKubeApi, write_kubeconfig

from control import ca_cli
from control.ca import CertificateAuthority
from control.ca_auth import Caller, TokenReviewer
from control.ca_files import self_signed_root
from control.node_identity import NodeIdentities
from control.sources.kubernetes import api_client
from meshpy.cli import _parser
from meshpy.identity.spiffe import SpiffeId

MESH_TOKEN = "projected-token-for-the-mesh"  # audience meshpy-ca, as meshpy inject's volume asks
API_TOKEN = "the-pods-default-api-token"  # audience the API server's: what every pod has mounted


@dataclass
class Kube:
    fake: FakeKubeApi
    api: Any  # the control plane's Kubernetes client


@pytest_asyncio.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    fake = await FakeKubeApi().start()
    fake.add_token(MESH_TOKEN, "shop", "orders", ["meshpy-ca"])
    fake.add_token(API_TOKEN, "shop", "orders", [API_AUDIENCE])
    api = await api_client(str(write_kubeconfig(tmp_path / "kubeconfig", fake.port)))
    try:
        yield Kube(fake, api)
    finally:
        await api.close()
        await fake.stop()


def control_options(*argv: str) -> ca_cli.CaOptions:
    return ca_cli.options(_parser().parse_args(["control", *argv]))


def test_the_flag_defaults_to_the_audience_meshpy_inject_asks_for() -> None:
    from meshpy.sidecar.inject_pod import token_volume

    assert control_options().token_audiences == ("meshpy-ca",) == ca_cli.CaOptions().token_audiences
    (token, _) = token_volume()["projected"]["sources"]
    assert token["serviceAccountToken"]["audience"] in control_options().token_audiences
    assert control_options("--token-audiences", " meshpy-ca, istio-ca,meshpy-ca,").token_audiences == (
        "meshpy-ca", "istio-ca")
    assert control_options("--token-audiences", "").token_audiences == ()
    with pytest.raises(ValueError, match="--token-audiences: 'a b' has a space in it"):
        control_options("--token-audiences", "a b,c")


async def test_only_a_token_made_for_the_mesh_gets_an_identity(kube: Kube) -> None:
    reviewer = TokenReviewer(kube.api, control_options().token_audiences, timeout=2)
    assert await reviewer.authenticate(MESH_TOKEN) == Caller("shop", "orders", via="TokenReview")
    # The pod's API token is the pod's too, but not made for the mesh: no certificate for it.
    assert await reviewer.authenticate(API_TOKEN) is None
    assert [r["audiences"] for r in kube.fake.reviews] == [["meshpy-ca"], ["meshpy-ca"]]


async def test_without_audiences_the_api_servers_tokens_pass_and_the_mesh_s_do_not(kube: Kube) -> None:
    reviewer = TokenReviewer(kube.api, control_options("--token-audiences", "").token_audiences, timeout=2)
    assert await reviewer.authenticate(API_TOKEN) == Caller("shop", "orders", via="TokenReview")
    assert await reviewer.authenticate(MESH_TOKEN) is None
    assert all(r.get("audiences") is None for r in kube.fake.reviews)  # none asked: the API server's own


async def test_an_answer_for_another_audience_is_refused_here_too(kube: Kube) -> None:
    """An API server that ignored spec.audiences vouches for the token as an API token: not enough."""
    kube.fake.ignores_audiences = True
    reviewer = TokenReviewer(kube.api, ("meshpy-ca",), timeout=2)
    assert await reviewer.authenticate(API_TOKEN) is None
    assert await TokenReviewer(kube.api, (), timeout=2).authenticate(API_TOKEN) is not None


async def test_the_certificate_service_and_envoy_nodes_ask_for_the_same_audiences(kube: Kube) -> None:
    ca = CertificateAuthority(self_signed_root("cluster.local"))
    service = ca_cli.identity_service(ca, control_options(), kube.api)
    assert await service.authenticator.authenticate(API_TOKEN) is None
    # An Envoy node's ADS stream proves its identity with the same authenticator (control/ca_plane.py).
    nodes = NodeIdentities(ca, service.authenticator)
    assert await nodes.identify([("authorization", f"Bearer {API_TOKEN}")], "envoy-1") is None
    assert await nodes.identify([("authorization", f"Bearer {MESH_TOKEN}")], "envoy-1") == SpiffeId(
        "cluster.local", "shop", "orders")
    assert [r["audiences"] for r in kube.fake.reviews] == [["meshpy-ca"]] * 3
