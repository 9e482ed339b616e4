"""The CA on the control plane's gRPC server, beside ADS: Istio's CSR API and our trust-bundle RPC.

`istio.v1.auth.IstioCertificateService/CreateCertificate` takes a PEM CSR and the caller's bearer token
(`authorization: Bearer <token>` metadata). The token says who the caller is (control/ca_auth.py); the
CA signs only the SPIFFE ID of that namespace and service account. Answers:

  UNAUTHENTICATED    no token, or one nobody knows
  PERMISSION_DENIED  the CSR asks for another identity, another trust domain, extra names or CA rights
  INVALID_ARGUMENT   the CSR does not parse, its signature does not verify, or its key is not accepted
  UNAVAILABLE        the Kubernetes API could not review the token: try again

Every refusal is logged at WARNING with its reason and counted by reason for /metrics.

`meshpy.identity.v1.TrustBundle/Get` returns the roots (the trust bundle, two of them while a rotation
overlaps); `Watch` returns them at once and again whenever they change (`bundle_changed`), so that a
sidecar trusts a staged root before any peer presents a leaf it signed. The roots are public, so neither
asks for a token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from control.ca import CaError, CertificateAuthority, CsrError
from control.ca_auth import Authenticator, AuthError, Caller, ClearTokens, in_the_clear
from meshpy.identity import ca_proto
from meshpy.identity.spiffe import SpiffeId, SpiffeIdError

log = logging.getLogger("meshpy.control.ca")


@dataclass
class CaCounters:
    issued: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by reason


class _Refusal(Exception):
    """Why a request gets no certificate: the gRPC status, a reason label for the metric, the message."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class IdentityService:
    def __init__(self, ca: CertificateAuthority, authenticator: Authenticator) -> None:
        self.ca, self.authenticator = ca, authenticator
        self.counters = CaCounters()
        self._watchers: set[asyncio.Event] = set()  # one per open TrustBundle/Watch stream
        self.clear_tokens = ClearTokens()  # shared with the ADS streams' tokens (control/ca_plane.py)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        create = grpc.unary_unary_rpc_method_handler(
            self.CreateCertificate, request_deserializer=ca_proto.IstioCertificateRequest.FromString,
            response_serializer=ca_proto.IstioCertificateResponse.SerializeToString)
        bundle = grpc.unary_unary_rpc_method_handler(
            self.GetTrustBundle, request_deserializer=ca_proto.TrustBundleRequest.FromString,
            response_serializer=ca_proto.TrustBundleResponse.SerializeToString)
        watch = grpc.unary_stream_rpc_method_handler(
            self.WatchTrustBundle, request_deserializer=ca_proto.TrustBundleRequest.FromString,
            response_serializer=ca_proto.TrustBundleResponse.SerializeToString)
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(ca_proto.ISTIO_SERVICE, {"CreateCertificate": create}),
            grpc.method_handlers_generic_handler(ca_proto.BUNDLE_SERVICE, {"Get": bundle, "Watch": watch})))

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def bundle_changed(self, *_: object) -> None:
        """Every Watch stream sends the bundle again (a RootRotation listener)."""
        for event in self._watchers:
            event.set()

    async def CreateCertificate(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller: Caller | None = None
        try:
            caller = await self._caller(context)
            entitled = SpiffeId(self.ca.trust_domain, caller.namespace, caller.service_account)
            chain = self.ca.sign_csr(request.csr, entitled, float(request.validity_duration) or None)
        except _Refusal as err:
            refusal = err
        except AuthError as err:
            code = grpc.StatusCode.UNAVAILABLE if err.unavailable else grpc.StatusCode.PERMISSION_DENIED
            refusal = _Refusal(code, err.reason, str(err))
        except SpiffeIdError as err:  # a namespace or account that cannot be a SPIFFE ID path segment
            refusal = _Refusal(grpc.StatusCode.PERMISSION_DENIED, "identity",
                               f"no SPIFFE ID for the caller: {err}")
        except CsrError as err:
            code = grpc.StatusCode.PERMISSION_DENIED if err.denied else grpc.StatusCode.INVALID_ARGUMENT
            refusal = _Refusal(code, err.reason, str(err))
        except CaError as err:
            log.error("cannot sign: %s", err)
            refusal = _Refusal(grpc.StatusCode.UNAVAILABLE, "ca_expired", str(err))
        else:
            self.counters.issued += 1
            log.info("issued %s to %s (%s, %s)", entitled, context.peer(), caller.via,
                     _lifetime(self.ca, request.validity_duration))
            return ca_proto.IstioCertificateResponse(cert_chain=chain)
        self.counters.refused[refusal.reason] = self.counters.refused.get(refusal.reason, 0) + 1
        who = f"{caller.namespace}/{caller.service_account} ({caller.via})" if caller else "unknown caller"
        log.warning("refused a certificate to %s at %s: %s [%s]", who, context.peer(), refusal.message,
                    refusal.reason)
        await context.abort(refusal.code, refusal.message)

    async def GetTrustBundle(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return ca_proto.TrustBundleResponse(trust_domain=self.ca.trust_domain,
                                            roots=self.ca.trust_bundle_pem())

    async def WatchTrustBundle(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
                               ) -> AsyncIterator[Any]:
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            sent: list[str] | None = None
            while True:
                roots = self.ca.trust_bundle_pem()
                if roots != sent:
                    sent = roots
                    yield ca_proto.TrustBundleResponse(trust_domain=self.ca.trust_domain, roots=roots)
                await wake.wait()
                wake.clear()
        finally:
            self._watchers.discard(wake)

    async def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        values = [v for k, v in context.invocation_metadata() or () if k.lower() == "authorization"]
        if len(values) != 1:
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, "no_token",
                                "no `authorization: Bearer <token>` metadata" if not values
                                else "more than one authorization header")
        scheme, _, token = str(values[0]).partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, "no_token",
                                "the authorization metadata is not `Bearer <token>`")
        if in_the_clear(context):
            self.clear_tokens.seen("a certificate request's bearer token", context.peer())
        caller = await self.authenticator.authenticate(token)
        if caller is None:
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, "bad_token",
                                "the bearer token is not valid (unknown, expired, or for another audience)")
        return caller


