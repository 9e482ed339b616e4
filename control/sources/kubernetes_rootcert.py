"""The mesh's roots in every namespace: the ConfigMap meshpy-ca-root-cert, as istiod writes its
istio-ca-root-cert.

Injected sidecars check the control plane's TLS port with the roots of this ConfigMap (`meshpy inject`
mounts it beside their token: meshpy/sidecar/inject_pod.py). The control plane writes it (creates it, or
replaces it when it differs) in every namespace it watches, with the CA's whole trust bundle as the
sidecars' TrustBundle service serves it (all roots: a staged one is there before anything is signed by
it), and again whenever the bundle changes (stage, rotate, retire, the end of an overlap: the listeners of
control/ca_rotation.py) or someone edits or deletes it.

Watched, not looked at periodically: the ConfigMaps are listed and watched with the fieldSelector
`metadata.name=meshpy-ca-root-cert`, so that an edit or a deletion is undone within a moment, no request
is made while nothing changes, and RBAC can grant get/list/watch/update on that one name (only create
cannot be limited by name). Without `--namespace`, Namespaces are watched too: a new one gets its
ConfigMap as soon as it exists; one being deleted is left alone (the API refuses new content there).

A failed write (403 without the RBAC rule, a 409 when someone else keeps writing first, the API out of
reach) is logged once per namespace and reason and tried again after a doubling, jittered delay; it
never reaches the rest of the control plane. Two writers that disagree (a second control plane with
another root, as during the rolling update of one whose root lives in its pod) would otherwise undo each
other's write at once, forever: a ConfigMap that is changed again within FIGHT_WINDOW of the write that
undid a change is restored after a doubling delay instead, and that is said once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from control.sources.kubernetes_resources import Object
from control.sources.kubernetes_watch import REQUEST_TIMEOUT, WATCH_SECONDS, Backoff, Counters, Reflector
from meshpy.sidecar.inject_pod import ROOT_CONFIG_MAP, ROOT_FILE

log = logging.getLogger("meshpy.control.kubernetes")

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "meshpy-control"
SELECTOR = f"metadata.name={ROOT_CONFIG_MAP}"
DEBOUNCE = 0.1  # seconds of quiet before writing: a namespace's list and a bundle change make one round
FIGHT_WINDOW = 60.0  # changed again sooner than this after our write: someone else writes it too
CONCURRENCY = 8  # writes in flight at once: a bundle change in a thousand namespaces is no storm on the API
FIGHT = "changed again"  # the reason logged for a fight, beside the failures'
ATTEMPTS = 3  # writes of one round in one namespace (a create that finds one, a replace of a stale copy)

BundlePem = Callable[[], Sequence[str]]


class WriteFailed(Exception):
    """`reason`: what is logged once per namespace ("403 Forbidden", "ClientConnectorError")."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def namespace_shape(obj: Object) -> Object:
    """What is kept of a Namespace: its name and whether it is being deleted (no event of a label)."""
    meta = obj.get("metadata") or {}
    return {"metadata": {"name": meta.get("name", ""), "deletionTimestamp": meta.get("deletionTimestamp")},
            "status": {"phase": (obj.get("status") or {}).get("phase")}}


def terminating(namespace: Object) -> bool:
    return bool(namespace["metadata"].get("deletionTimestamp")) or \
        namespace["status"].get("phase") == "Terminating"


def is_current(config_map: Object, pem: str) -> bool:
    """It holds exactly the bundle, and says who keeps it."""
    labels = (config_map.get("metadata") or {}).get("labels") or {}
    return (config_map.get("data") or {}) == {ROOT_FILE: pem} and not config_map.get("binaryData") \
        and labels.get(MANAGED_BY) == MANAGER


def desired(namespace: str, pem: str, current: Object | None) -> Object:
    """The ConfigMap to write: the bundle alone as its data; of one already there, the labels,
    annotations and owners someone gave it are kept, and its resourceVersion (a write over a newer one
    is refused with 409, not lost)."""
    meta: dict[str, Any] = {"name": ROOT_CONFIG_MAP, "namespace": namespace}
    old = (current or {}).get("metadata") or {}
    kept = ("labels", "annotations", "ownerReferences", "resourceVersion")
    meta.update({k: old[k] for k in kept if k in old})
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY: MANAGER}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {ROOT_FILE: pem}}


@dataclass
class _Namespace:
    """Where one namespace stands."""

    failures: Backoff
    fights: Backoff
    not_before: float = 0.0  # no write before this (a failure's or a fight's delay)
    held: bool = False  # the delay was a fight's: write when it ends
    restores: int = 0  # writes that undid someone's change, each within FIGHT_WINDOW of the one before
    written: str | None = None  # the bundle last written here, and when
    written_at: float = -math.inf
    logged: set[str] = field(default_factory=set)  # failure reasons said since the last success


