"""Follows the mesh's trust bundle between renewals: the CA's `TrustBundle/Watch` stream sends the roots
at once and at each change (a root staged, rotated, retired), and each goes to `Rotation.bundle_changed`.

Without it a sidecar would learn of a new root only when it renews, at half of a 24 h certificate's
life: a rotation would have to wait that long between its steps. The stream is opened again after it
ends or breaks, with a doubling, jittered back-off; a CA without it (istiod answers UNIMPLEMENTED) is
left alone, and the bundle then comes with each renewal as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from meshpy.identity.csr import CertificateRefused, IdentityError
from meshpy.identity.rotation import Rotation

log = logging.getLogger("meshpy.identity")


async def watch_bundle(rotation: Rotation, *, backoff_first: float = 0.5, backoff_most: float = 30.0,
                       rng: Callable[[], float] = random.random) -> None:
    """Forever (until cancelled, or the CA has no watch)."""
    backoff = backoff_first
    while True:
        try:
            answered = False
            async for roots in rotation.client.watch_bundle():
                answered, backoff = True, backoff_first
                await rotation.bundle_changed(roots)
            if answered:
                continue  # the stream's deadline: open it again at once
        except CertificateRefused as err:
            if err.code == "UNIMPLEMENTED":
                log.info("identity: the CA has no trust bundle watch: the bundle comes with each renewal")
                return
            log.warning("identity: the trust bundle watch was refused: %s", err)
        except IdentityError as err:  # unreachable, or a bundle we cannot read
            log.debug("identity: the trust bundle watch broke: %s", err)
        await asyncio.sleep(backoff * (0.5 + rng() / 2))
        backoff = min(backoff * 2, backoff_most)
