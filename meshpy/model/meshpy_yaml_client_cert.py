"""The x-forwarded-client-cert keys of an http listener in meshpy YAML:

    forward_client_cert: sanitize | forward_only | append_forward | sanitize_set | always_forward_only
    client_cert_details: [subject, uri, dns, cert, chain]

The modes and their meanings are Envoy's (forward_client_cert_details, set_current_client_cert_details:
see meshpy.stack.client_cert). The details are written in Envoy's order whatever order they are listed
in, since Envoy's API has no order to carry. Stricter than Envoy in one way: details with a mode that
never writes them are an error, not silently unused.
"""

from __future__ import annotations

from meshpy.model.types import (
    CLIENT_CERT_DETAILS,
    FORWARD_CLIENT_CERT,
    ClientCertDetail,
    ForwardClientCert,
)
from meshpy.model.yaml_reader import Fields, Reader, item

CLIENT_CERT_KEYS = ("forward_client_cert", "client_cert_details")
_ADDING = ("append_forward", "sanitize_set")
_SANITIZE: ForwardClientCert = "sanitize"


def _mode(value: object) -> ForwardClientCert:
    if value not in FORWARD_CLIENT_CERT:
        raise ValueError(f"must be one of {', '.join(FORWARD_CLIENT_CERT)}, got {value!r}")
    return value


def client_cert(r: Reader, f: Fields) -> tuple[ForwardClientCert, tuple[ClientCertDetail, ...]]:
    """The listener's mode (sanitize when not set) and details (in Envoy's order)."""
    mode = f.get("forward_client_cert", _mode, _SANITIZE)
    if "client_cert_details" not in f:
        return mode, ()
    path = f.at("client_cert_details")
    seen: set[str] = set()
    for i, value in enumerate(r.sequence(f.raw("client_cert_details"), path)):
        if value not in CLIENT_CERT_DETAILS:
            r.error(item(path, i), f"must be one of {', '.join(CLIENT_CERT_DETAILS)}, got {value!r}")
        elif value in seen:
            r.error(item(path, i), f"{value} is listed twice")
        seen.add(str(value))
    if seen and mode not in _ADDING and "forward_client_cert" in f:
        r.error(path, f"only used by forward_client_cert append_forward or sanitize_set, not {mode}")
    elif seen and "forward_client_cert" not in f:
        r.error(path, "needs forward_client_cert: append_forward or sanitize_set to be written")
    return mode, tuple(d for d in CLIENT_CERT_DETAILS if d in seen)
