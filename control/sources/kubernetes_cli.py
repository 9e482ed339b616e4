"""`meshpy control` options of the Kubernetes source (Services and EndpointSlices)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubernetes source (clusters and endpoints from Services)")
    group.add_argument("--kubernetes", action="store_true",
                       help="watch Services and EndpointSlices, beside or instead of a directory")
    group.add_argument("--kubeconfig", default=None,
                       help="kubeconfig file (default: the pod's service account, else $KUBECONFIG)")
    group.add_argument("--namespace", action="append", default=[],
                       help="namespace to watch (repeatable; default: all)")
    group.add_argument("--cluster-domain", default="cluster.local", help="the cluster's DNS domain")
