"""meshpy YAML for sidecar interception: `original_destination`, `bind`, `direction` and `tcp_fallback` on
listeners, `type: original_dst` clusters and empty static clusters (blackholes); their defaults, and each
error with its exact path and reason, also as `meshpy validate` prints them."""

from __future__ import annotations

from pathlib import Path

import pytest
from yamlkit import issues, load

from meshpy.cli import main
from meshpy.model.types import (
    DEFAULT_LB,
    DEFAULT_TCP_IDLE_TIMEOUT,
    AccessLog,
    Address,
    Listener,
    TcpOptions,
)

SIDECAR = """
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    protocol: tcp
    cluster: passthrough
    original_destination: true
    direction: outbound
  - name: inbound
    address: 0.0.0.0:15006
    protocol: tcp
    cluster: passthrough
    original_destination: true
    direction: INBOUND
  - name: web
    address: 0.0.0.0:8080
    bind: false
    direction: outbound
    routes: [{cluster: backend}]
    tcp_fallback: passthrough
  - name: web-in
    address: 0.0.0.0:8082
    bind: false
    direction: inbound
    protocol: http1
    access_log: stdout
    routes: [{cluster: backend}]
    tcp_fallback: {cluster: hole, idle_timeout: 30s}
clusters:
  passthrough: {type: original_dst, connect_timeout: 2s}
  backend: 127.0.0.1:9000
  hole: {type: static, endpoints: []}
"""

BACKEND = "clusters: {b: 127.0.0.1:9000}\n"


def by_name(listeners: tuple[Listener, ...]) -> dict[str, Listener]:
    return {x.name: x for x in listeners}


def test_defaults_are_a_plain_bound_listener() -> None:
    config = load("listeners: [{address: 127.0.0.1:1, cluster: b}, {address: 127.0.0.1:2, protocol: tcp, "
                  "cluster: b}]\n", BACKEND)
    web, tcp = config.listeners
    for lis in (web, tcp):
        assert lis.original_destination is False
        assert lis.bind is True
        assert lis.direction == "unspecified"
    assert web.kind == "http" and web.tcp is None  # no fallback unless asked for
    assert tcp.kind == "tcp" and tcp.http is None
    assert config.clusters[0].discovery == "static"


def test_every_new_key_is_read() -> None:
    config = load(SIDECAR)
    lis = by_name(config.listeners)
    out, inbound, web, web_in = lis["outbound"], lis["inbound"], lis["web"], lis["web-in"]
    assert (out.kind, out.original_destination, out.bind, out.direction) == ("tcp", True, True, "outbound")
    assert out.tcp == TcpOptions(cluster="passthrough")
    assert (inbound.original_destination, inbound.direction) == (True, "inbound")  # case does not matter
    assert inbound.address == Address(host="0.0.0.0", port=15006)
    assert (web.kind, web.bind, web.direction, web.original_destination) == ("http", False, "outbound", False)
    assert web.http is not None
    assert web.tcp == TcpOptions(cluster="passthrough", idle_timeout=DEFAULT_TCP_IDLE_TIMEOUT)
    assert (web_in.bind, web_in.direction) == (False, "inbound")
    assert web_in.http is not None and web_in.http.codec == "http1"
    # The fallback's TCP sessions are logged where the listener's requests are.
    assert web_in.tcp == TcpOptions(cluster="hole", idle_timeout=30.0, access_logs=(AccessLog(path=None),))
    assert web_in.http.access_logs == web_in.tcp.access_logs


def test_original_dst_and_blackhole_clusters() -> None:
    clusters = {c.name: c for c in load(SIDECAR).clusters}
    passthrough, hole = clusters["passthrough"], clusters["hole"]
    assert passthrough.discovery == "original_dst"
    assert passthrough.endpoints == ()
    assert passthrough.connect_timeout == 2.0
    assert passthrough.load_balancing == DEFAULT_LB
    assert hole.discovery == "static"
    assert hole.endpoints == ()


@pytest.mark.parametrize("value", ["off", "none", "null"])
def test_tcp_fallback_idle_timeout_off(value: str) -> None:
    config = load("listeners: [{address: 127.0.0.1:1, cluster: b, tcp_fallback: {cluster: b, idle_timeout: "
                  f"{value}}}}}]\n", BACKEND)
    assert config.listeners[0].tcp == TcpOptions(cluster="b", idle_timeout=None)


def test_tcp_fallback_detect_timeout() -> None:
    config = load("listeners: [{address: 127.0.0.1:1, cluster: b, tcp_fallback: {cluster: b, "
                  "detect_timeout: 150ms}}]\n", BACKEND)
    assert config.listeners[0].tcp == TcpOptions(cluster="b", detect_timeout=0.15)
    assert issues("listeners: [{address: 127.0.0.1:1, cluster: b, tcp_fallback: {cluster: b, "
                  "detect_timeout: soon}}]\n" + BACKEND) == [
        "listeners[0].tcp_fallback.detect_timeout: 'soon' is not a duration; use seconds or a string like "
        "250ms, 1.5s, 2m, 1h30m"]


