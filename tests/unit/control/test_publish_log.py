"""What the control plane says when a new version of its directory does not hold together: the
reasons first, then that the last version that fits is what is served (a warning, not an INFO line
before the errors)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from control.cache import SnapshotCache
from control.server import Publisher

ROOT = Path(__file__).resolve().parents[3]


def test_a_version_that_does_not_fit_is_said_before_what_is_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for f in (ROOT / "config" / "control").glob("*.yaml"):
        shutil.copy(f, tmp_path)
    publisher = Publisher(SnapshotCache())
    with caplog.at_level(logging.INFO, logger="meshpy.control"):
        assert publisher.load_directory(tmp_path)
        routes = tmp_path / "routes.yaml"
        routes.write_text(routes.read_text().replace("cluster: demo", "cluster: nope"))
        caplog.clear()
        assert not publisher.load_directory(tmp_path)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0][0] == "ERROR" and "not pushed" in said[0][1] and "nope" in said[0][1], said
    assert said[-1][0] == "WARNING", said
    assert "with the last directory version that fits (the new one was not pushed: see above)" in said[-1][1]
