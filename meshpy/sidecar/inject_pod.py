"""The sidecar added to one Pod template: the proxy container, the iptables init container, and what the
template's annotations change about them.

The shape follows Istio's injection: an init container (`meshpy-init`, root with NET_ADMIN) installs the
redirection rules, then the proxy (`meshpy-proxy`, UID 10001, whose own traffic the rules let through)
runs beside the app. As a native sidecar (Kubernetes 1.29+) the proxy is an init container with
`restartPolicy: Always`: it starts before the app and the other init containers, and stops after them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from meshpy.identity.spiffe import DEFAULT_TOKEN_AUDIENCE
from meshpy.model.types import DEFAULT_ADMIN
from meshpy.sidecar.inject_probes import PROBE_PORT, probes_env, rewrite_probes

ANNOTATION_INJECT = "sidecar.meshpy.io/inject"
ANNOTATION_STATUS = "sidecar.meshpy.io/status"
ANNOTATION_NATIVE = "sidecar.meshpy.io/nativeSidecar"
ANNOTATION_CPU = "sidecar.meshpy.io/proxyCPU"
ANNOTATION_CPU_LIMIT = "sidecar.meshpy.io/proxyCPULimit"
ANNOTATION_MEMORY = "sidecar.meshpy.io/proxyMemory"
ANNOTATION_MEMORY_LIMIT = "sidecar.meshpy.io/proxyMemoryLimit"
ANNOTATION_EXCLUDE_INBOUND = "traffic.meshpy.io/excludeInboundPorts"
ANNOTATION_INCLUDE_INBOUND = "traffic.meshpy.io/includeInboundPorts"
ANNOTATION_EXCLUDE_OUTBOUND = "traffic.meshpy.io/excludeOutboundPorts"
ANNOTATION_EXCLUDE_CIDRS = "traffic.meshpy.io/excludeOutboundIPRanges"
ANNOTATION_REWRITE_PROBES = "sidecar.meshpy.io/rewriteAppHTTPProbers"  # Istio's name, under our prefix
STATUS_INJECTED = "injected"

PROXY_NAME = "meshpy-proxy"
INIT_NAME = "meshpy-init"
PROXY_UID = 10001
ADMIN_ADDRESS = str(DEFAULT_ADMIN)  # what `meshpy wait` and `meshpy drain` ask by default
ADMIN_PORT = DEFAULT_ADMIN.port
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
DEFAULT_CONTROL_PLANE = "meshpy-control.meshpy-system.svc:18000"

# A Kubernetes resource quantity ("100m", "128Mi", "1.5", "2e3"): checked here so that a typo in an
# annotation is reported by `meshpy inject`, naming the document, not later by the API server.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_FALSE = frozenset({"false", "no", "off", "0"})
_TRUE = frozenset({"true", "yes", "on", "1"})


class InjectError(Exception):
    """A manifest that cannot be injected; the message names the document and the reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectOptions:
    image: str
    control_plane: str = DEFAULT_CONTROL_PLANE
    native: bool = True
    proxy_cpu: str = "100m"
    proxy_cpu_limit: str | None = None
    proxy_memory: str = "128Mi"
    proxy_memory_limit: str | None = "512Mi"
    # The mesh's trust domain: each sidecar gets the identity of its pod's service account from the
    # control plane's CA (docs/identity.md), proved by a projected service-account token. None: no identity.
    trust_domain: str | None = None
    # What the projected token is made for: the control plane's --token-audiences must name it.
    token_audience: str = DEFAULT_TOKEN_AUDIENCE
    # The app's httpGet, tcpSocket and grpc probes go through the sidecar's probe port (inject_probes).
    rewrite_probes: bool = True


class Outcome(Enum):
    INJECTED = "injected"
    OPTED_OUT = "opted out"
    ALREADY_INJECTED = "already injected"
    HOST_NETWORK = "hostNetwork"


@dataclass(frozen=True, slots=True)
class TemplateResult:
    outcome: Outcome
    native: bool = False
    notes: tuple[str, ...] = ()


