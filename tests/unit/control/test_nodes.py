"""Per-node sets from a source directory's layout: node-cluster/<name>/ and node-id/<id>/ add to and
replace the shared files, each set is checked, and the cache serves each node its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.cache import CLUSTER, LISTENER, ROUTE, InconsistentSnapshot, SnapshotCache, make_snapshot
from control.server import load_once
from control.sources.envoy_dir import SourceError
from control.sources.meshpy_dir import load_meshpy_dir
from control.sources.nodes import envoy_layer, layered_fingerprint, load_layers

ROOT = Path(__file__).resolve().parents[3]

WEB = """
listeners:
  - name: web
    address: 127.0.0.1:10001
    routes:
      - match: /
        cluster: demo
clusters:
  - name: demo
    endpoints: [127.0.0.1:18080]
"""
REVIEWS = """
listeners:
  - name: web
    address: 127.0.0.1:10001
    routes:
      - match: /teapot
        direct: {status: 418}
      - match: /
        cluster: ratings
clusters:
  - name: ratings
    endpoints: [127.0.0.1:18081]
"""


def envoy_source(tmp_path: Path) -> Path:
    source = tmp_path / "envoy"
    source.mkdir()
    for f in (ROOT / "config" / "control").glob("*.yaml"):
        (source / f.name).write_text(f.read_text())
    return source


def routes_of(resources: dict[str, dict[str, object]]) -> str:
    return str(resources[ROUTE]["local"])


def test_envoy_subdirectories_replace_by_name(tmp_path: Path) -> None:
    source = envoy_source(tmp_path)
    special = source / "node-cluster" / "reviews"
    special.mkdir(parents=True)
    text = (source / "routes.yaml").read_text()
    (special / "routes.yaml").write_text(text.replace("status: 200", "status: 299"))
    layers = load_layers(source, envoy_layer)
    assert set(layers.by_cluster) == {"reviews"} and layers.by_node == {}
    assert "299" in routes_of(layers.by_cluster["reviews"]) and "299" not in routes_of(layers.shared)
    # What the subdirectory does not name is shared.
    assert layers.by_cluster["reviews"][CLUSTER] == layers.shared[CLUSTER]

    cache = SnapshotCache()
    assert load_once(cache, source)
    reviews, other = cache.get("n1", "reviews"), cache.get("n2", "web")
    assert reviews is not None and other is not None and reviews.version != other.version
    assert "299" in str(reviews.of(ROUTE)["local"])


def test_meshpy_node_id_directory_joins_the_shared_files(tmp_path: Path) -> None:
    source = tmp_path / "meshpy"
    (source / "node-id" / "sidecar-7").mkdir(parents=True)
    (source / "web.yaml").write_text(WEB)
    (source / "node-id" / "sidecar-7" / "web.yaml").write_text(REVIEWS)
    layers = load_layers(source, load_meshpy_dir)
    mine = layers.by_node["sidecar-7"]
    assert set(mine[CLUSTER]) == {"demo", "ratings"}  # the shared cluster stays, its own is added
    assert set(mine[LISTENER]) == {"web"}  # the listener of the same name is replaced
    assert "418" in str(mine[ROUTE]) and "418" not in str(layers.shared[ROUTE])
    cache = SnapshotCache()
    assert load_once(cache, source, loader=load_meshpy_dir)
    node = cache.get("sidecar-7")
    assert node is not None and "ratings" in node.of(CLUSTER)
    shared = cache.get("someone-else")
    assert shared is not None and "ratings" not in shared.of(CLUSTER)


def test_errors_in_a_subdirectory_name_its_path(tmp_path: Path) -> None:
    source = tmp_path / "meshpy"
    (source / "node-cluster" / "api").mkdir(parents=True)
    (source / "web.yaml").write_text(WEB)
    (source / "node-cluster" / "api" / "bad.yaml").write_text(WEB.replace("cluster: demo", "cluster: nowhere")
                                                              .replace("name: demo", "name: demo2"))
    with pytest.raises(SourceError) as err:
        load_layers(source, load_meshpy_dir)
    assert any(e.startswith("node-cluster/api/bad.yaml: listeners[0].routes[0].cluster: unknown cluster")
               for e in err.value.errors), err.value.errors
    envoy = envoy_source(tmp_path)
    (envoy / "node-id" / "n1").mkdir(parents=True)
    (envoy / "node-id" / "n1" / "x.yaml").write_text('"@type": type.googleapis.com/nothing.Such\nname: x\n')
    with pytest.raises(SourceError) as err:
        load_layers(envoy, envoy_layer)
    assert all(e.startswith("node-id/n1/x.yaml") for e in err.value.errors), err.value.errors


def test_one_inconsistent_set_publishes_nothing(tmp_path: Path) -> None:
    source = envoy_source(tmp_path)
    cache = SnapshotCache()
    assert load_once(cache, source)
    before = cache.get("n1", "reviews")
    special = source / "node-cluster" / "reviews"
    special.mkdir(parents=True)
    (special / "routes.yaml").write_text((source / "routes.yaml").read_text().replace("cluster: demo",
                                                                                      "cluster: gone"))
    assert not load_once(cache, source)
    assert cache.get("n1", "reviews") is before
    layers = load_layers(source, envoy_layer)
    with pytest.raises(InconsistentSnapshot) as err:
        cache.publish(make_snapshot(layers.shared), {"n1": make_snapshot(layers.by_cluster["reviews"])})
    [error] = err.value.errors
    assert error.startswith("node n1: ") and "cluster 'gone' does not exist" in error


def test_the_fingerprint_sees_subdirectories(tmp_path: Path) -> None:
    source = envoy_source(tmp_path)
    first = layered_fingerprint(source)
    (source / "node-id" / "n1").mkdir(parents=True)
    assert layered_fingerprint(source) != first
    second = layered_fingerprint(source)
    (source / "node-id" / "n1" / "routes.yaml").write_text((source / "routes.yaml").read_text())
    assert layered_fingerprint(source) != second
