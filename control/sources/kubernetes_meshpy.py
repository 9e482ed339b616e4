"""A meshpy YAML directory beside the Kubernetes source: its routes may name Kubernetes clusters.

meshpy YAML refuses a route to a cluster it does not define, and the clusters of Services are not in the
directory: they come and go with the Services. So a directory that fails only for routes to clusters
named as the Kubernetes source names them (`outbound|<port>||<service>.<namespace>.svc.<domain>`) is read
a second time with a placeholder for each, and the placeholders are dropped from what it gives. Whether
Kubernetes does have such a Service is checked where it can be, when the two are published together: a
route to a Service that does not exist is "not pushed" then, as any other route to a missing cluster.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from control.cache import CLUSTER, ENDPOINT
from control.sources.envoy_dir import Resources, SourceError, yaml_files
from control.sources.meshpy_dir import load_meshpy_dir
from control.sources.nodes import Loader

_UNKNOWN = re.compile(r"unknown cluster '([^']+)'")
_PLACEHOLDER_FILE = "zz-kubernetes-placeholders.yaml"
_PLACEHOLDER_ENDPOINT = "127.0.0.1:9"  # never used: the placeholder is dropped before publishing


def meshpy_dir_beside_kubernetes(cluster_domain: str) -> Loader:
    """A loader like load_meshpy_dir that lets routes name the Kubernetes source's clusters."""
    ours = re.compile(r"outbound\|\d+\|\|[a-z0-9-]+\.[a-z0-9-]+\.svc\." + re.escape(cluster_domain))

    def load(path: Path, overlay: Path | None = None) -> Resources:
        try:
            return load_meshpy_dir(path, overlay)
        except SourceError as err:
            names: set[str] = set()
            for line in err.errors:
                found = _UNKNOWN.search(line)
                if found is None or not ours.fullmatch(found.group(1)):
                    raise
                names.add(found.group(1))
        return _with_placeholders(path, overlay, sorted(names))

    return load


def _with_placeholders(path: Path, overlay: Path | None, names: list[str]) -> Resources:
    """The directory read from a copy that also holds a placeholder cluster for each of `names`."""
    with tempfile.TemporaryDirectory(prefix="meshpy-control-") as tmp:
        copy = Path(tmp) / "d"
        copy.mkdir()
        for f in yaml_files(path):
            shutil.copyfile(f, copy / f.name)
        copy_overlay = None
        if overlay is not None:
            # The same layout, so that errors name the files as they are in the real directory.
            copy_overlay = copy / overlay.relative_to(path)
            copy_overlay.mkdir(parents=True)
            for f in yaml_files(overlay):
                shutil.copyfile(f, copy_overlay / f.name)
        lines = ["clusters:"]
        lines += [f'  - {{name: "{n}", endpoints: ["{_PLACEHOLDER_ENDPOINT}"]}}' for n in names]
        (copy / _PLACEHOLDER_FILE).write_text("\n".join(lines) + "\n")
        try:
            loaded = load_meshpy_dir(copy, copy_overlay)
        except SourceError as err:
            raise SourceError([line.replace(str(copy), str(path)) for line in err.errors]) from None
    dropped = set(names)
    return {url: {name: msg for name, msg in items.items() if url not in (CLUSTER, ENDPOINT)
                  or name not in dropped}
            for url, items in loaded.items()}