def _flag(value: Any) -> bool | None:
    """An annotation's yes/no; None when it says neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _FALSE:
        return False
    if text in _TRUE:
        return True
    return None


def _ports(value: Any, where: str, allow_all: bool = False) -> str:
    text = str(value).replace(" ", "")
    if allow_all and text == "*":
        return text
    ports = [p for p in text.split(",") if p]
    for port in ports:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InjectError(f"{where}: {port!r} is not a port (a comma-separated list of 1-65535)")
    return ",".join(ports)


def _cidrs(value: Any, where: str) -> str:
    cidrs = [c for c in str(value).replace(" ", "").split(",") if c]
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InjectError(f"{where}: {cidr!r} is not an IP range (CIDR)") from None
    return ",".join(cidrs)


def check_quantity(value: Any, where: str) -> str:
    text = str(value).strip()
    if not _QUANTITY.match(text):
        raise InjectError(f"{where}: {text!r} is not a Kubernetes quantity (like 100m, 128Mi)")
    return text


def _mapping(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """parent[key] as a mapping, created when absent."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    if not isinstance(value, dict):
        raise InjectError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
    return value


def _containers(spec: dict[str, Any], key: str, where: str) -> list[Any]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise InjectError(f"{where}.{key}: expected a list of containers")
    return value


