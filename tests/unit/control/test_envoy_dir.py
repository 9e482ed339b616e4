"""control.sources.envoy_dir: a directory of Envoy-native YAML resources -> parsed xDS messages."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from control.sources.envoy_dir import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    TYPE_URLS,
    SourceError,
    fingerprint,
    load_envoy_dir,
)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
LISTENER_YAML = """
"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: ingress
address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": HCM
      stat_prefix: ingress
      rds:
        route_config_name: local_route
        config_source: {ads: {}, resource_api_version: V3}
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
""".replace("HCM", HCM)
ROUTE_YAML = """
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: local_route
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route: {cluster: web, timeout: 2.5s}
"""
CLUSTER_YAML = """
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: web
type: EDS
connect_timeout: 1s
eds_cluster_config:
  eds_config: {ads: {}, resource_api_version: V3}
"""
CLA_YAML = """
"@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
cluster_name: web
endpoints:
- load_balancing_weight: 1
  lb_endpoints:
  - endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 8080}}}
"""


def cluster(name: str, extra: str = "") -> str:
    return f'- "@type": {CLUSTER}\n  name: {name}\n  connect_timeout: 1s\n{extra}'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(directory: Path) -> list[str]:
    with pytest.raises(SourceError) as info:
        load_envoy_dir(directory)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def test_type_urls_match_the_message_classes() -> None:
    classes = (
        listener_pb2.Listener,
        route_pb2.RouteConfiguration,
        cluster_pb2.Cluster,
        endpoint_pb2.ClusterLoadAssignment,
        secret_pb2.Secret,
    )
    assert (LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET) == TYPE_URLS
    assert [f"type.googleapis.com/{c.DESCRIPTOR.full_name}" for c in classes] == list(TYPE_URLS)


def test_full_set_parses_into_typed_messages(tmp_path: Path) -> None:
    write(tmp_path, "listener.yaml", LISTENER_YAML)
    write(tmp_path, "routes.yml", ROUTE_YAML)
    write(tmp_path, "clusters.yaml", CLUSTER_YAML)
    write(tmp_path, "endpoints.yaml", CLA_YAML)
    write(tmp_path, "notes.txt", "not: [yaml")  # other suffixes are not read
    (tmp_path / "dir.yaml").mkdir()  # only files
    write(tmp_path / "dir.yaml", "nested.yaml", CLUSTER_YAML.replace("web", "nested"))  # not recursive

    got = load_envoy_dir(tmp_path)

    assert {url: list(by_name) for url, by_name in got.items()} == {
        LISTENER: ["ingress"],
        ROUTE: ["local_route"],
        CLUSTER: ["web"],
        ENDPOINT: ["web"],
        SECRET: [],
    }
    listener = got[LISTENER]["ingress"]
    assert isinstance(listener, listener_pb2.Listener)
    assert listener.address.socket_address.port_value == 10000
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "local_route"
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.http_filters[0].typed_config.Is(router_pb2.Router.DESCRIPTOR)

    route = got[ROUTE]["local_route"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    action = route.virtual_hosts[0].routes[0].route
    assert (action.cluster, action.timeout.seconds, action.timeout.nanos) == ("web", 2, 500_000_000)

    web = got[CLUSTER]["web"]
    assert isinstance(web, cluster_pb2.Cluster)
    assert web.type == cluster_pb2.Cluster.EDS
    assert web.eds_cluster_config.eds_config.HasField("ads")
    assert web.connect_timeout.seconds == 1

    cla = got[ENDPOINT]["web"]
    assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
    (lb_endpoint,) = cla.endpoints[0].lb_endpoints
    assert lb_endpoint.endpoint.address.socket_address.address == "127.0.0.2"
    assert lb_endpoint.endpoint.address.socket_address.port_value == 8080
    assert cla.endpoints[0].load_balancing_weight.value == 1


def test_extension_the_translator_does_not_import_still_resolves(tmp_path: Path) -> None:
    lua = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"  # (one meshpy has not)
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    write(tmp_path, "l.yaml", LISTENER_YAML.replace(router, lua))
    listener = load_envoy_dir(tmp_path)[LISTENER]["ingress"]
    # Parsing is retried after the import: nothing from the failed attempt may be left behind.
    assert len(listener.filter_chains) == 1
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert [f.typed_config.type_url for f in hcm.http_filters] == [lua]


def test_list_and_multi_document_files(tmp_path: Path) -> None:
    write(tmp_path, "list.yaml", cluster("a") + cluster("b"))
    # A trailing `---` leaves an empty last document, which is skipped.
    three_docs = CLUSTER_YAML.replace("web", "c") + "---\n" + cluster("d") + cluster("e") + "---\n"
    write(tmp_path, "docs.yaml", three_docs)
    got = load_envoy_dir(tmp_path)
    assert sorted(got[CLUSTER]) == ["a", "b", "c", "d", "e"]
    assert got[CLUSTER]["e"].name == "e"
    assert all(got[url] == {} for url in (LISTENER, ROUTE, ENDPOINT))


def test_empty_directory_and_empty_files_give_empty_dicts(tmp_path: Path) -> None:
    assert load_envoy_dir(tmp_path) == {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}, SECRET: {}}
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comment.yml", "# nothing yet\n---\n")
    assert load_envoy_dir(tmp_path) == {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}, SECRET: {}}


def test_missing_directory(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a directory"]
    file = write(tmp_path, "file.yaml", CLUSTER_YAML)
    assert errors_of(file) == [f"{file}: not a directory"]


def test_unknown_type(tmp_path: Path) -> None:
    write(tmp_path, "routes.yaml", '- "@type": type.googleapis.com/foo\n  name: x\n- "@type": [x]\n')
    assert errors_of(tmp_path) == [
        "routes.yaml[0]: unknown @type 'type.googleapis.com/foo'",
        "routes.yaml[1]: unknown @type ['x']",
    ]


def test_missing_type_and_non_mapping(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "- name: x\n- just a string\n- [nested]\n")
    assert errors_of(tmp_path) == [
        "a.yaml[0]: missing @type",
        "a.yaml[1]: expected a mapping with an @type, got a string",
        "a.yaml[2]: expected a mapping with an @type, got a list",
    ]


def test_unknown_field_keeps_json_format_message_and_path(tmp_path: Path) -> None:
    write(tmp_path, "clusters.yaml", cluster("ok") + cluster("bad", "  conect_timeout: 1s\n"))
    (error,) = errors_of(tmp_path)
    assert error.startswith(
        'clusters.yaml[1]: Message type "envoy.config.cluster.v3.Cluster" has no field named "conect_timeout"'
    )
    assert "Available Fields" not in error


def test_nested_field_error_names_the_nested_path(tmp_path: Path) -> None:
    write(tmp_path, "eps.yaml", CLA_YAML.replace("address: {socket_address", "adress: {socket_address"))
    (error,) = errors_of(tmp_path)
    assert error.startswith("eps.yaml: ")
    assert 'no field named "adress"' in error
    assert "ClusterLoadAssignment.endpoints[0].lb_endpoints[0].endpoint" in error


def test_bad_value_inside_typed_config(tmp_path: Path) -> None:
    write(tmp_path, "l.yaml", LISTENER_YAML.replace("stat_prefix: ingress", "stat_prefx: ingress"))
    (error,) = errors_of(tmp_path)
    assert error.startswith("l.yaml: ")
    assert 'no field named "stat_prefx"' in error


def test_unresolvable_type_inside_typed_config(tmp_path: Path) -> None:
    write(tmp_path, "l.yaml", LISTENER_YAML.replace("router.v3.Router", "router.v3.Nope"))
    (error,) = errors_of(tmp_path)
    assert error.startswith("l.yaml: ")
    assert "Can not find message descriptor by type_url" in error
    assert "envoy.extensions.filters.http.router.v3.Nope" in error


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", f'"@type": {CLUSTER}\nname: x\nconnect_timeout: [1s\n')
    (error,) = errors_of(tmp_path)
    assert error.startswith("a.yaml: YAML syntax error at line 4: ")


def test_duplicate_key_is_a_yaml_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", f'"@type": {CLUSTER}\nname: x\nname: y\n')
    assert errors_of(tmp_path) == [
        "a.yaml: YAML syntax error at line 3: duplicate key 'name' (first at line 2)"
    ]


def test_missing_name(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", f'"@type": {CLUSTER}\nconnect_timeout: 1s\n')
    write(tmp_path, "e.yaml", f'- "@type": {ENDPOINT}\n  endpoints: []\n')
    write(tmp_path, "r.yaml", f'"@type": {ROUTE}\nname: ""\n')
    assert errors_of(tmp_path) == [
        "c.yaml: missing name",
        "e.yaml[0]: missing cluster_name",
        "r.yaml: missing name",
    ]


def test_duplicates_across_files_and_within_one(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", cluster("x") + cluster("y") + cluster("web"))
    write(tmp_path, "b.yaml", cluster("web") + cluster("z") + cluster("z"))
    # The same name under another type is no duplicate: a CLA is named after its cluster.
    write(tmp_path, "c.yaml", CLA_YAML)
    assert errors_of(tmp_path) == [
        "b.yaml[0]: duplicate Cluster 'web' (also in a.yaml[2])",
        "b.yaml[2]: duplicate Cluster 'z' (also in b.yaml[1])",
    ]


def test_multi_document_locations(tmp_path: Path) -> None:
    nameless = f'"@type": {CLUSTER}\n'
    text = cluster("a") + "---\n" + nameless + "---\n" + cluster("b") + cluster("c", "  x: 1\n")
    write(tmp_path, "m.yaml", text)
    errors = errors_of(tmp_path)
    assert [e.split(": ", 1)[0] for e in errors] == ["m.yaml:doc 1", "m.yaml:doc 2[1]"]
    assert errors[0] == "m.yaml:doc 1: missing name"
    assert 'no field named "x"' in errors[1]


def test_errors_from_all_files_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "key: [unclosed\n")
    write(tmp_path, "b.yaml", '- "@type": type.googleapis.com/foo\n')
    write(tmp_path, "c.yaml", cluster("ok") + cluster("", ""))
    write(tmp_path, "d.yaml", CLUSTER_YAML)  # a good file next to bad ones is still not loaded alone
    errors = errors_of(tmp_path)
    assert [e.split(": ", 1)[0] for e in errors] == ["a.yaml", "b.yaml[0]", "c.yaml[1]"]
    assert errors[0].startswith("a.yaml: YAML syntax error at line 2: ")


def test_undecodable_file(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (error,) = errors_of(tmp_path)
    assert error.startswith("bin.yaml: ")


def test_fingerprint_follows_changes(tmp_path: Path) -> None:
    assert fingerprint(tmp_path) == ()
    assert fingerprint(tmp_path / "missing") == ()
    path = write(tmp_path, "a.yaml", CLUSTER_YAML)
    write(tmp_path, "ignored.json", "{}")
    first = fingerprint(tmp_path)
    assert [entry[0] for entry in first] == ["a.yaml"]
    assert fingerprint(tmp_path) == first

    write(tmp_path, "a.yaml", CLUSTER_YAML + "dns_refresh_rate: 5s\n")
    resized = fingerprint(tmp_path)
    assert resized != first

    # Same size, newer mtime: an edit that keeps the length is still seen.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = fingerprint(tmp_path)
    assert touched != resized
    assert touched[0][2] == resized[0][2]

    write(tmp_path, "0.yml", CLA_YAML)
    added = fingerprint(tmp_path)
    assert [entry[0] for entry in added] == ["0.yml", "a.yaml"]

    (tmp_path / "0.yml").unlink()
    assert fingerprint(tmp_path) == touched


def test_the_proxy_checks_run_at_the_control_plane(tmp_path: Path) -> None:
    """Proto JSON takes a zero connect timeout; every proxy refuses it. Refused here, by file and path,
    with the same words a meshpy proxy's NACK would carry, and the rest of the file still checked."""
    write(tmp_path, "clusters.yaml", cluster("ok") + cluster("zero").replace("timeout: 1s", "timeout: 0s")
          + cluster("dns", "  dns_refresh_rate: 0.0005s\n"))
    assert errors_of(tmp_path) == [
        "clusters.yaml[1]: connect_timeout: must be greater than 0",
        "clusters.yaml[2]: dns_refresh_rate: must be greater than 1ms",
    ]


def test_what_only_meshpy_lacks_is_served_with_a_warning(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """An Envoy fleet may use what meshpy lacks: served, and said once, naming the file."""
    lacking = "close_connections_on_host_set_change"
    write(tmp_path, "clusters.yaml", cluster("web", f"  common_lb_config: {{{lacking}: true}}\n"))
    assert "web" in load_envoy_dir(tmp_path)[CLUSTER]
    said = f"clusters.yaml[0]: common_lb_config.{lacking}: not supported by meshpy (meshpy proxies will"
    assert said in caplog.text


ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def test_a_proxyless_grpc_listener_is_not_a_proxys(tmp_path: Path) -> None:
    """An api_listener serves gRPC clients (no address, no filter chains): no proxy check applies."""
    write(tmp_path, "grpc.yaml", f"""
"@type": {LISTENER}
name: greeter
api_listener:
  api_listener:
    "@type": {HCM}
    stat_prefix: greeter
    rds: {{route_config_name: greeter, config_source: {{ads: {{}}}}}}
    http_filters: [{{name: router, typed_config: {{"@type": {ROUTER}}}}}]
""")
    assert "greeter" in load_envoy_dir(tmp_path)[LISTENER]
