"""config/kubernetes/: every object passes Kubernetes' schemas, the control plane's command line and its
ConfigMap are ones meshpy accepts, and the sample app injects into valid objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schema import validate

from control import ca_cli
from control.sources import kubernetes_cli
from control.sources.kubernetes_rootcert import SELECTOR
from control.sources.meshpy_dir import load_meshpy_dir
from meshpy.cli import _parser
from meshpy.sidecar.inject import InjectOptions, inject_text
from meshpy.sidecar.inject_pod import DEFAULT_CONTROL_PLANE, PROXY_UID, ROOT_CONFIG_MAP
from meshpy.sidecar.inject_probes import PROBE_PORT, PROBES_ENV

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = sorted((ROOT / "config" / "kubernetes").glob("*.yaml"))


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "config" / "kubernetes" / name).read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} >= {"control-plane.yaml", "app.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_object_passes_the_schemas(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    for doc in docs:
        validate(doc)


def test_the_control_plane_objects() -> None:
    docs = load("control-plane.yaml")
    assert docs[0]["kind"] == "Namespace"  # created first: the others live in it
    find(docs, "Namespace", "meshpy-system")
    find(docs, "ServiceAccount", "meshpy-control")
    binding = find(docs, "ClusterRoleBinding", "meshpy-control")
    assert binding["roleRef"]["name"] == "meshpy-control"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshpy-control",
                                    "namespace": "meshpy-system"}]
    service = find(docs, "Service", "meshpy-control")
    assert service["spec"]["ports"] == [{"name": "grpc-xds", "port": 18000, "targetPort": "grpc-xds",
                                         "appProtocol": "grpc"}]


def granted(role: dict[str, Any]) -> dict[tuple[str, str, tuple[str, ...]], list[str]]:
    """(API group, resource, the names it is limited to) -> verbs."""
    found: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource, tuple(rule.get("resourceNames", ())))
                assert key not in found, f"{key}: in two rules"
                found[key] = sorted(rule["verbs"])
    return found


def test_the_role_grants_what_the_control_plane_does_and_no_more() -> None:
    rules = granted(find(load("control-plane.yaml"), "ClusterRole", "meshpy-control"))
    read = ["get", "list", "watch"]
    # The Kubernetes source: Services, EndpointSlices and Pods, listed and watched.
    assert rules.pop(("", "services", ())) == read
    assert rules.pop(("discovery.k8s.io", "endpointslices", ())) == read
    assert rules.pop(("", "pods", ())) == read
    # The roots in every namespace: Namespaces watched, the one ConfigMap read, watched and rewritten by
    # name (the writer lists and watches with the fieldSelector that lets RBAC limit a list to a name),
    # and created (RBAC cannot limit a create to a name).
    assert rules.pop(("", "namespaces", ())) == read
    assert f"metadata.name={ROOT_CONFIG_MAP}" == SELECTOR
    assert rules.pop(("", "configmaps", (ROOT_CONFIG_MAP,))) == ["get", "list", "update", "watch"]
    assert rules.pop(("", "configmaps", ())) == ["create"]
    # The CA asks the API whose a sidecar's token is before it signs (control/ca_auth.py TokenReviewer).
    assert rules.pop(("authentication.k8s.io", "tokenreviews", ())) == ["create"]
    assert rules == {}, "a grant no code uses"


def test_the_control_plane_serves_tls_for_its_service_names_with_a_ca_of_its_own() -> None:
    """What injected sidecars with identities need: a TLS port whose certificate names the host they
    follow, from a CA of the trust domain they ask for, whose roots reach every namespace."""
    docs = load("control-plane.yaml")
    deployment = find(docs, "Deployment", "meshpy-control")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parsed = _parser().parse_args(container["args"])
    ca = ca_cli.options(parsed)
    service = find(docs, "Service", "meshpy-control")
    host, _, port = DEFAULT_CONTROL_PLANE.rpartition(":")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert ca.grpc_tls_names == (host, f"{host}.cluster.local")
    assert int(port) == service["spec"]["ports"][0]["port"]
    assert ca.trust_domain == "cluster.local"  # what `meshpy inject --trust-domain cluster.local` asks for
    kubernetes = kubernetes_cli.options(parsed)
    assert kubernetes is not None and kubernetes.root_cert and kubernetes.namespaces == ()
    # The CA's files in a writable, memory-backed volume (the root file system is read-only): a restart
    # of the container keeps the root. One pod at a time: two would each write their own root.
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(ca.ca_dir))
    assert not mount.get("readOnly")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_the_control_plane_runs_as_meshpy_control_with_its_config() -> None:
    docs = load("control-plane.yaml")
    deployment = find(docs, "Deployment", "meshpy-control")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "meshpy-control"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "meshpy:0.1.0"
    args = container["args"]
    assert args[:8] == ["control", "--listen", "0.0.0.0:18000", "--admin", "0.0.0.0:18001", "--kubernetes",
                        "--meshpy-dir", "/etc/meshpy-control"]
    parsed = _parser().parse_args(args)  # exits (a failure here) on an option meshpy does not have
    assert parsed.kubernetes and parsed.meshpy_dir == "/etc/meshpy-control"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert "livenessProbe" in container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc-xds": 18000, "admin": 18001}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == parsed.meshpy_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "meshpy-control-config"


def test_the_config_map_is_a_meshpy_dir(tmp_path: Path) -> None:
    config_map = find(load("control-plane.yaml"), "ConfigMap", "meshpy-control-config")
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    resources = load_meshpy_dir(tmp_path)  # raises SourceError naming the file and path when wrong
    listeners = resources["type.googleapis.com/envoy.config.listener.v3.Listener"]
    assert "inbound" in listeners


def test_the_sample_app_injects_into_valid_objects() -> None:
    text = (ROOT / "config" / "kubernetes" / "app.yaml").read_text()
    result = inject_text(text, InjectOptions(image="meshpy:0.1.0"))
    assert result.injected == 1
    docs = [d for d in yaml.safe_load_all(result.text) if d]
    for doc in docs:
        validate(doc)
    pod = find(docs, "Deployment", "web")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["meshpy-init", "meshpy-proxy"]
    # The proxy's UID is let through uncaptured: an app with the same UID would bypass the mesh.
    (app,) = pod["containers"]
    assert app["securityContext"]["runAsUser"] != PROXY_UID
    # Its readiness probe goes through the proxy's probe port, which the kubelet reaches uncaptured; the
    # proxy makes the original check of port `http` (8080) inside the pod.
    assert app["readinessProbe"] == {"httpGet": {"path": "/app-health/web/readyz", "port": PROBE_PORT,
                                                 "scheme": "HTTP"}, "periodSeconds": 5}
    proxy = pod["initContainers"][1]
    (probes,) = [json.loads(e["value"]) for e in proxy["env"] if e["name"] == PROBES_ENV]
    assert probes == {"/app-health/web/readyz": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP"},
                                                 "timeoutSeconds": 1}}
    init_args = pod["initContainers"][0]["args"]
    assert init_args[init_args.index("--exclude-inbound-ports") + 1] == f"15000,{PROBE_PORT}"
