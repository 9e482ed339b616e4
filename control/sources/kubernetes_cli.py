"""`meshpy control` options of the Kubernetes source (Services, EndpointSlices and Pods).

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
    inbound: bool = True  # the inbound listener of the pods of Services annotated security.meshpy.io/mtls
    root_cert: bool = True  # the ConfigMap meshpy-ca-root-cert in every namespace (kubernetes_rootcert)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kubernetes source (clusters and endpoints from Services)")
    group.add_argument("--kubernetes", action="store_true",
                       help="watch Services, EndpointSlices and Pods (their service accounts), alone or "
                            "beside --envoy-dir / --meshpy-dir "
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
    group.add_argument("--no-kubernetes-inbound", dest="kubernetes_inbound", action="store_false",
                       help="generate no inbound listener (virtualInbound) for the pods of Services "
                            "annotated security.meshpy.io/mtls: the directory's listeners serve them")
    group.add_argument("--no-kubernetes-root-cert", dest="kubernetes_root_cert", action="store_false",
                       help="do not write the CA's roots into the ConfigMap meshpy-ca-root-cert of every "
                            "namespace watched (injected sidecars check the control plane's TLS with it): "
                            "keep it some other way, or the role need not write ConfigMaps")


def options(args: argparse.Namespace) -> KubernetesOptions | None:
    """The source's options when --kubernetes is given, else None."""
    if not args.kubernetes:
        return None
    return KubernetesOptions(args.kubeconfig, tuple(args.namespace), args.cluster_domain,
                             args.kubernetes_listeners, args.kubernetes_inbound, args.kubernetes_root_cert)
