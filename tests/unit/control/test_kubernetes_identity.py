"""The identity callers expect of a Service called over mutual TLS: the service accounts of the pods behind
its ready endpoints (read back by meshpy's own translator), the annotation that overrides them, the
endpoints held back until their pod is known, and what of a Pod the source keeps (so that a pod's status
events make no new version)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeobjects import RECORDED_POD, RECORDED_SLICE, endpoint, endpoint_slice, pod, restarted, service

from control.cache import CLUSTER, ENDPOINT
from control.sources.kubernetes_identity import WAITING, PodIndex, annotated_accounts, pod_shape
from control.sources.kubernetes_resources import Translation, translate
from meshpy.xds.translate import cluster_from_proto, endpoints_from_cla

ORDERS = "outbound|8080||orders.shop.svc.cluster.local"
TRUST = "mesh.example"


def spiffe(account: str, namespace: str = "shop") -> str:
    return f"spiffe://{TRUST}/ns/{namespace}/sa/{account}"


def orders(mode: str = "strict", accounts: str | None = None) -> dict[str, Any]:
    svc = service("orders")
    svc["metadata"]["annotations"]["security.meshpy.io/mtls"] = mode
    if accounts is not None:
        svc["metadata"]["annotations"]["security.meshpy.io/serviceAccount"] = accounts
    return svc


def run(svc: dict[str, Any], endpoints: list[dict[str, Any]], pods: list[dict[str, Any]] | None,
        slice_namespace: str = "shop") -> Translation:
    return translate([svc], [endpoint_slice("orders", endpoints, namespace=slice_namespace)], "cluster.local",
                     trust_domain=TRUST, pods=pods)


def expected(out: Translation) -> list[str] | None:
    """The SPIFFE IDs the caller accepts ([] any the mesh signed); None: called in the clear."""
    model = cluster_from_proto(out.resources[CLUSTER][ORDERS], "c", {ORDERS: ()})
    if model.tls is None:
        return None
    assert model.tls.certificate is not None and model.tls.certificate.secret == "default"
    assert model.tls.validation is not None and model.tls.validation.ca_secret == "ROOTCA"
    return [s.match.value for s in model.tls.validation.san]


def hosts(out: Translation) -> list[str]:
    return [str(e.address.host) for e in endpoints_from_cla(out.resources[ENDPOINT][ORDERS])]


PODS = [pod("orders-1", "10.0.0.1", "orders"), pod("orders-2", "10.0.0.2", "orders"),
        pod("orders-3", "10.0.0.3", "orders-canary"), pod("batch-1", "10.0.0.9", "batch")]
READY = [endpoint("10.0.0.1", pod="orders-1"), endpoint("10.0.0.2", pod="orders-2"),
         endpoint("10.0.0.3", pod="orders-3")]


@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_the_server_must_be_one_of_the_service_accounts_of_the_ready_endpoints_pods(mode: str) -> None:
    # orders-9 is not ready: its account is not one a call can reach, so not one to accept either.
    endpoints = [*READY, endpoint("10.0.0.4", ready=False, pod="orders-9")]
    out = run(orders(mode), endpoints, [*PODS, pod("orders-9", "10.0.0.4", "intruder")])
    assert expected(out) == [spiffe("orders"), spiffe("orders-canary")]  # sorted, each once
    assert hosts(out) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_the_recorded_pod_and_a_pod_without_an_account_the_default() -> None:
    out = run(orders(), [endpoint("10.244.1.17")], [RECORDED_POD])  # the recorded targetRef
    assert expected(out) == [spiffe("orders")]
    out = run(orders(), [endpoint("10.0.0.1", pod="orders-1")], [pod("orders-1", "10.0.0.1", None)])
    assert expected(out) == [spiffe("default")]


def test_the_annotation_overrides_the_pods_with_one_account_or_several() -> None:
    assert expected(run(orders(accounts="orders-sa"), READY, PODS)) == [spiffe("orders-sa")]
    out = run(orders(accounts=" web, orders ,web,"), READY, PODS)
    assert expected(out) == [spiffe("orders"), spiffe("web")]
    # The annotation knows who answers: an endpoint whose pod is unknown is served at once.
    out = run(orders(accounts="orders"), [endpoint("10.0.0.7", pod="orders-new")], PODS)
    assert hosts(out) == ["10.0.0.7"] and expected(out) == [spiffe("orders")]
    assert annotated_accounts(orders(accounts=" , ")) is None  # says nothing: the pods decide


def test_the_expected_identities_follow_the_pods() -> None:
    before = run(orders(), READY, PODS)
    # A new pod with an account already expected: new endpoints, the same cluster.
    fifth = pod("orders-5", "10.0.0.5", "orders")
    grown = run(orders(), [*READY, endpoint("10.0.0.5", pod="orders-5")], [*PODS, fifth])
    assert grown.resources[CLUSTER] == before.resources[CLUSTER]
    assert grown.resources[ENDPOINT] != before.resources[ENDPOINT]
    # The canary goes: its account is no longer accepted.
    shrunk = run(orders(), READY[:2], PODS)
    assert expected(shrunk) == [spiffe("orders")]
    # A pod's object now names another account (a pod is replaced under the same name).
    moved = run(orders(), READY, [pod("orders-1", "10.0.0.1", "payments"), *PODS[1:]])
    assert expected(moved) == [spiffe("orders"), spiffe("orders-canary"), spiffe("payments")]


def test_an_endpoint_whose_pod_is_not_known_yet_is_held_back_until_it_is() -> None:
    new = endpoint("10.0.0.6", pod="orders-6")
    out = run(orders(), [*READY, new], PODS)
    assert hosts(out) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert expected(out) == [spiffe("orders"), spiffe("orders-canary")]
    out = run(orders(), [*READY, new], [*PODS, pod("orders-6", "10.0.0.6", "orders-v2")])
    assert "10.0.0.6" in hosts(out) and spiffe("orders-v2") in (expected(out) or [])
    # Not by its address: that would be another pod's account (one that has the address now).
    out = run(orders(), [new], [pod("squatter", "10.0.0.6", "squatter")])
    assert hosts(out) == [] and expected(out) == []


def test_before_any_identity_is_known_any_the_mesh_signed_is_accepted() -> None:
    assert expected(run(orders(), [], PODS)) == []  # no endpoint yet
    # A hand-made slice naming no pod, at an address no pod has: nothing says who answers there.
    bare = endpoint("192.0.2.10")
    del bare["targetRef"]
    out = run(orders(), [bare], PODS)
    assert hosts(out) == ["192.0.2.10"] and expected(out) == []


def test_an_endpoint_naming_no_pod_is_found_by_its_address_in_the_slices_namespace() -> None:
    bare = endpoint("10.0.0.1")
    del bare["targetRef"]
    assert expected(run(orders(), [bare], PODS)) == [spiffe("orders")]
    other_namespace = [pod("orders-1", "10.0.0.1", "orders", namespace="staging")]
    assert expected(run(orders(), [bare], other_namespace)) == []
    # An address a host-network pod shares with its node, or a finished pod had, names nobody; one that
    # two accounts claim names neither.
    host = pod("agent", "10.0.0.1", "node-agent")
    host["spec"]["hostNetwork"] = True
    done = pod("job", "10.0.0.1", "batch", phase="Succeeded")
    assert expected(run(orders(), [bare], [host, done])) == []
    assert expected(run(orders(), [bare], [PODS[0], pod("new", "10.0.0.1", "web")])) == []


def test_services_without_mutual_tls_are_served_as_before_pods_or_not() -> None:
    plain, unknown = service("orders"), [endpoint("10.0.0.6", pod="orders-6")]
    out = run(plain, unknown, PODS)
    assert expected(out) is None and hosts(out) == ["10.0.0.6"]  # no pod needed where nobody is checked
    assert expected(run(orders("disable"), unknown, PODS)) is None
    # Offline (no pods known at all, as `meshpy validate --kubernetes` is): the annotation or any.
    out = run(orders(), unknown, None)
    assert hosts(out) == ["10.0.0.6"] and expected(out) == []


def test_a_pods_status_changes_nothing_the_source_keeps() -> None:
    again = restarted(PODS[0])
    assert again != PODS[0] and pod_shape(again) == pod_shape(PODS[0])
    assert pod_shape(PODS[0]) == {"metadata": {"namespace": "shop", "name": "orders-1"},
                                  "serviceAccount": "orders", "ips": ["10.0.0.1"]}
    assert run(orders(), READY, [again, *PODS[1:]]) == run(orders(), READY, PODS)
    # What it keeps does change: the account, and the addresses (a finished pod answers for none).
    assert pod_shape(pod("orders-1", "10.0.0.1", "web")) != pod_shape(PODS[0])
    assert pod_shape(pod("orders-1", "10.0.0.1", "orders", phase="Failed"))["ips"] == []
    dual = pod("orders-1", "10.0.0.1", "orders")
    dual["status"]["podIPs"] = [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]
    assert pod_shape(dual)["ips"] == ["10.0.0.1", "fd00::1"]


def test_the_index_reads_the_shapes_the_source_keeps_as_it_reads_whole_pods() -> None:
    shaped = [pod_shape(p) for p in PODS]
    assert run(orders(), READY, shaped) == run(orders(), READY, PODS)
    index = PodIndex(shaped)
    assert index.owner(RECORDED_SLICE["endpoints"][0], "shop") is WAITING  # the recorded pod: unknown
    assert index.owner(READY[2], "shop") == ("shop", "orders-canary")
