"""The meshpy YAML loader's errors: each with its exact path and reason, all collected at once."""

from __future__ import annotations

from typing import Any

import pytest
from yamlkit import CLUSTERS, issues, load, route_yaml

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.meshpy_yaml import load_meshpy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "listeners: [{address: '127.0.0.1:1', cluster: backend, foo: 1}]\n" + CLUSTERS,
            "listeners[0].foo: unknown key",
        ),
        (
            "listeners: [{address: '127.0.0.1:1', cluster: backend, protocl: http}]\n" + CLUSTERS,
            "listeners[0].protocl: unknown key (did you mean 'protocol'?)",
        ),
        ("listners: []", "listners: unknown key (did you mean 'listeners'?)"),
        (
            "clusters: [{name: a, endpoint: ['127.0.0.1:1']}]",
            "clusters[0].endpoint: unknown key (did you mean 'endpoints'?)",
        ),
        (
            "listeners: [{address: '127.0.0.1:70000', cluster: backend}]\n" + CLUSTERS,
            "listeners[0].address: port 70000 is out of range",
        ),
        (
            "listeners: [{address: 'localhost:1', cluster: backend}]\n" + CLUSTERS,
            "listeners[0].address: 'localhost' is a host name; listen on an IP address such as 127.0.0.1",
        ),
        ("listeners: [{cluster: backend}]\n" + CLUSTERS, "listeners[0]: missing required key 'address'"),
        (
            "listeners: [{address: ':1', protocol: udp, cluster: backend}]\n" + CLUSTERS,
            "listeners[0].protocol: must be http, auto, http1, http2 or tcp, got 'udp'",
        ),
        ("listeners: [{address: ':1'}]", "listeners[0]: needs one of virtual_hosts, routes or cluster"),
        (
            "listeners: [{address: ':1', cluster: backend, routes: [{cluster: backend}]}]\n" + CLUSTERS,
            "listeners[0]: has routes and cluster; use only one",
        ),
        ("listeners: [{address: ':1', protocol: tcp}]", "listeners[0]: missing required key 'cluster'"),
        (
            "listeners: [{address: ':1', protocol: tcp, cluster: backend, max_request_body: 1MiB}]\n"
            + CLUSTERS,
            "listeners[0].max_request_body: only applies to http listeners",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, max_request_body: 0}]\n" + CLUSTERS,
            "listeners[0].max_request_body: must be at least 1 byte; use off for no limit",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, max_request_headers: 60}]\n" + CLUSTERS,
            "listeners[0].max_request_headers: must be a whole number of KiB (e.g. 60KiB), got 60 bytes",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, max_request_headers: 9MiB}]\n" + CLUSTERS,
            "listeners[0].max_request_headers: must be between 1KiB and 8192KiB",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, use_remote_address: 'yes please'}]\n" + CLUSTERS,
            "listeners[0].use_remote_address: expected true or false, got a string",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, xff_num_trusted_hops: -1}]\n" + CLUSTERS,
            "listeners[0].xff_num_trusted_hops: must not be negative, got -1",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, stream_idle_timeout: soon}]\n" + CLUSTERS,
            "listeners[0].stream_idle_timeout: 'soon' is not a duration; "
            "use seconds or a string like 250ms, 1.5s, 2m, 1h30m",
        ),
        (
            "listeners: [{address: ':1', cluster: backend, access_log: [stdout, 3]}]\n" + CLUSTERS,
            "listeners[0].access_log[1]: expected stdout, stderr, a file path or a mapping, got a number",
        ),
        ("listeners: {address: ':1'}", "listeners: expected a list, got a mapping"),
        ("listeners: [{address: ':1', cluster: ''}]", "listeners[0].cluster: must not be empty"),
        ("admin: 127.0.0.1", "admin: '127.0.0.1' has no port; expected host:port (e.g. 127.0.0.1:8080)"),
        ("admin: {port: 1}", "admin.port: unknown key"),
        ("drain_time: -1s", "drain_time: duration -1s must not be negative"),
        ("grace_time: off", "grace_time: cannot be turned off; give a duration like 5s"),
    ],
)
def test_listener_and_top_level_errors(text: str, expected: str) -> None:
    assert expected in issues(text)


