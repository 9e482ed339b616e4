"""`meshpy run`: load a config file, serve it, reload it on SIGHUP or when it changes, drain on SIGTERM.

With xDS (the bootstrap's `dynamic_resources`, or `--xds` on the command line) the file is the static
part: an ADS client adds what the control plane sends, and a reload of the file goes through the
client, so that dynamic resources survive it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from meshpy.app import App
from meshpy.errors import ConfigError
from meshpy.model.load import NOTHING_TO_SERVE, load_file
from meshpy.model.types import DEFAULT_ADMIN, Address, Admin, Config, XdsSource

if TYPE_CHECKING:
    from meshpy.identity.control_trust import ControlPlaneTls
    from meshpy.identity.local import IdentityOptions, LocalIdentity
    from meshpy.sidecar.probes import ProbeServer
    from meshpy.xds.ads_tls import AdsClusterTls
    from meshpy.xds.client import AdsClient

log = logging.getLogger("meshpy")

WATCH_INTERVAL = 1.0
IDENTITY_WAIT = 30.0  # seconds to get the first certificate before giving up at start


Apply = Callable[[Config], Awaitable[object]]


class FileSource:
    """Reloads the config file on SIGHUP and when its modification time or size changes."""

    def __init__(self, app: App, path: str, apply: Apply | None = None,
                 xds: XdsSource | None = None, xds_from_flags: bool = False) -> None:
        self.app = app
        self.path = path
        self._apply: Apply = apply or (lambda config: app.apply(config, source=path))
        self._xds = xds  # what the running ADS client was started with: a reload cannot change it
        self._xds_from_flags = xds_from_flags
        self._stamp = self._read_stamp()
        self._lock = asyncio.Lock()

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def reload(self, reason: str) -> bool:
        async with self._lock:
            self._stamp = self._read_stamp()
            try:
                try:
                    config = self._checked(load_file(self.path))
                except ConfigError:
                    self.app.metrics.config_load(False)  # apply() counts its own outcomes
                    raise
                await self._apply(config)
            except ConfigError as err:
                log.error("reload (%s) of %s rejected; the running config stays:\n%s", reason, self.path,
                          "\n".join(f"  {i}" for i in err.issues))
                return False
            version = self.app.snapshot.version if self.app.snapshot is not None else "?"
            log.info("reload (%s) of %s: config %s is live", reason, self.path, version)
            return True

    def _checked(self, config: Config) -> Config:
        if self._xds_from_flags:
            return replace(config, xds=self._xds)  # the command line wins, as it did at start
        if config.xds != self._xds:
            raise ConfigError.at("dynamic_resources", "xDS settings change only with a restart")
        return config

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = self._read_stamp()
            if stamp is not None and stamp != self._stamp:
                await self.reload("file changed")


async def serve(path: str | None, drain_time: float | None = None, grace_time: float | None = None,
                xds: XdsSource | None = None, admin: Address | None = None,
                identity: IdentityOptions | None = None,
                control_trust: ControlPlaneTls | None = None, probes: ProbeServer | None = None) -> int:
    """Serve `path` (may be None with `xds`); `xds` from the command line replaces the file's.
    `identity`: get this workload's certificate from the mesh's CA first, and keep it renewed.
    `control_trust`: the control plane (xDS and the CA) serves TLS, checked with those roots (--xds-ca);
    a bootstrap's ADS cluster may say it instead (its transport_socket: meshpy.xds.ads_tls).
    `probes`: the app's kubelet probes, served once the config is live, until the proxy stops."""
    loop = asyncio.get_running_loop()
    origin = path or "--xds"
    try:
        config = load_file(path) if path else Config(admin=Admin(address=admin or DEFAULT_ADMIN))
    except ConfigError as err:
        for issue in err.issues:
            print(f"{origin}: {issue}", flush=True)
        return 1
    if xds is not None:
        config = replace(config, xds=xds)
    ads_tls: AdsClusterTls | None = None
    if config.xds is not None and config.xds.tls is not None:
        if control_trust is not None:
            print(f"{origin}: --xds-ca and the ADS cluster's transport_socket both say how to check the "
                  "control plane: give one (or --xds, which replaces the bootstrap's ADS server)", flush=True)
            return 1
        from meshpy.xds.ads_tls import AdsClusterTls

        try:
            ads_tls = AdsClusterTls(config.xds.server, config.xds.tls, config.xds.connect_timeout,
                                    config.xds.tcp_keepalive)
            ads_tls.check()
        except ValueError as err:
            print(f"{origin}: {err}", flush=True)
            return 1
    app = App(loop, drain_time=drain_time, grace_time=grace_time)
    xds_trust: ControlPlaneTls | None = control_trust
    ca_trust: ControlPlaneTls | None = control_trust
    if ads_tls is not None:
        try:
            await ads_tls.start(app.tasks)
        except OSError as err:
            print(f"{origin}: no private socket for the ADS stream's TLS in the temporary directory "
                  f"(TMPDIR): {err}", flush=True)
            await _close(app, ads_tls)
            return 1
        xds_trust = ads_tls
        # The CA on the ADS server (meshpy control) is reached the same way, and the bundle it sends is
        # trusted for both, as with --xds-ca.
        ca_trust = ads_tls if identity is not None and identity.ca == ads_tls.server else None
    local: LocalIdentity | None = None
    if identity is not None:
        from meshpy.identity.local import LocalIdentity

        # The certificate comes first: a config that names `default` or `ROOTCA` is served with it.
        local = LocalIdentity(app, identity, ca_trust)
        if not await local.start(IDENTITY_WAIT):
            print(f"{origin}: no certificate from the CA at {identity.ca} within {IDENTITY_WAIT:g} s "
                  f"(see the log)", flush=True)
            await local.close()
            await _close(app, ads_tls)
            return 1
    if config.xds is not None:
        app.hold_initialization()  # /ready waits for the control plane's initial config
    try:
        await app.apply(config, source=origin)
    except ConfigError as err:
        for issue in err.issues:
            print(f"{origin}: {issue}", flush=True)
        await _close(app, ads_tls)
        return 1
    if not config.listeners and config.xds is None:
        log.warning("%s: %s", origin, NOTHING_TO_SERVE)
    if probes is not None:
        try:
            await probes.start()
        except OSError as err:
            print(f"{origin}: cannot listen on {probes.address} for the app's probes: {err}", flush=True)
            if local is not None:
                await local.close()
            await _close(app, ads_tls)
            return 1
    client: AdsClient | None = None
    if config.xds is not None:
        from meshpy.xds.client import AdsClient

        client = AdsClient(app, config, config.xds, xds_trust)
        app.xds_status = client.status
        client.start()
    loop.add_signal_handler(signal.SIGTERM, app.shutdown)
    loop.add_signal_handler(signal.SIGINT, app.shutdown)
    watcher: asyncio.Task[None] | None = None
    if path:
        source = FileSource(app, path, client.set_static if client is not None else None, config.xds,
                            xds_from_flags=xds is not None)
        loop.add_signal_handler(signal.SIGHUP, lambda: app.tasks.spawn(source.reload("SIGHUP"), "reload"))
        watcher = app.tasks.spawn(source.watch(), name="config-watch")
    else:  # (SIGHUP's default action would end the process)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("SIGHUP: no config file to reload"))
    try:
        await app.wait_stopped()
    finally:
        if probes is not None:
            await probes.close()
        if local is not None:
            await local.close()
        if client is not None:
            await client.close()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if ads_tls is not None:
            await ads_tls.close()
    log.info("stopped")
    return 0


async def _close(app: App, ads_tls: AdsClusterTls | None) -> None:
    if ads_tls is not None:
        await ads_tls.close()
    await app.close()
