"""The Kubernetes source against a Kubernetes API that speaks list and watch over real HTTP (tests/kubeapi):
first in-process (expiring watches, dropped and refused connections, errors, pages, namespaces), then as
the real `meshpy control --kubernetes` process followed by a meshpy proxy that sends requests through to
servers on 127.0.0.x named by EndpointSlices."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from kit import Proxy, eventually, free_port, http, wait_port
from kubeapi import PODS, SERVICES, SLICES, FakeKubeApi, ThreadedKubeApi, write_kubeconfig
from kubeobjects import endpoint, endpoint_slice, pod, restarted, service

from control.cache import CLUSTER, ENDPOINT, LISTENER, NodeSelector
from control.sources import kubernetes_watch
from control.sources.kubernetes import KubernetesCollector, KubernetesSource, api_client
from control.sources.kubernetes_inbound import INBOUND_LISTENER, Workloads, inbound
from control.sources.kubernetes_resources import translate
from control.sources.kubernetes_watch import Backoff

ORDERS = "outbound|8080||orders.shop.svc.cluster.local"
BILLING = "outbound|8080||billing.shop.svc.cluster.local"
Resources = dict[str, dict[str, Any]]


def hosts(resources: Resources, name: str) -> list[str]:
    cla = resources[ENDPOINT][name]
    addresses = [e.endpoint.address.socket_address for group in cla.endpoints for e in group.lb_endpoints]
    return sorted(f"{a.address}:{a.port_value}" for a in addresses)


class World:
    def __init__(self, api: FakeKubeApi, source: KubernetesSource, published: list[Resources],
                 workloads: list[Workloads]) -> None:
        self.api, self.source, self.published, self.workloads = api, source, published, workloads

    @property
    def last(self) -> Resources:
        assert self.published, "nothing published"
        return self.published[-1]

    def expected(self) -> Resources:
        """What the API holds now, translated: the source must converge to exactly this."""
        services, slices = self.api.store[SERVICES].values(), self.api.store[SLICES].values()
        resources = translate(services, slices, "cluster.local", pods=self.api.store[PODS].values()).resources
        resources[CLUSTER].update(inbound(services, slices).clusters)
        return resources

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}")
            await asyncio.sleep(0.02)

    async def converged(self, what: str, timeout: float = 10.0) -> None:
        await self.until(lambda: bool(self.published) and self.last == self.expected(), what, timeout)


async def start_world(tmp_path: Path, namespaces: tuple[str, ...] = ()) -> AsyncIterator[World]:
    api = await FakeKubeApi().start()
    api.apply(SERVICES, service("orders"))
    api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False)]))
    api.apply(SERVICES, service("billing"))
    api.apply(SLICES, endpoint_slice("billing", [endpoint("10.0.1.1")]))
    client = await api_client(str(write_kubeconfig(tmp_path / "kubeconfig", api.port)))
    published: list[Resources] = []
    workloads: list[Workloads] = []

    def publish(resources: Resources, inbound: Workloads) -> None:
        published.append(resources)
        workloads.append(inbound)

    source = KubernetesSource(client, publish, namespaces=namespaces, debounce=0.05,
                              watch_seconds=30, backoff=lambda: Backoff(0.05, 0.4))
    task = asyncio.create_task(source.run())
    world = World(api, source, published, workloads)
    try:
        await world.until(lambda: bool(published), "the first publish")
        yield world
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.close()
        await api.stop()


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in start_world(tmp_path):
        yield w


async def test_initial_list_then_endpoint_and_service_changes(world: World) -> None:
    assert len(world.published) == 1  # one version for both kinds' lists, not one per object
    assert sorted(world.last[CLUSTER]) == [BILLING, ORDERS]
    assert hosts(world.last, ORDERS) == ["10.0.0.1:8080"]  # 10.0.0.2 is not ready
    world.api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.1"), endpoint("10.0.0.2")]))
    both = ["10.0.0.1:8080", "10.0.0.2:8080"]
    await world.until(lambda: hosts(world.last, ORDERS) == both, "an endpoint in")
    world.api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.2")]))
    await world.until(lambda: hosts(world.last, ORDERS) == ["10.0.0.2:8080"], "an endpoint out")
    world.api.delete(SERVICES, "shop", "billing")
    await world.until(lambda: BILLING not in world.last[CLUSTER], "the deleted Service's cluster gone")
    await world.converged("the API's state")
    assert world.source.counters.events == {SERVICES: 1, SLICES: 2}
    assert world.source.counters.resyncs == 0


async def test_a_burst_makes_one_version_and_no_change_makes_none(world: World) -> None:
    before = len(world.published)
    for i in range(30):
        world.api.apply(SLICES, endpoint_slice("orders", [endpoint(f"10.0.2.{j}") for j in range(i + 1)]))
    await world.converged("the burst")
    assert len(world.published) - before <= 2
    before = len(world.published)
    edited = endpoint_slice("orders", [endpoint(f"10.0.2.{j}") for j in range(30)])
    edited["metadata"]["annotations"]["note"] = "nothing that matters to a proxy"
    world.api.apply(SLICES, edited)
    await world.until(lambda: world.source.counters.events[SLICES] == 31, "the event")
    await asyncio.sleep(0.3)
    assert len(world.published) == before


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-410"])
async def test_an_expired_watch_lists_again_and_forgets_what_was_deleted_meanwhile(
        world: World, as_status: bool) -> None:
    world.api.gone_as_status = as_status
    world.api.apply(SLICES, endpoint_slice("billing", [endpoint("10.0.1.2")]))  # the watch is live
    await world.until(lambda: hosts(world.last, BILLING) == ["10.0.1.2:8080"], "a change")
    lists = len(world.api.list_requests(SERVICES))
    world.api.delete_quietly(SERVICES, "shop", "billing")  # no watch hears this one
    if as_status:
        world.api.drop()  # the watch is cut and comes back from its old version: HTTP 410
    else:
        world.api.expire()  # ERROR event, code 410
    await world.until(lambda: BILLING not in world.last[CLUSTER], "the quietly deleted Service gone")
    await world.converged("the API's state")
    assert len(world.api.list_requests(SERVICES)) == lists + 1
    assert world.source.counters.resyncs >= 1


async def test_dropped_and_refused_connections_back_off_and_recover_without_loss(world: World) -> None:
    world.api.drop()  # cut mid-watch
    world.api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.7")]))
    await world.converged("after the drop")
    errors = world.source.counters.errors
    assert errors >= 1
    await world.api.refuse()
    started = time.monotonic()
    world.api.delete(SERVICES, "shop", "billing")  # changes while nobody can list or watch
    world.api.apply(SERVICES, service("payments"))
    world.api.apply(SLICES, endpoint_slice("payments", [endpoint("10.0.3.1")]))
    await world.until(lambda: world.source.counters.errors >= errors + 12, "failed attempts")
    # Twelve failures of three watchers (services, slices, pods): one of them failed four times in a row,
    # after delays of at least half of 0.05 s, 0.1 s and 0.2 s (not a busy loop).
    assert time.monotonic() - started >= 0.025 + 0.05 + 0.1
    await asyncio.sleep(1.0)
    assert world.source.counters.errors <= errors + 12 + 3 * 5  # delays capped at 0.4 s, at least 0.2 s
    assert BILLING in world.last[CLUSTER]  # the last state stands while the API is away
    await world.api.accept()
    await world.converged("after the API is back")
    assert "outbound|8080||payments.shop.svc.cluster.local" in world.last[CLUSTER]


async def test_server_errors_back_off_then_list_again(world: World) -> None:
    world.api.fail_next(500, 503, 500, 503)
    world.api.drop()
    world.api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.9")]))
    await world.converged("after four errors")
    assert world.source.counters.errors >= 4


async def test_lists_come_in_pages_and_a_namespace_is_watched_alone(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes_watch, "LIST_PAGE", 1)
    search = "outbound|8080||search.shop.svc.cluster.local"
    async for w in start_world(tmp_path, namespaces=("shop",)):
        world = w
        world.api.apply(SERVICES, service("orders", namespace="staging"))
        world.api.apply(SERVICES, service("search"))
        await world.until(lambda: search in world.last[CLUSTER], "search")  # noqa: B023 - awaited here
        assert sorted(world.last[CLUSTER]) == [BILLING, ORDERS, search]
        paths = {path for path, _, _ in world.api.requests}
        assert paths == {"/api/v1/namespaces/shop/services", "/api/v1/namespaces/shop/pods",
                         "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"}
        pages = world.api.list_requests(SERVICES)
        assert [q.get("continue") for q in pages] == [None, "1"] and pages[0]["limit"] == "1"
        watch = world.api.watch_requests(SERVICES)[0]
        assert watch["allowWatchBookmarks"].lower() == "true" and watch["timeoutSeconds"] == "30"
        assert {auth for _, _, auth in world.api.requests} == {"Bearer test-token"}


async def test_an_annotated_service_gives_its_workload_an_inbound_listener_that_follows_it(
        world: World) -> None:
    shop = NodeSelector(cluster="orders", namespace="shop")

    def chains() -> list[str]:
        found = world.workloads[-1].get(shop)
        lis = found[LISTENER][INBOUND_LISTENER] if found is not None else None
        return [] if lis is None else sorted(c.name for c in lis.filter_chains)

    assert world.workloads[-1] == {}  # nothing annotated
    orders = service("orders")
    orders["metadata"]["annotations"]["security.meshpy.io/mtls"] = "strict"
    world.api.apply(SERVICES, orders)
    await world.until(lambda: chains() == ["inbound|8080|mtls", "passthrough|mtls"], "a strict listener")
    assert "inbound|8080||" in world.last[CLUSTER]  # the port named in the slice, its cluster every node's
    orders["metadata"]["annotations"]["security.meshpy.io/mtls"] = "permissive"
    world.api.apply(SERVICES, orders)
    await world.until(lambda: chains() == ["inbound|8080|mtls", "inbound|8080|plaintext", "passthrough|mtls",
                                           "passthrough|plaintext"], "a permissive one")
    await world.converged("the API's state, inbound clusters included")
    del orders["metadata"]["annotations"]["security.meshpy.io/mtls"]
    world.api.apply(SERVICES, orders)
    await world.until(lambda: world.workloads[-1] == {}, "no listener without the annotation")


async def test_callers_expect_the_pods_accounts_and_a_pods_status_makes_no_version(world: World) -> None:
    def expected() -> list[str]:
        context = tls_pb2.UpstreamTlsContext()
        world.last[CLUSTER][ORDERS].transport_socket.typed_config.Unpack(context)
        validation = context.common_tls_context.combined_validation_context.default_validation_context
        return [m.matcher.exact for m in validation.match_typed_subject_alt_names]

    orders = service("orders")
    orders["metadata"]["annotations"]["security.meshpy.io/mtls"] = "strict"
    first = pod("orders-1", "10.0.0.1", "orders")
    world.api.apply(PODS, first)
    world.api.apply(SERVICES, orders)
    world.api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.1", pod="orders-1")]))
    await world.until(lambda: expected() == ["spiffe://cluster.local/ns/shop/sa/orders"], "the pod's account")
    # A new pod's endpoint before the pod itself: held back, then in with its account.
    world.api.apply(SLICES, endpoint_slice("orders", [endpoint("10.0.0.1", pod="orders-1"),
                                                      endpoint("10.0.0.2", pod="orders-2")]))
    await world.until(lambda: world.source.counters.events.get(SLICES, 0) >= 2, "the slice's event")
    await asyncio.sleep(0.2)
    assert hosts(world.last, ORDERS) == ["10.0.0.1:8080"]
    world.api.apply(PODS, pod("orders-2", "10.0.0.2", "orders-v2"))
    await world.until(lambda: hosts(world.last, ORDERS) == ["10.0.0.1:8080", "10.0.0.2:8080"], "the pod in")
    assert expected() == [f"spiffe://cluster.local/ns/shop/sa/{sa}" for sa in ("orders", "orders-v2")]
    await world.converged("the API's state, pods included")
    # A pod's status (a restart, probes): the watch brings it, and the reflector drops it (counted as
    # unchanged, which it is only without a change to translate); nothing is published.
    before = len(world.published)
    world.api.apply(PODS, restarted(first))
    await world.until(lambda: world.source.counters.unchanged.get(PODS) == 1, "the status event")
    await asyncio.sleep(0.2)
    assert len(world.published) == before and world.source.counters.events[PODS] == 3
    [unchanged] = [f for f in KubernetesCollector(world.source.counters).collect()
                   if f.name == "meshpy_control_kubernetes_events_unchanged"]
    assert [(s.labels, s.value) for s in unchanged.samples] == [({"kind": PODS}, 1)]
    # The account changes (the pod is replaced under the same name): the callers follow.
    world.api.apply(PODS, pod("orders-1", "10.0.0.1", "orders-v2"))
    await world.until(lambda: expected() == ["spiffe://cluster.local/ns/shop/sa/orders-v2"], "one account")


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    high, low = Backoff(0.5, 30, rng=lambda: 1.0), Backoff(0.5, 30, rng=lambda: 0.0)
    assert [high.delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [low.delay() for _ in range(3)] == [0.25, 0.5, 1]
    high.reset()
    assert high.delay() == 0.5


# -- the real process, followed by a real proxy --------------------------------------------------------

MESHPY_DIR = """
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /
        cluster: "{cluster}"
