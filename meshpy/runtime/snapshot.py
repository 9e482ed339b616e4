"""One immutable view of the runtime: its layers, and their values merged (later layers win).

The data plane reads `Runtime.snapshot` (meshpy.runtime.loader) and asks it; the runtime builds a new
Snapshot on every change and swaps the reference, so a reader never sees half an update. Lookups are a
dict lookup and an attribute read. A proxy without a layered runtime holds `EMPTY`, whose `values` is
an empty dict: callers test it first and skip the lookups altogether (`if snap.values:`).

The readings follow Envoy's Snapshot: a value that does not read as the kind asked for gives the
caller's default, as does an absent key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshpy.model.runtime import Entry

__all__ = ["EMPTY", "Layer", "Snapshot"]


class Layer:
    """A loaded layer: its name (as the bootstrap gives it) and its values by key."""

    __slots__ = ("name", "values")

    def __init__(self, name: str, values: Mapping[str, Entry]) -> None:
        self.name = name
        self.values = dict(values)


class Snapshot:
    __slots__ = ("layers", "values")

    def __init__(self, layers: tuple[Layer, ...] = ()) -> None:
        self.layers = layers
        merged: dict[str, Entry] = {}
        for layer in layers:
            merged.update(layer.values)
        self.values = merged

    def get(self, key: str) -> str | None:
        found = self.values.get(key)
        return found.raw if found is not None else None

    def get_bool(self, key: str, default: bool) -> bool:
        found = self.values.get(key)
        return default if found is None or found.boolean is None else found.boolean

    def get_int(self, key: str, default: int) -> int:
        """Envoy's getInteger: the value as a non-negative integer (a number truncated), else default."""
        found = self.values.get(key)
        return default if found is None or found.integer is None else found.integer

    def get_float(self, key: str, default: float) -> float:
        found = self.values.get(key)
        return default if found is None or found.number is None else found.number

    def fraction(self, key: str, default: float) -> float:
        """The share of requests (0 to 1; more means all) a FractionalPercent setting takes, as
        Envoy's featureEnabled(key, FractionalPercent) reads it: the key's fractional percent, else its
        integer as a percentage (over 100: all), else `default`."""
        found = self.values.get(key)
        if found is not None:
            if found.fraction is not None:
                numerator, denominator = found.fraction
                return numerator / denominator
            if found.integer is not None:
                return 1.0 if found.integer > 100 else found.integer / 100
        return default

    def view(self) -> dict[str, Any]:
        """Envoy's `/runtime`: the layer names, and per key its text in each layer ("" where a layer
        has none) and the last non-empty one."""
        keys = sorted({k for layer in self.layers for k in layer.values})
        entries: dict[str, Any] = {}
        for key in keys:
            texts = [e.raw if (e := layer.values.get(key)) is not None else "" for layer in self.layers]
            final = next((t for t in reversed(texts) if t), "")
            entries[key] = {"final_value": final, "layer_values": texts}
        return {"entries": entries, "layers": [layer.name for layer in self.layers]}


EMPTY = Snapshot()
