"""The live layered runtime: its layers' values, the Snapshot the data plane reads, and what changes it.

Envoy's LoaderImpl, for meshpy: a new Snapshot is built whenever a layer changes (a config with other
layers, a disk layer's symlink swapped, `/runtime_modify`, an RTDS update) and published by replacing
`Runtime.snapshot`; readers hold no lock and see the old one or the new one, never a mix.

A disk layer that cannot be read is left out, as Envoy leaves it out (and counts a load error). A
layer that holds a value meshpy refuses (meshpy.runtime.features) is different: at config load that is
a ConfigError; later, from a swapped directory, the layer keeps its previous values and the error is
logged and counted, as a bad config pushed to a running proxy is refused and the old one serves on.
The admin layer's values outlive config reloads while the config keeps an admin layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.runtime import NO_RUNTIME, Entry, LayeredRuntime, RuntimeLayer
from meshpy.runtime.disk import POLL_INTERVAL, Signature, read_directory, signature
from meshpy.runtime.features import refusal
from meshpy.runtime.snapshot import EMPTY, Layer, Snapshot
from meshpy.runtime.values import RuntimeValueError, from_text

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from meshpy.tasks import TaskOwner

__all__ = ["NO_ADMIN_LAYER", "DiskState", "Runtime", "refused"]

log = logging.getLogger("meshpy.runtime")

NO_ADMIN_LAYER = "No admin layer specified"  # Envoy's answer, word for word


def refused(values: Mapping[str, Entry]) -> list[tuple[str, str]]:
    """(key, reason) for each value meshpy cannot take."""
    return [(k, why) for k, e in values.items() if (why := refusal(k, e)) is not None]


class DiskState:
    """What a disk layer last read: its values (None: no directory, or not readable) and the symlink
    root's signature at the time."""

    __slots__ = ("signature", "values")

    def __init__(self, values: dict[str, Entry] | None, sig: Signature) -> None:
        self.values = values
        self.signature = sig


def _read(layer: RuntimeLayer) -> tuple[DiskState, str]:
    """The layer as it is on disk now, and why it could not be read ("" when it could, or is absent)."""
    sig = signature(layer.symlink_root)
    try:
        return DiskState(read_directory(layer.directory), sig), ""
    except (OSError, RuntimeValueError) as exc:
        return DiskState(None, sig), str(exc)