@pytest.mark.parametrize(
    ("clusters", "expected"),
    [
        ("[{endpoints: ['127.0.0.1:1']}]", "clusters[0]: missing required key 'name'"),
        ("[{name: a}]", "clusters[0]: missing required key 'endpoints'"),
        ("[{name: a, endpoints: []}]",
         "clusters[0].endpoints: needs at least one endpoint (a cluster meant to refuse everything says "
         "type: static)"),
        (
            "[{name: a, endpoints: ['127.0.0.1:70000']}]",
            "clusters[0].endpoints[0]: port 70000 is out of range",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:0']}]",
            "clusters[0].endpoints[0]: port 0 is only allowed for listener addresses",
        ),
        (
            "[{name: a, endpoints: [{address: '127.0.0.1:1', weight: 0}]}]",
            "clusters[0].endpoints[0].weight: must be a positive integer, got 0",
        ),
        ("[{name: a, endpoints: [{weight: 1}]}]", "clusters[0].endpoints[0]: missing required key 'address'"),
        (
            "[{name: a, type: static, endpoints: ['localhost:1']}]",
            "clusters[0].endpoints[0]: 'localhost' is a host name; static clusters need IP addresses "
            "(use type: strict_dns)",
        ),
        (
            "[{name: a, type: eds, endpoints: ['127.0.0.1:1']}]",
            "clusters[0].type: must be one of static, strict_dns, logical_dns, original_dst, got 'eds'",
        ),
        (
            "[{name: a, type: logical_dns, endpoints: ['a:1', 'b:1']}]",
            "clusters[0].endpoints: a logical_dns cluster has exactly one endpoint",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], dns_refresh_rate: 1s}]",
            "clusters[0].dns_refresh_rate: only applies to strict_dns and logical_dns clusters",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], connect_timeout: 0}]",
            "clusters[0].connect_timeout: must be greater than 0",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], lb_policy: fastest}]",
            "clusters[0].lb_policy.policy: must be one of round_robin, least_request, random, ring_hash, "
            "maglev, peak_ewma, got 'fastest'",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], max_connections_per_endpoint: 0}]",
            "clusters[0].max_connections_per_endpoint: must be a positive integer, got 0",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], tcp_keepalive: {probes: 200}}]",
            "clusters[0].tcp_keepalive.probes: must be at most 127, got 200",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], tcp_keepalive: {probes: 0}}]",
            "clusters[0].tcp_keepalive.probes: must be a positive integer, got 0",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], tcp_keepalive: {time: 1500ms}}]",
            "clusters[0].tcp_keepalive.time: must be a whole number of seconds (as TCP keepalive counts), "
            "got 1.5",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], tcp_keepalive: {interval: 10h}}]",
            "clusters[0].tcp_keepalive.interval: must be at most 32767s, got 36000s",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], tcp_keepalive: {interval: 0}}]",
            "clusters[0].tcp_keepalive.interval: must be greater than 0",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1'], tcp_keepalive: {idle: 30s}}]",
            "clusters[0].tcp_keepalive.idle: unknown key",
        ),
        (
            "{a: {endpoints: ['127.0.0.1:1'], tcp_keepalive: true}}",
            "clusters.a.tcp_keepalive: expected a mapping, got a boolean",
        ),
        (
            "[{name: a, endpoints: ['127.0.0.1:1']}, {name: a, endpoints: ['127.0.0.1:2']}]",
            "clusters[1].name: duplicate cluster name 'a' (also clusters[0])",
        ),
        (
            "{a: {name: a, endpoints: ['127.0.0.1:1']}}",
            "clusters.a.name: the name is the key in the clusters mapping",
        ),
        ("{a: ['127.0.0.1:70000']}", "clusters.a.endpoints[0]: port 70000 is out of range"),
        ("{a: 3}", "clusters.a.endpoints: expected a list, got a number"),
        ("7", "clusters: expected a list, got a number"),
    ],
)
def test_cluster_errors(clusters: str, expected: str) -> None:
    assert expected in issues(f"clusters: {clusters}")


