"""`meshpy control`: the control plane process.

It watches its sources (a directory of Envoy-native resources, or of meshpy YAML exported to them; the
Kubernetes API's Services and EndpointSlices; or a directory beside Kubernetes), turns each good version
of them into a checked snapshot and serves it over ADS. A bad version (a YAML or
proto error, or a snapshot that fails the consistency check) is logged with every error and not
pushed: clients keep the last good one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from prometheus_client.registry import Collector

from control import ca_cli
from control.admin import MAX_HEAD, ControlAdmin
from control.ads import AdsServer, add_to_server
from control.ca_cli import CaOptions
from control.ca_files import CaSetupError
from control.ca_plane import CaPlane
from control.cache import (
    InconsistentSnapshot,
    NodeSelector,
    Resources,
    Snapshot,
    SnapshotCache,
    make_snapshot,
)
from control.sources import kubernetes_cli
from control.sources.envoy_dir import SourceError
from control.sources.kubernetes_cli import KubernetesOptions
from control.sources.kubernetes_inbound import InboundSets, Workloads
from control.sources.kubernetes_meshpy import meshpy_dir_beside_kubernetes
from control.sources.meshpy_dir import load_meshpy_dir
from control.sources.nodes import Layers, Loader, envoy_layer, layered_fingerprint, load_layers

if TYPE_CHECKING:
    from control.sources.kubernetes import KubernetesSource
    from control.sources.kubernetes_rootcert import RootCertWriter

log = logging.getLogger("meshpy.control")

POLL_INTERVAL = 0.5  # seconds between looks at the source directory


class Publisher:
    """The one place that publishes: the directory's layers, each merged with the Kubernetes source's
    clusters and endpoints when there is one.

    A name in both is the directory's: a team can replace a generated cluster (to give it a circuit
    breaker, say) without the generator knowing. A directory version that does not fit (a route naming a
    Service that does not exist yet) is kept and tried again at each Kubernetes change, while the last
    one that fitted goes on serving with the new endpoints: one bad file never freezes the endpoints of
    the whole mesh.
    """

    def __init__(self, cache: SnapshotCache, loads: dict[str, int] | None = None,
                 kubernetes: bool = False, directory: bool = True) -> None:
        self.cache, self.loads = cache, loads if loads is not None else {}
        self.layers: Layers | None = None if directory else Layers({})  # last published
        self.pending: Layers | None = None  # read, not published yet
        self.kube: Resources | None = None if kubernetes else {}  # None until the first complete list
        self._replaced: set[tuple[str, str]] = set()
        self.inbound = InboundSets()  # the Kubernetes source's per-workload inbound listeners

    def load_directory(self, source: Path, loader: Loader = envoy_layer) -> bool:
        """Read and publish the directory; False (and the old snapshot stays) if it is not good."""
        try:
            self.pending = load_layers(source, loader)
        except SourceError as err:
            for line in err.errors:
                log.error("%s: %s", source, line)
            return self._count(False)
        return self._count(self._publish(str(source)))

    def kubernetes(self, resources: Resources, workloads: Workloads | None = None) -> None:
        self.kube, self.inbound.workloads = resources, workloads or {}
        self._publish("kubernetes")

    def _count(self, ok: bool) -> bool:
        key = "accepted" if ok else "rejected"
        self.loads[key] = self.loads.get(key, 0) + 1
        return ok

    def _publish(self, origin: str) -> bool:
        if self.kube is None:
            log.info("%s: read; published once Kubernetes is listed", origin)
            return True
        failures = []
        for layers, is_pending in ((self.pending, True), (self.layers, False)):
            if layers is None:
                continue
            try:
                snap = self._publish_layers(layers, self.kube)
            except InconsistentSnapshot as err:
                failures.append(err)
                # Said first, before what is published instead; and when the directory version is
                # read, not again at each Kubernetes change that retries it.
                if origin != "kubernetes":
                    for line in err.errors:
                        log.error("%s: not pushed: %s", origin, line)
                continue
            if is_pending:
                self.layers, self.pending = layers, None
            extra = len(layers.by_node) + len(layers.by_cluster)
            more = f" and {extra} per-node sets" if extra else ""
            if failures:
                log.warning("%s: published version %s%s with the last directory version that fits (the new "
                            "one was not pushed: see above)", origin, snap.version, more)
            else:
                log.info("%s: published version %s%s", origin, snap.version, more)
            break
        return not failures

    def _publish_layers(self, layers: Layers, kube: Resources) -> Snapshot:
        snap = make_snapshot(self._merge(layers.shared, kube))
        by_selector = self.inbound.snapshots(layers, kube, self._merge, snap)  # first: more specific
        by_selector.update({NodeSelector(cluster=name): make_snapshot(self._merge(r, kube))
                            for name, r in layers.by_cluster.items()})
        self.cache.publish(
            snap,
            {node: make_snapshot(self._merge(r, kube)) for node, r in layers.by_node.items()},
            by_selector,
        )
        return snap

    def _merge(self, directory: Resources, kube: Resources) -> Resources:
        if not kube:
            return directory
        for url in kube.keys() & directory.keys():
            for name in kube[url].keys() & directory[url].keys():
                if (url, name) not in self._replaced:
                    self._replaced.add((url, name))
                    log.info("the directory's %s %r replaces the one from Kubernetes", url.rsplit(".", 1)[-1],
                             name)
        return {url: {**kube.get(url, {}), **directory.get(url, {})} for url in {*kube, *directory}}


def load_once(cache: SnapshotCache, source: Path, loads: dict[str, int] | None = None,
              loader: Loader = envoy_layer) -> bool:
    """Publish the directory's resources; False (and the old snapshot stays) if they are not good.
    `loads` counts the outcomes for /metrics."""
    return Publisher(cache, loads).load_directory(source, loader)


async def watch_dir(publisher: Publisher, source: Path, interval: float = POLL_INTERVAL,
                    loader: Loader = envoy_layer) -> None:
    seen = layered_fingerprint(source)
    while True:
        await asyncio.sleep(interval)
        now = layered_fingerprint(source)
        if now != seen:
            seen = now
            publisher.load_directory(source, loader)


async def serve(listen: str, source: Path | None, admin: str | None = None,
                poll_interval: float = POLL_INTERVAL, meshpy_format: bool = False,
                kubernetes: KubernetesOptions | None = None, ca: CaOptions | None = None) -> int:
    """`source` is a directory of Envoy-native resources, or of meshpy YAML when `meshpy_format`;
    `kubernetes` adds (or with no directory, is) the Kubernetes source. The CA (`ca`) always runs."""
    loader: Loader = load_meshpy_dir if meshpy_format else envoy_layer
    if meshpy_format and kubernetes is not None:
        loader = meshpy_dir_beside_kubernetes(kubernetes.cluster_domain)
    cache = SnapshotCache()
    loads: dict[str, int] = {}
    publisher = Publisher(cache, loads, kubernetes is not None, source is not None)
    if source is not None and not publisher.load_directory(source, loader):
        log.error("%s: no good initial config; serving nothing until the source is fixed", source)
    ca = ca or CaOptions()
    try:
        plane = CaPlane(ca)  # before the Kubernetes client, which must be closed once made
    except CaSetupError as err:
        log.error("ca: %s", err)
        return 1
    collectors: list[Collector] = []
    kube: KubernetesSource | None = None
    roots: RootCertWriter | None = None
    if kubernetes is not None:
        # Imported here: only this source needs the Kubernetes client, which is slow to import.
        from control.sources import kubernetes as k8s

        try:
            api = await k8s.api_client(kubernetes.kubeconfig)
        except Exception as err:  # the client's config errors have no common base but Exception
            log.error("kubernetes: cannot load the client configuration: %s", err)
            return 1
        kube = k8s.KubernetesSource(api, publisher.kubernetes, namespaces=kubernetes.namespaces,
                                    cluster_domain=kubernetes.cluster_domain, listeners=kubernetes.listeners,
                                    trust_domain=ca.trust_domain, inbound=kubernetes.inbound)
        collectors.append(k8s.KubernetesCollector(kube.counters))
        if kubernetes.root_cert:  # the roots for injected sidecars, in every namespace (same client)
            from control.sources import kubernetes_rootcert as rc

            roots = rc.RootCertWriter(api, plane.authority.trust_bundle_pem, namespaces=kubernetes.namespaces,
                                      counters=kube.counters)
            plane.rotation.listeners.append(roots.bundle_changed)
            collectors.append(rc.RootCertCollector(roots))
    ads = AdsServer(cache)
    # grpc sheds streams beyond 1,000 waiting to be picked up (3,000 hard): a fleet reconnecting at
    # once (a control-plane restart) would see a storm of CANCELLED; these only lift the shedding.
    # No SO_REUSEPORT (gRPC's default): a second control plane on a running one's port must fail, not
    # share it and leave each proxy to whichever of the two it reaches.
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 20_000),
                                      ("grpc.server.max_pending_requests_hard_limit", 40_000),
                                      ("grpc.so_reuseport", 0)])
    add_to_server(ads, server)
    # The CA's services share the ADS port; with the Kubernetes source, pods' tokens go to TokenReview.
    collectors.append(plane.attach(server, ads, cache, kube.api if kube is not None else None))
    tasks: list[asyncio.Task[None]] = []
    admin_server = None
    try:
        bound = plane.add_port(server, listen)
        if bound == 0:
            log.error("cannot listen on %s (in use, or not an address of this host)", listen)
            return 1
        if admin is not None:
            host, _, port = admin.rpartition(":")
            try:
                handler = ControlAdmin(ads, cache, loads, collectors, plane.admin).handle
                admin_server = await asyncio.start_server(handler, host, int(port), limit=MAX_HEAD)
            except (OSError, ValueError) as err:
                log.error("cannot listen on %s for the admin: %s", admin, err)
                return 1
        await server.start()
        names = [str(source)] * (source is not None) + ["kubernetes"] * (kubernetes is not None)
        tls = f"TLS as {', '.join(ca.grpc_tls_names)}" if ca.grpc_tls_names else "plaintext"
        log.info("ADS and CA on %s (%s), admin on %s, source %s", listen, tls, admin or "-",
                 " and ".join(names))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if source is not None:
            tasks.append(asyncio.create_task(watch_dir(publisher, source, poll_interval, loader)))
        if kube is not None:
            tasks.append(asyncio.create_task(kube.run()))
        if roots is not None:
            tasks.append(asyncio.create_task(roots.run()))
        tasks.extend(asyncio.create_task(job) for job in plane.tasks(cache))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if kube is not None:
            await kube.close()
        if admin_server is not None:
            admin_server.close()
        await server.stop(grace=1.0)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """`meshpy control` with its parsed options."""
    import uvloop

    kubernetes = kubernetes_cli.options(args)
    if not (args.envoy_dir or args.meshpy_dir or kubernetes):
        print("meshpy control: a source is needed: --envoy-dir, --meshpy-dir or --kubernetes",
              file=sys.stderr)
        return 2
    if kubernetes is None and (args.kubeconfig or args.namespace or not args.kubernetes_listeners
                               or not args.kubernetes_inbound or not args.kubernetes_root_cert):
        print("meshpy control: --kubeconfig, --namespace, --no-kubernetes-listeners, --no-kubernetes-inbound "
              "and --no-kubernetes-root-cert are options of --kubernetes", file=sys.stderr)
        return 2
    directory = args.envoy_dir or args.meshpy_dir
    source = Path(directory) if directory else None
    if source is not None and not source.is_dir():
        # Else it would run on serving nothing, and every proxy would wait for a first config.
        flag = "--envoy-dir" if args.envoy_dir else "--meshpy-dir"
        print(f"meshpy control: {flag} {directory}: no such directory", file=sys.stderr)
        return 2
    meshpy_format = args.meshpy_dir is not None
    try:
        ca = ca_cli.options(args)
    except ValueError as err:
        print(f"meshpy control: {err}", file=sys.stderr)
        return 2
    # On uvloop, as the proxy: the scale benchmark measured ~8% less CPU per push than on asyncio's
    # own loop (grpc.aio works on either).
    return int(uvloop.run(serve(args.listen, source, args.admin, args.poll_interval, meshpy_format,
                                kubernetes, ca)))
