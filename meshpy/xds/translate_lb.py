"""Envoy's load-balancing settings beyond the policy's name -> the model.

A cluster's `common_lb_config` (panic threshold, locality-weighted or zone-aware balancing), its typed
`load_balancing_policy` (the first policy of the list that Envoy would use, which must be one meshpy
has), and what a ClusterLoadAssignment says per group of endpoints (priority, locality and its weight,
the overprovisioning factor) and per endpoint (hostname, health_check_config).

As Envoy: a typed policy makes lb_policy and the *_lb_config fields ignored and brings its own
locality settings (common_lb_config's may not be given beside it); the panic threshold comes from
common_lb_config either way. Settings that would change behaviour and that meshpy lacks are issues
naming them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2

from meshpy.model.endpoints import (
    DEFAULT_GROUP,
    DEFAULT_LOCALITY_BALANCING,
    DEFAULT_OVERPROVISIONING,
    EndpointGroup,
    HealthTarget,
    Locality,
    LocalityBalancing,
    ZoneAware,
)
from meshpy.model.types import DEFAULT_LB, HASHED_POLICIES, LbPolicy, LoadBalancing
from meshpy.xds import translate_policies
from meshpy.xds.translate_base import UNSUPPORTED, Issues, child, item, socket_address, unpack, wrapped

_PREFIX = "envoy.extensions.load_balancing_policies."
_TYPED: dict[str, tuple[LbPolicy, Any]] = {
    f"{_PREFIX}round_robin.v3.RoundRobin": ("round_robin", round_robin_pb2.RoundRobin),
    f"{_PREFIX}least_request.v3.LeastRequest": ("least_request", least_request_pb2.LeastRequest),
    f"{_PREFIX}random.v3.Random": ("random", random_pb2.Random),
    f"{_PREFIX}ring_hash.v3.RingHash": ("ring_hash", ring_hash_pb2.RingHash),
    f"{_PREFIX}maglev.v3.Maglev": ("maglev", maglev_pb2.Maglev),
}
CLUSTER_PROVIDED = f"{_PREFIX}cluster_provided.v3.ClusterProvided"
# update_merge_window only batches host updates for CPU's sake (meshpy applies each at once; the
# outcome is the same once the window has passed).
_COMMON = frozenset({"healthy_panic_threshold", "zone_aware_lb_config", "locality_weighted_lb_config",
                     "update_merge_window"})
_PARTIAL = ("zone_aware_lb_config", "locality_weighted_lb_config", "consistent_hashing_lb_config")
_NOT_HASHED = "does not apply to a hashing policy in meshpy (ring_hash, maglev)"


def cluster_balancing(issues: Issues, msg: Any, path: str) -> LoadBalancing:
    """A Cluster's balancing: its typed load_balancing_policy if set, else lb_policy and the
    *_lb_config fields; with common_lb_config's settings either way."""
    common = msg.common_lb_config if msg.HasField("common_lb_config") else None
    common_at = child(path, "common_lb_config")
    if common is not None:
        issues.fields(common, common_at, _COMMON)
    threshold = _percent(issues, common, "healthy_panic_threshold", common_at, 50.0)
    if msg.HasField("load_balancing_policy"):
        lb = _typed(issues, msg.load_balancing_policy, child(path, "load_balancing_policy"))
        partial = [f for f in _PARTIAL if common is not None and common.HasField(f)]
        if partial:
            issues.add(common_at, f"load_balancing_policy cannot be combined with {', '.join(partial)} of "
                                  "common_lb_config (Envoy's rule)")
    else:
        lb = translate_policies.load_balancing(issues, msg, path)
        if common is not None:
            lb = replace(lb, locality=_locality_config(issues, common, common_at, lb.policy, legacy=True))
    if threshold != DEFAULT_LOCALITY_BALANCING.panic_threshold:
        lb = replace(lb, locality=replace(lb.locality, panic_threshold=threshold))
    return lb


def cluster_provided(msg: Any) -> bool:
    """Whether a typed load_balancing_policy chooses Envoy's cluster_provided (ORIGINAL_DST's)."""
    if not msg.HasField("load_balancing_policy"):
        return False
    for policy in msg.load_balancing_policy.policies:
        type_name: str = policy.typed_extension_config.typed_config.TypeName()
        if type_name.startswith(_PREFIX):  # the first policy Envoy knows is the one it uses
            return type_name == CLUSTER_PROVIDED
    return False


