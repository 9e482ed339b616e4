"""A directory of meshpy YAML, for the control plane to serve as Envoy resources.

The files are one config split up as a team likes it (a file per service, say): their `listeners`
and `clusters` lists are joined and loaded as one meshpy config, so a route in one file may name a
cluster in another, and every check of `meshpy validate` applies. Errors name the file and the path in
it (`payments.yaml: listeners[0].routes[2].cluster: unknown cluster 'ledger'`), and the whole
directory is refused when any file is wrong: nothing half-checked is pushed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.sources.envoy_dir import Resources, SourceError, yaml_files
from control.sources.export import ExportError, export
from meshpy.errors import ConfigError
from meshpy.model.load import parse_yaml
from meshpy.model.meshpy_yaml import load_meshpy

SECTIONS = ("listeners", "clusters")
_INDEXED = re.compile(r"^(listeners|clusters)\[(\d+)\](.*)$")


def load_meshpy_dir(path: Path, overlay: Path | None = None,
                    external: Callable[[str], object] | None = None) -> Resources:
    """The directory's config; with `overlay` (a per-node subdirectory), its files are joined too and
    a listener or cluster of theirs replaces the directory's one of the same name. Routes may name the
    clusters `external` accepts without defining them (another source brings those)."""
    if not path.is_dir():
        raise SourceError([f"{path}: not a directory"])
    errors: list[str] = []
    merged: dict[str, list[Any]] = {key: [] for key in SECTIONS}
    origin: dict[str, list[tuple[str, int]]] = {key: [] for key in SECTIONS}  # merged index -> file, index
    files = [(f, f.name) for f in yaml_files(path)]
    if overlay is not None:
        files += [(f, f"{overlay.relative_to(path)}/{f.name}") for f in yaml_files(overlay)]
    for file, label in files:
        try:
            data = parse_yaml(file.read_text(encoding="utf-8"), label)
        except (ConfigError, OSError, UnicodeDecodeError) as err:
            errors.append(f"{label}: {err}")
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            errors.append(f"{label}: the top level must be a mapping with listeners and/or clusters")
            continue
        for key in sorted(set(data) - set(SECTIONS)):
            errors.append(f"{label}: {key}: not for the control plane (only {' and '.join(SECTIONS)})")
        for key in SECTIONS:
            items = data.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                errors.append(f"{label}: {key}: must be a list")
                continue
            if overlay is not None and file.parent == overlay:
                _drop_replaced(merged[key], origin[key], items)
            merged[key].extend(items)
            origin[key].extend((label, i) for i in range(len(items)))
    if errors:
        raise SourceError(errors)
    try:
        # The sections are meshpy YAML whatever they hold (the format is not detected here).
        return export(load_meshpy(merged, external))
    except ConfigError as err:
        raise SourceError([_locate(str(issue), origin) for issue in err.issues]) from None
    except ExportError as err:
        raise SourceError([_locate(e, origin) for e in err.errors]) from None


def _drop_replaced(items: list[Any], origin: list[tuple[str, int]], newer: list[Any]) -> None:
    """Remove the entries of `items` (and `origin`) that an entry of `newer` with the same name replaces."""
    names = {x.get("name") for x in newer if isinstance(x, dict) and x.get("name")}
    keep = [i for i, x in enumerate(items) if not (isinstance(x, dict) and x.get("name") in names)]
    items[:] = [items[i] for i in keep]
    origin[:] = [origin[i] for i in keep]


def _locate(message: str, origin: dict[str, list[tuple[str, int]]]) -> str:
    """`listeners[7].routes[0]: ...` in the joined config -> `web.yaml: listeners[2].routes[0]: ...`."""
    found = _INDEXED.match(message)
    if found is None:
        return message
    key, index, rest = found.group(1), int(found.group(2)), found.group(3)
    if index >= len(origin[key]):
        return message
    file, local = origin[key][index]
    return f"{file}: {key}[{local}]{rest}"
