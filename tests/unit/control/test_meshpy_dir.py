"""A directory of meshpy YAML served as Envoy resources: files joined into one config, errors located
in their own file."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.cache import CLUSTER, ENDPOINT, LISTENER, ROUTE, check, make_snapshot
from control.sources.envoy_dir import SourceError
from control.sources.meshpy_dir import load_meshpy_dir

WEB = """
listeners:
  - name: web
    address: 127.0.0.1:18600
    routes:
      - match: /api
        cluster: api
      - match: /
        cluster: site
"""
CLUSTERS = """
clusters:
  - name: api
    endpoints: [127.0.0.1:18601]
  - name: site
    endpoints: [127.0.0.1:18602]
"""


def write(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_files_join_into_one_config(tmp_path: Path) -> None:
    res = load_meshpy_dir(write(tmp_path, web=WEB, clusters=CLUSTERS))
    assert {t: sorted(r) for t, r in res.items()} == {
        LISTENER: ["web"], ROUTE: ["web"], CLUSTER: ["api", "site"], ENDPOINT: ["api", "site"]}
    assert check(make_snapshot(res)) == []
    cla = res[ENDPOINT]["api"]
    assert cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 18601


def test_errors_are_located_in_their_file(tmp_path: Path) -> None:
    other = WEB.replace("name: web", "name: other").replace("18600", "18603").replace("cluster: api",
                                                                                      "cluster: apii")
    write(tmp_path, a_clusters=CLUSTERS, b_web=WEB, c_other=other)
    with pytest.raises(SourceError) as err:
        load_meshpy_dir(tmp_path)
    assert len(err.value.errors) == 1
    where = "c_other.yaml: listeners[0].routes[0].cluster: "
    assert err.value.errors[0].startswith(where + "unknown cluster 'apii'")


def test_bad_files_are_all_reported(tmp_path: Path) -> None:
    write(tmp_path, a="admin: 127.0.0.1:9901\n", b="listeners: {}\n", c="clusters: [\n", d="- 1\n")
    with pytest.raises(SourceError) as err:
        load_meshpy_dir(tmp_path)
    errors = err.value.errors
    assert errors[0] == "a.yaml: admin: not for the control plane (only listeners and clusters)"
    assert errors[1] == "b.yaml: listeners: must be a list"
    assert errors[2].startswith("c.yaml: invalid YAML in c.yaml at line")
    assert errors[3] == "d.yaml: the top level must be a mapping with listeners and/or clusters"


def test_empty_and_missing_directory(tmp_path: Path) -> None:
    assert all(not r for r in load_meshpy_dir(tmp_path).values())
    with pytest.raises(SourceError, match="not a directory"):
        load_meshpy_dir(tmp_path / "nope")
