"""Kubernetes objects for tests, as the API sends them: recorded Services, EndpointSlices, Pods, Namespaces
and ConfigMaps, and builders that copy them with the fields a test changes (tests/kubeapi.py serves
them)."""

from __future__ import annotations

import copy
import zlib
from typing import Any

# Recorded from a real cluster (`kubectl get -o json`, uid and times kept as they were): the shapes the
# builders below copy, with every field the API sends, not only those the translation reads.
RECORDED_SERVICE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "creationTimestamp": "2024-05-02T09:14:31Z", "labels": {"app": "orders"}, "name": "orders",
        "namespace": "shop", "resourceVersion": "48213", "uid": "3f0b7b5e-6f8e-4c55-9a63-0c6b1d2c1f8e"},
    "spec": {
        "clusterIP": "10.96.112.7", "clusterIPs": ["10.96.112.7"], "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}],
        "selector": {"app": "orders"}, "sessionAffinity": "None", "type": "ClusterIP"},
    "status": {"loadBalancer": {}},
}
RECORDED_SLICE: dict[str, Any] = {
    "addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "endpoints": [{
        "addresses": ["10.244.1.17"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "worker-1", "zone": "eu-west-1a",
        "targetRef": {"kind": "Pod", "name": "orders-7d9c8b6f4-xk2lp", "namespace": "shop",
                      "uid": "9a1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"}}],
    "metadata": {
        "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-02T09:15:02Z"},
        "creationTimestamp": "2024-05-02T09:14:31Z", "generateName": "orders-", "generation": 3,
        "labels": {"app": "orders",
                   "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                   "kubernetes.io/service-name": "orders"},
        "name": "orders-x7q2m", "namespace": "shop",
        "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": True, "controller": True,
                             "kind": "Service", "name": "orders",
                             "uid": "3f0b7b5e-6f8e-4c55-9a63-0c6b1d2c1f8e"}],
        "resourceVersion": "48240", "uid": "b2d4f6a8-1c3e-4a5b-8d7f-9e0a1b2c3d4e"},
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
}
# The pod behind RECORDED_SLICE's endpoint, in the shape `kubectl get pod -o json` prints a running
# Deployment's pod (the projected token volume and the tolerations trimmed).
RECORDED_POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {
        "creationTimestamp": "2024-05-02T09:14:58Z", "generateName": "orders-7d9c8b6f4-",
        "labels": {"app": "orders", "pod-template-hash": "7d9c8b6f4"}, "name": "orders-7d9c8b6f4-xk2lp",
        "namespace": "shop",
        "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": True, "controller": True,
                             "kind": "ReplicaSet", "name": "orders-7d9c8b6f4",
                             "uid": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"}],
        "resourceVersion": "48236", "uid": "9a1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"},
    "spec": {
        "containers": [{
            "image": "registry.example/orders:1.4.2", "imagePullPolicy": "IfNotPresent", "name": "orders",
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}], "resources": {},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                              "name": "kube-api-access-8m2qz", "readOnly": True}]}],
        "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "nodeName": "worker-1",
        "preemptionPolicy": "PreemptLowerPriority", "priority": 0, "restartPolicy": "Always",
        "schedulerName": "default-scheduler", "securityContext": {}, "serviceAccount": "orders",
        "serviceAccountName": "orders", "terminationGracePeriodSeconds": 30,
        "volumes": [{"name": "kube-api-access-8m2qz", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]},
    "status": {
        "conditions": [
            {"lastProbeTime": None, "lastTransitionTime": "2024-05-02T09:14:58Z", "status": "True",
             "type": "PodScheduled"},
            {"lastProbeTime": None, "lastTransitionTime": "2024-05-02T09:15:01Z", "status": "True",
             "type": "Initialized"},
            {"lastProbeTime": None, "lastTransitionTime": "2024-05-02T09:15:02Z", "status": "True",
             "type": "ContainersReady"},
            {"lastProbeTime": None, "lastTransitionTime": "2024-05-02T09:15:02Z", "status": "True",
             "type": "Ready"}],
        "containerStatuses": [{
            "containerID": "containerd://4b1d0c5e", "image": "registry.example/orders:1.4.2",
            "imageID": "registry.example/orders@sha256:7f3e", "lastState": {}, "name": "orders",
            "ready": True, "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": "2024-05-02T09:15:01Z"}}}],
        "hostIP": "172.18.0.3", "hostIPs": [{"ip": "172.18.0.3"}], "phase": "Running",
        "podIP": "10.244.1.17", "podIPs": [{"ip": "10.244.1.17"}], "qosClass": "BestEffort",
        "startTime": "2024-05-02T09:14:58Z"},
}

RECORDED_NAMESPACE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Namespace",
    "metadata": {
        "creationTimestamp": "2024-05-02T09:10:12Z", "labels": {"kubernetes.io/metadata.name": "shop"},
        "name": "shop", "resourceVersion": "47811", "uid": "0c3e5a7b-9d1f-4b2a-8c4e-6f8a0b2c4d6e"},
    "spec": {"finalizers": ["kubernetes"]},
    "status": {"phase": "Active"},
}
# What Kubernetes writes into every namespace (the API server's CA, for pods to check it with): the shape
# the control plane's meshpy-ca-root-cert copies. The certificate is cut short.
RECORDED_CONFIG_MAP: dict[str, Any] = {
    "apiVersion": "v1", "kind": "ConfigMap",
    "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIDBTCCAe2gAwIBAgIIY2hZ\n-----END CERTIFICATE-----\n"},
    "metadata": {
        "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the "
                        "kube-apiserver when using internal endpoints such as the internal service IP or "
                        "kubernetes.default.svc. No other usage is guaranteed across distributions of "
                        "Kubernetes clusters."},
        "creationTimestamp": "2024-05-02T09:10:12Z", "name": "kube-root-ca.crt", "namespace": "shop",
        "resourceVersion": "47815", "uid": "6d8f0a2c-4e6b-4d8f-a0c2-e4f6a8b0c2d4"},
}


