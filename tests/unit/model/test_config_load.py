"""Reading config files: YAML/JSON parsing, syntax errors, format detection, the shipped configs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.load import detect_format, load_file, load_text, parse_yaml

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
HAVE_TRANSLATOR = importlib.util.find_spec("meshpy.xds.translate") is not None

SMALL = "listeners: [{address: ':10000', cluster: a}]\nclusters: {a: 127.0.0.1:1}\n"


def only_issue(text: str, origin: str = "") -> ConfigIssue:
    with pytest.raises(ConfigError) as info:
        load_text(text, origin)
    (issue,) = info.value.issues
    return issue


@pytest.mark.parametrize(
    "data",
    [
        {"static_resources": {}},
        {"dynamic_resources": {}},
        {"node": {"id": "a"}},
        {"layered_runtime": {}},
        {"stats_config": {}},
        {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}},
    ],
)
def test_envoy_bootstraps_are_detected(data: dict[str, Any]) -> None:
    assert detect_format(data) == "envoy"


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"listeners": []},
        {"admin": "127.0.0.1:9901"},
        {"admin": {"address": "127.0.0.1:9901"}},
        {"admin": {"address": {"host": "x"}}},
    ],
)
def test_everything_else_is_meshpy(data: dict[str, Any]) -> None:
    assert detect_format(data) == "meshpy"


def test_syntax_error_names_origin_line_and_column() -> None:
    issue = only_issue("listeners:\n  - address: :1\n    cluster: a\n   bad: [\n", "dev.yaml")
    assert issue.path == ""
    assert issue.reason.startswith("invalid YAML in dev.yaml at line ")
    assert ", column " in issue.reason


def test_syntax_error_message() -> None:
    issue = only_issue("a: b: c\n")
    # libyaml says "... in this context", the pure-Python parser "... here".
    assert issue.reason.startswith("invalid YAML at line 1, column 5: mapping values are not allowed ")


def test_unquoted_wildcard_gets_a_hint() -> None:
    issue = only_issue(
        "listeners: [{address: ':1', virtual_hosts: [{domains: [*.example.com], cluster: a}]}]\n"
    )
    assert issue.reason.endswith("(quote values that start with *, e.g. '*.example.com')")
    assert issue.reason.startswith("invalid YAML at line 1, column ")


def test_undefined_alias_gets_the_hint_too() -> None:
    issue = only_issue("listeners: [{address: ':1', virtual_hosts: [{domains: [*example], cluster: a}]}]\n")
    assert issue.reason.endswith("(quote values that start with *, e.g. '*.example.com')")


def test_duplicate_keys_are_an_error() -> None:
    text = "clusters:\n  a: 127.0.0.1:1\n  a: 127.0.0.1:2\n"
    assert only_issue(text, "x.yaml") == ConfigIssue(
        "", "invalid YAML in x.yaml at line 3, column 3: duplicate key 'a' (first at line 2)"
    )


def test_merge_keys_may_be_overridden() -> None:
    data = parse_yaml("base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n")
    assert data["derived"] == {"x": 1, "y": 3}


def test_empty_document_and_wrong_top_level() -> None:
    assert only_issue("", "empty.yaml") == ConfigIssue("", "empty.yaml is empty")
    assert only_issue("# only a comment\n") == ConfigIssue("", "the config is empty")
    assert only_issue("- a\n- b\n") == ConfigIssue("", "the top level must be a mapping, got a list")


def test_multiple_documents_are_refused() -> None:
    issue = only_issue("a: 1\n---\nb: 2\n")
    assert issue.reason.startswith("invalid YAML at line 2, column 1: ")


def test_json_is_accepted() -> None:
    text = json.dumps(
        {"listeners": [{"address": ":10000", "cluster": "a"}], "clusters": {"a": "127.0.0.1:1"}}
    )
    assert load_text(text).listeners[0].address.port == 10000


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    config = load_file(str(path))
    assert [c.name for c in config.clusters] == ["a"]


def test_load_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert info.value.issues == [ConfigIssue("", f"cannot read {path}: No such file or directory")]


def test_load_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"admin: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert info.value.issues == [ConfigIssue("", f"{path} is not UTF-8 text: invalid start byte at byte 7")]


def test_load_file_reports_yaml_errors_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: [\n")
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert info.value.issues[0].reason.startswith(f"invalid YAML in {path} at line 2, column 1: ")


def test_shipped_configs_exist() -> None:
    names = {path.name for path in CONFIGS}
    assert {"dev.yaml", "edge.yaml", "sidecar.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    data = parse_yaml(path.read_text(), str(path))
    if detect_format(data) == "envoy" and not HAVE_TRANSLATOR:
        pytest.skip("meshpy.xds.translate is not available yet")
    config = load_file(str(path))
    # Listeners come from the file, or (an xDS bootstrap) from the control plane it names.
    assert config.listeners or config.xds is not None, "a shipped config should listen somewhere"
    assert config.source_format == detect_format(data)


def test_dev_config_shape() -> None:
    config = load_file(str(REPO / "config" / "dev.yaml"))
    (listener,) = config.listeners
    assert str(listener.address) == "127.0.0.1:10000"
    assert str(config.admin.address) == "127.0.0.1:9901"
    assert [c.name for c in config.clusters] == ["demo"]
    assert str(config.clusters[0].endpoints[0].address) == "127.0.0.1:18080"
    assert listener.http is not None and listener.http.access_logs
    routes = listener.http.route_config.virtual_hosts[0].routes
    assert any(r.match.path_kind == "path" and r.match.path == "/healthz" for r in routes)


def test_sidecar_config_shape() -> None:
    config = load_file(str(REPO / "config" / "sidecar.yaml"))
    by_name = {listener.name: listener for listener in config.listeners}
    bound = {name: str(lis.address) for name, lis in by_name.items() if lis.bind}
    assert bound == {"inbound": "0.0.0.0:15006", "outbound": "127.0.0.1:15001"}
    assert by_name["inbound"].original_destination and by_name["inbound"].direction == "inbound"
    assert by_name["outbound"].original_destination and by_name["outbound"].direction == "outbound"
    services = [lis for lis in by_name.values() if not lis.bind]
    assert services and all(lis.direction == "outbound" and lis.http is not None for lis in services)
    kinds = {c.name: c.discovery for c in config.clusters}
    assert kinds["passthrough"] == kinds["inbound_app"] == "original_dst"
    assert str(config.admin.address) == "127.0.0.1:15000"
    assert config.lifecycle.drain_time <= 5.0


def test_edge_config_shape() -> None:
    config = load_file(str(REPO / "config" / "edge.yaml"))
    assert {listener.kind for listener in config.listeners} == {"http", "tcp"}
    public = next(listener for listener in config.listeners if listener.name == "public")
    assert public.http is not None
    assert public.http.max_request_body_bytes == 10 * 1024 * 1024
    assert len(public.http.route_config.virtual_hosts) >= 3


@pytest.mark.skipif(not HAVE_TRANSLATOR, reason="meshpy.xds.translate is not available yet")
def test_envoy_bootstrap_goes_to_the_translator() -> None:
    text = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
"""
    config = load_text(text)
    assert config.source_format == "envoy"
    assert str(config.admin.address) == "127.0.0.1:9901"
