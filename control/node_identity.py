"""Identities for proxies that cannot send a CSR (unmodified Envoy): the control plane makes the key
pair and serves it over SDS on the node's own ADS stream, as the secrets `default` (key and SVID) and
`ROOTCA` (the trust bundle), the names Istio's sidecars ask for.

The stream proves whose it is with `authorization: Bearer <token>` in its gRPC metadata (Envoy's
`grpc_services[].initial_metadata`), checked like a CSR's (bootstrap tokens, Kubernetes TokenReview):
a stream without a valid token gets no identity secrets, and asking for them is logged. Each identity's
pair is made once and made again at half its life; then every stream is woken, and those of that
identity get the new one. A change of the trust bundle (control/ca_rotation.py) reaches every node the
same way: a new ROOTCA, and after a rotation new pairs from the new CA at once. meshpy sidecars do not
need this: they make their own keys (a CSR), and a key made here crosses the network, which is why the
ADS port should be on loopback or serve TLS (control/serving_tls.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from control.ca import CertificateAuthority
from control.ca_auth import Authenticator, ClearTokens
from control.ca_rotation import BundleChange
from control.cache import SECRET, Snapshot, make_snapshot
from meshpy.identity.spiffe import SpiffeId
from meshpy.xds.secrets import SecretMessage

log = logging.getLogger("meshpy.control")

CERTIFICATE, ROOTS = "default", "ROOTCA"
CHECK_EVERY = 1.0  # seconds between looks for pairs past half their life


@dataclass
class _Issued:
    chain: str
    key: str
    made: float
    renew_at: float


def bearer(metadata: Any) -> str | None:
    values = [str(v) for k, v in (metadata or ()) if k.lower() == "authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class NodeIdentities:
    """Key pairs per identity, and the snapshot a node of that identity gets (its SDS secrets added)."""

    def __init__(self, ca: CertificateAuthority, authenticator: Authenticator,
                 clock: Callable[[], float] = time.time) -> None:
        self.ca = ca
        self.authenticator = authenticator
        self.clock = clock
        self._issued: dict[SpiffeId, _Issued] = {}
        self._overlays: dict[tuple[str, SpiffeId, float], Snapshot] = {}
        self.issued = 0
        self.clear_tokens = ClearTokens()  # the CA service's, when both run (one warning per process)

    async def identify(self, metadata: Any, node: str, clear: bool = False) -> SpiffeId | None:
        """The identity a stream's metadata proves, or None (no token, or one that is not valid). `clear`:
        the stream came over a plaintext port."""
        token = bearer(metadata)
        if token is None:
            return None
        if clear:
            self.clear_tokens.seen("an ADS stream's bearer token", f"node {node}")
        caller = await self.authenticator.authenticate(token)
        if caller is None:
            log.warning("node %s: the ADS stream's bearer token is not valid: no identity for it", node)
            return None
        return SpiffeId(self.ca.trust_domain, caller.namespace, caller.service_account)

    def _pair(self, who: SpiffeId) -> _Issued:
        now = self.clock()
        found = self._issued.get(who)
        if found is None or now >= found.renew_at:
            pair = self.ca.issue_key_pair(who)
            ttl = self.ca.ttl_for(None)
            found = self._issued[who] = _Issued(pair.chain_pem, pair.key_pem, now, now + ttl / 2)
            self.issued += 1
            log.info("issued a key pair for %s (an Envoy node: no CSR)", who)
        return found

    def overlay(self, snap: Snapshot, who: SpiffeId) -> Snapshot:
        """`snap` with `who`'s secrets among its Secrets (made once per snapshot and pair)."""
        pair = self._pair(who)
        key = (snap.version, who, pair.made)
        found = self._overlays.get(key)
        if found is None:
            resources: dict[str, Mapping[str, Any]] = dict(snap.resources)
            secrets = dict(resources.get(SECRET, {}))
            secrets[CERTIFICATE] = json_format.ParseDict({"name": CERTIFICATE, "tls_certificate": {
                "certificate_chain": {"inline_string": pair.chain},
                "private_key": {"inline_string": pair.key}}}, SecretMessage())
            bundle = "".join(self.ca.trust_bundle_pem())
            secrets[ROOTS] = json_format.ParseDict({"name": ROOTS, "validation_context": {
                "trusted_ca": {"inline_string": bundle}}}, SecretMessage())
            resources[SECRET] = secrets
            if len(self._overlays) >= 4096:
                self._overlays.clear()
            found = self._overlays[key] = make_snapshot(resources)
        return found

    def bundle_changed(self, change: BundleChange, wake: Callable[[], None]) -> None:
        """A new trust bundle for every node; after a rotation (`change.signing`) new pairs too, signed by
        the new CA (its root is already trusted: it was staged first). `wake` pushes them."""
        self._overlays.clear()
        if change.signing:
            self._issued.clear()
        wake()

    def due(self) -> bool:
        """Whether some pair is past half its life (streams must be woken to get a new one)."""
        now = self.clock()
        return any(now >= issued.renew_at for issued in self._issued.values())

    async def renew(self, wake: Callable[[], None]) -> None:
        """Forever: when a pair is due, wake every stream (each makes and gets its own anew)."""
        while True:
            await asyncio.sleep(CHECK_EVERY)
            if self.due():
                wake()