def test_listener_cross_reference_errors() -> None:
    found = issues(
        """
        admin: 127.0.0.1:9901
        listeners:
          - {name: a, address: 127.0.0.1:9901, cluster: backend}
          - {name: a, address: 127.0.0.1:9901, protocol: tcp, cluster: nope}
          - {name: b, address: 127.0.0.1:0, cluster: backend}
          - {name: c, address: 127.0.0.1:0, cluster: backend}
    """,
        CLUSTERS,
    )
    assert found == [
        "listeners[1].name: duplicate listener name 'a' (also listeners[0])",
        "listeners[1].address: 127.0.0.1:9901 is already used by listeners[0] (a)",
        "admin.address: 127.0.0.1:9901 is already used by listeners[0] (a)",
        "listeners[1].cluster: unknown cluster 'nope'",
    ]


def test_unknown_cluster_with_no_clusters_at_all() -> None:
    assert issues("listeners: [{address: ':1', cluster: backend}]") == [
        "listeners[0].cluster: unknown cluster 'backend' (no clusters are defined)"
    ]


def test_every_issue_is_collected_in_one_error() -> None:
    found = issues("""
        drain_time: soon
        listeners:
          - name: ingress
            address: 0.0.0.0:70000
            protocl: http
            routes:
              - match: {regex: "(("}
                cluster: backnd
              - split: {v1: -1}
        clusters:
          - name: backend
            endpoints: ["[::1]:0"]
    """)
    assert found == [
        "listeners[0].protocl: unknown key (did you mean 'protocol'?)",
        "listeners[0].address: port 70000 is out of range",
        "listeners[0].routes[0].match.regex: "
        "invalid regex '((': missing ), unterminated subpattern at position 1",
        "listeners[0].routes[1].split.v1: must be a positive integer, got -1",
        "clusters[0].endpoints[0]: port 0 is only allowed for listener addresses",
        "drain_time: 'soon' is not a duration; use seconds or a string like 250ms, 1.5s, 2m, 1h30m",
        "listeners[0].routes[0].cluster: unknown cluster 'backnd' (did you mean 'backend'?)",
    ]


def test_error_carries_config_issues() -> None:
    with pytest.raises(ConfigError) as info:
        load("listeners: [{address: ':1', cluster: backend, foo: 1}]\n" + CLUSTERS)
    assert info.value.issues == [ConfigIssue("listeners[0].foo", "unknown key")]
    assert str(info.value) == "listeners[0].foo: unknown key"


def test_a_bad_value_does_not_also_report_its_consequences() -> None:
    # The route's cluster name is invalid; "unknown cluster ''" would only repeat that.
    assert issues(route_yaml("{cluster: 5}")) == [
        "listeners[0].routes[0].cluster: expected a name, got a number"
    ]
    # Every split entry invalid leaves an empty split: one issue per entry, nothing about the route.
    assert issues(route_yaml("{split: {v1: 0}}")) == [
        "listeners[0].routes[0].split.v1: must be a positive integer, got 0"
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], ConfigIssue("", "expected a mapping, got a list")),
        ({"listeners": ["x"]}, ConfigIssue("listeners[0]", "expected a mapping, got a string")),
        ({1: "x"}, ConfigIssue("1", "keys must be strings, got a number")),
    ],
)
def test_wrong_shapes(data: Any, expected: ConfigIssue) -> None:
    with pytest.raises(ConfigError) as info:
        load_meshpy(data)
    assert info.value.issues == [expected]
