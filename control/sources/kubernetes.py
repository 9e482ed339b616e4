"""The Kubernetes source of the control plane: Services and EndpointSlices, as clusters and endpoints
(and, unless turned off, the outbound listeners and routes of the Services' addresses, and the inbound
listener of the pods of Services annotated security.meshpy.io/mtls: kubernetes_inbound), and Pods for
the service accounts the callers of those Services expect (kubernetes_identity).

One reflector (list, then watch) per kind and namespace keeps a copy of the objects; every change marks
the set dirty, and one task translates the whole set after a short quiet time (`debounce`), so a burst
of events (a rollout replacing every pod) makes one version instead of one per event. A translation
equal to the last one is not published at all. Of a Pod only its service account and addresses are kept,
and an event that changes neither (most of them: status) does not even mark the set dirty.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kubernetes_asyncio import client, config
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from control.cache import CLUSTER
from control.sources.kubernetes_identity import pod_shape
from control.sources.kubernetes_inbound import InboundMemo, Workloads, inbound
from control.sources.kubernetes_listeners import Memo
from control.sources.kubernetes_resources import Object, translate
from control.sources.kubernetes_watch import WATCH_SECONDS, Backoff, Counters, Reflector

log = logging.getLogger("meshpy.control.kubernetes")

DEBOUNCE = 0.1  # seconds of quiet before a change is translated and published
SERVICES, SLICES, PODS = "services", "endpointslices", "pods"

# Every node's resources (by type URL and name), and each workload's inbound listener and clusters.
Publish = Callable[[dict[str, dict[str, Any]], Workloads], None]


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from `kubeconfig`; else the pod's service account when running in a pod; else the
    kubeconfig that $KUBECONFIG (or ~/.kube/config) names."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration,
                                      persist_config=False)
    return client.ApiClient(configuration)


class KubernetesSource:
    """Calls `publish` with the Clusters and ClusterLoadAssignments, and with `listeners` the Listeners
    and RouteConfigurations (by type URL and name), and with `inbound` the annotated workloads' inbound
    listeners, once every reflector has listed, then after each change that alters them. Pods included:
    the first version already expects the pods' identities, rather than any the mesh signed and then
    fewer."""

    def __init__(self, api: client.ApiClient, publish: Publish, *, namespaces: Sequence[str] = (),
                 cluster_domain: str = "cluster.local", listeners: bool = True, debounce: float = DEBOUNCE,
                 watch_seconds: int = WATCH_SECONDS, backoff: Callable[[], Backoff] = Backoff,
                 trust_domain: str = "cluster.local", inbound: bool = True) -> None:
        self.api, self.publish, self.cluster_domain, self.debounce = api, publish, cluster_domain, debounce
        self.trust_domain = trust_domain  # the mesh CA's: the SPIFFE IDs mutual TLS checks
        self.listeners, self._memo = listeners, Memo()
        self.inbound, self._inbound_memo = inbound, InboundMemo()
        self.counters = Counters()
        self._dirty = asyncio.Event()
        self._last: tuple[dict[str, dict[str, Any]], Workloads] | None = None
        self._logged: set[str] = set()
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        listers = {SERVICES: (core.list_service_for_all_namespaces, core.list_namespaced_service),
                   SLICES: (discovery.list_endpoint_slice_for_all_namespaces,
                            discovery.list_namespaced_endpoint_slice),
                   PODS: (core.list_pod_for_all_namespaces, core.list_namespaced_pod)}
        self.reflectors: dict[str, list[Reflector]] = {}
        scopes: list[str | None] = [*sorted(set(namespaces))] or [None]  # None: all namespaces at once
        for kind, (every, one) in listers.items():
            self.reflectors[kind] = [
                Reflector(kind, one if ns else every, self._dirty.set, self.counters, namespace=ns,
                          watch_seconds=watch_seconds, backoff=backoff(),
                          shape=pod_shape if kind == PODS else None)
                for ns in scopes]

    async def close(self) -> None:
        """Close the API client (after cancelling `run`)."""
        await self.api.close()

    @property
    def synced(self) -> bool:
        return all(r.synced for rs in self.reflectors.values() for r in rs)

    def objects(self, kind: str) -> list[Object]:
        return [obj for r in self.reflectors[kind] for obj in r.objects.values()]

    async def run(self) -> None:
        """Forever; cancelling it stops every watch."""
        async with asyncio.TaskGroup() as group:
            for rs in self.reflectors.values():
                for r in rs:
                    group.create_task(r.run(), name=f"kubernetes {r.what}")
            group.create_task(self._publisher(), name="kubernetes publisher")

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)
            self._dirty.clear()  # changes from here on are seen by the next round
            if self.synced:
                self.publish_now()

    def publish_now(self) -> bool:
        """Translate and publish if the result differs from the last one; whether it did."""
        services, slices = self.objects(SERVICES), self.objects(SLICES)
        result = translate(services, slices, self.cluster_domain, self.listeners, self._memo,
                           self.trust_domain, self.objects(PODS))
        found = inbound(services, slices, self._inbound_memo) if self.inbound else None
        workloads = found.workloads if found is not None else {}
        if found is not None and found.clusters:
            # Every node's, as the Services' own clusters (see kubernetes_inbound).
            result.resources[CLUSTER].update(found.clusters)
        for line in (*result.skipped, *(found.skipped if found is not None else ())):
            if line not in self._logged:
                self._logged.add(line)
                log.info("%s", line)
        if (result.resources, workloads) == self._last:
            return False
        self._last = result.resources, workloads
        self.publish(result.resources, workloads)
        return True


class KubernetesCollector(Collector):
    """The source's counters, read at scrape time."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Any]:
        c = self.counters
        events = CounterMetricFamily("meshpy_control_kubernetes_events", "watch events applied, by kind",
                                     labels=["kind"])
        for kind, n in sorted(c.events.items()):
            events.add_metric([kind], n)
        yield events
        unchanged = CounterMetricFamily("meshpy_control_kubernetes_events_unchanged", "watch events that "
                                        "changed nothing the source reads (a pod's status), by kind",
                                        labels=["kind"])
        for kind, n in sorted(c.unchanged.items()):
            unchanged.add_metric([kind], n)
        yield unchanged
        yield CounterMetricFamily("meshpy_control_kubernetes_resyncs", "lists after the first one "
                                  "(a watch expired, or an error)", value=c.resyncs)
        yield CounterMetricFamily("meshpy_control_kubernetes_errors", "failed lists and watches",
                                  value=c.errors)
