"""The TLS half of App: certificate files read again when they change (meshpy.tls_watch), the
certificates in use for the admin's /certs (Envoy's shape) and the expiry gauges. Part of App."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshpy.errors import ConfigError
from meshpy.model.secrets import SecretMaterial, fill_config
from meshpy.model.types import Config
from meshpy.telemetry.tls_stats import InUse
from meshpy.tls_watch import TlsFileWatch, tls_files
from meshpy.transport.tls_material import CertInfo

if TYPE_CHECKING:
    from meshpy.routing.compile import Snapshot
    from meshpy.tasks import TaskOwner
    from meshpy.telemetry.metrics import Metrics
    from meshpy.upstream.cluster import ClusterManager

log = logging.getLogger("meshpy")


def _cert(info: CertInfo, source: str) -> dict[str, Any]:
    """One certificate as Envoy's /certs shows it."""
    now = datetime.datetime.now(datetime.UTC)
    sans = (
        [{"dns": d} for d in info.dns]
        + [{"uri": u} for u in info.uris]
        + [{"ip_address": i} for i in info.ips]
    )
    return {
        "path": source,
        "serial_number": info.serial,
        "subject": info.subject,
        "issuer": info.issuer,  # not in Envoy's /certs: which root signed it, during a rotation
        "subject_alt_names": sans,
        "days_until_expiration": str(info.days_until_expiry(now)),
        "valid_from": info.not_before.isoformat(),
        "expiration_time": info.not_after.isoformat(),
    }


class TlsReloading:
    """Holds nothing of its own but the watcher; App declares the rest."""

    if TYPE_CHECKING:
        metrics: Metrics
        tasks: TaskOwner
        clusters: ClusterManager
        snapshot: Snapshot | None

        async def apply(self, config: Config, source: str = "", refresh_tls: bool = False) -> Snapshot: ...

    _tls_watch: TlsFileWatch | None = None
    _tls_task: asyncio.Task[None] | None = None
    # Secrets the proxy holds itself (its own identity from the mesh's CA: meshpy.identity.local), by
    # name; a config naming them gets them filled in here. `given_config` is the live config as it was
    # given, before that: what a new identity is filled into.
    local_secrets: Mapping[str, SecretMaterial] = {}
    given_config: Config | None = None

    def _with_local_secrets(self, config: Config) -> Config:
        return fill_config(config, self.local_secrets)

    async def set_local_secrets(self, secrets: Mapping[str, SecretMaterial]) -> None:
        """New material for the proxy's own secrets: the live config is made again with it."""
        self.local_secrets = dict(secrets)
        given = self.given_config
        if given is None or self.snapshot is None:
            return
        try:
            await self.apply(given, self.snapshot.source, refresh_tls=True)
        except ConfigError as err:
            log.error("a new identity cannot be used; the one before stays:\n%s",
                      "\n".join(f"  {i}" for i in err.issues))

    def _tls_live(self, config: Config, snap: Snapshot) -> None:
        """After a config went live: watch its certificate files, publish its certificates."""
        files = tls_files(config)
        if files and self._tls_task is None:
            self._tls_watch = TlsFileWatch(self.refresh_tls)
            self._tls_task = self.tasks.spawn(self._tls_watch.run(), name="certificate files")
        elif not files and self._tls_task is not None:
            self._tls_task.cancel()
            self._tls_task = self._tls_watch = None
        if self._tls_watch is not None:
            self._tls_watch.watch(files)
        self.metrics.tls.in_use = tuple(self._in_use(snap))

    async def refresh_tls(self, reason: str) -> bool:
        """Build every TLS context again from the live config (files changed: `reason`)."""
        snap = self.snapshot
        if snap is None:
            return False
        try:
            await self.apply(snap.config, snap.source, refresh_tls=True)
        except ConfigError as err:
            log.error(
                "certificates changed (%s) but cannot be used; the ones loaded before stay:\n%s",
                reason,
                "\n".join(f"  {i}" for i in err.issues),
            )
            return False
        log.info("certificates changed (%s): new connections get them", reason)
        return True

    def _in_use(self, snap: Snapshot) -> list[InUse]:
        found: list[InUse] = []
        for name, cfg in snap.listeners.items():
            if cfg.dispatch is None:
                continue
            for chain in cfg.dispatch.chains:
                if chain.tls is None:
                    continue
                context = f"listener {name}" + (f" chain {chain.name}" if chain.name != name else "")
                for pair in chain.tls.pairs:
                    found.extend(
                        InUse(context, "certificate", pair.source, info) for info in pair.chain_info[:1]
                    )
                found.extend(InUse(context, "ca", "trusted_ca", info) for info in chain.tls.trust)
        for name, rt in self.clusters.clusters.items():
            tls = rt.connector.tls
            if tls is None:
                continue
            if tls.pair is not None:
                found.append(InUse(f"cluster {name}", "certificate", tls.pair.source, tls.pair.leaf))
            found.extend(InUse(f"cluster {name}", "ca", "trusted_ca", info) for info in tls.trust)
        return found

    def certs_view(self) -> dict[str, Any]:
        """Envoy's /certs: per TLS context, its CA certificates and its own chain."""
        contexts: dict[str, dict[str, Any]] = {}
        for used in self.metrics.tls.in_use:
            entry = contexts.setdefault(
                used.context, {"context": used.context, "ca_cert": [], "cert_chain": []}
            )
            entry["ca_cert" if used.role == "ca" else "cert_chain"].append(_cert(used.info, used.source))
        return {"certificates": list(contexts.values())}
