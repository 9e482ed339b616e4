"""Certificate files watched, and read again when they change: a renewed certificate (cert-manager,
a Kubernetes secret volume, a cron job with certbot) is served to new connections without a restart,
and the connections already open keep the context they started with.

Files are polled (their inode, size and modification time, through any symlink: a Kubernetes secret
volume swaps a `..data` symlink), which needs nothing from the kernel and notices every way a file
is replaced. A change makes the app build every TLS context again from the same config; if the new
files are unusable (a key written before its certificate, a key that does not match), the old
contexts keep serving, the reason is logged, and the next change is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from meshpy.model.tls import Certificate, ClientTls, Pem, ServerTls, Validation
from meshpy.model.types import Config

log = logging.getLogger("meshpy")

INTERVAL = 1.0
Stamp = tuple[int, int, int] | None


def _pems(tls: ServerTls | ClientTls | None) -> Iterable[Pem | None]:
    if tls is None:
        return
    certs: tuple[Certificate, ...] = (
        tls.certificates
        if isinstance(tls, ServerTls)
        else ((tls.certificate,) if tls.certificate is not None else ())
    )
    for c in certs:
        yield c.chain
        yield c.key
    validation: Validation | None = tls.validation
    if validation is not None:
        yield validation.ca
    if isinstance(tls, ServerTls):
        yield from tls.ticket_keys  # a new key file (rotation) reaches new connections as a certificate does


def tls_files(config: Config) -> frozenset[str]:
    """Every file a TLS context of `config` reads."""
    found: set[str] = set()
    for listener in config.listeners:
        for chain in listener.all_chains():
            found.update(p.path for p in _pems(chain.tls) if p is not None and p.path is not None)
    for cluster in config.clusters:
        found.update(p.path for p in _pems(cluster.tls) if p is not None and p.path is not None)
    return frozenset(found)


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TlsFileWatch:
    """Polls `files`; `reload` is called (and awaited) when one of them changed."""

    def __init__(self, reload: Callable[[str], Awaitable[bool]], interval: float = INTERVAL) -> None:
        self._reload = reload
        self.interval = interval
        self._stamps: dict[str, Stamp] = {}

    def watch(self, files: frozenset[str]) -> None:
        """The files of the config now live (their current state is the one served)."""
        self._stamps = {path: stamp(path) for path in sorted(files)}

    def changed(self) -> list[str]:
        changed = []
        for path, old in self._stamps.items():
            new = stamp(path)
            if new != old:
                self._stamps[path] = new
                changed.append(path)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            changed = self.changed()
            if changed:
                await self._reload(", ".join(changed))
