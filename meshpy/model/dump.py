"""The model as JSON-able data, for /config_dump."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshpy.model.access_log import LOG_FILTERS, JsonObject
from meshpy.model.tls import Certificate, Pem, ServerTls
from meshpy.model.types import Address, Config, Endpoint

# A private key or session ticket key given inline (or delivered over SDS) is never shown: Envoy's config
# dump redacts them too.
REDACTED = "[redacted]"
_ENDPOINT_EXTRAS = frozenset({"group", "hostname", "health_target"})


def _plain(value: Any) -> Any:
    if isinstance(value, Address):  # the fields that say where: host and port, or a Unix socket's
        return {"path": value.path, "mode": value.mode} if value.path else {"host": value.host,
                                                                             "port": value.port}
    if isinstance(value, JsonObject):  # an access log's JSON format, as it was written
        return {k: _plain(v) for k, v in value.fields}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value).__name__
        named = kind.endswith("Action") or isinstance(value, LOG_FILTERS)
        out: dict[str, Any] = {"@kind": kind} if named else {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if isinstance(value, Certificate) and f.name == "key" and isinstance(item, Pem) and item.inline:
                out[f.name] = {"path": None, "inline": REDACTED}
                continue
            if isinstance(value, ServerTls) and f.name == "ticket_keys":  # as secret as a private key
                out[f.name] = [{"path": k.path, "inline": REDACTED if k.inline else None} for k in item]
                continue
            if isinstance(value, Endpoint) and f.name in _ENDPOINT_EXTRAS and item == f.default:
                continue  # (an endpoint's priority, locality and names: shown only where set)
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
