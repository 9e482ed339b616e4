"""Resilience settings read from meshpy YAML and from Envoy bootstraps into the same model."""

from __future__ import annotations

from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.routes import Fault, LocalRateLimit
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
    # HIGH thresholds bound routes of priority HIGH, which meshpy refuses: taken, and they bound nothing.
    high = "circuit_breakers: { thresholds: [{ priority: HIGH, max_requests: 1 }] }"
    assert load_text(ENVOY.format(extra=high)).clusters[0].circuit_breakers == DEFAULT_BREAKERS
    high_pools = "circuit_breakers: { thresholds: [{ priority: HIGH, max_connection_pools: 1 }] }"
    assert issues(ENVOY.format(extra=high_pools)) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[0].max_connection_pools: "
        "not supported by meshpy"]
    assert issues(ENVOY.format(extra="circuit_breakers: { thresholds: [{ max_requests: 1 }, "
                                     "{ max_requests: 2 }] }")) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[1]: a second DEFAULT threshold"]
    pools = "circuit_breakers: { thresholds: [{ max_connection_pools: 2 }] }"
    assert issues(ENVOY.format(extra=pools)) == [
        "static_resources.clusters[0].circuit_breakers.thresholds[0].max_connection_pools: "
        "not supported by meshpy"]


HCM = """
static_resources:
  listeners:
  - name: web
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 10000 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              {vhost}
              routes:
              - match: {{ prefix: /a }}
                direct_response: {{ status: 200 }}
                {route}
              - match: {{ prefix: / }}
                direct_response: {{ status: 200 }}
          http_filters:
          {filters}
          - name: router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"""
FAULT_T = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LIMIT_T = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BUCKET = ("token_bucket: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 1s}, "
          "filter_enabled: {default_value: {numerator: 100}}, "
          "filter_enforced: {default_value: {numerator: 100}}")


def routes_of(text: str) -> Any:
    config = load_text(text)
    http = config.listeners[0].http
    assert http is not None
    return http, http.route_config.virtual_hosts[0]


def test_fault_and_rate_limit_filters_from_envoy() -> None:
    filters = (f'- {{ name: f, typed_config: {{ "@type": {FAULT_T}, abort: {{ http_status: 503, '
               f'percentage: {{ numerator: 25 }} }}, max_active_faults: 3 }} }}\n'
               f'          - {{ name: l, typed_config: {{ "@type": {LIMIT_T}, stat_prefix: x, {BUCKET} }} }}')
    route = (f'typed_per_filter_config: {{ f: {{ "@type": {FAULT_T}, delay: {{ fixed_delay: 0.2s, '
             f'percentage: {{ numerator: 500000, denominator: MILLION }} }} }} }}')
    http, vhost = routes_of(HCM.format(vhost="", route=route, filters=filters))
    assert http.rate_limit == LocalRateLimit(max_tokens=5, tokens_per_fill=5, fill_interval=1.0)
    own, other = vhost.routes
    assert own.fault == Fault(delay=0.2, delay_percent=50.0, abort_percent=0.0)  # replaces the filter's
    assert other.fault == Fault(abort_status=503, abort_percent=25.0, delay_percent=0.0, max_active=3)
    # A vhost bucket, and a local rate limit without filter_enabled/enforced (Envoy: limits nothing).
    vh = f'typed_per_filter_config: {{ l: {{ "@type": {LIMIT_T}, stat_prefix: v, {BUCKET} }} }}'
    lax = f'typed_per_filter_config: {{ l: {{ "@type": {LIMIT_T}, stat_prefix: r, token_bucket: ' \
          f'{{ max_tokens: 1, fill_interval: 1s }} }} }}'
    http, vhost = routes_of(HCM.format(vhost=vh, route=lax, filters=""))
    assert vhost.rate_limit is not None and vhost.rate_limit.max_tokens == 5
    assert vhost.routes[0].rate_limit is None and http.rate_limit is None


def test_guard_filters_in_the_wrong_place_or_form_are_errors() -> None:
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    after = (f'- name: router2\n            typed_config: {{ "@type": {router} }}\n'
             f'          - {{ name: f, typed_config: {{ "@type": {FAULT_T} }} }}')
    found = issues(HCM.format(vhost="", route="", filters=after))
    assert any("comes after the router, so it would never run" in i for i in found), found
    # A share of requests (filter_enabled 50%) is drawn per request, as Envoy does: no error.
    half = (f'- {{ name: l, typed_config: {{ "@type": {LIMIT_T}, stat_prefix: x, token_bucket: '
            f'{{ max_tokens: 1, fill_interval: 1s }}, '
            f'filter_enabled: {{ default_value: {{ numerator: 50 }} }}, '
            f'filter_enforced: {{ default_value: {{ numerator: 100 }} }} }} }}')
    http = load_text(HCM.format(vhost="", route="", filters=half)).listeners[0].http
    assert http is not None and http.rate_limit is not None and http.rate_limit.enabled_percent == 50.0


def test_rate_limits_and_faults_from_yaml() -> None:
    config = load_text(YAML.format(extra="") + """
listeners:
  - name: web
    address: 127.0.0.1:10000
    rate_limit: 50/m
    virtual_hosts:
      - domains: ["*"]
        rate_limit: {max_tokens: 9, fill_interval: 100ms}
        routes:
          - match: /
            cluster: backend
            fault: {delay: 1s, delay_percent: 5, abort: 429, headers: true}
""")
    http = config.listeners[0].http
    assert http is not None and http.rate_limit == LocalRateLimit(max_tokens=50, tokens_per_fill=50,
                                                                   fill_interval=60.0)
    vhost = http.route_config.virtual_hosts[0]
    assert vhost.rate_limit == LocalRateLimit(max_tokens=9, tokens_per_fill=9, fill_interval=0.1)
    assert vhost.routes[0].fault == Fault(delay=1.0, delay_percent=5.0, abort_status=429,
                                          header_controlled=True)
    assert issues(YAML.format(extra="") + "listeners: [{address: 127.0.0.1:1, cluster: backend, "
                  "rate_limit: 5/fortnight}]") == [
        "listeners[0].rate_limit: expected N/s, N/m or N/h (e.g. 100/s), or a mapping with max_tokens"]
