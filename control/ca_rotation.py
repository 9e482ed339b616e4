"""Rotating the mesh's root while the control plane runs: stage, rotate, retire, each an operator's act
(the admin's POST /ca/..., `meshpy ca ...`), checked first, logged, kept in `--ca-dir`, and pushed.

1. stage: the next CA comes from `--ca-dir`'s next/ (the operator's files), or is a new root of our own
   (written to next/ with `--ca-dir`, in memory without). Its root joins the trust bundle; the current CA
   still signs.
2. rotate: the staged CA signs from now on; the old root stays in the bundle for the overlap (by default
   until the longest-lived leaf it may have signed has expired), and previous/ keeps it across restarts.
3. retire: the old root leaves the bundle, at the end of the overlap by itself, or now when asked.

Anything refused (files that do not fit, another trust domain, a CA that would expire before the overlap
ends, a rotation while an older root still overlaps) says why and leaves the CA as it was. Every change
of the bundle reaches the listeners (the sidecars' bundle watches, Envoy's SDS), at once or, for the end
of an overlap, within CHECK_EVERY.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from control.ca import BACKDATE, CertificateAuthority, Issuer, fingerprint
from control.ca_files import CaSetupError, self_signed_root
from control.ca_store import CaStore, rfc3339

log = logging.getLogger("meshpy.control.ca")

CHECK_EVERY = 1.0  # seconds between looks for an overlap that ended


class RotationRefused(Exception):
    """An operator's request that was not carried out; the CA is unchanged. The message says why."""


@dataclass(frozen=True)
class BundleChange:
    """What changed: `signing` is True when the signing CA did (leaves must be made again)."""

    roots: tuple[x509.Certificate, ...]
    signing: bool


Listener = Callable[[BundleChange], None]


def name(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string() or '(no subject)'} [sha256 {fingerprint(cert).hex()[:16]}]"