def _typed(issues: Issues, msg: Any, path: str) -> LoadBalancing:
    issues.fields(msg, path, {"policies"})
    for i, policy in enumerate(msg.policies):
        at = item(child(path, "policies"), i)
        issues.fields(policy, at, {"typed_extension_config"})
        ext, ext_at = policy.typed_extension_config, child(at, "typed_extension_config")
        issues.fields(ext, ext_at, {"name", "typed_config"})
        type_name = ext.typed_config.TypeName()
        if type_name == CLUSTER_PROVIDED:
            return DEFAULT_LB  # (the caller checks that the cluster is ORIGINAL_DST)
        if type_name in _TYPED:
            policy_name, cls = _TYPED[type_name]
            config = unpack(issues, ext.typed_config, child(ext_at, "typed_config"), {type_name: cls})
            if config is None:
                return DEFAULT_LB
            return _policy(issues, policy_name, config, child(ext_at, "typed_config"))
        if type_name.startswith(_PREFIX):
            # Envoy has this one and would use it: meshpy must not fall through to a later one.
            issues.add(child(ext_at, "typed_config"), f"{type_name} is {UNSUPPORTED}")
            return DEFAULT_LB
        # Envoy skips a policy it has no factory for and tries the next one.
    issues.add(path, "no load balancing policy of the list is supported (Envoy: \"didn't find a registered "
                     "load balancer factory implementation\")")
    return DEFAULT_LB


_POLICY_FIELDS: dict[LbPolicy, frozenset[str]] = {
    "round_robin": frozenset({"slow_start_config", "locality_lb_config"}),
    "least_request": frozenset({"choice_count", "slow_start_config", "locality_lb_config"}),
    "random": frozenset({"locality_lb_config"}),
    # hash_function only places hosts on the ring (see translate_policies.load_balancing)
    "ring_hash": frozenset({"hash_function", "minimum_ring_size", "maximum_ring_size"}),
    "maglev": frozenset({"table_size"}),
}


def _policy(issues: Issues, name: LbPolicy, c: Any, path: str) -> LoadBalancing:
    issues.fields(c, path, _POLICY_FIELDS[name])
    d = DEFAULT_LB
    lb = LoadBalancing(policy=name)
    if name in ("round_robin", "least_request"):
        lb = replace(lb, slow_start=translate_policies._slow_start(issues, c, path))
    if name == "least_request":
        lb = replace(lb, choice_count=wrapped(c, "choice_count", d.choice_count))
        if lb.choice_count < 2:
            issues.add(child(path, "choice_count"), "must be at least 2")
    if name == "ring_hash":
        ring = wrapped(c, "minimum_ring_size", d.ring_size)
        most = wrapped(c, "maximum_ring_size", 8 * 1024 * 1024)
        if ring > most:
            issues.add(path, f"minimum_ring_size ({ring}) > maximum_ring_size ({most})")
        lb = replace(lb, ring_size=ring)
    if name == "maglev":
        lb = replace(lb, table_size=wrapped(c, "table_size", d.table_size))
    if c.DESCRIPTOR.fields_by_name.get("locality_lb_config") is not None and c.HasField("locality_lb_config"):
        lb = replace(lb, locality=_locality_config(issues, c.locality_lb_config,
                                                   child(path, "locality_lb_config"), name, legacy=False))
    return lb


