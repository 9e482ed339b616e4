"""Secrets from SDS: a Secret resource read into PEM (a certificate and key, or a CA bundle with its
SAN matchers), as the model's SecretMaterial (meshpy.model.secrets fills it into the listeners and
clusters that name it)."""

from __future__ import annotations

from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from meshpy.model.secrets import SecretMaterial
from meshpy.xds.translate_base import Issues, child

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SecretMessage = secret_pb2.Secret


def material(msg: Any) -> SecretMaterial:
    """A Secret's PEM; ConfigError names what cannot be used."""
    from meshpy.xds.translate_tls import certificate, validation

    issues = Issues()
    issues.fields(msg, "", {"name", "tls_certificate", "validation_context"})
    found = SecretMaterial()
    if msg.HasField("tls_certificate"):
        cert = certificate(issues, msg.tls_certificate, "tls_certificate")
        found = SecretMaterial(chain=cert.chain, key=cert.key)
    elif msg.HasField("validation_context"):
        checked = validation(issues, msg.validation_context, "validation_context")
        if checked.ca is None:
            issues.add(child("validation_context", "trusted_ca"), "is required")
        found = SecretMaterial(ca=checked.ca, san=checked.san)
    else:
        issues.add("", "holds no tls_certificate or validation_context")
    issues.raise_if_any()
    return found
