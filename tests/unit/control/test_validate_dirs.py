"""`meshpy validate --envoy-dir / --meshpy-dir`: a control-plane directory checked as `meshpy control`
loads it, with every problem named by file and path, beside config files in the same call."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpy.cli import main

ROOT = Path(__file__).resolve().parents[3]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    rc = main(["validate", *args])
    return rc, capsys.readouterr().out.splitlines()


def test_the_shipped_envoy_directory(capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(ROOT / "config" / "control")
    assert run(["--envoy-dir", directory], capsys) == (0, [
        f"{directory}: ok (Envoy resources: 1 listeners, 1 route configurations, 1 clusters, "
        "1 endpoint assignments)"])


def test_a_meshpy_directory_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text("clusters:\n  - name: a\n    endpoints: [127.0.0.1:70000]\n")
    assert run(["--meshpy-dir", str(tmp_path)], capsys) == (
        1, [f"{tmp_path}: a.yaml: clusters[0].endpoints[0]: port 70000 is out of range"])
    (tmp_path / "b.yaml").write_text("admin: 127.0.0.1:1\n")  # (files are read before they are checked)
    assert run(["--meshpy-dir", str(tmp_path)], capsys) == (
        1, [f"{tmp_path}: b.yaml: admin: not for the control plane (only listeners and clusters)"])


def test_an_envoy_directory_with_a_broken_resource(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(
        '"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: c\nconnect_timout: 1s\n')
    rc, lines = run(["--envoy-dir", str(tmp_path)], capsys)
    assert rc == 1 and len(lines) == 1 and "c.yaml" in lines[0] and "connect_timout" in lines[0]


def test_files_and_directories_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run([str(ROOT / "config" / "dev.yaml"), "--meshpy-dir", str(tmp_path / "missing")], capsys)
    assert rc == 1
    assert lines[0].endswith("dev.yaml: ok (meshpy format, 1 listeners, 1 clusters)")
    assert lines[1] == f"{tmp_path / 'missing'}: not a directory"