def spiffe_trust_domains(cert: x509.Certificate) -> set[str]:
    """The trust domains a CA certificate names as SPIFFE IDs in its SANs (none for many CAs)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return {u[len("spiffe://"):].split("/", 1)[0] for u in uris if u.lower().startswith("spiffe://")}


class RootRotation:
    """The operator's side of the CA: `ca`, with its rotation files in `store` (None: in memory only)."""

    def __init__(self, ca: CertificateAuthority, store: CaStore | None = None) -> None:
        self.ca, self.store = ca, store
        self.listeners: list[Listener] = []
        self._seen = self._bundle_key()
        self._signing = fingerprint(ca.issuer.cert)

    @property
    def default_overlap(self) -> float:
        """How long an old root stays: a leaf signed just before the rotation lives at most max_ttl, plus
        a minute for clock skew."""
        return self.ca.max_ttl + BACKDATE

    # -- start ----------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Pick up the directory's rotation state at start: finish a rotation cut short, keep the old root
        of previous/ until its time, stage next/. Raises CaSetupError."""
        if self.store is None:
            return
        now = self.ca.clock()
        previous = self.store.load_previous()
        if previous is not None:
            root, until = previous
            if until <= now:
                log.info("ca: the previous root %s retired at %s: removing %s", name(root), rfc3339(until),
                         self.store.previous)
                self.store.remove_previous()
            elif fingerprint(root) != fingerprint(self.ca.issuer.root):
                self.ca.keep_retiring(root, until)
                log.info("ca: the previous root %s stays in the trust bundle until %s (%s)", name(root),
                         rfc3339(until), self.store.previous)
        if self.store.has_next():
            issuer = self.store.load_next()
            problem = self._problem(issuer, self.default_overlap, str(self.store.next))
            if problem is not None:
                raise CaSetupError(f"{problem} (remove {self.store.next} to start without it staged)")
            self.ca.stage(issuer)
            log.info("ca: staged from %s: %s (in the trust bundle, not signing)", self.store.next,
                     name(issuer.cert))
        self._seen = self._bundle_key()

    # -- the operator's acts --------------------------------------------------------------------------------
    def stage(self) -> str:
        """Stage the next CA; returns what was done. Raises RotationRefused."""
        if self.store is not None:
            try:
                made = not self.store.has_next()
                issuer = self.store.load_next() if not made else self._new_root()
            except CaSetupError as err:
                raise self._refuse("stage", str(err)) from None
            where = str(self.store.next)
        else:
            made, issuer, where = True, self._new_root(), "memory"
        staged = self.ca.staged
        if staged is not None and fingerprint(staged.cert) == fingerprint(issuer.cert):
            return f"already staged: {name(issuer.cert)}"
        problem = self._problem(issuer, self.default_overlap, where)
        if problem is not None:
            raise self._refuse("stage", problem)
        if made and self.store is not None:
            try:
                self.store.write_next(issuer)
            except (OSError, CaSetupError) as err:
                raise self._refuse("stage", f"cannot write {self.store.next}: {err}") from None
        self.ca.stage(issuer)
        what = (f"staged a new root ({'written to ' + where if self.store else 'in memory'})" if made
                else f"staged {where}")
        if staged is not None:
            what += f", in place of {name(staged.cert)}"
        message = f"{what}: {name(issuer.cert)}; it is in the trust bundle, the current CA still signs"
        log.info("ca: %s", message)
        self.check()
        return message

    def rotate(self, overlap: float | None = None) -> str:
        """Sign with the staged CA; the old root stays `overlap` seconds (default: default_overlap)."""
        staged = self.ca.staged
        if staged is None:
            raise self._refuse("rotate", "nothing is staged: stage the next CA first")
        if overlap is not None and overlap < 0:
            raise self._refuse("rotate", "the overlap must be >= 0 seconds")
        keep = self.default_overlap if overlap is None else overlap
        old = self.ca.issuer
        same_root = fingerprint(old.root) == fingerprint(staged.root)
        # One old root at a time (previous/ keeps one): a rollback to it (staging previous/ again) is the
        # exception, as that root needs no overlap of its own.
        others = [(root, until) for root, until in self.ca.retiring()
                  if fingerprint(root) != fingerprint(staged.root)]
        if others:
            raise self._refuse("rotate", f"an older root, {name(others[0][0])}, is still in the trust bundle "
                               f"until {rfc3339(others[0][1])}: retire it first")
        problem = self._problem(staged, keep, "the staged CA")
        if problem is not None:
            raise self._refuse("rotate", problem)
        if self.store is not None:
            try:
                if fingerprint(self.store.load_next().cert) != fingerprint(staged.cert):
                    raise self._refuse("rotate", f"{self.store.next} changed since it was staged: stage "
                                       "it again")
            except CaSetupError as err:
                raise self._refuse("rotate", f"{err} (it was staged from there)") from None
            try:
                self.store.commit_rotation(self.ca.clock() + (0.0 if same_root else keep))
            except OSError as err:
                raise self._refuse("rotate", f"cannot write {self.store.directory}: {err}") from None
        self.ca.rotate(staged, keep)
        message = f"signing with {name(staged.cert)}"
        if same_root:
            message += "; the root is the same, so the trust bundle does not change"
        else:
            message += f"; the old root {name(old.root)} stays in the trust bundle until " \
                       f"{rfc3339(self.ca.clock() + keep)}"
            if keep < self.default_overlap:
                message += (f" (shorter than the longest leaf lifetime, {self.default_overlap:g} s: "
                            "leaves it signed may be refused before they expire)")
        log.info("ca: rotated: %s", message)
        self.check()
        return message

    def retire(self) -> str:
        """End the overlap now: old roots leave the bundle."""
        retiring = self.ca.retiring()
        if not retiring:
            raise self._refuse("retire", "no old root is in the trust bundle")
        parts = []
        for root, until in retiring:
            last = self.ca.last_leaf_expiry.get(fingerprint(root))
            note = f"its overlap was to end at {rfc3339(until)}"
            if last is not None and last > self.ca.clock():
                note += f"; a leaf this control plane signed under it is valid until {rfc3339(last)}"
            parts.append(f"{name(root)} ({note})")
        self.ca.retire_old_roots()
        if self.store is not None:
            self.store.remove_previous()
        message = "retired " + ", ".join(parts)
        log.warning("ca: %s: peers that still hold a leaf it signed are refused from now on", message)
        self.check()
        return message

    # -- watching the bundle --------------------------------------------------------------------------------
    def check(self) -> bool:
        """Tell the listeners if the bundle (or the signing CA) changed; True if it did."""
        key = self._bundle_key()
        signing = fingerprint(self.ca.issuer.cert)
        if key == self._seen and signing == self._signing:
            return False
        if self.store is not None and not self.ca.retiring() and self.store.previous.exists():
            log.info("ca: the old root's overlap is over: removing %s", self.store.previous)
            self.store.remove_previous()
        change = BundleChange(tuple(self.ca.trust_bundle()), signing != self._signing)
        self._seen, self._signing = key, signing
        log.info("ca: trust bundle now %s", ", ".join(name(r) for r in change.roots))
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:  # one listener's bug must not keep the others from hearing
                log.exception("ca: a trust bundle listener failed")
        return True

    async def run(self, every: float = CHECK_EVERY) -> None:
        """Forever: notice overlaps that ended (the CA drops those roots when asked for the bundle)."""
        while True:
            await asyncio.sleep(every)
            self.check()

    def status(self) -> dict[str, Any]:
        """What GET /ca shows."""
        ca = self.ca
        now = ca.clock()

        def cert(c: x509.Certificate) -> dict[str, Any]:
            return {"subject": c.subject.rfc4514_string(), "sha256": fingerprint(c).hex(),
                    "not_after": rfc3339(c.not_valid_after_utc.timestamp())}

        def leaves(root: x509.Certificate) -> dict[str, Any]:
            last = ca.last_leaf_expiry.get(fingerprint(root))
            return {"last_leaf_expiry": rfc3339(last) if last is not None and last > now else None}

        retiring = ca.retiring()
        staged = ca.staged
        bundle = []
        for root in ca.trust_bundle():
            fp = fingerprint(root)
            role = "signing" if fp == fingerprint(ca.issuer.root) else "staged" if staged is not None and \
                fp == fingerprint(staged.root) else "retiring"
            entry = {**cert(root), "role": role}
            if role == "retiring":
                entry.update(leaves(root), retire_after=rfc3339(max(u for r, u in retiring
                                                                    if fingerprint(r) == fp)))
            bundle.append(entry)
        return {
            "trust_domain": ca.trust_domain,
            "state": "staged" if staged is not None else "overlap" if retiring else "steady",
            "signing": {**cert(ca.issuer.cert), "root": cert(ca.issuer.root)["sha256"],
                        **leaves(ca.issuer.root)},
            "staged": None if staged is None else {**cert(staged.cert), "root": cert(staged.root)["sha256"]},
            "bundle": bundle,
            "overlap_end": rfc3339(max(u for _, u in retiring)) if retiring else None,
            "default_overlap_seconds": self.default_overlap,
            "ca_dir": str(self.store.directory) if self.store is not None else None,
        }

    # -- checks ---------------------------------------------------------------------------------------------
    def _new_root(self) -> Issuer:
        return self_signed_root(self.ca.trust_domain, now=self.ca.clock())

    def _problem(self, issuer: Issuer, overlap: float, where: str) -> str | None:
        """Why a next CA cannot take over, if it cannot: another trust domain, the current CA itself, or
        one that expires before the old root's overlap would end."""
        ca = self.ca
        for c in issuer.chain:
            others = spiffe_trust_domains(c) - {ca.trust_domain}
            if others:
                return (f"{where}: {name(c)} is a CA of trust domain {', '.join(sorted(others))}, not "
                        f"{ca.trust_domain}")
        if fingerprint(issuer.cert) == fingerprint(ca.issuer.cert):
            return f"{where}: {name(issuer.cert)} is the CA signing now"
        now = ca.clock()
        end = now + overlap
        for c in issuer.chain:
            expiry = c.not_valid_after_utc.timestamp()
            if expiry <= end:
                return (f"{where}: {name(c)} expires at {rfc3339(expiry)}, before the old root's overlap "
                        f"would end ({rfc3339(end)}, {overlap:g} s from now): the mesh would be left with no "
                        "valid root")
            if c.not_valid_before_utc.timestamp() > now + BACKDATE:
                return f"{where}: {name(c)} is not valid before {rfc3339(c.not_valid_before_utc.timestamp())}"
        return None

    def _refuse(self, act: str, reason: str) -> RotationRefused:
        log.warning("ca: %s refused: %s (the CA is unchanged)", act, reason)
        return RotationRefused(reason)

    def _bundle_key(self) -> tuple[bytes, ...]:
        return tuple(fingerprint(root) for root in self.ca.trust_bundle())