@pytest.mark.parametrize("protocol", ["http", "auto", "http1", "http2"])
def test_every_http_protocol_may_have_a_fallback(protocol: str) -> None:
    config = load(f"listeners: [{{address: 127.0.0.1:1, protocol: {protocol}, cluster: b, "
                  "tcp_fallback: b}]\n", BACKEND)
    assert config.listeners[0].kind == "http"
    assert config.listeners[0].tcp == TcpOptions(cluster="b")


def test_unbound_listeners_of_other_directions_do_not_share_an_address() -> None:
    """A bound and an unbound listener may share an address; two unbound ones may not, whatever their
    directions: Envoy refuses two listeners at one address, and the config must carry to it."""
    config = load("""
        listeners:
          - {name: a, address: 0.0.0.0:80, cluster: b}
          - {name: b-in, address: 0.0.0.0:80, cluster: b, bind: false, direction: inbound}
        """, BACKEND)
    assert [x.name for x in config.listeners] == ["a", "b-in"]
    assert issues("""
        listeners:
          - {name: b-in, address: 0.0.0.0:80, cluster: b, bind: false, direction: inbound}
          - {name: b-out, address: 0.0.0.0:80, cluster: b, bind: false, direction: outbound}
        """ + BACKEND) == ["listeners[1].address: 0.0.0.0:80 is already used by listeners[0] (b-in)"]


L1 = "listeners: [{address: '127.0.0.1:1', cluster: b, "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (L1 + "direction: sideways}]\n" + BACKEND,
         "listeners[0].direction: must be inbound, outbound or unspecified, got 'sideways'"),
        (L1 + "direction: 2}]\n" + BACKEND,
         "listeners[0].direction: must be inbound, outbound or unspecified, got '2'"),
        (L1 + "bind: 'no way'}]\n" + BACKEND, "listeners[0].bind: expected true or false, got a string"),
        (L1 + "original_destination: 3}]\n" + BACKEND,
         "listeners[0].original_destination: expected true or false, got a number"),
        (L1 + "original_destination: true, bind: false}]\n" + BACKEND,
         "listeners[0].bind: a listener that hands connections on by their original destination needs its "
         "own socket"),
        ("listeners: [{address: '127.0.0.1:1', protocol: tcp, cluster: b, tcp_fallback: b}]\n" + BACKEND,
         "listeners[0].tcp_fallback: only applies to http listeners"),
        (L1 + "tcp_fallback: nope}]\n" + BACKEND,
         "listeners[0].tcp_fallback.cluster: unknown cluster 'nope'"),
        (L1 + "tcp_fallback: {cluster: nope}}]\n" + BACKEND,
         "listeners[0].tcp_fallback.cluster: unknown cluster 'nope'"),
        (L1 + "tcp_fallback: {cluster: b, idle: 1s}}]\n" + BACKEND,
         "listeners[0].tcp_fallback.idle: unknown key"),
        (L1 + "tcp_fallback: {idle_timeout: 1s}}]\n" + BACKEND,
         "listeners[0].tcp_fallback: missing required key 'cluster'"),
        (L1 + "tcp_fallback: [b]}]\n" + BACKEND, "listeners[0].tcp_fallback: expected a mapping, got a list"),
        (L1 + "tcp_fallback: {cluster: b, idle_timeout: soon}}]\n" + BACKEND,
         "listeners[0].tcp_fallback.idle_timeout: 'soon' is not a duration; "
         "use seconds or a string like 250ms, 1.5s, 2m, 1h30m"),
        ("clusters: {x: {type: original_dst, endpoints: ['127.0.0.1:9']}}\n",
         "clusters.x.endpoints: an original_dst cluster has no endpoints: each connection goes where it was "
         "going before it was redirected"),
        ("clusters: {x: {type: original_dst, dns_refresh_rate: 5s}}\n",
         "clusters.x.dns_refresh_rate: only applies to strict_dns and logical_dns clusters"),
        ("clusters: {x: {type: static, endpoints: [], dns_refresh_rate: 5s}}\n",
         "clusters.x.dns_refresh_rate: only applies to strict_dns and logical_dns clusters"),
        ("clusters: {x: {type: passthrough, endpoints: 127.0.0.1:1}}\n",
         "clusters.x.type: must be one of static, strict_dns, logical_dns, original_dst, got 'passthrough'"),
        ("clusters: {x: {endpoints: []}}\n",
         "clusters.x.endpoints: needs at least one endpoint (a cluster meant to refuse everything says "
         "type: static)"),
        ("clusters: {x: {type: strict_dns, endpoints: []}}\n",
         "clusters.x.endpoints: needs at least one endpoint (a cluster meant to refuse everything says "
         "type: static)"),
        ("clusters: {x: {type: static}}\n", "clusters.x: missing required key 'endpoints'"),
        ("""
         listeners:
           - {address: 0.0.0.0:80, cluster: b, bind: false}
           - {name: two, address: 0.0.0.0:80, cluster: b, bind: false}
         """ + BACKEND, "listeners[1].address: 0.0.0.0:80 is already used by listeners[0] (0.0.0.0_80)"),
        ("""
         listeners:
           - {address: 0.0.0.0:80, cluster: b, bind: false, direction: inbound}
           - {name: two, address: 0.0.0.0:80, cluster: b, bind: false, direction: inbound}
         """ + BACKEND, "listeners[1].address: 0.0.0.0:80 is already used by listeners[0] (0.0.0.0_80)"),
        ("""
         listeners:
           - {address: 0.0.0.0:80, cluster: b}
           - {name: two, address: 0.0.0.0:80, cluster: b}
         """ + BACKEND, "listeners[1].address: 0.0.0.0:80 is already used by listeners[0] (0.0.0.0_80)"),
    ],
)
def test_error(text: str, expected: str) -> None:
    assert issues(text) == [expected]


