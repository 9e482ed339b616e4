"""Envoy's priority, locality and balancing settings as the translator reads them into the model
(meshpy.xds.translate_lb), and the ones it refuses by name."""

from __future__ import annotations

from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.endpoints import EndpointGroup, HealthTarget, Locality, LocalityBalancing, ZoneAware
from meshpy.model.types import Cluster, Config, SlowStart
from meshpy.xds.translate import load_bootstrap

POLICIES = "type.googleapis.com/envoy.extensions.load_balancing_policies."
LR = POLICIES + "least_request.v3.LeastRequest"
RR = POLICIES + "round_robin.v3.RoundRobin"
CSWRR = POLICIES + "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"
CHECK = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
         "tcp_health_check": {}}


def ep(port: int, **extra: Any) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {"endpoint": {"address": address, **extra}}


def assignment(*groups: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"load_assignment": {"cluster_name": "c", "endpoints": list(groups), **more}}


def policy(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"typed_extension_config": {"name": name, "typed_config": config}}


def bootstrap(cluster: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"static_resources": {"clusters": [{"name": "c", **cluster}]}, **top}


def load(cluster: dict[str, Any], **top: Any) -> Config:
    return load_bootstrap(bootstrap(cluster, **top))


def one(cluster: dict[str, Any]) -> Cluster:
    return load(cluster).clusters[0]


def refused(cluster: dict[str, Any], **top: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(cluster, **top)
    return [f"{i.path}: {i.reason}" for i in err.value.issues]


def test_groups_hostnames_and_health_targets() -> None:
    elsewhere = {"address": {"socket_address": {"address": "10.0.0.9", "port_value": 7}},
                 "disable_active_health_check": True}
    c = one(assignment(
        {"locality": {"region": "r", "zone": "a"}, "load_balancing_weight": 2, "lb_endpoints": [
            ep(1, hostname="one.example", health_check_config={"port_value": 9, "hostname": "hc.example"})]},
        {"priority": 1, "lb_endpoints": [ep(2, health_check_config=elsewhere)]},
        policy={"overprovisioning_factor": 200}))
    first, second = c.endpoints
    zone_a = Locality(region="r", zone="a")
    assert first.group == EndpointGroup(locality=zone_a, weight=2, overprovisioning=200)
    assert first.hostname == "one.example"
    assert first.health_target == HealthTarget(port=9, hostname="hc.example")
    assert second.group == EndpointGroup(priority=1, overprovisioning=200)
    assert second.health_target == HealthTarget(port=7, ip="10.0.0.9", disabled=True)


def test_common_lb_config() -> None:
    zone = {"routing_enabled": {"value": 50}, "min_cluster_size": 2, "fail_traffic_on_panic": True}
    c = one({"common_lb_config": {"healthy_panic_threshold": {"value": 30.4}, "update_merge_window": "0s",
                                  "zone_aware_lb_config": zone}})
    assert c.load_balancing.locality == LocalityBalancing(
        panic_threshold=30.0, zone_aware=ZoneAware(routing_enabled=50.0, min_cluster_size=2,
                                                   fail_traffic_on_panic=True))
    weighted = one({"common_lb_config": {"locality_weighted_lb_config": {}}})
    assert weighted.load_balancing.locality == LocalityBalancing(locality_weighted=True)


def test_typed_policy_first_known_one_wins_and_ignores_lb_policy() -> None:
    zone = {"min_cluster_size": "1", "force_locality_direct_routing": True}
    least_request = {"@type": LR, "choice_count": 3, "slow_start_config": {"slow_start_window": "10s"},
                     "locality_lb_config": {"zone_aware_lb_config": zone}}
    not_a_policy = {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}  # skipped, as Envoy
    policies = {"policies": [policy("unknown", not_a_policy), policy("lr", least_request),
                             policy("rr", {"@type": RR})]}
    c = one({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 64},
             "common_lb_config": {"healthy_panic_threshold": {"value": 10}},
             "load_balancing_policy": policies})
    lb = c.load_balancing
    assert (lb.policy, lb.choice_count, lb.slow_start) == ("least_request", 3, SlowStart(window=10.0))
    assert lb.locality == LocalityBalancing(panic_threshold=10, zone_aware=ZoneAware(
        min_cluster_size=1, force_locality_direct_routing=True))
    # common_lb_config's locality settings may not come beside a typed policy (Envoy's rule)
    both = {"common_lb_config": {"locality_weighted_lb_config": {}}, "load_balancing_policy": policies}
    assert refused(both) == [
        "static_resources.clusters[0].common_lb_config: load_balancing_policy cannot be combined with "
        "locality_weighted_lb_config of common_lb_config (Envoy's rule)"]


def test_a_policy_envoy_would_use_and_meshpy_lacks_is_refused() -> None:
    problems = refused({"load_balancing_policy": {"policies": [policy("w", {"@type": CSWRR}),
                                                               policy("rr", {"@type": RR})]}})
    where = "static_resources.clusters[0].load_balancing_policy.policies[0].typed_extension_config"
    assert problems == [f"{where}.typed_config: {CSWRR.rsplit('/', 1)[1]} is not supported by meshpy"]


@pytest.mark.parametrize(("cluster", "where"), [
    ({"common_lb_config": {"ignore_new_hosts_until_first_hc": True}},
     "common_lb_config.ignore_new_hosts_until_first_hc"),
    ({"common_lb_config": {"close_connections_on_host_set_change": True}},
     "common_lb_config.close_connections_on_host_set_change"),
    ({"lb_policy": "MAGLEV", "common_lb_config": {"locality_weighted_lb_config": {}}},
     "common_lb_config.locality_weighted_lb_config"),
    (assignment(policy={"weighted_priority_health": True}),
     "load_assignment.policy.weighted_priority_health"),
    ({"health_checks": [{**CHECK, "unhealthy_interval": "1s"}]}, "health_checks[0].unhealthy_interval"),
])
def test_what_would_change_behaviour_is_refused_by_name(cluster: dict[str, Any], where: str) -> None:
    assert any(p.startswith(f"static_resources.clusters[0].{where}:") for p in refused(cluster))


def test_no_traffic_intervals() -> None:
    hc = one({"health_checks": [CHECK]}).health_check
    assert hc is not None and (hc.no_traffic_interval, hc.no_traffic_healthy_interval) == (60.0, None)
    # (equal to the interval: None, as meshpy YAML has it)
    quick = {**CHECK, "no_traffic_interval": "1s", "no_traffic_healthy_interval": "5s"}
    hc = one({"health_checks": [quick]}).health_check
    assert hc is not None and (hc.no_traffic_interval, hc.no_traffic_healthy_interval) == (None, 5.0)


def test_local_cluster_and_node_locality() -> None:
    config = load({}, cluster_manager={"local_cluster_name": "c"}, node={"locality": {"zone": "a"}})
    assert (config.process.local_cluster, config.service_locality) == ("c", Locality(zone="a"))
    assert refused({}, cluster_manager={"local_cluster_name": "nope"}) == [
        "cluster_manager.local_cluster_name: local cluster 'nope' must be defined"]
    two = assignment({"priority": 1, "lb_endpoints": [ep(1)]})
    assert refused(two, cluster_manager={"local_cluster_name": "c"}) == [
        "cluster_manager.local_cluster_name: unexpected non-zero priority for local cluster 'c'"]
