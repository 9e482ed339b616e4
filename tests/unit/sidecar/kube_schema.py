"""Kubernetes' own schemas (PyPI kubernetes-validate), strict: an unknown field is an error too."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

# The newest schemas the installed package ships; native sidecars need 1.29 or later.
VERSION = max(all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
assert tuple(int(x) for x in VERSION.split(".")[:2]) >= (1, 29), VERSION


def validate(doc: dict[str, Any]) -> None:
    """Fail the test with the schema's own message and the path to the offending field."""
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    for item in items:
        try:
            kubernetes_validate.validate(item, VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.absolute_path)
            pytest.fail(f"{item.get('kind')} {item.get('metadata', {}).get('name')}: {where}: {err.message}")
