"""The proxy's own identity, as TLS secrets its config can name: `default` (its key and SVID) and
`ROOTCA` (the mesh's trust bundle), the names Istio gives them.

The sidecar makes its key itself and gets the certificate from the mesh's CA over a CSR
(meshpy.identity.csr); `Rotation` renews it at about half its life, and each new one reaches the live
config here (App.set_local_secrets): new connections get it, open ones keep theirs. A new trust
bundle (a root rotation's steps) comes between renewals from the CA's bundle watch
(meshpy.identity.bundle_watch) and reaches the config the same way. The key never leaves the process
and is never asked of the control plane over SDS.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshpy.identity.bundle_watch import watch_bundle
from meshpy.identity.csr import CaClient
from meshpy.identity.rotation import Material, Rotation
from meshpy.identity.spiffe import SpiffeId
from meshpy.model.secrets import SecretMaterial
from meshpy.model.tls import Pem

if TYPE_CHECKING:
    from meshpy.app import App
    from meshpy.identity.control_trust import ControlPlaneTls

log = logging.getLogger("meshpy.identity")

CERTIFICATE = "default"
ROOTS = "ROOTCA"
NAMES = frozenset({CERTIFICATE, ROOTS})


@dataclass(frozen=True)
class IdentityOptions:
    spiffe_id: SpiffeId
    ca: str  # host:port of the CA (the control plane's gRPC port)
    token_file: str
    ttl: float | None = None  # None: the CA's default


def secrets_of(material: Material) -> dict[str, SecretMaterial]:
    return {CERTIFICATE: SecretMaterial(chain=Pem(inline=material.svid.chain_pem().encode()),
                                        key=Pem(inline=material.svid.key_pem())),
            ROOTS: SecretMaterial(ca=Pem(inline=material.bundle_pem().encode()))}


class LocalIdentity:
    """Owns the rotation task and hands each new material to `app`."""

    def __init__(self, app: App, options: IdentityOptions, trust: ControlPlaneTls | None = None) -> None:
        """`trust`: the CA serves TLS, checked with those roots; each trust bundle joins them."""
        self.app, self.trust = app, trust
        self.client = CaClient(options.ca, options.token_file, options.spiffe_id, trust=trust)
        self.rotation = Rotation(self.client, self._update, ttl=options.ttl)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, wait: float) -> bool:
        """Start renewing; True once the first certificate is in (within `wait` seconds)."""
        self._tasks = [self.app.tasks.spawn(self.rotation.run(), name="identity"),
                       self.app.tasks.spawn(watch_bundle(self.rotation), name="identity bundle")]
        try:
            async with asyncio.timeout(wait):
                await self.rotation.ready.wait()
        except TimeoutError:
            return False
        return True

    async def _update(self, material: Material) -> None:
        if self.trust is not None:
            self.trust.learn(material.bundle)  # the control plane's next root, before it serves with it
        await self.app.set_local_secrets(secrets_of(material))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.client.close()
