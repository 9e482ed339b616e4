"""Who is asking the CA: a bearer token, mapped to the Kubernetes namespace and service account it
belongs to. That pair, and nothing the caller writes into its CSR, decides which SPIFFE ID it may get.

- Inside Kubernetes the token is the pod's service-account token, checked by the API server
  (TokenReview): nothing to configure, and a token dies with its pod.
- Outside it (VMs, tests, a laptop), bootstrap tokens: a file on the control plane maps each token to
  the identity it stands for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

log = logging.getLogger("meshpy.control.ca")

MIN_TOKEN = 16  # characters: a bootstrap token is a password, and a short one can be guessed
TOKENREVIEW_TIMEOUT = 5.0
SA_PREFIX = "system:serviceaccount:"


def in_the_clear(context: Any) -> bool:
    """Whether a gRPC call came over a plaintext port (no `--grpc-tls-names`): its token crossed the
    network readable by anyone on the way."""
    try:
        security = context.auth_context().get("transport_security_type")
    except (AttributeError, RuntimeError):  # no auth context: not a call we can tell about
        return False
    return bool(security != [b"ssl"])


class ClearTokens:
    """Says once, at WARNING, that tokens arrive in the clear; counts them for /metrics."""

    def __init__(self) -> None:
        self.count = 0

    def seen(self, what: str, peer: str) -> None:
        self.count += 1
        if self.count == 1:
            log.warning("%s from %s came over a plaintext gRPC port: bearer tokens (and the key pairs "
                        "sent to Envoy nodes) cross the network unencrypted; serve it over TLS with "
                        "--grpc-tls-names (said once)", what, peer)


@dataclass(frozen=True)
class Caller:
    namespace: str
    service_account: str
    via: str  # "bootstrap token" or "TokenReview", for the logs


class AuthError(Exception):
    """No identity can be given: `reason` labels the metric; `unavailable` means try again later (the
    API server is away), else the token itself is refused."""

    def __init__(self, reason: str, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.reason, self.unavailable = reason, unavailable


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Caller | None:
        """The token's owner; None when this authenticator does not know the token."""
        ...


class BootstrapTokens:
    """Tokens from a file: `tokens: [{token: ..., namespace: shop, service_account: orders}, ...]`."""

    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        # Kept as digests of one length, compared with compare_digest against every entry: neither the
        # time taken nor an early exit says how much of a guess was right.
        self._tokens = [(hashlib.sha256(t.encode()).digest(), owner) for t, owner in tokens.items()]

    def __len__(self) -> int:
        return len(self._tokens)

    @classmethod
    def from_file(cls, path: Path) -> BootstrapTokens:
        """Raises ValueError naming the entry at fault."""
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: {err}") from err
        entries = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected `tokens:`, a list of {{token, namespace, service_account}}")
        tokens: dict[str, tuple[str, str]] = {}
        for i, entry in enumerate(entries):
            where = f"{path}: tokens[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"token", "namespace", "service_account"}:
                raise ValueError(f"{where}: expected exactly token, namespace and service_account")
            token, owner = entry["token"], (entry["namespace"], entry["service_account"])
            if not all(isinstance(v, str) and v for v in (token, *owner)):
                raise ValueError(f"{where}: token, namespace and service_account must be non-empty strings")
            if len(token) < MIN_TOKEN:
                raise ValueError(f"{where}: the token is shorter than {MIN_TOKEN} characters")
            if tokens.setdefault(token, owner) != owner:
                raise ValueError(f"{where}: the same token is given to two identities")
        return cls(tokens)

    async def authenticate(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: tuple[str, str] | None = None
        for known, owner in self._tokens:
            if hmac.compare_digest(known, digest):
                found = owner  # no break: every entry costs the same
        return None if found is None else Caller(*found, via="bootstrap token")


class TokenReviewer:
    """Asks the Kubernetes API (TokenReview) who owns a service-account token, with the control plane's
    own client. `audiences`: when given, the token must be meant for one of them (`meshpy control
    --token-audiences`); empty: for the API server itself, as a pod's default token is."""

    def __init__(self, api: Any, audiences: Sequence[str] = (),
                 timeout: float = TOKENREVIEW_TIMEOUT) -> None:
        from kubernetes_asyncio import client  # only with --kubernetes: the client is slow to import

        self._client = client
        self.authentication = client.AuthenticationV1Api(api)
        self.audiences, self.timeout = tuple(audiences), timeout

    async def authenticate(self, token: str) -> Caller | None:
        import aiohttp  # kubernetes_asyncio's transport
        from kubernetes_asyncio.client.exceptions import ApiException

        c = self._client
        body = c.V1TokenReview(api_version="authentication.k8s.io/v1", kind="TokenReview",
                               spec=c.V1TokenReviewSpec(token=token, audiences=list(self.audiences) or None))
        try:
            async with asyncio.timeout(self.timeout):
                review = await self.authentication.create_token_review(body)
        except ApiException as err:
            raise AuthError("tokenreview_failed", f"the Kubernetes API answered the TokenReview with "
                            f"{err.status} {err.reason}", unavailable=True) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise AuthError("tokenreview_failed", f"the Kubernetes API is not reachable for a TokenReview: "
                            f"{err!r}", unavailable=True) from None
        status = review.status
        if status is None or not status.authenticated:
            why = getattr(status, "error", None) or "not authenticated"
            # A token made for another audience is refused by the API server itself (the intersection
            # of the token's and the review's audiences is empty): said, as the likely mistake.
            log.log(logging.INFO if "audience" in why else logging.DEBUG, "TokenReview: %s", why)
            return None
        # The API server answers the audiences the token is good for among those asked. One that ignored
        # spec.audiences (or a token for none of them) must not pass: checked here too.
        if self.audiences and not set(status.audiences or ()) & set(self.audiences):
            log.info("TokenReview: the token is for %s, not for %s", list(status.audiences or ()),
                     list(self.audiences))
            return None
        username = status.user.username if status.user is not None else ""
        parts = username.split(":") if username.startswith(SA_PREFIX) else []
        if len(parts) != 4 or not parts[2] or not parts[3]:
            raise AuthError("not_service_account", f"the token is {username!r}'s, not a service account's")
        return Caller(parts[2], parts[3], via="TokenReview")


class Authenticators:
    """Each in turn; the first that knows the token says who it is."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = tuple(authenticators)

    async def authenticate(self, token: str) -> Caller | None:
        for authenticator in self.authenticators:
            caller = await authenticator.authenticate(token)
            if caller is not None:
                return caller
        return None