def test_a_bound_and_an_unbound_listener_share_an_address() -> None:
    config = load("""
        listeners:
          - {address: 0.0.0.0:80, cluster: b}
          - {name: two, address: 0.0.0.0:80, cluster: b, bind: false}
        """, BACKEND)
    assert [x.bind for x in config.listeners] == [True, False]


def test_every_error_at_once() -> None:
    assert issues("""
        listeners:
          - {address: 127.0.0.1:1, cluster: b, direction: up, bind: maybe, tcp_fallback: gone}
          - {address: 127.0.0.1:2, protocol: tcp, cluster: b, tcp_fallback: b, original_destination: true,
             bind: false}
        clusters:
          b: 127.0.0.1:9000
          od: {type: original_dst, endpoints: 127.0.0.1:1}
        """) == [
        "listeners[0].bind: expected true or false, got a string",
        "listeners[0].direction: must be inbound, outbound or unspecified, got 'up'",
        "listeners[1].tcp_fallback: only applies to http listeners",
        "clusters.od.endpoints: an original_dst cluster has no endpoints: each connection goes where it was "
        "going before it was redirected",
        "listeners[0].tcp_fallback.cluster: unknown cluster 'gone'",
        "listeners[1].bind: a listener that hands connections on by their original destination needs its "
        "own socket",
    ]


def test_original_dst_with_an_empty_endpoint_list() -> None:
    assert issues("clusters: {x: {type: original_dst, endpoints: []}}\n") == [
        "clusters.x.endpoints: an original_dst cluster has no endpoints: each connection goes where it was "
        "going before it was redirected"
    ]


@pytest.mark.parametrize("endpoints", ["", ", endpoints: []"])
def test_unknown_cluster_type_is_reported_once(endpoints: str) -> None:
    problems = issues(f"clusters: {{x: {{type: passthrough{endpoints}}}}}\n")
    assert problems.count("clusters.x.type: must be one of static, strict_dns, logical_dns, original_dst, "
                          "got 'passthrough'") == 1


def test_original_dst_refuses_a_load_balancing_policy() -> None:
    problems = issues("clusters: {x: {type: original_dst, lb_policy: ring_hash}}\n")
    assert [p.split(":")[0] for p in problems] == ["clusters.x.lb_policy"]


# -- what `meshpy validate` prints ---------------------------------------------------------------------


def validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "meshpy.yaml"
    path.write_text(text)
    rc = main(["validate", str(path)])
    out = capsys.readouterr().out
    return rc, [line.removeprefix(f"{path}: ") for line in out.splitlines()]


def test_validate_accepts_the_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(tmp_path, SIDECAR, capsys) == (0, ["ok (meshpy format, 4 listeners, 3 clusters)"])


def test_validate_prints_yaml_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Model paths of the cross-reference checks (`listeners[0].tcp.cluster`) come back as the YAML
    that was written (`tcp_fallback.cluster`), in the string form as in the mapping form."""
    rc, lines = validate(tmp_path, """
listeners:
  - {address: 127.0.0.1:1, cluster: b, tcp_fallback: nope}
  - {address: 127.0.0.1:2, cluster: b, tcp_fallback: {cluster: nada, idle_timeout: 1s}}
  - {address: 127.0.0.1:3, protocol: tcp, cluster: missing, original_destination: true, bind: false}
  - {address: 127.0.0.1:4, cluster: b, direction: sideways}
clusters:
  b: 127.0.0.1:9000
  od: {type: original_dst, dns_refresh_rate: 1s}
""", capsys)
    assert rc == 1
    assert lines == [
        "listeners[3].direction: must be inbound, outbound or unspecified, got 'sideways'",
        "clusters.od.dns_refresh_rate: only applies to strict_dns and logical_dns clusters",
        "listeners[0].tcp_fallback.cluster: unknown cluster 'nope'",
        "listeners[1].tcp_fallback.cluster: unknown cluster 'nada'",
        "listeners[2].cluster: unknown cluster 'missing'",
        "listeners[2].bind: a listener that hands connections on by their original destination needs its "
        "own socket",
    ]