class RootCertWriter:
    """Keeps ConfigMap meshpy-ca-root-cert in `namespaces` (empty: every namespace, watched) holding
    `bundle()` joined, a PEM per root. Call `bundle_changed` when the bundle changes (a RootRotation
    listener)."""

    def __init__(self, api: client.ApiClient, bundle: BundlePem, *, namespaces: Sequence[str] = (),
                 watch_seconds: int = WATCH_SECONDS, backoff: Callable[[], Backoff] = Backoff,
                 write_backoff: Callable[[], Backoff] = lambda: Backoff(1.0, 300.0),
                 debounce: float = DEBOUNCE, fight_window: float = FIGHT_WINDOW,
                 clock: Callable[[], float] = time.monotonic, counters: Counters | None = None) -> None:
        """`counters`: the Kubernetes source's, so that these watches' events and errors are in its
        metrics."""
        self.bundle, self.debounce, self.fight_window, self.clock = bundle, debounce, fight_window, clock
        self.core = client.CoreV1Api(api)
        self.scoped = tuple(sorted(set(namespaces)))
        self.counters = counters if counters is not None else Counters()
        self.writes: dict[str, int] = {}  # by outcome: created, replaced, failed
        self._write_backoff = write_backoff
        self._states: dict[str, _Namespace] = {}
        self._dirty = asyncio.Event()
        core = self.core
        self.config_maps = [
            Reflector("configmaps", core.list_namespaced_config_map if ns else
                      core.list_config_map_for_all_namespaces, self._dirty.set, self.counters, namespace=ns,
                      watch_seconds=watch_seconds, backoff=backoff(), field_selector=SELECTOR)
            for ns in (self.scoped or (None,))]
        # Scoped to namespaces, the list is given (and its role need not list Namespaces at all).
        self.namespaces = None if self.scoped else Reflector(
            "namespaces", core.list_namespace, self._dirty.set, self.counters, watch_seconds=watch_seconds,
            backoff=backoff(), shape=namespace_shape)

    def bundle_changed(self, _change: object = None) -> None:
        self._dirty.set()

    @property
    def reflectors(self) -> list[Reflector]:
        return [*self.config_maps, *([self.namespaces] if self.namespaces is not None else [])]

    @property
    def synced(self) -> bool:
        return all(r.synced for r in self.reflectors)

    def targets(self) -> list[str]:
        """The namespaces that must hold the ConfigMap now."""
        if self.namespaces is None:
            return list(self.scoped)
        return sorted(obj["metadata"]["name"] for obj in self.namespaces.objects.values()
                      if not terminating(obj))

    def _reflector(self, namespace: str) -> Reflector:
        return next(r for r in self.config_maps if r.namespace in (None, namespace))

    def current(self, namespace: str) -> Object | None:
        """The ConfigMap there, as last listed, watched or written."""
        return self._reflector(namespace).objects.get((namespace, ROOT_CONFIG_MAP))

    async def run(self) -> None:
        """Forever; cancelling it stops the watches."""
        async with asyncio.TaskGroup() as group:
            for r in self.reflectors:
                group.create_task(r.run(), name=f"kubernetes root cert {r.what}")
            group.create_task(self._writer(), name="kubernetes root cert writer")

    async def _writer(self) -> None:
        while True:
            due = [s.not_before for s in self._states.values() if s.not_before > self.clock()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(due) - self.clock() if due else None):
                    await self._dirty.wait()
            await asyncio.sleep(self.debounce)
            self._dirty.clear()  # changes from here on are seen by the next round
            if not self.synced:
                continue
            try:
                await self.sync()
            except Exception:  # a bug here must not end the watches, nor the control plane at its exit
                log.exception("kubernetes: writing ConfigMap %s failed; trying again at the next change",
                              ROOT_CONFIG_MAP)

    async def sync(self) -> int:
        """Write the ConfigMap wherever it is missing or not the bundle, unless held back; how many
        namespaces were written."""
        pem = "".join(self.bundle())
        now = self.clock()
        targets = self.targets()
        for gone in self._states.keys() - set(targets):
            del self._states[gone]
        due: list[str] = []
        for ns in targets:
            if (cm := self.current(ns)) is not None and is_current(cm, pem):
                continue
            state = self._states.get(ns) or self._states.setdefault(
                ns, _Namespace(self._write_backoff(), self._write_backoff()))
            if now < state.not_before:
                continue
            if state.written != pem or now - state.written_at >= self.fight_window:
                # A new bundle, or the first change in a long while: not a fight (any more).
                state.fights.reset()
                state.restores = 0
                state.logged.discard(FIGHT)
            elif not state.held:
                state.restores += 1  # someone changed what was written here a moment ago
                if state.restores > 1:  # and not for the first time: a one-off edit is undone at once
                    delay = state.fights.delay()
                    state.not_before, state.held = now + delay, True
                    self._log_once(ns, state, FIGHT, f"changed again {now - state.written_at:.0f}s after it "
                                   "was written (another writer, such as a second control plane with another "
                                   f"root?); restoring it in {delay:.1f}s, and later ones later still")
                    continue
            state.held = False
            due.append(ns)
        if not due:
            return 0
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(ns: str) -> str:
            async with limit:
                return await self._write(ns, pem)

        outcomes = await asyncio.gather(*(one(ns) for ns in due))
        done: dict[str, list[str]] = {}
        for ns, outcome in zip(due, outcomes, strict=True):
            done.setdefault(outcome, []).append(ns)
        for outcome in ("created", "replaced", "failed"):
            self.writes[outcome] = self.writes.get(outcome, 0) + len(done.get(outcome, ()))
        for outcome in ("created", "replaced"):
            if done.get(outcome):
                names = done[outcome]
                where = ", ".join(names) if len(names) <= 10 else f"{len(names)} namespaces"
                log.info("kubernetes: ConfigMap %s %s in %s (%d roots)", ROOT_CONFIG_MAP, outcome, where,
                         pem.count("-----BEGIN CERTIFICATE-----"))
        return len(done.get("created", ())) + len(done.get("replaced", ()))

    async def _write(self, ns: str, pem: str) -> str:
        """One namespace's write: its outcome, "created", "replaced", "unchanged" or "failed"."""
        state = self._states[ns]
        try:
            outcome, written = await self._put(ns, pem, self.current(ns))
        except WriteFailed as err:
            delay = state.failures.delay()
            state.not_before = self.clock() + delay
            self._log_once(ns, state, err.reason, f"{err.reason}: {err}; trying again in {delay:.1f}s (said "
                           "once per namespace and reason)", logging.WARNING)
            return "failed"
        if failed := state.logged - {FIGHT}:
            log.info("kubernetes: ConfigMap %s in %s written after %s", ROOT_CONFIG_MAP, ns,
                     ", ".join(sorted(failed)))
            state.logged -= failed
        state.failures.reset()
        state.written, state.written_at = pem, self.clock()
        if written is not None:
            # Kept as the API answered it until the watch brings it: a round before then (another
            # namespace's event) must not take the copy the write replaced for someone else's change.
            self._reflector(ns).objects[(ns, ROOT_CONFIG_MAP)] = written
        return outcome

    async def _put(self, ns: str, pem: str, current: Object | None) -> tuple[str, Object | None]:
        """Create, or replace what is there: the outcome and the object written. A create that finds
        one, or a replace of a copy that is no longer the latest, reads it and goes on from there."""
        failure = WriteFailed("409 Conflict", "changed under every write")
        for _ in range(ATTEMPTS):
            if current is not None and is_current(current, pem):
                return "unchanged", None
            if current is None:
                code, body = await self._call(self.core.create_namespaced_config_map, ns,
                                              desired(ns, pem, None))
                if code in (200, 201):
                    return "created", body if body.get("metadata") else None
            else:
                code, body = await self._call(self.core.replace_namespaced_config_map, ROOT_CONFIG_MAP, ns,
                                              desired(ns, pem, current))
                if code == 200:
                    return "replaced", body if body.get("metadata") else None
                if code == 404:  # deleted since it was seen
                    current = None
                    continue
            failure = WriteFailed(f"{code} {body.get('reason') or ''}".strip(),
                                  str(body.get("message") or "(no message)"))
            if code != 409:  # AlreadyExists (a create) or Conflict (a replace): someone was first
                raise failure
            current = await self._read(ns)
        raise failure

    async def _read(self, ns: str) -> Object | None:
        code, body = await self._call(self.core.read_namespaced_config_map, ROOT_CONFIG_MAP, ns)
        if code == 404:
            return None
        if code != 200:
            raise WriteFailed(f"{code} {body.get('reason') or ''}".strip(), str(body.get("message")))
        return body

    async def _call(self, method: Callable[..., Any], *args: Any) -> tuple[int, dict[str, Any]]:
        """The status and JSON body of one request (raw JSON, as the reflectors read it)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                resp = await method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
                try:
                    code = int(resp.status)
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                finally:
                    resp.release()
        except ApiException as err:
            raise WriteFailed(f"{err.status} {err.reason}", str(err.body or err.reason)) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise WriteFailed(type(err).__name__, f"the Kubernetes API is not reachable: {err!r}") from None
        return code, body if isinstance(body, dict) else {}

    def _log_once(self, ns: str, state: _Namespace, reason: str, message: str,
                  level: int = logging.INFO) -> None:
        if reason not in state.logged:
            state.logged.add(reason)
            log.log(level, "kubernetes: ConfigMap %s in %s: %s", ROOT_CONFIG_MAP, ns, message)


class RootCertCollector(Collector):
    """The writer's counts, read at scrape time."""

    def __init__(self, writer: RootCertWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Any]:
        writes = CounterMetricFamily("meshpy_control_kubernetes_root_cert_writes",
                                     f"writes of the ConfigMap {ROOT_CONFIG_MAP}, by outcome (created, "
                                     "replaced, failed)", labels=["outcome"])
        for outcome, n in sorted(self.writer.writes.items()):
            writes.add_metric([outcome], n)
        yield writes
