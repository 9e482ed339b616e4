"""The shipped control plane (config/kubernetes/control-plane.yaml: its Deployment's command line and
ConfigMap) as a real `meshpy control --kubernetes` process, against the Kubernetes API of tests/kubeapi.py:
it writes the CA's roots into the ConfigMap meshpy-ca-root-cert of every namespace, those roots verify its
TLS port under the Service's name (what an injected sidecar's --xds-ca does), and a root staged through
the admin (`POST /ca/stage`, as `meshpy ca stage`) reaches every namespace, as does a new namespace and a
deleted ConfigMap. `--no-kubernetes-root-cert` writes nothing."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kit import ROOT, eventually, free_port
from kubeapi import CONFIGMAPS, NAMESPACES, ThreadedKubeApi, write_kubeconfig
from kubeobjects import namespace

from meshpy.sidecar.inject_pod import DEFAULT_CONTROL_PLANE, ROOT_CONFIG_MAP, ROOT_FILE

MANIFEST = ROOT / "config" / "kubernetes" / "control-plane.yaml"
SERVICE_HOST = DEFAULT_CONTROL_PLANE.rpartition(":")[0]  # the host injected sidecars follow
NAMESPACES_NOW = ("shop", "billing", "meshpy-system")


def shipped() -> tuple[list[str], str]:
    """The control container's arguments and the ConfigMap's mesh.yaml."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["args"]), str(config["data"]["mesh.yaml"])


def here(args: list[str], tmp_path: Path, listen: int, admin: int) -> list[str]:
    """The same command line with this machine's paths and ports."""
    _, mesh_yaml = shipped()
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "mesh.yaml").write_text(mesh_yaml)
    swap = {"--listen": f"127.0.0.1:{listen}", "--admin": f"127.0.0.1:{admin}",
            "--meshpy-dir": str(tmp_path / "mesh"), "--ca-dir": str(tmp_path / "ca")}
    out = list(args)
    for i, arg in enumerate(args[:-1]):
        if arg in swap:
            out[i + 1] = swap.pop(arg)
    assert swap == {}, f"the Deployment no longer passes {sorted(swap)}"
    return out


def admin_call(admin: int, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method,
                                     data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=5) as r:
        return str(r.read().decode())


@contextmanager
def control(kube: ThreadedKubeApi, tmp_path: Path, args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.port)
    log = open(tmp_path / "control.log", "wb")  # noqa: SIM115 - the process writes to it
    proc = subprocess.Popen([sys.executable, "-m", "meshpy", *args, "--kubeconfig", str(kubeconfig)],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        yield proc
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, (tmp_path / "control.log").read_text()


def roots_in(kube: ThreadedKubeApi, ns: str) -> str | None:
    cm: dict[str, Any] | None = kube.api.store[CONFIGMAPS].get((ns, ROOT_CONFIG_MAP))
    return None if cm is None else cm["data"].get(ROOT_FILE)


def handshake(port: int, roots: str) -> dict[str, Any]:
    """A TLS handshake as a sidecar makes it: the roots of the ConfigMap, the Service's name. Raises
    ssl.SSLCertVerificationError when they do not verify the port's certificate."""
    context = ssl.create_default_context(cadata=roots)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=SERVICE_HOST) as tls:
        return tls.getpeercert()


def verifies(port: int, roots: str) -> bool:
    try:
        handshake(port, roots)
    except ssl.SSLCertVerificationError:
        return False
    return True


def test_the_shipped_control_plane_puts_its_roots_in_every_namespace_and_they_verify_its_port(
        tmp_path: Path) -> None:
    listen, admin = free_port(), free_port()
    args, _ = shipped()
    with ThreadedKubeApi() as kube:
        for ns in NAMESPACES_NOW:
            kube.call(kube.api.apply, NAMESPACES, namespace(ns))
        kube.call(kube.api.apply, NAMESPACES, namespace("leaving", terminating=True))
        with control(kube, tmp_path, here(args, tmp_path, listen, admin)):
            eventually(lambda: all(roots_in(kube, ns) for ns in NAMESPACES_NOW), "the ConfigMaps", 20)
            bundle = admin_call(admin, "/ca/bundle.pem")
            assert all(roots_in(kube, ns) == bundle for ns in NAMESPACES_NOW)
            assert bundle.count("BEGIN CERTIFICATE") == 1 and roots_in(kube, "leaving") is None
            names = {v for k, v in handshake(listen, bundle)["subjectAltName"] if k == "DNS"}
            assert names == {SERVICE_HOST, f"{SERVICE_HOST}.cluster.local"}
            time.sleep(0.5)  # past the echoes of those writes: from here only a change of the bundle writes

            admin_call(admin, "/ca/stage", "POST")  # `meshpy ca stage`: a second root joins the bundle
            staged = admin_call(admin, "/ca/bundle.pem")
            assert staged.count("BEGIN CERTIFICATE") == 2 and staged.startswith(bundle)
            eventually(lambda: all(roots_in(kube, ns) == staged for ns in NAMESPACES_NOW),
                       "both roots in every namespace")
            assert not verifies(listen, staged[len(bundle):])  # until the rotation, the old root's
            admin_call(admin, "/ca/rotate", "POST")  # the port's certificate now comes from the new root
            rotated = admin_call(admin, "/ca/bundle.pem")
            eventually(lambda: all(roots_in(kube, ns) == rotated for ns in NAMESPACES_NOW), "the new order")
            eventually(lambda: verifies(listen, staged[len(bundle):]), "the port's certificate from it")

            kube.call(kube.api.apply, NAMESPACES, namespace("payments"))
            eventually(lambda: roots_in(kube, "payments") == rotated, "a new namespace gets it")
            kube.call(kube.api.delete, CONFIGMAPS, "shop", ROOT_CONFIG_MAP)
            eventually(lambda: roots_in(kube, "shop") == rotated, "a deleted one is put back")
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            # Three namespaces, the new one, the deleted one put back; the rest were replaced.
            assert re.search(r'root_cert_writes_total\{outcome="created"\} 5\.0', metrics), metrics


def test_no_kubernetes_root_cert_writes_and_watches_nothing_of_it(tmp_path: Path) -> None:
    admin = free_port()
    with ThreadedKubeApi() as kube:
        kube.call(kube.api.apply, NAMESPACES, namespace("shop"))
        args = ["control", "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}",
                "--kubernetes", "--no-kubernetes-root-cert"]
        with control(kube, tmp_path, args):
            eventually(lambda: "published version" in (tmp_path / "control.log").read_text(), "serving")
            time.sleep(0.5)
            assert kube.api.writes == []
            assert kube.call(kube.api.list_requests, CONFIGMAPS) == []
            assert kube.call(kube.api.list_requests, NAMESPACES) == []
