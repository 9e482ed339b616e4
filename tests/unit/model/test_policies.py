"""Resilience settings read from meshpy YAML and from Envoy bootstraps into the same model."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import DEFAULT_BREAKERS, CircuitBreakers

YAML = """
clusters:
  - name: backend
    endpoints: [127.0.0.1:9000]
    {extra}
"""
ENVOY = """
static_resources:
  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9000 }} }} }}
    {extra}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_text(text)
    return [str(i) for i in err.value.issues]


def test_breakers_default_to_envoys() -> None:
    assert load_text(YAML.format(extra="")).clusters[0].circuit_breakers == DEFAULT_BREAKERS
    assert load_text(ENVOY.format(extra="")).clusters[0].circuit_breakers == DEFAULT_BREAKERS
    assert CircuitBreakers(max_connections=1024, max_pending_requests=1024,
                                               max_requests=1024, max_retries=3) == DEFAULT_BREAKERS


def test_breakers_from_yaml_and_from_envoy_agree() -> None:
    yaml = load_text(YAML.format(extra="circuit_breakers: {max_connections: 10, max_requests: 20, "
                                       "max_pending_requests: 5, max_retries: 0}"))
    envoy = load_text(ENVOY.format(extra="circuit_breakers: { thresholds: [{ max_connections: 10, "
                                         "max_requests: 20, max_pending_requests: 5, max_retries: 0, "
                                         "track_remaining: true }] }"))
    assert yaml.clusters[0].circuit_breakers == envoy.clusters[0].circuit_breakers == CircuitBreakers(
        max_connections=10, max_pending_requests=5, max_requests=20, max_retries=0)
    # A key left out keeps its default.
    partial = load_text(YAML.format(extra="circuit_breakers: {max_requests: 7}"))
    assert partial.clusters[0].circuit_breakers == CircuitBreakers(max_requests=7)


def test_bad_breakers_are_named() -> None:
    assert issues(YAML.format(extra="circuit_breakers: {max_request: 5}")) == [
        "clusters[0].circuit_breakers.max_request: unknown key (did you mean 'max_requests'?)"]
    assert issues(YAML.format(extra="circuit_breakers: {max_requests: 0}"))[0].startswith(
        "clusters[0].circuit_breakers.max_requests: ")
    high = "circuit_breakers: { thresholds: [{ priority: HIGH, max_requests: 1 }] }"
    assert issues(ENVOY.format(extra=high)) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[0].priority: "
        "only DEFAULT is supported by meshpy (no route priorities)"]
    assert issues(ENVOY.format(extra="circuit_breakers: { thresholds: [{ max_requests: 1 }, "
                                     "{ max_requests: 2 }] }")) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[1]: a second DEFAULT threshold"]
    pools = "circuit_breakers: { thresholds: [{ max_connection_pools: 2 }] }"
    assert issues(ENVOY.format(extra=pools)) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[0].max_connection_pools: "
        "not supported by meshpy"]
