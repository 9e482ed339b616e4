"""A proxyless grpcio client (`xds:///NAME`) resolving through `meshpy control`, and following an
endpoint change. The client runs in its own process: grpc reads its xDS bootstrap once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from kit import free_port

CLIENT = r"""
import sys, time, grpc
channel = grpc.insecure_channel("xds:///greeter")
who = channel.unary_unary("/demo.Echo/Who")
want, deadline = sys.argv[1].encode(), time.monotonic() + float(sys.argv[2])
seen = []
while time.monotonic() < deadline:
    try:
        got = who(b"", timeout=2)
    except grpc.RpcError as err:
        seen.append("error:" + err.code().name)
        time.sleep(0.05)
        continue
    seen.append(got.decode())
    if got == want:
        print("reached", got.decode(), "after", len(seen), "calls")
        sys.exit(0)
    time.sleep(0.02)
print("never reached", want.decode(), "saw", sorted(set(seen)))
sys.exit(1)
"""


def resources(port: int) -> str:
    hcm = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
           ".HttpConnectionManager")
    return f"""
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: greeter
  api_listener:
    api_listener:
      "@type": {hcm}
      rds: {{ route_config_name: greeter-route, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: greeter-route
  virtual_hosts:
  - name: greeter
    domains: [greeter]
    routes:
    - match: {{ prefix: "" }}
      route: {{ cluster: greeter-backends }}
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: greeter-backends
  type: EDS
  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: greeter-backends
  endpoints:
  - load_balancing_weight: 1
    locality: {{ zone: z1 }}
    lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"""


def echo_server(name: str) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", {"Who": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def backends() -> Iterator[tuple[int, int]]:
    a, port_a = echo_server("a")
    b, port_b = echo_server("b")
    yield port_a, port_b
    a.stop(None)
    b.stop(None)


def test_proxyless_grpc_client_follows_endpoint_change(tmp_path: Path, backends: tuple[int, int]) -> None:
    port_a, port_b = backends
    source = tmp_path / "resources"
    source.mkdir()
    (source / "greeter.yaml").write_text(resources(port_a))
    ads, admin = free_port(), free_port()
    log = tmp_path / "control.log"
    with open(log, "wb") as out:
        control = subprocess.Popen([sys.executable, "-m", "meshpy", "control", "--listen", f"127.0.0.1:{ads}",
                                    "--admin", f"127.0.0.1:{admin}", "--envoy-dir", str(source)],
                                   stdout=out, stderr=subprocess.STDOUT)
    env = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="0", GRPC_XDS_BOOTSTRAP_CONFIG=json.dumps({
        "xds_servers": [{"server_uri": f"127.0.0.1:{ads}", "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": "grpc-client-1", "cluster": "greeter-clients"}}))
    try:
        first = subprocess.run([sys.executable, "-c", CLIENT, "a", "15"], env=env, capture_output=True,
                               text=True, timeout=60, check=False)
        assert first.returncode == 0, first.stdout + first.stderr + log.read_text()
        # The client (a new process) keeps calling while the endpoint moves from a to b.
        moving = subprocess.Popen([sys.executable, "-c", CLIENT, "b", "20"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        (source / "greeter.yaml").write_text(resources(port_b))
        out, _ = moving.communicate(timeout=60)
        assert moving.returncode == 0, out + log.read_text()
        assert "reached b" in out
    finally:
        control.terminate()
        control.wait(10)
