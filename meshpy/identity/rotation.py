"""Keeps a sidecar's certificate fresh: a new key and SVID at about half of the current one's life.

Half, as Istio's agent and SPIRE do: if renewing fails, the other half is left for retries (with
doubling, jittered back-off) before anything expires. Jitter spreads the renewals of a fleet that
started together. The current material is only ever replaced by newer, checked material: a CA that is
away or refusing never takes a valid certificate from the proxy; when one does expire for lack of a
renewal, it stays `current` (and it is said at ERROR) until a new one comes.

A change of the mesh's trust bundle (meshpy/identity/bundle_watch.py hands it to `bundle_changed`) is
taken at once, with the certificate we hold, when that still verifies against it: a staged root is
trusted before any peer shows a leaf it signed. When the CA signs with another root now (a rotation),
the next renewal comes soon, spread over a few seconds across a fleet; when our root has left the
bundle, at once.

The times come from the certificate and the wall clock (certificates carry wall time); the waits
from asyncio. The owner runs `run()` as a task and cancels it to stop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshpy.identity.csr import BadCertificate, CaClient, IdentityError, Svid, verify_with_bundle

log = logging.getLogger("meshpy.identity")

RENEW_AT = 0.5  # of the time left when a certificate arrives
JITTER = 0.1  # +-10% of that
MIN_WAIT = 0.05  # seconds: a floor for both waits, against a busy loop on absurd lifetimes
REROOT_SPREAD = 5.0  # seconds over which a fleet renews after its CA switched roots


@dataclass(frozen=True)
class Material:
    """What a TLS context is built from: our key and chain, and the roots to check peers with."""

    svid: Svid
    bundle: tuple[x509.Certificate, ...]

    def bundle_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.bundle)


OnUpdate = Callable[[Material], object]  # may return an awaitable, which is awaited


class Rotation:
    """`on_update(material)` is called with each new material, first as soon as one is obtained. `ttl`
    asks the CA for a lifetime (None: its default)."""

    def __init__(self, client: CaClient, on_update: OnUpdate, *, ttl: float | None = None,
                 renew_at: float = RENEW_AT, jitter: float = JITTER, backoff_first: float = 0.5,
                 backoff_most: float = 30.0, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.client, self.on_update, self.ttl = client, on_update, ttl
        self.renew_at, self.jitter, self.clock, self.rng = renew_at, jitter, clock, rng
        self.backoff_first, self.backoff_most = backoff_first, backoff_most
        self.current: Material | None = None
        self.ready = asyncio.Event()  # set once the first material is in
        self.renewals = 0  # materials obtained (the first one included)
        self.failures = 0  # attempts that got nothing
        self._watched: tuple[x509.Certificate, ...] | None = None  # the latest bundle a watch brought
        self._watched_count = 0
        self._soon: float | None = None  # loop time by which to renew, earlier than planned
        self._wake = asyncio.Event()

    def renewal_delay(self, svid: Svid) -> float:
        """Seconds from now until the next renewal of `svid`."""
        left = svid.not_after - self.clock()
        spread = 1 + self.jitter * (2 * self.rng() - 1)
        return max(MIN_WAIT, left * self.renew_at * spread)

    def retry_delay(self, backoff: float) -> float:
        """The back-off drawn between half and all of `backoff`, but never past a quarter of what is
        left of the current certificate: the retries come thicker as its expiry nears."""
        wait = backoff * (0.5 + self.rng() / 2)
        if self.current is not None:
            left = self.current.svid.not_after - self.clock()
            if left > 0:
                wait = min(wait, left / 4)
        return max(MIN_WAIT, wait)

    async def obtain(self) -> Material:
        """One new key, SVID and bundle, checked together; raises IdentityError."""
        watched = self._watched_count
        svid = await self.client.fetch_svid(self.ttl)
        roots = await self.client.fetch_bundle()
        # A CA without the bundle RPC (istiod) sends the root last in the chain: it stands in.
        bundle = roots if roots is not None else [svid.chain[-1]]
        verify_with_bundle(svid, bundle)
        if self._watched_count != watched and self._watched is not None:
            # A watch brought a bundle while we asked: it may be newer than the one we fetched.
            try:
                verify_with_bundle(svid, list(self._watched))
                bundle = list(self._watched)
            except BadCertificate:
                pass
        return Material(svid, tuple(bundle))

    async def bundle_changed(self, roots: list[x509.Certificate]) -> None:
        """The CA published another trust bundle: use it now, and renew soon if our certificate is not
        from the root that signs now (the first one), at once if its root has left the bundle."""
        self._watched, self._watched_count = tuple(roots), self._watched_count + 1
        current = self.current
        if current is None or _fingerprints(roots) == _fingerprints(current.bundle):
            return
        try:
            verify_with_bundle(current.svid, roots)
        except BadCertificate:
            log.warning("identity: the trust bundle no longer holds the root of our certificate (retired): "
                        "renewing now")
            self._renew_within(0.0)
            return
        material = Material(current.svid, tuple(roots))
        self.current = material
        log.info("identity: new trust bundle of %d roots: %s", len(roots),
                 ", ".join(r.subject.rfc4514_string() for r in roots))
        await self._hand_over(material)
        try:
            verify_with_bundle(current.svid, roots[:1])
        except BadCertificate:
            log.info("identity: the CA signs with another root now: renewing within %g s", REROOT_SPREAD)
            self._renew_within(REROOT_SPREAD * self.rng())

    def _renew_within(self, seconds: float) -> None:
        at = asyncio.get_running_loop().time() + seconds
        self._soon = at if self._soon is None else min(self._soon, at)
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less when a bundle change asks for a renewal sooner."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if self._soon is not None:
                deadline = min(deadline, self._soon)
            left = deadline - loop.time()
            if left <= 0:
                break
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                break
        self._soon = None

    async def run(self) -> None:
        """Forever: obtain, hand over, wait, renew. Only cancellation ends it."""
        backoff = self.backoff_first
        while True:
            try:
                material = await self.obtain()
            except IdentityError as err:
                self.failures += 1
                wait = self.retry_delay(backoff)
                backoff = min(backoff * 2, self.backoff_most)
                self._say_failed(err, wait)
                await self._sleep(wait)
                continue
            backoff = self.backoff_first
            self.current = material
            self.renewals += 1
            await self._hand_over(material)
            self.ready.set()
            wait = self.renewal_delay(material.svid)
            log.info("identity: %s valid until %s; renewing in %.1f s", material.svid.spiffe_id,
                     material.svid.leaf.not_valid_after_utc.isoformat(), wait)
            await self._sleep(wait)

    async def _hand_over(self, material: Material) -> None:
        try:
            result = self.on_update(material)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the consumer's bug must not stop renewals; the material stays current
            log.exception("identity: the update callback failed")

    def _say_failed(self, err: IdentityError, wait: float) -> None:
        if self.current is None:
            log.error("identity: no certificate yet: %s; again in %.1f s", err, wait)
        elif self.current.svid.not_after <= self.clock():
            log.error("identity: the certificate has EXPIRED and cannot be renewed: %s; again in %.1f s",
                      err, wait)
        else:
            left = self.current.svid.not_after - self.clock()
            log.warning("identity: renewal failed (%s); the certificate is valid %.0f s more; "
                        "again in %.1f s", err, left, wait)


def _fingerprints(certs: Iterable[x509.Certificate]) -> list[bytes]:
    return [c.fingerprint(hashes.SHA256()) for c in certs]
