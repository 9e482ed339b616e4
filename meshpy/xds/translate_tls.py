"""Envoy's TLS transport sockets -> the model's ServerTls and ClientTls (meshpy.model.tls), and
filter_chain_match -> ChainMatch.

Read as Envoy reads them: servers default to TLS 1.2-1.3, clients to TLS 1.2 (Envoy's defaults); no
ALPN unless the context lists it; a validation context without SAN matchers checks the CA only. A
certificate or CA may be a file, inline, or a secret by name: one of the bootstrap's static
`secrets` (resolved here) or one that SDS delivers (kept by name; meshpy.xds.secrets fills it in).
What meshpy cannot do is an error naming the field: OCSP stapling, CRLs, certificate hashes and SPKI
pins, session ticket keys from SDS, private key providers and passwords, custom handshakers and
validators.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshpy.model.tls import (
    Certificate,
    ChainMatch,
    ClientTls,
    Pem,
    SanKind,
    SanMatch,
    ServerTls,
    TlsParams,
    TlsVersion,
    Validation,
)
from meshpy.xds.translate_base import Issues, child, enum_name, item, timeout, unpack, wrapped
from meshpy.xds.translate_matchers import string_match

DownstreamTlsContext = tls_pb2.DownstreamTlsContext
UpstreamTlsContext = tls_pb2.UpstreamTlsContext
RawBuffer = raw_buffer_pb2.RawBuffer
_SOCKETS = {c.DESCRIPTOR.full_name: c for c in (DownstreamTlsContext, UpstreamTlsContext, RawBuffer)}
Secrets = Mapping[str, Any]  # static secrets by name (envoy.extensions.transport_sockets.tls.v3.Secret)

_VERSIONS: dict[str, TlsVersion] = {
    "TLSv1_0": "TLSv1.0",
    "TLSv1_1": "TLSv1.1",
    "TLSv1_2": "TLSv1.2",
    "TLSv1_3": "TLSv1.3",
}
_SAN_KINDS: dict[str, SanKind] = {"DNS": "dns", "URI": "uri", "EMAIL": "email", "IP_ADDRESS": "ip"}
_COMMON = {
    "tls_params",
    "tls_certificates",
    "tls_certificate_sds_secret_configs",
    "validation_context",
    "validation_context_sds_secret_config",
    "combined_validation_context",
    "alpn_protocols",
}
_VALIDATION = {"trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names", "system_root_certs"}


def transport_socket(issues: Issues, msg: Any, path: str) -> Any | None:
    """The typed config of a transport_socket: a TLS context, or None for raw_buffer (plaintext)."""
    issues.fields(msg, path, {"name", "typed_config"})
    if not msg.HasField("typed_config"):
        issues.add(child(path, "typed_config"), "is required")
        return None
    config = unpack(issues, msg.typed_config, child(path, "typed_config"), _SOCKETS)
    return None if isinstance(config, RawBuffer) else config


def _version(msg: Any, name: str, default: TlsVersion) -> TlsVersion:
    return _VERSIONS.get(enum_name(msg, name), default)


def _params(issues: Issues, msg: Any, path: str, max_default: TlsVersion) -> TlsParams:
    issues.fields(
        msg,
        path,
        {"tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites", "ecdh_curves"},
    )
    return TlsParams(
        min_version=_version(msg, "tls_minimum_protocol_version", "TLSv1.2"),
        max_version=_version(msg, "tls_maximum_protocol_version", max_default),
        ciphers=tuple(msg.cipher_suites),
        curves=tuple(msg.ecdh_curves),
    )


def _data(issues: Issues, msg: Any, path: str) -> Pem:
    issues.fields(msg, path, {"filename", "inline_bytes", "inline_string"})
    which = msg.WhichOneof("specifier")
    if which == "filename":
        return Pem(path=msg.filename)
    if which == "inline_bytes":
        return Pem(inline=bytes(msg.inline_bytes))
    if which == "inline_string":
        return Pem(inline=msg.inline_string.encode())
    issues.add(path, "needs filename, inline_bytes or inline_string")
    return Pem()


def certificate(issues: Issues, msg: Any, path: str) -> Certificate:
    issues.fields(msg, path, {"certificate_chain", "private_key"})
    for name in ("certificate_chain", "private_key"):
        if not msg.HasField(name):
            issues.add(child(path, name), "is required")
    return Certificate(
        chain=_data(issues, msg.certificate_chain, child(path, "certificate_chain")),
        key=_data(issues, msg.private_key, child(path, "private_key")),
    )


def _sds(issues: Issues, msg: Any, path: str, secrets: Secrets) -> tuple[str, Any | None]:
    """(the secret's name, the static Secret when the bootstrap holds it, else None: SDS sends it)."""
    issues.fields(msg, path, {"name", "sds_config"})
    if not msg.name:
        issues.add(child(path, "name"), "is required")
    if msg.HasField("sds_config"):
        # Where it comes from (ADS, an SDS server, a file) is read by whoever fetches it: the bootstrap
        # reader and the xDS client's store (meshpy.xds.deps.fetches).
        return msg.name, None
    static = secrets.get(msg.name)
    if static is None:
        issues.add(
            child(path, "name"), f"no static secret named {msg.name!r} (and no sds_config to fetch it)"
        )
    return msg.name, static


def validation(issues: Issues, msg: Any, path: str) -> Validation:
    issues.fields(msg, path, _VALIDATION)
    sans: list[SanMatch] = []
    for i, m in enumerate(msg.match_typed_subject_alt_names):
        at = item(child(path, "match_typed_subject_alt_names"), i)
        issues.fields(m, at, {"san_type", "matcher"})
        kind = _SAN_KINDS.get(enum_name(m, "san_type"))
        if kind is None:
            issues.add(child(at, "san_type"), "must be DNS, URI, EMAIL or IP_ADDRESS")
            continue
        sans.append(SanMatch(kind=kind, match=string_match(issues, m.matcher, child(at, "matcher"))))
    for i, m in enumerate(msg.match_subject_alt_names):  # deprecated: any SAN of any kind
        match = string_match(issues, m, item(child(path, "match_subject_alt_names"), i))
        sans.extend(SanMatch(kind=k, match=match) for k in ("dns", "uri", "email", "ip"))
    ca = _data(issues, msg.trusted_ca, child(path, "trusted_ca")) if msg.HasField("trusted_ca") else None
    return Validation(ca=ca, system=msg.HasField("system_root_certs"), san=tuple(sans))


def _common(
    issues: Issues, msg: Any, path: str, secrets: Secrets, max_default: TlsVersion
) -> tuple[TlsParams, list[Certificate], Validation | None, tuple[str, ...]]:
    issues.fields(msg, path, _COMMON)
    params = _params(issues, msg.tls_params, child(path, "tls_params"), max_default)
    certs = [
        certificate(issues, c, item(child(path, "tls_certificates"), i))
        for i, c in enumerate(msg.tls_certificates)
    ]
    for i, ref in enumerate(msg.tls_certificate_sds_secret_configs):
        at = item(child(path, "tls_certificate_sds_secret_configs"), i)
        name, static = _sds(issues, ref, at, secrets)
        if static is None:
            certs.append(Certificate(secret=name))  # SDS sends it (or the name is reported missing)
        elif not static.HasField("tls_certificate"):
            issues.add(child(at, "name"), f"secret {name!r} holds no tls_certificate")
        else:
            certs.append(certificate(issues, static.tls_certificate, f"secrets[{name}].tls_certificate"))
    checked = None
    if msg.HasField("validation_context"):
        checked = validation(issues, msg.validation_context, child(path, "validation_context"))
    sds_ref = None
    if msg.HasField("validation_context_sds_secret_config"):
        sds_ref = (
            msg.validation_context_sds_secret_config,
            child(path, "validation_context_sds_secret_config"),
        )
    if msg.HasField("combined_validation_context"):
        combined, at = msg.combined_validation_context, child(path, "combined_validation_context")
        issues.fields(combined, at, {"default_validation_context", "validation_context_sds_secret_config"})
        checked = validation(
            issues, combined.default_validation_context, child(at, "default_validation_context")
        )
        if combined.HasField("validation_context_sds_secret_config"):
            sds_ref = (
                combined.validation_context_sds_secret_config,
                child(at, "validation_context_sds_secret_config"),
            )
    if sds_ref is not None:
        name, static = _sds(issues, sds_ref[0], sds_ref[1], secrets)
        beside = checked.san if checked is not None else ()
        if static is None:
            # SDS sends the CA; the SAN matchers of the default context beside it stay.
            checked = Validation(ca_secret=name, system=checked.system if checked else False, san=beside)
        elif not static.HasField("validation_context"):
            issues.add(child(sds_ref[1], "name"), f"secret {name!r} holds no validation_context")
        else:
            trusted = validation(issues, static.validation_context, f"secrets[{name}].validation_context")
            checked = Validation(ca=trusted.ca, system=trusted.system, san=beside + trusted.san)
    return params, certs, checked, tuple(msg.alpn_protocols)


def server_tls(
    issues: Issues, msg: Any, path: str, secrets: Secrets, handshake_timeout: float | None
) -> ServerTls:
    """A DownstreamTlsContext."""
    issues.fields(
        msg,
        path,
        {
            "common_tls_context",
            "require_client_certificate",
            "disable_stateless_session_resumption",
            "prefer_client_ciphers",
            "full_scan_certs_on_sni_mismatch",
            "ocsp_staple_policy",
            "session_ticket_keys",
        },
    )
    if enum_name(msg, "ocsp_staple_policy") not in ("LENIENT_STAPLING", ""):
        issues.add(
            child(path, "ocsp_staple_policy"), "OCSP stapling is not supported (LENIENT_STAPLING only)"
        )
    if msg.prefer_client_ciphers:
        issues.add(child(path, "prefer_client_ciphers"), "is not supported: the server's order is used")
    params, certs, validation, alpn = _common(
        issues, msg.common_tls_context, child(path, "common_tls_context"), secrets, "TLSv1.3"
    )
    if not certs:
        issues.add(child(path, "common_tls_context.tls_certificates"), "a server needs a certificate")
    keys: tuple[Pem, ...] = ()
    if msg.HasField("session_ticket_keys"):
        where = child(path, "session_ticket_keys")
        issues.fields(msg.session_ticket_keys, where, {"keys"})
        keys = tuple(_data(issues, k, f"{child(where, 'keys')}[{i}]")
                     for i, k in enumerate(msg.session_ticket_keys.keys))
        if not keys:
            issues.add(child(where, "keys"), "needs at least one key")
    return ServerTls(
        certificates=tuple(certs),
        validation=validation,
        require_client_certificate=wrapped(msg, "require_client_certificate", False),
        params=params,
        alpn=alpn,
        session_tickets=not msg.disable_stateless_session_resumption,
        ticket_keys=keys,
        handshake_timeout=handshake_timeout,
    )


def client_tls(issues: Issues, msg: Any, path: str, secrets: Secrets) -> ClientTls:
    """An UpstreamTlsContext."""
    issues.fields(msg, path, {"common_tls_context", "sni", "allow_renegotiation", "max_session_keys"})
    if msg.allow_renegotiation:
        issues.add(child(path, "allow_renegotiation"), "is not supported: meshpy never renegotiates")
    params, certs, validation, alpn = _common(
        issues, msg.common_tls_context, child(path, "common_tls_context"), secrets, "TLSv1.2"
    )
    if len(certs) > 1:
        issues.add(child(path, "common_tls_context.tls_certificates"), "a client presents one certificate")
    return ClientTls(
        sni=msg.sni, certificate=certs[0] if certs else None, validation=validation, params=params, alpn=alpn
    )


def chain_match(issues: Issues, msg: Any, path: str) -> ChainMatch:
    """A filter_chain_match."""
    issues.fields(
        msg,
        path,
        {
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
            "source_prefix_ranges",
            "source_ports",
        },
    )
    protocol = msg.transport_protocol
    if protocol not in ("", "tls", "raw_buffer"):
        issues.add(child(path, "transport_protocol"), f"must be tls or raw_buffer, got {protocol!r}")
        protocol = ""
    for i, name in enumerate(msg.server_names):
        if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
            issues.add(item(child(path, "server_names"), i), f"{name!r}: a wildcard is a leading *. only")
    return ChainMatch(
        destination_port=wrapped(msg, "destination_port", None),
        prefix_ranges=tuple(_cidr(r) for r in msg.prefix_ranges),
        server_names=tuple(n.lower() for n in msg.server_names),
        transport_protocol=protocol,
        application_protocols=tuple(msg.application_protocols),
        source_prefix_ranges=tuple(_cidr(r) for r in msg.source_prefix_ranges),
        source_ports=tuple(msg.source_ports),
    )


def _cidr(msg: Any) -> str:
    length = wrapped(msg, "prefix_len", None)
    if length is None:
        length = 128 if ":" in msg.address_prefix else 32
    return f"{msg.address_prefix}/{length}"


def connect_timeout(msg: Any) -> float | None:
    """A filter chain's transport_socket_connect_timeout: the TLS handshake's deadline."""
    return timeout(msg, "transport_socket_connect_timeout", None)
