"""The model as JSON-able data, for /config_dump."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshpy.model.types import Config


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"@kind": type(value).__name__} if type(value).__name__.endswith("Action") else {}
        for f in dataclasses.fields(value):
            out[f.name] = _plain(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def dump_config(config: Config) -> dict[str, Any]:
    result = _plain(config)
    assert isinstance(result, dict)
    return result
