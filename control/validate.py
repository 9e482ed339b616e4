"""`meshpy validate --envoy-dir DIR` / `--meshpy-dir DIR`: a control-plane directory checked the way
`meshpy control` loads it (every file, and every per-node subdirectory layered on the shared files),
without serving it: one `location: reason` line per problem, as the control plane would log them."""

from __future__ import annotations

from pathlib import Path

from control.sources.envoy_dir import CLUSTER, ENDPOINT, LISTENER, ROUTE, SourceError
from control.sources.meshpy_dir import load_meshpy_dir
from control.sources.nodes import Loader, envoy_layer, load_layers

_KINDS = ((LISTENER, "listeners"), (ROUTE, "route configurations"), (CLUSTER, "clusters"),
          (ENDPOINT, "endpoint assignments"))


def validate_dir(directory: str, meshpy_format: bool, loader: Loader | None = None, label: str = "") -> bool:
    """Prints what it found (naming it `label`, by default the directory); True when the control plane
    would serve the directory."""
    if loader is None:
        loader = load_meshpy_dir if meshpy_format else envoy_layer
    try:
        layers = load_layers(Path(directory), loader)
    except SourceError as err:
        for line in err.errors:
            line = line.removeprefix(directory).removeprefix("/").removeprefix(": ")
            print(f"{label or directory}: {line}")
        return False
    counts = ", ".join(f"{len(layers.shared.get(url, {}))} {name}" for url, name in _KINDS)
    extra = len(layers.by_cluster) + len(layers.by_node)
    print(f"{label or directory}: ok ({'meshpy' if meshpy_format else 'Envoy'} resources: {counts}"
          f"{f'; {extra} per-node sets' if extra else ''})")
    return True
