"""Limits and overload in both config forms: meshpy YAML and Envoy's fields (overload_manager,
per_connection_buffer_limit_bytes, the connection_limit filter, common_http_protocol_options), with
their errors named by path."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.limits import ConnectionLimits, HttpLimits, Overload, OverloadAction
from meshpy.model.load import load_text

MESHPY = """
overload:
  max_connections: 100
  max_memory: 512MiB
  refresh_interval: 250ms
  actions: {disable_keepalive: 0.8, shed_requests: 0.9}
listeners:
- name: web
  address: 127.0.0.1:18000
  max_connections: 10
  max_connections_per_source_ip: 3
  buffer_limit: 32KiB
  max_connection_duration: 10m
  max_requests_per_connection: 100
  headers_with_underscores: drop
  routes: [{match: /, direct: {status: 200}}]
"""

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
LIMIT = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
HEAP = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
CONNS = ("type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
         "DownstreamConnectionsConfig")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def envoy(trigger: str = "threshold: {value: 0.95}", action: str = "stop_accepting_requests") -> str:
    return f"""
overload_manager:
  refresh_interval: 0.5s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config: {{"@type": {HEAP}, max_heap_size_bytes: 536870912}}
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config: {{"@type": {CONNS}, max_active_downstream_connections: 1000}}
  actions:
  - name: envoy.overload_actions.{action}
    triggers: [{{name: envoy.resource_monitors.fixed_heap, {trigger}}}]
static_resources:
  listeners:
  - name: l
    per_connection_buffer_limit_bytes: 32768
    address: {{socket_address: {{address: 127.0.0.1, port_value: 18001}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.connection_limit
        typed_config: {{"@type": {LIMIT}, stat_prefix: cl, max_connections: 50}}
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          stat_prefix: h
          common_http_protocol_options:
            max_connection_duration: 60s
            max_requests_per_connection: 10
            headers_with_underscores_action: REJECT_REQUEST
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": {ROUTER}}}}}]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    return [str(i) for i in info.value.issues]


def test_meshpy_yaml() -> None:
    c = load_text(MESHPY)
    actions = (OverloadAction(action="disable_keepalive", threshold=0.8),
               OverloadAction(action="shed_requests", threshold=0.9))
    assert c.overload == Overload(max_connections=100, max_memory=512 * 2**20, refresh_interval=0.25,
                                  actions=actions)
    lis = c.listeners[0]
    assert lis.limits == ConnectionLimits(max_connections=10, max_connections_per_source_ip=3,
                                          buffer_limit=32768)
    assert lis.http is not None
    assert lis.http.limits == HttpLimits(max_connection_duration=600.0, max_requests_per_connection=100,
                                         headers_with_underscores="drop")


def test_envoy_form() -> None:
    c = load_text(envoy())
    assert c.overload == Overload(max_connections=1000, max_memory=536870912, refresh_interval=0.5,
                                  actions=(OverloadAction(action="shed_requests", threshold=0.95),))
    lis = c.listeners[0]
    assert lis.limits == ConnectionLimits(max_connections=50, buffer_limit=32768)
    assert lis.http is not None
    assert lis.http.limits == HttpLimits(max_connection_duration=60.0, max_requests_per_connection=10,
                                         headers_with_underscores="reject")


@pytest.mark.parametrize(("text", "expected"), [
    (envoy("scaled: {scaling_threshold: 0.8, saturation_threshold: 0.95}"),
     "overload_manager.actions[0].triggers[0]: a threshold is required (scaled triggers are not supported "
     "by meshpy)"),
    (envoy(action="reduce_timeouts"),
     "overload_manager.actions[0].name: envoy.overload_actions.reduce_timeouts is not supported by meshpy"),
    (envoy("threshold: {value: 1.5}"),
     "overload_manager.actions[0].triggers[0].threshold.value: must be over 0 and at most 1"),
    (MESHPY.replace("headers_with_underscores: drop", "headers_with_underscores: dorp"),
     "listeners[0].headers_with_underscores: must be allow, reject or drop, got 'dorp'"),
    (MESHPY.replace("shed_requests: 0.9", "shed_requests: 90"),
     "overload.actions.shed_requests: must be a share of max_memory, over 0 and at most 1 (0.9 is 90%), "
     "got 90"),
    (MESHPY.replace("  max_memory: 512MiB\n", ""),
     "overload: actions need max_memory: the memory their thresholds are shares of"),
    (MESHPY.replace("max_connections_per_source_ip: 3", "max_connections_per_source_ip: 0"),
     "listeners[0].max_connections_per_source_ip: must be a positive integer, got 0"),
])
def test_errors_name_the_path(text: str, expected: str) -> None:
    assert any(e.startswith(expected) for e in errors(text)), errors(text)
