"""Shared by the xDS interop tests: `meshpy control` as a process, the ADS bootstrap that Envoy and
meshpy both start from, and the resources they are served (Envoy-native YAML and meshpy YAML)."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from kit import free_port

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


ENVOY_GRPC = "{ envoy_grpc: { cluster_name: xds } }"


def bootstrap(admin: int, ads_port: int, api_type: str, node: str = "envoy-1", node_extra: str = "",
              grpc_service: str = ENVOY_GRPC, cds_extra: str = "", node_cluster: str = "web",
              ads_host: str = "127.0.0.1") -> str:
    """An ADS bootstrap; the static cluster `xds` reaches the control plane on `ads_host:ads_port`."""
    return f"""
node: {{ id: {node}, cluster: {node_cluster}{node_extra} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{grpc_service}]
  cds_config: {{ ads: {{}}, resource_api_version: V3{cds_extra} }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ads_host}, port_value: {ads_port} }} }} }}
"""


def listener(port: int) -> str:
    return f"""
"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: web
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": {HCM}
      stat_prefix: web
      rds: {{ route_config_name: local, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"""


def routes(extra: str = "") -> str:
    return f"""
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: local
virtual_hosts:
- name: all
  domains: ["*"]
  routes:{extra}
  - match: {{ prefix: / }}
    route: {{ cluster: demo }}
"""


CLUSTER = """
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: demo
type: EDS
connect_timeout: 1s
eds_cluster_config: { eds_config: { ads: {}, resource_api_version: V3 } }
"""


def endpoints(port: int) -> str:
    return f"""
"@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
cluster_name: demo
endpoints:
- lb_endpoints:
  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"""


TEAPOT = """
  - match: { path: /teapot }
    direct_response: { status: 418, body: { inline_string: "short and stout" } }"""


WEIGHTED = """
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: local
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: / }
    route:
      weighted_clusters:
        clusters: [{ name: demo, weight: 50 }, { name: demo-b, weight: 50 }]
"""
CLUSTER_B = CLUSTER.replace("name: demo", "name: demo-b")


def endpoints_b(port: int) -> str:
    return endpoints(port).replace("cluster_name: demo", "cluster_name: demo-b")


def add_second_cluster(source: Path, port: int) -> None:
    """The cluster demo-b with its endpoint, beside demo, for a weighted split."""
    (source / "cluster-b.yaml").write_text(CLUSTER_B)
    (source / "endpoints-b.yaml").write_text(endpoints_b(port))


def write_resources(source: Path, port: int, upstream: int) -> None:
    """The four resources of the interop tests in `source`: listener, routes, EDS cluster, endpoints."""
    source.mkdir(exist_ok=True)
    (source / "listener.yaml").write_text(listener(port))
    (source / "routes.yaml").write_text(routes())
    (source / "cluster.yaml").write_text(CLUSTER)
    (source / "endpoints.yaml").write_text(endpoints(upstream))


class Control:
    def __init__(self, source: Path, port: int, log: Path, source_flag: str = "--envoy-dir",
                 poll_interval: float = 0.5) -> None:
        self.source, self.port, self.log, self.flag = source, port, log, source_flag
        self.poll_interval = poll_interval
        self.admin = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []  # more flags (the CA's)

    def start(self) -> Control:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshpy", "control", "--listen", f"127.0.0.1:{self.port}",
                 "--admin", f"127.0.0.1:{self.admin}", self.flag, str(self.source),
                 "--poll-interval", str(self.poll_interval), *self.extra],
                stdout=out, stderr=subprocess.STDOUT)
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(10)

    def kill(self) -> int:
        """Gone at once, streams cut without a goodbye (a crash, an OOM kill)."""
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait(10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def stat(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={name}", timeout=2) as r:
        text = r.read().decode()
    found = re.findall(rf"{re.escape(name)}: (\d+)", text)
    return sum(int(n) for n in found)


MESHPY_YAML = """
listeners:
  - name: web
    address: 127.0.0.1:{port}
    routes:
      - match: /teapot
        direct: {{status: 418, body: "from meshpy yaml"}}
      - match: /
        cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:{upstream}]
"""


