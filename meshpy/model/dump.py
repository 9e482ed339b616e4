"""The model as JSON-able data, for /config_dump."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshpy.model.tls import Certificate, Pem, ServerTls
from meshpy.model.types import Config

# A private key or session ticket key given inline (or delivered over SDS) is never shown: Envoy's config
# dump redacts them too.
REDACTED = "[redacted]"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value).__name__
        out: dict[str, Any] = {"@kind": kind} if kind.endswith("Action") else {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if isinstance(value, Certificate) and f.name == "key" and isinstance(item, Pem) and item.inline:
                out[f.name] = {"path": None, "inline": REDACTED}
                continue
            if isinstance(value, ServerTls) and f.name == "ticket_keys":  # as secret as a private key
                out[f.name] = [{"path": k.path, "inline": REDACTED if k.inline else None} for k in item]
                continue
            out[f.name] = _plain(getattr(value, f.name))
        return out
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def dump_config(config: Config) -> dict[str, Any]:
    result = _plain(config)
    assert isinstance(result, dict)
    return result
