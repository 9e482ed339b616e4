"""Snapshots made like another (the per-workload sets: every node's resources and one listener more):
the same versions as made from scratch, what they share reused, and the consistency check still finding
what the new resources break."""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2
from test_ads import resources

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, NodeSelector, check, make_snapshot


def with_listener(base: dict[str, dict[str, Any]], name: str, rds: str) -> dict[str, dict[str, Any]]:
    packed = any_pb2.Any()
    packed.Pack(hcm_pb2.HttpConnectionManager(stat_prefix=name, rds=hcm_pb2.Rds(route_config_name=rds)))
    lis = listener_pb2.Listener(name=name)
    lis.filter_chains.add().filters.add(name="hcm", typed_config=packed)
    return {**base, LISTENER: {**base[LISTENER], name: lis}}


def test_a_snapshot_made_like_another_is_the_one_made_from_scratch() -> None:
    every = resources()
    shared = make_snapshot(every)
    more = with_listener(every, "virtualInbound", "local")
    like, scratch = make_snapshot(more, shared), make_snapshot(more)
    assert (like.version, like.type_versions, like.versions) == (scratch.version, scratch.type_versions,
                                                                 scratch.versions)
    assert {t: {n: a.value for n, a in p.items()} for t, p in like.packed.items()} == \
        {t: {n: a.value for n, a in p.items()} for t, p in scratch.packed.items()}
    assert like.same_types == {CLUSTER, ENDPOINT, ROUTE, *(set(like.type_versions) - set(every))}
    assert like.packed[LISTENER]["l1"] is shared.packed[LISTENER]["l1"]  # not packed again
    assert like.version != shared.version
    # Equal messages that are other objects are packed again (the test is identity, which is cheap).
    copied = {t: {n: type(m).FromString(m.SerializeToString()) for n, m in r.items()}
              for t, r in more.items()}
    again = make_snapshot(copied, shared)
    assert again.same_types == set(again.type_versions) - set(every) and again.version == like.version


def test_a_snapshot_made_like_a_good_one_is_checked_for_what_it_adds() -> None:
    shared = make_snapshot(resources())
    assert check(shared) == []
    broken = make_snapshot(with_listener(resources(), "virtualInbound", "nowhere"), shared)
    assert check(broken) == ["Listener 'virtualInbound': no RouteConfiguration 'nowhere'"]
    # Like one that is not good itself: checked in full, the shared problems named too.
    bad = resources(route_cluster="gone")
    bad_shared = make_snapshot(bad)
    worse = make_snapshot(with_listener(bad, "virtualInbound", "nowhere"), bad_shared)
    assert sorted(check(worse)) == [
        "Listener 'virtualInbound': no RouteConfiguration 'nowhere'",
        "RouteConfiguration 'local' virtual host 'all' route 0: cluster 'gone' does not exist"]


def test_a_selector_with_a_namespace_matches_the_node_id_suffix() -> None:
    selector = NodeSelector(cluster="orders", namespace="shop")
    assert selector.matches("orders", {}, "orders-5f7d.shop")
    assert selector.matches("orders", {}, "my.dotted.pod.shop")
    assert not selector.matches("orders", {}, "orders-5f7d.staging")
    assert not selector.matches("orders", {}, "shop")  # no namespace in the id at all
    assert not selector.matches("payments", {}, "orders-5f7d.shop")
    assert NodeSelector(cluster="orders").matches("orders", {}, "anything")
