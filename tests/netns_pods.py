"""The "pods" of end-to-end tests, on this machine: network namespaces joined by a bridge in a namespace of
their own (the "net" one, whose bridge address is the pods' gateway), processes started inside them, and
the calls a pod's app makes. Importing it does nothing; `Pods` makes and removes what a test uses.

    pods = Pods(logs)                       # in a fixture, with try/finally: pods.close()
    pods.add(net, a, b)                     # skips the test where namespaces are not allowed
    pods.wire(net, gateway, {a: ip_a, b: ip_b})
    pods.start("control", net, *MESHPY, "control", ...)
    pods.sidecar(a, node_cluster, f"{gateway}:18000")   # `meshpy iptables` + `meshpy run` as PROXY_GID
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import ROOT, eventually

PROXY_GID = 10001  # the sidecar's group: `meshpy iptables --proxy-gid` lets its traffic through
MESHPY = [sys.executable, "-m", "meshpy"]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def why_not() -> str | None:
    """Why this machine cannot run pods (None if it may: namespaces themselves are tried by `add`)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables-restore", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def curl(pod: str, url: str, *args: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of a call made by the client app in `pod`; status 0 if it failed."""
    done = in_ns(pod, "curl", "-s", "-m", f"{timeout:g}", "-o", "-", "-w", "\n%{http_code}", *args, url,
                 check=False)
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def metric(pod: str, name: str, **labels: str) -> float:
    """The sum of a sidecar's samples of `name` with these labels (its admin on 127.0.0.1:15000)."""
    text = in_ns(pod, "curl", "-s", "-m", "5", "http://127.0.0.1:15000/stats/prometheus").stdout
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def served_by(body: str) -> str:
    """The demo app's name from its JSON echo ("" if the body is something else)."""
    try:
        return str(json.loads(body).get("upstream", ""))
    except ValueError:
        return ""


class Pods:
    """The namespaces and processes a test made, all removed by `close` (processes by their PID)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.namespaces: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def add(self, *namespaces: str) -> None:
        for ns in namespaces:
            done = sh("ip", "netns", "add", ns, check=False)
            if done.returncode != 0:
                pytest.skip(f"this machine does not allow network namespaces: {done.stderr.strip()}")
            self.namespaces.append(ns)

    def wire(self, net: str, gateway: str, pods: dict[str, str]) -> None:
        """A bridge in `net` at `gateway` (/24), each pod's eth0 on it at its address, routed through it."""
        try:
            in_ns(net, "ip", "link", "set", "lo", "up")
            in_ns(net, "ip", "link", "add", "br0", "type", "bridge")
            in_ns(net, "ip", "addr", "add", f"{gateway}/24", "dev", "br0")
            in_ns(net, "ip", "link", "set", "br0", "up")
            for i, (pod, ip) in enumerate(pods.items()):
                in_ns(net, "ip", "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns",
                      pod)
                in_ns(net, "ip", "link", "set", f"veth{i}", "master", "br0")
                in_ns(net, "ip", "link", "set", f"veth{i}", "up")
                in_ns(pod, "ip", "link", "set", "lo", "up")
                in_ns(pod, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
                in_ns(pod, "ip", "link", "set", "eth0", "up")
                in_ns(pod, "ip", "route", "add", "default", "via", gateway)
        except RuntimeError as err:
            pytest.skip(f"cannot build the test network: {err}")

    def start(self, name: str, ns: str, *argv: str, gid: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run argv in `ns` (output to <logs>/<name>.out); `ip netns exec` execs it, so the PID is its."""
        out = open(self.logs / f"{name}.out", "wb")  # noqa: SIM115 - the process owns it
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out,
                                            stderr=subprocess.STDOUT, cwd=ROOT, group=gid,
                                            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
        out.close()
        return self.procs[name]

    def sidecar(self, pod: str, node_cluster: str, xds: str, *run_args: str, node_id: str | None = None,
                exclude_inbound: str = "15000", env: dict[str, str] | None = None) -> None:
        """The pod's interception rules, then meshpy as its sidecar (admin 127.0.0.1:15000), following xds
        as the node `node_id` (default: the pod's namespace name), with `env` added to its environment."""
        rules = in_ns(pod, *MESHPY, "iptables", "--proxy-gid", str(PROXY_GID), "--exclude-inbound-ports",
                      exclude_inbound, check=False)
        if rules.returncode != 0:
            pytest.skip(f"cannot install the interception rules: {rules.stderr.strip()}")
        self.start(pod, pod, *MESHPY, "run", "--xds", xds, "--node-id", node_id or pod, "--node-cluster",
                   node_cluster, "--admin", "127.0.0.1:15000", "--drain-time", "0", "--grace-time", "1",
                   *run_args, gid=PROXY_GID, env=env)

    def wait_ready(self, *pods: str, timeout: int = 40) -> None:
        """Every one of `pods`' sidecars has its config live (`meshpy wait`), or the test fails with the
        logs."""
        for pod in pods:
            ready = in_ns(pod, *MESHPY, "wait", "--timeout", str(timeout), check=False)
            assert ready.returncode == 0, f"{pod}: {ready.stderr}\n{self.proxy_logs()}"

    def kube_api(self, net: str, port: int, objects: list[dict[str, Any]]) -> str:
        """The fake Kubernetes API (tests/kubeapi.py) in `net` on `port`, holding `objects`
        ([{kind, object}]): its URL, once it answers."""
        path = self.logs / "objects.json"
        path.write_text(json.dumps(objects))
        self.start("kubeapi", net, sys.executable, str(ROOT / "tests" / "kubeapi.py"), "serve", "--port",
                   str(port), "--objects", str(path))
        api = f"http://127.0.0.1:{port}"
        eventually(lambda: in_ns(net, "curl", "-s", "-f", "-m", "2", f"{api}/api/v1/services",
                                 check=False).returncode == 0, "the Kubernetes API listens")
        return api

    def proxy_logs(self) -> str:
        return "\n".join(f"--- {name}\n{(self.logs / f'{name}.out').read_text(errors='replace')}"
                         for name in self.procs if (self.logs / f"{name}.out").exists())

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in self.namespaces:
            sh("ip", "netns", "delete", ns, check=False)


@contextlib.contextmanager
def pod_network(factory: pytest.TempPathFactory, name: str, net: str, gateway: str,
                ips: dict[str, str]) -> Iterator[tuple[Pods, Path]]:
    """The pods of `ips` (network namespaces) wired to a bridge in `net` at `gateway`, and a directory for
    their logs; skipped where namespaces cannot be made, and everything removed afterwards."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    logs = factory.mktemp(name)
    pods = Pods(logs)
    try:
        pods.add(net, *ips)
        pods.wire(net, gateway, ips)
        yield pods, logs
    finally:
        pods.close()