def _lifetime(ca: CertificateAuthority, requested: int) -> str:
    return f"valid {ca.ttl_for(float(requested) or None):g} s"


class CaCollector(Collector):
    """The CA's counters and the signing certificate's expiry, read at scrape time."""

    def __init__(self, service: IdentityService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        c = self.service.counters
        yield CounterMetricFamily("meshpy_control_ca_certificates_issued", "SVIDs signed", value=c.issued)
        refused = CounterMetricFamily("meshpy_control_ca_certificates_refused",
                                      "certificate requests refused, by reason", labels=["reason"])
        for reason, n in sorted(c.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        expiry = self.service.ca.issuer.cert.not_valid_after_utc.timestamp()
        yield GaugeMetricFamily("meshpy_control_ca_expiry_timestamp_seconds",
                                "when the CA's signing certificate expires (Unix time)", value=expiry)
        yield CounterMetricFamily("meshpy_control_tokens_in_the_clear",
                                  "bearer tokens received over a plaintext gRPC port (no --grpc-tls-names)",
                                  value=self.service.clear_tokens.count)
        yield GaugeMetricFamily("meshpy_control_ca_bundle_watchers",
                                "sidecars watching the trust bundle (TrustBundle/Watch streams open)",
                                value=self.service.watchers)
        yield GaugeMetricFamily("meshpy_control_ca_trust_bundle_roots",
                                "roots in the published trust bundle (2 while a rotation overlaps)",
                                value=len(self.service.ca.trust_bundle()))
