"""`meshpy run`: load a config file, serve it, reload it on SIGHUP or when it changes, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from meshpy.app import App
from meshpy.errors import ConfigError
from meshpy.model.load import load_file

log = logging.getLogger("meshpy")

WATCH_INTERVAL = 1.0


class FileSource:
    """Reloads the config file on SIGHUP and when its modification time or size changes."""

    def __init__(self, app: App, path: str) -> None:
        self.app = app
        self.path = path
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
                    config = load_file(self.path)
                except ConfigError:
                    self.app.metrics.config_load(False)  # apply() counts its own outcomes
                    raise
                snap = await self.app.apply(config, source=self.path)
            except ConfigError as err:
                log.error("reload (%s) of %s rejected; the running config stays:\n%s", reason, self.path,
                          "\n".join(f"  {i}" for i in err.issues))
                return False
            log.info("reload (%s) of %s: config %s is live", reason, self.path, snap.version)
            return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            stamp = self._read_stamp()
            if stamp is not None and stamp != self._stamp:
                await self.reload("file changed")


async def serve(path: str, drain_time: float | None = None, grace_time: float | None = None) -> int:
    loop = asyncio.get_running_loop()
    try:
        config = load_file(path)
    except ConfigError as err:
        for issue in err.issues:
            print(f"{path}: {issue}", flush=True)
        return 1
    app = App(loop, drain_time=drain_time, grace_time=grace_time)
    try:
        await app.apply(config, source=path)
    except ConfigError as err:
        for issue in err.issues:
            print(f"{path}: {issue}", flush=True)
        await app.close()
        return 1
    source = FileSource(app, path)
    loop.add_signal_handler(signal.SIGTERM, app.shutdown)
    loop.add_signal_handler(signal.SIGINT, app.shutdown)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(source.reload("SIGHUP")))
    watcher = loop.create_task(source.watch(), name="config-watch")
    try:
        await app.wait_stopped()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    log.info("stopped")
    return 0
