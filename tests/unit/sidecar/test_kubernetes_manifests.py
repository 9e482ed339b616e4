"""config/kubernetes/: every object passes Kubernetes' schemas, the control plane's command line and its
ConfigMap are ones meshpy accepts, and the sample app injects into valid objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_schema import validate

from control.sources.meshpy_dir import load_meshpy_dir
from meshpy.cli import _parser
from meshpy.sidecar.inject import InjectOptions, inject_text
from meshpy.sidecar.inject_pod import PROXY_UID

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
    role = find(docs, "ClusterRole", "meshpy-control")
    granted = {(group, resource): sorted(rule["verbs"])
               for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {("", "services"): ["get", "list", "watch"],
                       ("discovery.k8s.io", "endpointslices"): ["get", "list", "watch"]}
    binding = find(docs, "ClusterRoleBinding", "meshpy-control")
    assert binding["roleRef"]["name"] == "meshpy-control"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshpy-control",
                                    "namespace": "meshpy-system"}]
    service = find(docs, "Service", "meshpy-control")
    assert service["spec"]["ports"] == [{"name": "grpc-xds", "port": 18000, "targetPort": "grpc-xds",
                                         "appProtocol": "grpc"}]


def test_the_control_plane_runs_as_meshpy_control_with_its_config() -> None:
    docs = load("control-plane.yaml")
    deployment = find(docs, "Deployment", "meshpy-control")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "meshpy-control"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "meshpy:0.1.0"
    args = container["args"]
    assert args == ["control", "--listen", "0.0.0.0:18000", "--admin", "0.0.0.0:18001", "--kubernetes",
                    "--meshpy-dir", "/etc/meshpy-control"]
    parsed = _parser().parse_args(args)  # exits (a failure here) on an option meshpy does not have
    assert parsed.kubernetes and parsed.meshpy_dir == "/etc/meshpy-control"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert "livenessProbe" in container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc-xds": 18000, "admin": 18001}
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == parsed.meshpy_dir
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