def init_container(image: str, annotations: dict[str, Any], where: str,
                   probes: bool = False) -> dict[str, Any]:
    """`probes`: the kubelet probes the sidecar's probe port, which must reach it uncaptured."""

    def annotation(name: str) -> str:
        return f"{where}.metadata.annotations[{name}]"

    excluded_inbound = [str(ADMIN_PORT)] + [str(PROBE_PORT)] * probes
    if ANNOTATION_EXCLUDE_INBOUND in annotations:
        more = _ports(annotations[ANNOTATION_EXCLUDE_INBOUND], annotation(ANNOTATION_EXCLUDE_INBOUND))
        excluded_inbound += [p for p in more.split(",") if p and p not in excluded_inbound]
    args = [
        "iptables",
        "--proxy-uid", str(PROXY_UID),
        "--inbound-port", str(INBOUND_PORT),
        "--outbound-port", str(OUTBOUND_PORT),
        "--exclude-inbound-ports", ",".join(excluded_inbound),
    ]  # fmt: skip
    if ANNOTATION_INCLUDE_INBOUND in annotations:
        value = annotations[ANNOTATION_INCLUDE_INBOUND]
        args += ["--inbound-ports", _ports(value, annotation(ANNOTATION_INCLUDE_INBOUND), allow_all=True)]
    if ANNOTATION_EXCLUDE_OUTBOUND in annotations:
        value = annotations[ANNOTATION_EXCLUDE_OUTBOUND]
        args += ["--exclude-outbound-ports", _ports(value, annotation(ANNOTATION_EXCLUDE_OUTBOUND))]
    if ANNOTATION_EXCLUDE_CIDRS in annotations:
        value = annotations[ANNOTATION_EXCLUDE_CIDRS]
        args += ["--exclude-cidrs", _cidrs(value, annotation(ANNOTATION_EXCLUDE_CIDRS))]
    return {
        "name": INIT_NAME,
        "image": image,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        # Root with NET_ADMIN only for the nat rules; iptables writes its lock under /run, so the root
        # filesystem stays writable here (the proxy's is read-only).
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def proxy_container(
    options: InjectOptions, annotations: dict[str, Any], service: str, where: str, native: bool
) -> dict[str, Any]:
    def setting(name: str, default: str | None) -> str | None:
        if name not in annotations:
            return default
        return check_quantity(annotations[name], f"{where}.metadata.annotations[{name}]")

    requests = {"cpu": setting(ANNOTATION_CPU, options.proxy_cpu),
                "memory": setting(ANNOTATION_MEMORY, options.proxy_memory)}
    limits = {"cpu": setting(ANNOTATION_CPU_LIMIT, options.proxy_cpu_limit),
              "memory": setting(ANNOTATION_MEMORY_LIMIT, options.proxy_memory_limit)}
    resources = {key: {k: v for k, v in values.items() if v is not None}
                 for key, values in (("requests", requests), ("limits", limits))}
    container: dict[str, Any] = {
        "name": PROXY_NAME,
        "image": options.image,
        "args": [
            "run",
            "--xds", options.control_plane,
            "--node-id", "$(POD_NAME).$(POD_NAMESPACE)",
            "--node-cluster", service,
            "--admin", ADMIN_ADDRESS,
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "resources": {key: values for key, values in resources.items() if values},
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The admin listener is on 127.0.0.1 only, out of the kubelet's reach: the probe runs inside.
        "readinessProbe": {
            "exec": {"command": ["meshpy", "wait", "--timeout", "2"]},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "lifecycle": {
            # The kubelet starts the next container only when this hook returns: the app (and, for a
            # native sidecar, the init containers after it) starts once the proxy is ready.
            "postStart": {"exec": {"command": ["meshpy", "wait", "--timeout", "120"]}},
            "preStop": {"exec": {"command": ["meshpy", "drain", "--inbound-only"]}},
        },
    }
    if options.trust_domain is not None:
        with_identity(container, options.trust_domain)
    if native:
        container["restartPolicy"] = "Always"
    return container


TOKEN_VOLUME = "meshpy-token"
TOKEN_DIR = "/var/run/secrets/meshpy"
# The mesh's root, to check the control plane's TLS port with: a ConfigMap in each namespace, as Istio's
# istio-ca-root-cert, which `meshpy control --kubernetes` writes and keeps current
# (control/sources/kubernetes_rootcert.py).
ROOT_CONFIG_MAP = "meshpy-ca-root-cert"
ROOT_FILE = "root-cert.pem"


def with_identity(container: dict[str, Any], trust_domain: str) -> None:
    """The sidecar asks the CA for its pod's identity (namespace and service account, from the downward
    API), with the pod's own service-account token (a projected volume, renewed by the kubelet, which
    the control plane checks with TokenReview), over TLS checked with the mesh's root (a ConfigMap in the
    same volume): a token is never sent in the clear."""
    container["env"].append({"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {
        "fieldPath": "spec.serviceAccountName"}}})
    container["args"] += ["--identity", f"spiffe://{trust_domain}/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)",
                          "--ca-token", f"{TOKEN_DIR}/token", "--xds-ca", f"{TOKEN_DIR}/{ROOT_FILE}"]
    container["volumeMounts"] = [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]


def token_volume(audience: str = DEFAULT_TOKEN_AUDIENCE) -> dict[str, Any]:
    """The token, made for the mesh's CA only (`audience`): the API server refuses it, and the CA refuses
    the pod's other tokens (its default one is the API server's). "": the API server's own audience, for
    a control plane run with `--token-audiences ''`."""
    token: dict[str, Any] = {"path": "token", "expirationSeconds": 3600}
    if audience:
        token["audience"] = audience
    return {"name": TOKEN_VOLUME, "projected": {"sources": [
        {"serviceAccountToken": token},
        {"configMap": {"name": ROOT_CONFIG_MAP, "items": [{"key": ROOT_FILE, "path": ROOT_FILE}]}}]}}


def service_name(template: dict[str, Any], workload: dict[str, Any]) -> str | None:
    """The workload's service, as the control plane knows it: the usual name labels, else its name."""
    for metadata in (template.get("metadata"), workload.get("metadata")):
        labels = metadata.get("labels") if isinstance(metadata, dict) else None
        if isinstance(labels, dict):
            for key in ("app.kubernetes.io/name", "app"):
                if labels.get(key):
                    return str(labels[key])
    metadata = workload.get("metadata")
    if isinstance(metadata, dict):
        if metadata.get("name"):
            return str(metadata["name"])
        if metadata.get("generateName"):
            return str(metadata["generateName"]).rstrip("-.") or None
    return None


def inject_template(
    template: dict[str, Any], workload: dict[str, Any], options: InjectOptions, where: str
) -> TemplateResult:
    """Add the sidecar to one Pod template (a Pod's own metadata and spec, for a bare Pod), in place.

    `where` is the template's path for messages ("document 2 (Deployment web): spec.template")."""
    metadata = template.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict):
        annotations = {}
    if _flag(annotations.get(ANNOTATION_INJECT, True)) is False:
        return TemplateResult(Outcome.OPTED_OUT)
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise InjectError(f"{where}.spec: missing (a Pod template needs a spec with containers)")
    containers = _containers(spec, "containers", f"{where}.spec")
    if not containers:
        raise InjectError(f"{where}.spec.containers: missing or empty")
    init_containers = _containers(spec, "initContainers", f"{where}.spec")
    names = {c.get("name") for c in containers + init_containers}
    if PROXY_NAME in names:
        return TemplateResult(Outcome.ALREADY_INJECTED)
    if INIT_NAME in names:
        raise InjectError(f"{where}.spec: has a container named {INIT_NAME} but no {PROXY_NAME}")
    if spec.get("hostNetwork") is True:
        return TemplateResult(Outcome.HOST_NETWORK)
    native = _setting(annotations, ANNOTATION_NATIVE, options.native, where)
    service = service_name(template, workload)
    if service is None:
        raise InjectError(f"{where}: no service name (label app.kubernetes.io/name or app, or a name)")

    probes: dict[str, dict[str, Any]] = {}
    if _setting(annotations, ANNOTATION_REWRITE_PROBES, options.rewrite_probes, where):
        targets = [(f"{where}.spec.containers[{i}]", c) for i, c in enumerate(containers)]
        if native:
            # The workload's own native sidecars too, which start after the proxy and the rules (a
            # classic proxy starts after every init container: their probes could not reach it).
            targets += [(f"{where}.spec.initContainers[{i}]", c) for i, c in enumerate(init_containers)
                        if c.get("restartPolicy") == "Always"]
        try:
            probes = rewrite_probes(targets)
        except ValueError as err:
            raise InjectError(str(err)) from None
    init = init_container(options.image, annotations, where, probes=bool(probes))
    proxy = proxy_container(options, annotations, service, where, native)
    if probes:
        proxy["env"].append(probes_env(probes))
    if "initContainers" not in spec:
        # A new key goes before `containers`, where people write it (dicts keep insertion order).
        items = list(spec.items())
        at = next(i for i, (key, _) in enumerate(items) if key == "containers")
        spec.clear()
        spec.update([*items[:at], ("initContainers", []), *items[at:]])
    if native:
        # The proxy right after the rules, before the workload's own init containers, so that their
        # traffic, once captured, has a proxy to go to.
        spec["initContainers"] = [init, proxy, *init_containers]
    else:
        # The rules last among the init containers (those before them are not captured, with no proxy
        # running yet), the proxy first among the containers: its postStart hook holds the app back.
        spec["initContainers"] = [*init_containers, init]
        spec["containers"] = [proxy, *containers]
    if options.trust_domain is not None:
        volumes = spec.setdefault("volumes", [])
        if not isinstance(volumes, list):
            raise InjectError(f"{where}.spec.volumes: expected a list")
        volumes.append(token_volume(options.token_audience))
    if not isinstance(metadata, dict):
        metadata = template["metadata"] = {}
    _mapping(metadata, "annotations", f"{where}.metadata")[ANNOTATION_STATUS] = STATUS_INJECTED
    return TemplateResult(Outcome.INJECTED, native=native, notes=_uid_notes(spec, containers, where))


def _setting(annotations: dict[str, Any], name: str, default: bool, where: str) -> bool:
    """A yes/no annotation, else the command line's `default`."""
    if name not in annotations:
        return default
    said = _flag(annotations[name])
    if said is None:
        raise InjectError(f'{where}.metadata.annotations[{name}]: expected "true" or "false"')
    return said


def _uid_notes(spec: dict[str, Any], containers: list[dict[str, Any]], where: str) -> tuple[str, ...]:
    """The rules let the proxy's UID through uncaptured: a container running as that UID bypasses the mesh."""
    pod_context = spec.get("securityContext")
    pod_uid = pod_context.get("runAsUser") if isinstance(pod_context, dict) else None
    notes = []
    for container in containers:
        context = container.get("securityContext")
        uid = context.get("runAsUser", pod_uid) if isinstance(context, dict) else pod_uid
        if uid == PROXY_UID:
            notes.append(f"{where}: container {container.get('name')} runs as UID {PROXY_UID}, the proxy's: "
                         "its outbound traffic is not captured")
    return tuple(notes)