class Runtime:
    __slots__ = ("_admin", "_disk", "_poller", "_rtds", "_tasks", "errors", "loads", "model", "snapshot")

    def __init__(self, tasks: TaskOwner | None = None) -> None:
        self.snapshot: Snapshot = EMPTY
        self.model: LayeredRuntime = NO_RUNTIME
        self._tasks = tasks
        self._admin: dict[str, Entry] = {}
        self._disk: dict[str, DiskState] = {}  # by layer name (Envoy refuses duplicate names)
        self._rtds: dict[str, dict[str, Entry]] = {}  # by resource name
        self._poller: asyncio.Task[None] | None = None
        self.loads = 0  # snapshots built (Envoy's runtime.load_success)
        self.errors = 0  # layers that could not be loaded (runtime.load_error)

    # -- configuration -------------------------------------------------------------------------------
    def prepare(self, model: LayeredRuntime) -> dict[str, DiskState]:
        """Read `model`'s disk layers. ConfigError, naming the layer, when one holds a value meshpy
        refuses; nothing changes until `commit`."""
        disk: dict[str, DiskState] = {}
        issues = []
        for i, layer in enumerate(model.layers):
            if layer.kind != "disk":
                continue
            state, error = _read(layer)
            if error:
                self.errors += 1
                log.error("runtime: disk layer %s cannot be read, left out: %s", layer.name, error)
            for key, why in refused(state.values or {}):
                issues.append(ConfigIssue(f"layered_runtime.layers[{i}].disk_layer",
                                          f"{key} (read from {layer.directory}): {why}"))
            disk[layer.name] = state
        if issues:
            raise ConfigError(issues)
        return disk

    def commit(self, model: LayeredRuntime, disk: dict[str, DiskState]) -> None:
        if not model.admin_layer:
            self._admin = {}
        wanted = model.rtds_names()
        self._rtds = {n: v for n, v in self._rtds.items() if n in wanted}
        self.model, self._disk = model, disk
        self._rebuild()
        polling = any(layer.kind == "disk" for layer in model.layers)
        if polling and self._poller is None and self._tasks is not None:
            self._poller = self._tasks.spawn(self._poll(), name="runtime disk layers")
        elif not polling and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def configure(self, model: LayeredRuntime) -> None:
        self.commit(model, self.prepare(model))

    def _rebuild(self) -> None:
        layers = []
        for layer in self.model.layers:
            if layer.kind == "static":
                layers.append(Layer(layer.name, dict(layer.values)))
            elif layer.kind == "disk":
                state = self._disk.get(layer.name)
                if state is not None and state.values is not None:
                    layers.append(Layer(layer.name, state.values))
            elif layer.kind == "admin":
                layers.append(Layer(layer.name, self._admin))
            else:
                layers.append(Layer(layer.name, self._rtds.get(layer.resource, {})))
        self.snapshot = Snapshot(tuple(layers))
        self.loads += 1

    # -- disk layers ---------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.poll()

    def poll(self) -> bool:
        """Read again each disk layer whose symlink root was swapped; True if the snapshot changed."""
        changed = False
        for layer in self.model.layers:
            old = self._disk.get(layer.name)
            if layer.kind != "disk" or old is None or signature(layer.symlink_root) == old.signature:
                continue
            state, error = _read(layer)
            if error:
                self.errors += 1
                log.error("runtime: disk layer %s cannot be read, left out: %s", layer.name, error)
            bad = refused(state.values or {})
            if bad:
                self.errors += 1
                old.signature = state.signature  # (said once per swap, not at every poll)
                log.error("runtime: disk layer %s not reloaded, its previous values stay: %s", layer.name,
                          "; ".join(f"{k}: {why}" for k, why in bad))
                continue
            self._disk[layer.name] = state
            changed = True
            log.info("runtime: disk layer %s reloaded from %s (%d values)", layer.name, layer.directory,
                     len(state.values or {}))
        if changed:
            self._rebuild()
        return changed

    # -- the admin layer -----------------------------------------------------------------------------
    def modify(self, pairs: Sequence[tuple[str, str]]) -> str | None:
        """Envoy's `/runtime_modify`: set each key in the admin layer, or remove it where the value is
        empty. All or nothing: the reason none was taken, or None."""
        if not self.model.admin_layer:
            return NO_ADMIN_LAYER
        parsed: dict[str, Entry | None] = {}
        for key, text in pairs:
            if key in parsed:
                continue  # Envoy takes the first value of a repeated key
            try:
                parsed[key] = from_text(text) if text else None
            except RuntimeValueError as exc:
                return f"{key}: {exc}"
        bad = refused({k: e for k, e in parsed.items() if e is not None})
        if bad:
            return "; ".join(f"{k}: {why}" for k, why in bad)
        admin = dict(self._admin)
        for key, value in parsed.items():
            admin.pop(key, None)
            if value is not None:
                admin[key] = value
        self._admin = admin
        self._rebuild()
        return None

    # -- RTDS ----------------------------------------------------------------------------------------
    def set_rtds(self, resources: Mapping[str, Mapping[str, Entry]]) -> None:
        """The RTDS resources the xDS client holds now, by name (a layer whose resource is absent, or was
        removed, is empty, as in Envoy)."""
        self._rtds = {name: dict(values) for name, values in resources.items()}
        self._rebuild()

    # -- what admin and metrics show -----------------------------------------------------------------
    def view(self) -> dict[str, object]:
        return self.snapshot.view()

    def families(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily("meshpy_runtime_load_success", "Runtime snapshots built (Envoy's "
                                  "runtime.load_success).", value=self.loads)
        yield CounterMetricFamily("meshpy_runtime_load_error", "Runtime layers that could not be loaded "
                                  "(Envoy's runtime.load_error).", value=self.errors)
        snap = self.snapshot
        yield GaugeMetricFamily("meshpy_runtime_num_keys", "Keys in the runtime.", value=len(snap.values))
        yield GaugeMetricFamily("meshpy_runtime_num_layers", "Layers in the runtime.", value=len(snap.layers))
        yield GaugeMetricFamily("meshpy_runtime_admin_overrides_active", "1 while /runtime_modify has set "
                                "values.", value=1 if self._admin else 0)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
