"""An HttpConnectionManager's x-forwarded-client-cert fields into meshpy's model:
`forward_client_cert_details` (its enum, lower case) and `set_current_client_cert_details` (the details
set, in the order Envoy writes them, which is also the model's)."""

from __future__ import annotations

from typing import Any

from meshpy.model.types import CLIENT_CERT_DETAILS, FORWARD_CLIENT_CERT, ClientCertDetail, ForwardClientCert
from meshpy.xds.translate_base import Issues, child, wrapped

HCM_FIELDS = ("forward_client_cert_details", "set_current_client_cert_details")


Details = tuple[ClientCertDetail, ...]


def client_cert(issues: Issues, msg: Any, path: str) -> tuple[ForwardClientCert, Details]:
    """`msg`: an HttpConnectionManager at `path`."""
    number = msg.forward_client_cert_details
    if not 0 <= number < len(FORWARD_CLIENT_CERT):
        issues.add(child(path, "forward_client_cert_details"), f"unknown value {number}")
        number = 0
    details = msg.set_current_client_cert_details
    issues.fields(details, child(path, "set_current_client_cert_details"), CLIENT_CERT_DETAILS)
    chosen = tuple(
        d for d in CLIENT_CERT_DETAILS
        if (wrapped(details, d, False) if d == "subject" else getattr(details, d))  # (subject: a BoolValue)
    )
    return FORWARD_CLIENT_CERT[number], chosen