def _locality_config(issues: Issues, msg: Any, path: str, policy: LbPolicy,
                     legacy: bool) -> LocalityBalancing:
    """common_lb_config's (legacy) or a typed policy's LocalityLbConfig: zone-aware or locality-weighted."""
    if not legacy:
        issues.fields(msg, path, {"zone_aware_lb_config", "locality_weighted_lb_config"})
    if msg.HasField("locality_weighted_lb_config"):
        at = child(path, "locality_weighted_lb_config")
        issues.fields(msg.locality_weighted_lb_config, at, ())
        if policy in HASHED_POLICIES:
            issues.add(at, _NOT_HASHED)
        return replace(DEFAULT_LOCALITY_BALANCING, locality_weighted=True)
    if not msg.HasField("zone_aware_lb_config"):
        return DEFAULT_LOCALITY_BALANCING
    z, at = msg.zone_aware_lb_config, child(path, "zone_aware_lb_config")
    newer = () if legacy else ("force_locality_direct_routing",)
    issues.fields(z, at, {"routing_enabled", "min_cluster_size", "fail_traffic_on_panic", *newer})
    if policy in HASHED_POLICIES:
        issues.add(at, _NOT_HASHED)
    d = ZoneAware()
    zone = ZoneAware(
        routing_enabled=_percent(issues, z, "routing_enabled", at, d.routing_enabled),
        min_cluster_size=wrapped(z, "min_cluster_size", d.min_cluster_size),
        fail_traffic_on_panic=z.fail_traffic_on_panic,
        force_locality_direct_routing=not legacy and z.force_locality_direct_routing,
    )
    return replace(DEFAULT_LOCALITY_BALANCING, zone_aware=zone)


def _percent(issues: Issues, msg: Any, name: str, path: str, default: float) -> float:
    """An envoy.type.v3.Percent field, rounded to a whole percent as Envoy reads these."""
    if msg is None or not msg.HasField(name):
        return default
    value = float(getattr(msg, name).value)
    if not 0.0 <= value <= 100.0:
        issues.add(child(path, name), f"must be from 0 to 100, got {value}")
        return default
    return float(round(value))


def assignment_overprovisioning(issues: Issues, cla: Any, path: str) -> int:
    """A ClusterLoadAssignment's policy: its overprovisioning factor (the rest is refused)."""
    if not cla.HasField("policy"):
        return DEFAULT_OVERPROVISIONING
    policy, at = cla.policy, child(path, "policy")
    issues.fields(policy, at, {"overprovisioning_factor"})
    factor = wrapped(policy, "overprovisioning_factor", DEFAULT_OVERPROVISIONING)
    if factor < 1:
        issues.add(child(at, "overprovisioning_factor"), "must be greater than 0")
        return DEFAULT_OVERPROVISIONING
    return int(factor)


def endpoint_group(issues: Issues, msg: Any, path: str, overprovisioning: int) -> EndpointGroup:
    """A LocalityLbEndpoints' priority, locality and weight, as shared by its endpoints."""
    weight = wrapped(msg, "load_balancing_weight", 0)
    if msg.HasField("load_balancing_weight") and weight < 1:
        issues.add(child(path, "load_balancing_weight"), "must be at least 1")
    locality = Locality()
    if msg.HasField("locality"):
        loc = msg.locality
        issues.fields(loc, child(path, "locality"), {"region", "zone", "sub_zone"})
        locality = Locality(region=loc.region, zone=loc.zone, sub_zone=loc.sub_zone)
    group = EndpointGroup(priority=msg.priority, locality=locality, weight=weight,
                          overprovisioning=overprovisioning)
    return DEFAULT_GROUP if group == DEFAULT_GROUP else group


def endpoint_details(issues: Issues, msg: Any, path: str) -> tuple[str, HealthTarget | None]:
    """An Endpoint's hostname and health_check_config."""
    if not msg.HasField("health_check_config"):
        return msg.hostname, None
    hc, at = msg.health_check_config, child(path, "health_check_config")
    issues.fields(hc, at, {"port_value", "hostname", "address", "disable_active_health_check"})
    if hc.port_value > 65535:
        issues.add(child(at, "port_value"), f"must be at most 65535, got {hc.port_value}")
    ip, pipe, port = "", "", hc.port_value
    if hc.HasField("address"):
        # Envoy: the address as given (an IP address, or a pipe), with port_value's port if that is set
        address = socket_address(issues, hc.address, child(at, "address"))
        ip, pipe, port = address.host, address.path, port or address.port
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                issues.add(child(at, "address.socket_address.address"), f"must be an IP address, got {ip!r}")
    return msg.hostname, HealthTarget(port=port, ip=ip, path=pipe, hostname=hc.hostname,
                                      disabled=hc.disable_active_health_check)
