"""The container image tests run only under `make test-image`, which builds the image first (`make image`)
and sets MESHPY_TEST_IMAGE=1; plain `make test` does not collect them."""

from __future__ import annotations

import os

if os.environ.get("MESHPY_TEST_IMAGE") != "1":
    collect_ignore_glob = ["test_*.py"]
