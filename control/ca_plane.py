"""The CA and what surrounds it in one `meshpy control` process, put together here so that the server
(control/server.py) only asks for it: the CA opened from its options (a rotation cut short is finished,
and a staged or retiring root restored, control/ca_rotation.py), its gRPC services beside ADS, the key
pairs of Envoy nodes over SDS, the admin's /ca paths, the gRPC port's own certificate (with
`--grpc-tls-names`, control/serving_tls.py), and the listeners that push every change of the trust
bundle (to the sidecars' bundle watches, to Envoy nodes as the SDS secret ROOTCA, and to the serving
certificate after a rotation).
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

import grpc
from prometheus_client.registry import Collector

from control import ca_cli
from control.ads import AdsServer
from control.ca_admin import CaAdmin
from control.ca_cli import CaOptions
from control.ca_rotation import BundleChange, RootRotation
from control.ca_service import CaCollector, IdentityService
from control.ca_store import CaStore
from control.cache import SnapshotCache
from control.node_identity import NodeIdentities
from control.serving_tls import ServingCertificate

log = logging.getLogger("meshpy.control.ca")


class CaPlane:
    def __init__(self, opts: CaOptions) -> None:
        """Raises CaSetupError (the CA's files are at fault, said with their names)."""
        self.opts = opts
        store = CaStore(opts.ca_dir) if opts.ca_dir is not None else None
        if store is not None and store.finish_rotation():
            log.warning("ca: finished a rotation that was cut short (%s/rotating was left)", opts.ca_dir)
        self.authority = ca_cli.open_ca(opts)
        self.rotation = RootRotation(self.authority, store)
        self.rotation.restore()
        self.serving: ServingCertificate | None = None
        if opts.grpc_tls_names:
            self.serving = ServingCertificate(self.authority, opts.grpc_tls_names)
            self.rotation.listeners.append(self.serving.bundle_changed)
        self.service: IdentityService | None = None
        self.identities: NodeIdentities | None = None
        self.admin: CaAdmin | None = None

    def attach(self, server: grpc.aio.Server, ads: AdsServer, cache: SnapshotCache,
               kubernetes_api: Any = None) -> Collector:
        """Serve the CA on `server` beside ADS (with the Kubernetes source's client, pods' tokens go to
        TokenReview); returns the CA's metrics."""
        service = self.service = ca_cli.identity_service(self.authority, self.opts, kubernetes_api)
        service.add_to_server(server)
        # Envoy nodes cannot send a CSR: their key pairs are made here and go out over SDS (same tokens).
        identities = self.identities = ads.identities = NodeIdentities(self.authority, service.authenticator)
        identities.clear_tokens = service.clear_tokens

        def push(change: BundleChange) -> None:
            service.bundle_changed()
            identities.bundle_changed(change, cache.poke)

        self.rotation.listeners.append(push)
        self.admin = CaAdmin(self.rotation, lambda: service.watchers)
        return CaCollector(service)

    def tasks(self, cache: SnapshotCache) -> list[Coroutine[Any, Any, None]]:
        """What runs as long as the server: renewals of Envoy nodes' pairs, the end of an overlap."""
        assert self.identities is not None, "attach() first"
        jobs = [self.identities.renew(cache.poke), self.rotation.run()]
        if self.serving is not None:
            jobs.append(self.serving.run())
        return jobs

    def add_port(self, server: grpc.aio.Server, listen: str) -> int:
        """Open the gRPC port, over TLS with `--grpc-tls-names`; 0 when it cannot be opened."""
        try:
            if self.serving is not None:
                return int(server.add_secure_port(listen, self.serving.credentials()))
            return int(server.add_insecure_port(listen))
        except RuntimeError:  # (grpcio raises where it once returned 0)
            return 0