"""


def proxy_config(proxy: Proxy) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(proxy.admin("/config_dump")[1])["config"]
    return config


def upstream(host: str, port: int, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "meshpy", "demo-upstream", "--listen", f"{host}:{port}",
                             "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, host=host)
    return proc


@pytest.fixture
def pods() -> Iterator[int]:
    """Two "pods" on 127.0.0.2 and 127.0.0.3, on one port number as pods of a Deployment are."""
    port = free_port()
    procs = [upstream("127.0.0.2", port, "pod-a"), upstream("127.0.0.3", port, "pod-b")]
    yield port
    for p in procs:
        p.terminate()
        p.wait(10)


def test_meshpy_control_kubernetes_beside_a_meshpy_dir_routes_traffic_to_pods(
        tmp_path: Path, pods: int) -> None:
    listen, ads, admin, proxy_admin = free_port(), free_port(), free_port(), free_port()
    source = tmp_path / "meshpy"
    source.mkdir()
    (source / "web.yaml").write_text(MESHPY_DIR.format(port=listen, cluster=ORDERS))
    slice_ports = [{"name": "http", "port": pods, "protocol": "TCP"}]
    with ThreadedKubeApi() as kube:
        kube.call(kube.api.apply, SERVICES, service("orders"))
        kube.call(kube.api.apply, SLICES, endpoint_slice(
            "orders", [endpoint("127.0.0.2"), endpoint("127.0.0.3", ready=False)], ports=slice_ports))
        kube.call(kube.api.apply, SERVICES, service("billing"))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.port)
        log = open(tmp_path / "control.log", "wb")  # noqa: SIM115 - the process writes to it
        control = subprocess.Popen(
            [sys.executable, "-m", "meshpy", "control", "--listen", f"127.0.0.1:{ads}", "--admin",
             f"127.0.0.1:{admin}", "--kubernetes", "--kubeconfig", str(kubeconfig), "--meshpy-dir",
             str(source), "--poll-interval", "0.1", "--no-kubernetes-listeners"], stdout=log,
            stderr=subprocess.STDOUT)
        log.close()
        proxy = Proxy("", proxy_admin, extra_args=[
            "--xds", f"127.0.0.1:{ads}", "--node-id", "k8s-1", "--node-cluster", "web",
            "--admin", f"127.0.0.1:{proxy_admin}"])
        try:
            proxy.start()
            assert {http(listen, path="/").header("x-upstream") for _ in range(10)} == {"pod-a"}

            def clusters() -> list[str]:
                dump = json.loads(proxy.admin("/config_dump")[1])
                return list(dump["xds"]["resources"]["Cluster"])

            assert sorted(clusters()) == [BILLING, ORDERS]
            # --no-kubernetes-listeners: the directory's listener only, none for the Services' addresses.
            assert [lis["name"] for lis in proxy_config(proxy)["listeners"]] == ["web"]
            # pod-b turns ready and pod-a goes away: the proxy follows the slice.
            kube.call(kube.api.apply, SLICES,
                      endpoint_slice("orders", [endpoint("127.0.0.3")], ports=slice_ports))
            eventually(lambda: all(http(listen, path="/").header("x-upstream") == "pod-b" for _ in range(10)),
                       "traffic moves to pod-b")
            kube.call(kube.api.delete, SERVICES, "shop", "billing")
            eventually(lambda: clusters() == [ORDERS], "the deleted Service's cluster leaves the proxy")
            # Every watch expires (410): the control plane lists again, and changes still arrive after.
            kube.call(kube.api.expire)
            kube.call(kube.api.apply, SLICES, endpoint_slice(
                "orders", [endpoint("127.0.0.2"), endpoint("127.0.0.3")], ports=slice_ports))
            eventually(lambda: {http(listen, path="/").header("x-upstream") for _ in range(20)}
                       == {"pod-a", "pod-b"}, "both pods serve")
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            assert re.search(r'kubernetes_events_total\{kind="endpointslices"\} [1-9]', metrics), metrics
            assert re.search(r"meshpy_control_kubernetes_resyncs_total [1-9]", metrics), metrics
            assert proxy.metric("meshpy_xds_updates_total", result="rejected") == 0
        finally:
            proxy.stop()
            control.terminate()
            assert control.wait(10) == 0, (tmp_path / "control.log").read_text()


def test_a_proxy_following_meshpy_control_kubernetes_gets_the_listeners_of_service_addresses(
        tmp_path: Path) -> None:
    ads, proxy_admin = free_port(), free_port()
    orders = service("orders")
    cache = service("cache", ports=[{"name": "redis", "port": 6379, "protocol": "TCP"}])
    orders_lis = f"{orders['spec']['clusterIP']}_8080"
    cache_lis = f"{cache['spec']['clusterIP']}_6379"
    with ThreadedKubeApi() as kube:
        kube.call(kube.api.apply, SERVICES, orders)
        kube.call(kube.api.apply, SERVICES, cache)
        kube.call(kube.api.apply, SLICES, endpoint_slice("orders", [endpoint("127.0.0.2")]))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.port)
        log = open(tmp_path / "control.log", "wb")  # noqa: SIM115 - the process writes to it
        control = subprocess.Popen(
            [sys.executable, "-m", "meshpy", "control", "--listen", f"127.0.0.1:{ads}", "--kubernetes",
             "--kubeconfig", str(kubeconfig)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        proxy = Proxy("", proxy_admin, extra_args=[
            "--xds", f"127.0.0.1:{ads}", "--node-id", "k8s-2", "--node-cluster", "web",
            "--admin", f"127.0.0.1:{proxy_admin}"])
        try:
            proxy.start()

            def listeners() -> dict[str, dict[str, Any]]:
                return {lis["name"]: lis for lis in proxy_config(proxy)["listeners"]}

            eventually(lambda: set(listeners()) == {orders_lis, cache_lis}, "the Services' listeners")
            lis = listeners()
            # Bound to nothing (the proxy cannot bind 10.96.x.x here, so a socket would fail the update).
            assert {n: (x["address"], x["bind"], x["direction"]) for n, x in lis.items()} == {
                orders_lis: ({"host": orders["spec"]["clusterIP"], "port": 8080}, False, "outbound"),
                cache_lis: ({"host": cache["spec"]["clusterIP"], "port": 6379}, False, "outbound")}
            assert lis[orders_lis]["kind"] == "http" and lis[orders_lis]["tcp"] is None
            assert lis[cache_lis]["kind"] == "tcp" and lis[cache_lis]["http"] is None
            [vh] = lis[orders_lis]["http"]["route_config"]["virtual_hosts"]
            assert "orders.shop.svc.cluster.local:8080" in vh["domains"]
            assert vh["routes"][0]["action"]["cluster"] == ORDERS
            kube.call(kube.api.delete, SERVICES, "shop", "cache")
            eventually(lambda: set(listeners()) == {orders_lis}, "the deleted Service's listener leaves")
            assert proxy.metric("meshpy_xds_updates_total", result="rejected") == 0
        finally:
            proxy.stop()
            control.terminate()
            assert control.wait(10) == 0, (tmp_path / "control.log").read_text()