def namespace(name: str, terminating: bool = False) -> dict[str, Any]:
    """A Namespace; `terminating`: as it is between `kubectl delete namespace` and its last object gone."""
    ns = copy.deepcopy(RECORDED_NAMESPACE)
    ns["metadata"].update(name=name, labels={"kubernetes.io/metadata.name": name}, uid=f"uid-ns-{name}")
    if terminating:
        ns["metadata"]["deletionTimestamp"] = "2024-05-02T11:00:00Z"
        ns["status"] = {"phase": "Terminating", "conditions": [
            {"lastTransitionTime": "2024-05-02T11:00:05Z", "message": "Some content in the namespace has "
             "finalizers remaining", "reason": "SomeFinalizersRemain", "status": "True",
             "type": "NamespaceFinalizersRemaining"}]}
    return ns


def config_map(name: str, namespace: str, data: dict[str, str],
               labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A ConfigMap as someone made it by hand (`kubectl create configmap`): no annotations."""
    cm = copy.deepcopy(RECORDED_CONFIG_MAP)
    cm["metadata"].update(name=name, namespace=namespace, uid=f"uid-cm-{namespace}-{name}")
    del cm["metadata"]["annotations"]
    if labels:
        cm["metadata"]["labels"] = dict(labels)
    cm["data"] = dict(data)
    return cm


def service(name: str, namespace: str = "shop", ports: list[dict[str, Any]] | None = None,
            **spec: Any) -> dict[str, Any]:
    svc = copy.deepcopy(RECORDED_SERVICE)
    svc["metadata"].update(name=name, namespace=namespace, labels={"app": name})
    # An address of its own, as the API allocates them (listeners are named after it); `spec` may say one.
    h = zlib.crc32(f"{namespace}/{name}".encode())
    ip = f"10.96.{h >> 8 & 255}.{h & 255 or 1}"
    svc["spec"].update(clusterIP=ip, clusterIPs=[ip])
    svc["spec"]["selector"] = {"app": name}
    if ports is not None:
        svc["spec"]["ports"] = ports
    svc["spec"].update(spec)
    return svc


def endpoint(address: str, ready: bool | None = True, zone: str = "eu-west-1a",
             pod: str | None = None) -> dict[str, Any]:
    """An endpoint at `address`; its targetRef names the Pod `pod` (the recorded pod when None)."""
    ep = copy.deepcopy(RECORDED_SLICE["endpoints"][0])
    ep.update(addresses=[address], zone=zone)
    if pod is not None:
        ep["targetRef"].update(name=pod, uid=f"uid-{pod}")
    if ready is None:
        del ep["conditions"]["ready"]
    else:
        ep["conditions"].update(ready=ready, serving=ready, terminating=False)
    return ep


def endpoint_slice(service_name: str, endpoints: list[dict[str, Any]], namespace: str = "shop",
                   name: str | None = None, ports: list[dict[str, Any]] | None = None,
                   address_type: str = "IPv4") -> dict[str, Any]:
    s = copy.deepcopy(RECORDED_SLICE)
    s["metadata"].update(name=name or f"{service_name}-abcde", namespace=namespace,
                         generateName=f"{service_name}-")
    s["metadata"]["labels"].update({"app": service_name, "kubernetes.io/service-name": service_name})
    s["metadata"]["ownerReferences"][0]["name"] = service_name
    s.update(endpoints=endpoints, addressType=address_type)
    if ports is not None:
        s["ports"] = ports
    return s


def pod(name: str, ip: str, service_account: str | None = "default", namespace: str = "shop",
        phase: str = "Running") -> dict[str, Any]:
    """A running pod at `ip` with `service_account` (None: the field left out, as for a pod that names
    none before the API's admission fills it in)."""
    p = copy.deepcopy(RECORDED_POD)
    p["metadata"].update(name=name, namespace=namespace, generateName=f"{name}-", uid=f"uid-{name}")
    if service_account is None:
        del p["spec"]["serviceAccount"], p["spec"]["serviceAccountName"]
    else:
        p["spec"].update(serviceAccount=service_account, serviceAccountName=service_account)
    p["status"].update(phase=phase, podIP=ip, podIPs=[{"ip": ip}])
    return p


def restarted(p: dict[str, Any]) -> dict[str, Any]:
    """The same pod after its container restarted: what most of a pod's watch events are (status only)."""
    p = copy.deepcopy(p)
    [container] = p["status"]["containerStatuses"]
    container.update(restartCount=container["restartCount"] + 1, lastState={"terminated": {"exitCode": 137}})
    for condition in p["status"]["conditions"]:
        condition["lastProbeTime"] = "2024-05-02T10:00:00Z"
    return p
