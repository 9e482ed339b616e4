"""`meshpy control` options of the Kubernetes source (Services and EndpointSlices).

Kept apart from the source itself so that the command line is built without importing the Kubernetes
client, which only `--kubernetes` needs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class KubernetesOptions:
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: all of them
    cluster_domain: str = "cluster.local"
    listeners: bool = True  # the outbound listeners and routes of the Services' cluster IPs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubernetes source (clusters and endpoints from Services)")
    group.add_argument("--kubernetes", action="store_true",
                       help="watch Services and EndpointSlices, alone or beside --envoy-dir / --meshpy-dir "
                            "(whose listeners and routes may then name their clusters, "
                            "outbound|<port>||<service>.<namespace>.svc.<domain>)")
    group.add_argument("--kubeconfig", default=None,
                       help="kubeconfig file (default: the pod's service account, else $KUBECONFIG)")
    group.add_argument("--namespace", action="append", default=[],
                       help="namespace to watch (repeatable; default: all)")
    group.add_argument("--cluster-domain", default="cluster.local",
                       help="the cluster's DNS domain, in cluster names (default cluster.local)")
    group.add_argument("--no-kubernetes-listeners", dest="kubernetes_listeners", action="store_false",
                       help="serve the Services' clusters and endpoints only, not the outbound listeners "
                            "<clusterIP>_<port> (and their routes) that sidecars hand the app's calls to")


def options(args: argparse.Namespace) -> KubernetesOptions | None:
    """The source's options when --kubernetes is given, else None."""
    if not args.kubernetes:
        return None
    return KubernetesOptions(args.kubeconfig, tuple(args.namespace), args.cluster_domain,
                             args.kubernetes_listeners)
