"""meshpy validate --kubernetes FILE: manifests checked for what `meshpy control --kubernetes` makes of
them, and the ConfigMap a control plane's --meshpy-dir is mounted from checked as that directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpy.cli import main

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted(str(p) for p in (ROOT / "config" / "kubernetes").glob("*.yaml"))

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-abc
  namespace: shop
  labels: {kubernetes.io/service-name: orders}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.5]}]
"""


def run(capsys: pytest.CaptureFixture[str], *files: str) -> tuple[int, str]:
    rc = main(["validate", "--kubernetes", *files])
    return rc, capsys.readouterr().out


def test_the_shipped_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, *SHIPPED)
    assert rc == 0, out
    configmap = "ConfigMap meshpy-system/meshpy-control-config (--meshpy-dir /etc/meshpy-control)"
    assert f"{configmap}: ok (meshpy" in out
    assert "Deployment web: not read by the control plane" in out


def test_a_bad_configmap_fails_naming_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cp.yaml"
    bad.write_text((ROOT / "config/kubernetes/control-plane.yaml").read_text().replace(
        "cluster: passthrough", "cluster: passthru"))
    rc, out = run(capsys, str(bad))
    assert rc == 1
    said = "(--meshpy-dir /etc/meshpy-control): mesh.yaml: listeners[0].cluster: unknown cluster 'passthru'"
    assert said in out


def test_services_and_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE)
    rc, out = run(capsys, str(f))
    assert rc == 0, out
    assert "1 Services, 1 EndpointSlices -> 1 Clusters, 1 ClusterLoadAssignments, 1 Listeners" in out


def test_bad_objects_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE.replace("port: 8080, targetPort", "port: 80800, targetPort")
                 .replace("labels: {kubernetes.io/service-name: orders}", "labels: {}") + "---\njust: text\n")
    rc, out = run(capsys, str(f))
    assert rc == 1
    assert f"{f}:doc 0: spec.ports[0].port: must be a port number, got 80800" in out
    assert f"note: {f}:doc 1: no kubernetes.io/service-name label: belongs to no Service, not served" in out
    assert f"{f}:doc 2: not a Kubernetes object (no kind)" in out


def test_a_service_called_over_mutual_tls_says_where_its_identity_comes_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE.replace("metadata: {name: orders, namespace: shop}", "metadata: {name: orders, "
                                 "namespace: shop, annotations: {security.meshpy.io/mtls: strict}}"))
    rc, out = run(capsys, str(f))
    assert rc == 0, out
    assert f"note: {f}:doc 0: its callers will expect the service accounts of its pods" in out
    f.write_text(SERVICE.replace("metadata: {name: orders, namespace: shop}", "metadata: {name: orders, "
                                 "namespace: shop, annotations: {security.meshpy.io/mtls: strict, "
                                 "security.meshpy.io/serviceAccount: orders}}"))
    rc, out = run(capsys, str(f))
    assert rc == 0 and "service accounts of its pods" not in out, out
