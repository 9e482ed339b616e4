"""The identity a caller expects of a Service it calls over mutual TLS: Istio's secure naming.

A Service annotated security.meshpy.io/mtls (strict or permissive) is called over mutual TLS, and the
server must prove one of the SPIFFE IDs `spiffe://<trust domain>/ns/<namespace>/sa/<account>` of:

- the service accounts its annotation security.meshpy.io/serviceAccount names (one, or a comma-separated
  list, in the Service's namespace), when it has one: the team's word wins;
- else the service accounts of the pods behind the cluster's ready endpoints, as the Pods in the API say
  (each endpoint's `targetRef`; an endpoint that names no pod, as in a hand-made slice, by its address
  among the pods of the slice's namespace), sorted and without repeats, so that a new pod with an
  account already there changes nothing;
- else (no endpoint, or none whose pod says who it is) any identity the mesh's CA signed, as before
  pods were read, and as Istio does with an empty SAN list.

An endpoint whose `targetRef` names a pod the source has not seen yet (its EndpointSlice event came
before its Pod event: the two are separate watches) is held back from the assignment until the pod is
known, as Istio holds it: otherwise the first version with a new workload would either accept any
identity (fail open) or refuse the new pods (a spurious 503). Looking such an endpoint up by its address
would find another pod (an address handed on after the named pod went away), so it is not done.

Only what this needs of a Pod is kept (`pod_shape`): a cluster's pods are many and change often, and most
of their events are status changes that alter none of it, which the reflector then drops before any
translation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

IDENTITY_ANNOTATION = "security.meshpy.io/serviceAccount"
DEFAULT_ACCOUNT = "default"  # what Kubernetes gives a pod that names none
# A finished pod's address may be handed to a new pod: it no longer answers for that address.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

Object = Mapping[str, Any]
Account = tuple[str, str]  # (namespace, service account)


def pod_shape(pod: Object) -> dict[str, Any]:
    """What the source keeps of a Pod: its namespace and name (the reflector's key), its service account,
    and the addresses it answers on. Two versions of a pod with the same shape are the same to the source.
    Host-network pods share their node's address with any number of others: it names none of them."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT_ACCOUNT
    ips: set[str] = set()
    if not spec.get("hostNetwork") and status.get("phase") not in TERMINAL_PHASES:
        ips = {str(p["ip"]) for p in status.get("podIPs") or () if isinstance(p, dict) and p.get("ip")}
        if status.get("podIP"):
            ips.add(str(status["podIP"]))
    return {"metadata": {"namespace": str(meta.get("namespace") or ""), "name": str(meta.get("name") or "")},
            "serviceAccount": str(account), "ips": sorted(ips)}


class _Waiting:
    def __repr__(self) -> str:
        return "WAITING"


WAITING = _Waiting()  # the endpoint's pod is not known yet: hold the endpoint back


class PodIndex:
    """The pods' service accounts by pod and by address (shaped or whole Pods alike)."""

    def __init__(self, pods: Iterable[Object]) -> None:
        self.by_name: dict[tuple[str, str], Account] = {}
        by_ip: dict[tuple[str, str], set[Account]] = {}
        for p in pods:
            shaped = pod_shape(p) if "serviceAccount" not in p else p
            namespace, name = shaped["metadata"]["namespace"], shaped["metadata"]["name"]
            account = (namespace, str(shaped["serviceAccount"]))
            self.by_name[(namespace, name)] = account
            for ip in shaped["ips"]:
                by_ip.setdefault((namespace, ip), set()).add(account)
        # An address two accounts claim (a pod that ended and one that took its address, before the first
        # is deleted) names neither.
        self.by_ip = {key: next(iter(found)) for key, found in by_ip.items() if len(found) == 1}

    def owner(self, endpoint: Object, namespace: str) -> Account | _Waiting | None:
        """The account of the endpoint's pod (in the slice's `namespace`); WAITING when it names a pod not
        known yet; None when it names no pod and no pod has its address."""
        ref = endpoint.get("targetRef") or {}
        if ref.get("kind") == "Pod":
            found = self.by_name.get((str(ref.get("namespace") or namespace), str(ref.get("name") or "")))
            return WAITING if found is None else found
        addresses = endpoint.get("addresses") or ()
        return self.by_ip.get((namespace, str(addresses[0]))) if addresses else None


def annotated_accounts(svc: Object) -> tuple[str, ...] | None:
    """The service accounts the Service's security.meshpy.io/serviceAccount names (comma-separated, in
    its own namespace), sorted; None when it names none."""
    annotations = (svc.get("metadata") or {}).get("annotations") or {}
    names = {n.strip() for n in str(annotations.get(IDENTITY_ANNOTATION) or "").split(",")} - {""}
    return tuple(sorted(names)) or None


def spiffe_ids(trust_domain: str, accounts: Iterable[Account]) -> list[str]:
    return sorted({f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}" for ns, sa in accounts})


def mtls_socket(identities: Sequence[str]) -> Any:
    """The UpstreamTlsContext of a cluster called over mutual TLS: the caller's own identity (the SDS
    secrets `default` and `ROOTCA`, which meshpy sidecars hold themselves and Envoy nodes get from the
    control plane), and a server that proves one of `identities` (any the mesh's CA signed when empty)."""
    sds = {"sds_config": {"ads": {}, "resource_api_version": "V3"}}
    validation: dict[str, Any] = {}
    if identities:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": spiffe}} for spiffe in identities]
    context = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
               "common_tls_context": {
                   "tls_certificate_sds_secret_configs": [{"name": "default", **sds}],
                   "combined_validation_context": {
                       "default_validation_context": validation,
                       "validation_context_sds_secret_config": {"name": "ROOTCA", **sds}}}}
    return json_format.ParseDict({"name": "envoy.transport_sockets.tls", "typed_config": context},
                                 cluster_pb2.Cluster().transport_socket)
