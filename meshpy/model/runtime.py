"""Envoy's layered runtime in the config model: the layers a bootstrap's `layered_runtime` lists.

The layers are kept in the bootstrap's order, each later one overriding the earlier ones key by key.
A static layer's values are known when the config is read, already flattened to dotted keys and
parsed as Envoy parses them (`Entry`); a disk layer names the directory read at start and each time
its symlink root is swapped; the admin layer is what `POST /runtime_modify` sets; an RTDS layer is the
`envoy.service.runtime.v3.Runtime` of that name, sent over the ADS stream.

A config without `layered_runtime` has no layers at all, as in Envoy 1.40 (which then answers
`/runtime_modify` with 503 "No admin layer specified").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LayerKind = Literal["static", "disk", "admin", "rtds"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One runtime value: the text Envoy shows for it (`raw`), and what it reads as. Envoy parses each
    value once, when its layer is loaded, into an optional boolean, unsigned integer, double and
    fractional percent; a lookup of a kind the value lacks falls back to the caller's default."""

    raw: str
    boolean: bool | None = None
    integer: int | None = None  # Envoy's uint64 reading: non-negative numbers only, truncated
    number: float | None = None
    fraction: tuple[int, int] | None = None  # (numerator, denominator): a FractionalPercent


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeLayer:
    name: str
    kind: LayerKind
    values: tuple[tuple[str, Entry], ...] = ()  # a static layer's, by key, in the order given
    directory: str = ""  # a disk layer: symlink_root/subdirectory[/service cluster], read as Envoy does
    symlink_root: str = ""  # a disk layer: a new layer is read when this is replaced (renamed over)
    resource: str = ""  # an RTDS layer: the name of the Runtime resource it subscribes to


@dataclass(frozen=True, slots=True, kw_only=True)
class LayeredRuntime:
    layers: tuple[RuntimeLayer, ...] = ()

    @property
    def admin_layer(self) -> bool:
        return any(layer.kind == "admin" for layer in self.layers)

    def rtds_names(self) -> frozenset[str]:
        return frozenset(layer.resource for layer in self.layers if layer.kind == "rtds")


NO_RUNTIME = LayeredRuntime()
