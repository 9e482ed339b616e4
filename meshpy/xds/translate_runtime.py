"""The bootstrap's `layered_runtime` -> meshpy.model.runtime.LayeredRuntime, checked as Envoy 1.40
checks it when it starts (and in `--mode validate`):
- layer names are required and unique; at most one admin layer;
- a static layer holds no list and no null; nested maps become dotted keys (meshpy.runtime.values);
- a disk layer's symlink_root has a `/`, and the directory holding it exists (Envoy watches that
  directory and will not start without it); the layer's own directory may be missing: the layer is then
  left out until the symlink appears;
- an RTDS layer takes its Runtime from its rtds_config (over ADS, a gRPC stream of its own, REST or a
  file: meshpy.xds.bootstrap reads it), which needs a node id and cluster.
Every value of a static layer (and of a disk layer, read now to check it) must be one meshpy can
follow: meshpy.runtime.features says which and why. `runtime_from_proto` reads an RTDS resource the
same way, for the xDS store (a value refused there is a NACK).
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.model.runtime import NO_RUNTIME, Entry, LayeredRuntime, RuntimeLayer
from meshpy.runtime.disk import read_directory
from meshpy.runtime.features import refusal
from meshpy.runtime.values import RuntimeValueError, entry, flatten
from meshpy.xds.translate_base import Issues, child, item

__all__ = ["layered_runtime", "runtime_from_proto"]

PATH = "layered_runtime"


def layered_runtime(issues: Issues, bootstrap: Any) -> LayeredRuntime:
    if not bootstrap.HasField("layered_runtime"):
        return NO_RUNTIME
    msg = bootstrap.layered_runtime
    issues.fields(msg, PATH, {"layers"})
    layers: list[RuntimeLayer] = []
    names: set[str] = set()
    admins = 0
    for i, layer in enumerate(msg.layers):
        at = item(child(PATH, "layers"), i)
        issues.fields(layer, at, {"name", "static_layer", "disk_layer", "admin_layer", "rtds_layer"})
        if not layer.name:
            issues.add(child(at, "name"), "must not be empty")
        elif layer.name in names:
            issues.add(child(at, "name"), f"Duplicate layer name: {layer.name}")
        names.add(layer.name)
        kind = layer.WhichOneof("layer_specifier")
        if kind is None:
            issues.add(at, "one of static_layer, disk_layer, admin_layer or rtds_layer is required")
        elif kind == "static_layer":
            layers.append(_static(issues, layer, at))
        elif kind == "disk_layer":
            layers.append(_disk(issues, layer, child(at, kind), bootstrap.node.cluster))
        elif kind == "admin_layer":
            admins += 1
            if admins > 1:
                issues.add(child(at, kind), "Too many admin layers specified in LayeredRuntime, at most one "
                                            "may be specified")
            layers.append(RuntimeLayer(name=layer.name, kind="admin"))
        else:
            layers.append(_rtds(issues, layer, child(at, kind), bootstrap))
    return LayeredRuntime(layers=tuple(layers))


def _static(issues: Issues, layer: Any, at: str) -> RuntimeLayer:
    values = _values(issues, layer.static_layer, child(at, "static_layer"))
    return RuntimeLayer(name=layer.name, kind="static", values=tuple(values.items()))


def _values(issues: Issues, struct: Any, path: str) -> dict[str, Entry]:
    """A Struct's values (a static layer's, an RTDS resource's), each checked (meshpy.runtime.features)."""

    def check(key: str, value: Any) -> None:
        why = refusal(key, entry(value))
        if why is not None:
            issues.add(child(path, key), why)

    try:
        return flatten(json_format.MessageToDict(struct), check)
    except RuntimeValueError as exc:
        issues.add(path, str(exc))
        return {}


def _disk(issues: Issues, layer: Any, at: str, service_cluster: str) -> RuntimeLayer:
    disk = layer.disk_layer
    issues.fields(disk, at, {"symlink_root", "subdirectory", "append_service_cluster"})
    root = disk.symlink_root
    directory = f"{root}/{disk.subdirectory}"
    if disk.append_service_cluster:
        directory += f"/{service_cluster}"
    where = child(at, "symlink_root")
    if "/" not in root:
        issues.add(where, f"invalid file path {root!r}: Envoy watches the directory that holds it")
    elif not os.path.exists(root.rsplit("/", 1)[0] or "/"):
        issues.add(where, f"{root.rsplit('/', 1)[0]} does not exist: Envoy watches it for the symlink "
                          "to be swapped, and will not start without it")
    else:
        try:
            values = read_directory(directory) or {}
        except (OSError, RuntimeValueError):
            values = {}  # left out while it cannot be read, as in Envoy (the runtime logs why)
        for key, e in values.items():
            why = refusal(key, e)
            if why is not None:
                issues.add(at, f"{key} (read from {directory}): {why}")
    return RuntimeLayer(name=layer.name, kind="disk", directory=directory, symlink_root=root)


def _rtds(issues: Issues, layer: Any, at: str, bootstrap: Any) -> RuntimeLayer:
    rtds = layer.rtds_layer
    issues.fields(rtds, at, {"name", "rtds_config"})
    # rtds_config (ADS, or a config source of its own) is read with the bootstrap's other config
    # sources: meshpy.xds.bootstrap.
    if not (bootstrap.node.id and bootstrap.node.cluster):
        issues.add("node", "an RTDS layer needs node.id and node.cluster (Envoy: \"node 'id' and 'cluster' "
                           "are required\")")
    return RuntimeLayer(name=layer.name, kind="rtds", resource=rtds.name)


def runtime_from_proto(msg: Any) -> dict[str, Entry]:
    """An RTDS resource (envoy.service.runtime.v3.Runtime): its layer's values, read as a static layer's;
    ConfigError (the NACK's detail) for a list or null, or a value meshpy refuses."""
    issues = Issues()
    values = _values(issues, msg.layer, "layer")
    issues.raise_if_any()
    return values
