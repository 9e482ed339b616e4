"""A meshpy YAML directory beside the Kubernetes source: its routes may name Kubernetes clusters.

meshpy YAML refuses a route to a cluster it does not define, and the clusters of Services are not in the
directory: they come and go with the Services. So names in the form the Kubernetes source gives its
clusters (`outbound|<port>||<service>.<namespace>.svc.<domain>`) are accepted without a definition.
Whether Kubernetes does have such a Service is checked where it can be, when the two are published
together: a route to a Service that does not exist is "not pushed" then, as any other route to a
missing cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

from control.sources.envoy_dir import Resources
from control.sources.meshpy_dir import load_meshpy_dir
from control.sources.nodes import Loader


def meshpy_dir_beside_kubernetes(cluster_domain: str) -> Loader:
    """A loader like load_meshpy_dir that lets routes name the Kubernetes source's clusters."""
    ours = re.compile(r"outbound\|\d+\|\|[a-z0-9-]+\.[a-z0-9-]+\.svc\." + re.escape(cluster_domain))

    def load(path: Path, overlay: Path | None = None) -> Resources:
        return load_meshpy_dir(path, overlay, ours.fullmatch)

    return load
