"""`meshpy control` options of the CA, and the CA and its service made from them.

The CA always runs: with no option it signs with a root made at start and kept in memory (a restart
makes a new one, and every sidecar must fetch the new bundle), and nobody can authenticate until
bootstrap tokens or the Kubernetes source (TokenReview) are given.

The parser is built for every `meshpy` command: the CA's modules (cryptography, grpc) are imported only
when the control plane starts.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshpy.identity.spiffe import DEFAULT_TOKEN_AUDIENCE, DEFAULT_TRUST_DOMAIN, SpiffeId, SpiffeIdError

if TYPE_CHECKING:
    from control.ca import CertificateAuthority
    from control.ca_auth import BootstrapTokens
    from control.ca_service import IdentityService

log = logging.getLogger("meshpy.control.ca")


@dataclass(frozen=True)
class CaOptions:
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    ca_dir: Path | None = None
    svid_ttl: float | None = None  # None: the CA's default (control.ca.DEFAULT_TTL)
    bootstrap_tokens: BootstrapTokens | None = None
    # DNS names and IPs of the gRPC port's own certificate; empty: the port is plaintext (docs/identity.md)
    grpc_tls_names: tuple[str, ...] = ()
    # What a Kubernetes token must be made for (TokenReview's spec.audiences); empty: the API server's own
    # audiences, so that any token of the pod's, its API token too, proves its identity.
    token_audiences: tuple[str, ...] = (DEFAULT_TOKEN_AUDIENCE,)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("certificate authority (workload identities, docs/identity.md)")
    group.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                       help="the SPIFFE trust domain of the SVIDs it signs (default cluster.local)")
    group.add_argument("--ca-dir", metavar="DIR",
                       help="the CA's files: ca-cert.pem and ca-key.pem (with root-cert.pem for an "
                            "intermediate under your root); a new root is written here when there are none "
                            "(default: a new root in memory at each start)")
    group.add_argument("--svid-ttl", type=float, default=None, metavar="SECONDS",
                       help="lifetime of the certificates it signs (default 86400: 24 h)")
    group.add_argument("--bootstrap-tokens", metavar="FILE",
                       help="YAML `tokens: [{token, namespace, service_account}]`: tokens that stand for an "
                            "identity outside Kubernetes (with --kubernetes, pods' tokens go to TokenReview)")
    group.add_argument("--grpc-tls-names", metavar="NAMES",
                       help="serve the gRPC port (--listen: ADS and the CA) over TLS, with a certificate "
                            "from this CA for these comma-separated DNS names and IP addresses, as clients "
                            "reach it (e.g. meshpy-control.meshpy-system.svc,127.0.0.1); default: plaintext")
    group.add_argument("--token-audiences", metavar="LIST", default=DEFAULT_TOKEN_AUDIENCE,
                       help="with --kubernetes: a pod's token proves its identity only if it was made for "
                            "one of these comma-separated audiences (a projected token's `audience`, as "
                            "meshpy inject asks for); '' accepts tokens for the API server, such as a pod's "
                            "default one (default %(default)s)")


def options(args: argparse.Namespace) -> CaOptions:
    """Raises ValueError with the message for the command line."""
    try:
        SpiffeId(args.trust_domain, "ns", "sa")
    except SpiffeIdError as err:
        raise ValueError(f"--trust-domain: {err}") from None
    if args.svid_ttl is not None and not args.svid_ttl > 0:
        raise ValueError("--svid-ttl: must be > 0")
    from control.ca_auth import BootstrapTokens

    names: tuple[str, ...] = ()
    if args.grpc_tls_names is not None:
        from control.serving_tls import parse_names

        names = parse_names(args.grpc_tls_names)
    tokens = BootstrapTokens.from_file(Path(args.bootstrap_tokens)) if args.bootstrap_tokens else None
    return CaOptions(args.trust_domain, Path(args.ca_dir) if args.ca_dir else None, args.svid_ttl, tokens,
                     names, token_audiences(args.token_audiences))


def token_audiences(text: str) -> tuple[str, ...]:
    """--token-audiences: comma-separated, each once; '' (or only commas and spaces) for none."""
    found: list[str] = []
    for entry in text.split(","):
        audience = entry.strip()
        if any(c.isspace() for c in audience):
            raise ValueError(f"--token-audiences: {audience!r} has a space in it")
        if audience and audience not in found:
            found.append(audience)
    return tuple(found)


def open_ca(opts: CaOptions) -> CertificateAuthority:
    """The CA the options describe; raises CaSetupError."""
    from control.ca import DEFAULT_TTL, CertificateAuthority
    from control.ca_files import CaSetupError, open_ca_dir, self_signed_root

    if opts.ca_dir is None:
        issuer = self_signed_root(opts.trust_domain)
        log.info("a new root for %s, in memory only (--ca-dir keeps one across restarts)",
                 opts.trust_domain)
    else:
        issuer, made = open_ca_dir(opts.ca_dir, opts.trust_domain)
        what = "a new root written to" if made else "intermediate from" if issuer.above else "root from"
        log.info("signing for %s with %s %s (%s)", opts.trust_domain, what, opts.ca_dir,
                 issuer.cert.subject.rfc4514_string())
    try:
        return CertificateAuthority(issuer, trust_domain=opts.trust_domain,
                                    default_ttl=opts.svid_ttl or DEFAULT_TTL)
    except ValueError as err:
        raise CaSetupError(str(err)) from None


def identity_service(ca: CertificateAuthority, opts: CaOptions,
                     kubernetes_api: Any = None) -> IdentityService:
    """The gRPC service; `kubernetes_api` (the Kubernetes source's client) turns on TokenReview."""
    from control.ca_auth import Authenticator, Authenticators, TokenReviewer
    from control.ca_service import IdentityService

    chain: list[Authenticator] = []
    if opts.bootstrap_tokens is not None:
        chain.append(opts.bootstrap_tokens)
    if kubernetes_api is not None:
        chain.append(TokenReviewer(kubernetes_api, opts.token_audiences))
        if opts.token_audiences:
            log.info("TokenReview: a pod's token must be made for %s", ", ".join(opts.token_audiences))
        else:
            log.warning("--token-audiences '': any token of a pod's, its API token too, proves its "
                        "identity, and a token sent to the CA is good for the API server")
    if not chain:
        log.warning("no --bootstrap-tokens and no --kubernetes: every certificate request will be "
                    "refused")
    return IdentityService(ca, Authenticators(chain))
