"""The bootstrap's layered_runtime -> the model (meshpy.xds.translate_runtime): the layers in order,
the static ones flattened, and the checks Envoy 1.40 makes when it starts (its messages where it has
one), plus the values meshpy refuses, named by their key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.load import load_file
from meshpy.model.routes import ENVOY_FAULT_KEYS, FaultKeys
from meshpy.model.runtime import NO_RUNTIME
from meshpy.xds.translate import load_bootstrap

CORPUS = Path(__file__).resolve().parents[2] / "data" / "envoy-corpus"
ROOT = CORPUS.parents[2]
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def bootstrap(layers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
            "layered_runtime": {"layers": layers}, **extra}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_bootstrap(data)
    return [str(i) for i in err.value.issues]


def test_layers_keep_their_order_and_static_values_are_flattened(tmp_path: Path) -> None:
    config = load_bootstrap(bootstrap([
        {"name": "base", "static_layer": {"envoy": {"resource_limits": {"listener": {"web": {
            "connection_limit": 100}}}}, "re2.max_program_size.error_level": 4294967295}},
        {"name": "disk", "disk_layer": {"symlink_root": f"{tmp_path}/current", "subdirectory": "envoy",
                                        "append_service_cluster": True}},
        {"name": "admin", "admin_layer": {}},
    ], node={"id": "n", "cluster": "front"}))
    base, disk, admin = config.runtime.layers
    assert (base.kind, disk.kind, admin.kind) == ("static", "disk", "admin")
    assert dict(base.values)["envoy.resource_limits.listener.web.connection_limit"].integer == 100
    assert dict(base.values)["re2.max_program_size.error_level"].raw == "4294967295"
    assert disk.directory == f"{tmp_path}/current/envoy/front" and disk.symlink_root == f"{tmp_path}/current"
    assert config.runtime.admin_layer


def test_without_layered_runtime_there_are_no_layers() -> None:
    data = bootstrap([])
    del data["layered_runtime"]
    assert load_bootstrap(data).runtime == NO_RUNTIME


@pytest.mark.parametrize(("layers", "expected"), [
    ([{"name": "a", "admin_layer": {}}, {"name": "a", "static_layer": {}}],
     "layered_runtime.layers[1].name: Duplicate layer name: a"),
    ([{"name": "a", "admin_layer": {}}, {"name": "b", "admin_layer": {}}],
     "layered_runtime.layers[1].admin_layer: Too many admin layers specified in LayeredRuntime, at most one "
     "may be specified"),
    ([{"admin_layer": {}}], "layered_runtime.layers[0].name: must not be empty"),
    ([{"name": "a"}], "layered_runtime.layers[0]: one of static_layer, disk_layer, admin_layer or rtds_layer "
                      "is required"),
    ([{"name": "a", "static_layer": {"k": [1]}}],
     "layered_runtime.layers[0].static_layer: Invalid runtime entry value for k"),
    ([{"name": "a", "disk_layer": {"symlink_root": "current"}}],
     "layered_runtime.layers[0].disk_layer.symlink_root: invalid file path 'current': Envoy watches the "
     "directory that holds it"),
    ([{"name": "a", "disk_layer": {"symlink_root": "/nonexistent-dir/current"}}],
     "layered_runtime.layers[0].disk_layer.symlink_root: /nonexistent-dir does not exist: Envoy watches it "
     "for the symlink to be swapped, and will not start without it"),
])
def test_envoys_startup_checks(layers: list[dict[str, Any]], expected: str) -> None:
    assert expected in problems(bootstrap(layers))


def test_values_meshpy_cannot_follow_are_named() -> None:
    found = problems(bootstrap([{"name": "s", "static_layer": {
        "envoy": {"reloadable_features": {"strict_chunk_parsing": True}},
        "circuit_breakers.backend.default.max_connections": 5,
        "envoy.reloadable_features.http_reject_path_with_fragment": False,  # followed: no problem
    }}]))
    assert found == [
        "layered_runtime.layers[0].static_layer.circuit_breakers.backend.default.max_connections: Envoy "
        "reads circuit breaker thresholds from these keys; meshpy does not",
        "layered_runtime.layers[0].static_layer.envoy.reloadable_features.strict_chunk_parsing: true would "
        "change what Envoy 1.40 does (the flag's default is false), and meshpy does not have that behaviour",
    ]


def test_a_disk_layer_is_checked_when_read(tmp_path: Path) -> None:
    (tmp_path / "v1" / "upstream").mkdir(parents=True)
    (tmp_path / "v1" / "upstream" / "healthy_panic_threshold").write_text("0")
    os.symlink(tmp_path / "v1", tmp_path / "current")
    found = problems(bootstrap([{"name": "d", "disk_layer": {"symlink_root": f"{tmp_path}/current"}}]))
    assert found == [f"layered_runtime.layers[0].disk_layer: upstream.healthy_panic_threshold (read from "
                     f"{tmp_path}/current/): Envoy reads load balancing, panic threshold and retry back-off "
                     f"settings from these keys; meshpy does not"]


def test_rtds_needs_its_config_source_and_a_node() -> None:
    # (REST and per-type gRPC sources: tests/unit/xds/test_config_sources.py.)
    rest = {"name": "r", "rtds_layer": {"name": "r", "rtds_config": {"api_config_source": {
        "api_type": "REST", "cluster_names": ["xds"]}}}}
    assert problems(bootstrap([rest]))[0] == (
        "layered_runtime.layers[0].rtds_layer.rtds_config.api_config_source: refresh_delay is required for "
        "REST API configuration sources")
    ads = {"name": "r", "rtds_layer": {"name": "r", "rtds_config": {"ads": {}}}}
    assert problems(bootstrap([ads])) == [
        "layered_runtime.layers[0].rtds_layer.rtds_config.ads: ads: {} needs the bootstrap's "
        "dynamic_resources.ads_config",
        "node: an RTDS layer needs node.id and node.cluster (Envoy: \"node 'id' and 'cluster' are "
        "required\")"]


def test_the_fault_filter_keys() -> None:
    def fault(**fields: Any) -> Any:
        hcm = {"@type": HCM, "stat_prefix": "s", "route_config": {"virtual_hosts": [
            {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
                "status": 200}}]}]},
            "http_filters": [{"name": "f", "typed_config": {"@type": FAULT, "abort": {
                "http_status": 503, "percentage": {"numerator": 0}}, **fields}},
                {"name": "r", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
        data = bootstrap([{"name": "admin", "admin_layer": {}}], static_resources={"listeners": [{
            "name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}]})
        http = load_bootstrap(data).listeners[0].http
        assert http is not None
        return http.route_config.virtual_hosts[0].routes[0].fault

    assert fault().keys == ENVOY_FAULT_KEYS
    assert fault(abort_percent_runtime="my.abort", max_active_faults_runtime="my.max",
                 abort_grpc_status_runtime="unused").keys == FaultKeys(abort_percent="my.abort",
                                                                         max_active="my.max")


@pytest.mark.parametrize("name", ["examples-front-proxy.yaml", "examples-fault-injection.yaml",
                                  "opa-envoy-grpc.yaml"])
def test_corpus_configs_with_a_runtime_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the corpus names its runtime directory from the repository root
    config = load_file(str(CORPUS / name))
    assert config.runtime.layers
