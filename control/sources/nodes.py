"""Different config for different nodes, from the layout of a source directory.

    resources/
      *.yaml                      every node
      node-cluster/<name>/*.yaml  nodes whose `node.cluster` is <name> (a service's sidecars)
      node-id/<id>/*.yaml         the one node with that `node.id`

A subdirectory adds to the shared files, and a resource of the same type and name in it replaces the
shared one, so a service's sidecars can get their own listener while sharing every cluster. Each set is
checked on its own (a node must never get a half-wired set) and all of them are published together or
not at all. A node gets its node-id set if there is one, else its node-cluster set, else the shared one
(the cache's order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from control.sources.envoy_dir import Fingerprint, Resources, SourceError, fingerprint, load_envoy_dir

Loader = Callable[[Path, "Path | None"], Resources]
BY_CLUSTER = "node-cluster"
BY_ID = "node-id"


@dataclass(frozen=True)
class Layers:
    shared: Resources
    by_cluster: Mapping[str, Resources] = field(default_factory=dict)
    by_node: Mapping[str, Resources] = field(default_factory=dict)


def envoy_layer(path: Path, overlay: Path | None = None) -> Resources:
    """Envoy-native resources of `path`, with those of `overlay` replacing or adding by type and name."""
    shared = load_envoy_dir(path)
    if overlay is None:
        return shared
    try:
        extra = load_envoy_dir(overlay)
    except SourceError as err:
        raise SourceError([f"{overlay.relative_to(path)}/{line}" for line in err.errors]) from None
    return {url: {**shared.get(url, {}), **extra.get(url, {})} for url in {*shared, *extra}}


def subdirectories(path: Path) -> list[tuple[str, str, Path]]:
    """(kind, name, directory) of every per-node subdirectory, in a stable order."""
    found = []
    for kind in (BY_CLUSTER, BY_ID):
        try:
            entries = sorted(p for p in (path / kind).iterdir() if p.is_dir())
        except OSError:
            continue
        found += [(kind, p.name, p) for p in entries]
    return found


def load_layers(path: Path, loader: Loader) -> Layers:
    """Every set the directory defines; SourceError lists the problems of all of them."""
    shared = loader(path, None)
    errors: list[str] = []
    by: dict[str, dict[str, Resources]] = {BY_CLUSTER: {}, BY_ID: {}}
    for kind, name, sub in subdirectories(path):
        try:
            by[kind][name] = loader(path, sub)
        except SourceError as err:
            errors += err.errors
    if errors:
        raise SourceError(errors)
    return Layers(shared, by[BY_CLUSTER], by[BY_ID])


def layered_fingerprint(path: Path) -> tuple[tuple[str, str, Fingerprint], ...]:
    """Changes anywhere in the layout (a file, or a subdirectory added or removed) change this."""
    subs = tuple((kind, name, fingerprint(sub)) for kind, name, sub in subdirectories(path))
    return (("", "", fingerprint(path)), *subs)
