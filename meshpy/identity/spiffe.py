"""SPIFFE IDs of Kubernetes workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
the form Istio uses, so that policies written for it read the same here."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
# The audience of the service-account tokens that prove a workload's identity to the mesh's CA (Istio's
# is `istio-ca`): `meshpy inject` asks the kubelet for tokens made for it, and `meshpy control` accepts
# no other (`--token-audiences`), so neither a pod's API token gets a certificate nor a mesh token
# reaches the API server.
DEFAULT_TOKEN_AUDIENCE = "meshpy-ca"

# A trust domain is a DNS-like name (lowercase letters, digits, dots, dashes, underscores: the SPIFFE ID
# spec); namespaces and service accounts are Kubernetes DNS labels and subdomains.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


class SpiffeIdError(ValueError):
    """Not a SPIFFE ID of the form this mesh issues."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise SpiffeIdError(f"bad trust domain {self.trust_domain!r}")
        for what, value in (("namespace", self.namespace), ("service account", self.service_account)):
            if not _NAME.fullmatch(value):
                raise SpiffeIdError(f"bad {what} {value!r}")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """`spiffe://td/ns/N/sa/S` exactly: no query, fragment, port, user or other path."""
        match = re.fullmatch(r"spiffe://([^/]+)/ns/([^/]+)/sa/([^/]+)", uri)
        if match is None:
            raise SpiffeIdError(f"{uri!r} is not spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
        return cls(*match.groups())
