"""TLS and filter chains, model -> Envoy: the listener's own chain's transport socket and match, its
further chains, the tls_inspector, the network RBAC filter, and a cluster's UpstreamTlsContext. The
inverse of meshpy/xds/translate_tls.py (tests/unit/control/test_export.py holds them together).

A cluster's `verify_hostname` (meshpy YAML's browser-like check) goes out as Envoy says it, a DNS
SAN matcher on the SNI; a secret named for SDS goes out by name with an ADS config source.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from control.sources import export_authz
from meshpy.model.authz import NetworkRbac
from meshpy.model.routes import StringMatch
from meshpy.model.tls import (
    Certificate,
    ChainMatch,
    ClientTls,
    FilterChain,
    Pem,
    SanMatch,
    ServerTls,
    TlsParams,
    Validation,
)
from meshpy.model.types import Listener

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
ADS = {"ads": {}, "resource_api_version": "V3"}
_VERSIONS = {"TLSv1.0": "TLSv1_0", "TLSv1.1": "TLSv1_1", "TLSv1.2": "TLSv1_2", "TLSv1.3": "TLSv1_3"}
_SAN_TYPES = {"dns": "DNS", "uri": "URI", "email": "EMAIL", "ip": "IP_ADDRESS"}


def _pem(p: Pem) -> dict[str, Any]:
    if p.inline is not None:
        return {"inline_string": p.inline.decode("ascii", "replace")}
    return {"filename": p.path or ""}


def _params(p: TlsParams, max_default: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.min_version != "TLSv1.2":
        out["tls_minimum_protocol_version"] = _VERSIONS[p.min_version]
    if p.max_version != max_default:
        out["tls_maximum_protocol_version"] = _VERSIONS[p.max_version]
    if p.ciphers:
        out["cipher_suites"] = list(p.ciphers)
    if p.curves:
        out["ecdh_curves"] = list(p.curves)
    return out


def _validation(v: Validation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if v.ca is not None:
        out["trusted_ca"] = _pem(v.ca)
    if v.system:
        out["system_root_certs"] = {}
    if v.san:
        out["match_typed_subject_alt_names"] = [
            {"san_type": _SAN_TYPES[s.kind], "matcher": export_authz.string_matcher(s.match)} for s in v.san
        ]
    return out


def _common(
    certs: tuple[Certificate, ...],
    validation: Validation | None,
    params: TlsParams,
    alpn: tuple[str, ...],
    max_default: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    files = [c for c in certs if c.secret is None]
    if files:
        out["tls_certificates"] = [
            {"certificate_chain": _pem(c.chain or Pem()), "private_key": _pem(c.key or Pem())} for c in files
        ]
    secrets = [c.secret for c in certs if c.secret is not None]
    if secrets:
        out["tls_certificate_sds_secret_configs"] = [{"name": s, "sds_config": ADS} for s in secrets]
    if validation is not None:
        if validation.ca_secret is not None:
            out["combined_validation_context"] = {
                "default_validation_context": _validation(validation),
                "validation_context_sds_secret_config": {"name": validation.ca_secret, "sds_config": ADS},
            }
        else:
            out["validation_context"] = _validation(validation)
    if params_out := _params(params, max_default):
        out["tls_params"] = params_out
    if alpn:
        out["alpn_protocols"] = list(alpn)
    return out


def downstream(tls: ServerTls) -> dict[str, Any]:
    """A DownstreamTlsContext transport socket."""
    context: dict[str, Any] = {
        "@type": f"{TLS}.DownstreamTlsContext",
        "common_tls_context": _common(tls.certificates, tls.validation, tls.params, tls.alpn, "TLSv1.3"),
    }
    if tls.require_client_certificate:
        context["require_client_certificate"] = True
    if not tls.session_tickets:
        context["disable_stateless_session_resumption"] = True
    elif tls.ticket_keys:
        # Raw bytes, not PEM: inline ones go as inline_bytes (base64 in the JSON form of the proto).
        context["session_ticket_keys"] = {"keys": [
            {"inline_bytes": base64.b64encode(k.inline).decode()} if k.inline is not None else _pem(k)
            for k in tls.ticket_keys]}
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def upstream(tls: ClientTls) -> dict[str, Any]:
    """An UpstreamTlsContext transport socket."""
    validation = tls.validation
    if tls.verify_hostname and tls.sni:
        # Envoy checks the name through a SAN matcher on it (wildcard certificates match it too).
        hostname = SanMatch(kind="dns", match=StringMatch(kind="exact", value=tls.sni))
        validation = replace(
            validation or Validation(), san=(*(validation.san if validation else ()), hostname)
        )
    certs = (tls.certificate,) if tls.certificate is not None else ()
    context: dict[str, Any] = {
        "@type": f"{TLS}.UpstreamTlsContext",
        "common_tls_context": _common(certs, validation, tls.params, tls.alpn, "TLSv1.2"),
    }
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def chain_match(m: ChainMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.destination_port is not None:
        out["destination_port"] = m.destination_port
    for key, cidrs in (("prefix_ranges", m.prefix_ranges), ("source_prefix_ranges", m.source_prefix_ranges)):
        if cidrs:
            out[key] = [
                {"address_prefix": c.split("/")[0], "prefix_len": int(c.split("/")[1])} for c in cidrs
            ]
    if m.server_names:
        out["server_names"] = list(m.server_names)
    if m.transport_protocol:
        out["transport_protocol"] = m.transport_protocol
    if m.application_protocols:
        out["application_protocols"] = list(m.application_protocols)
    if m.source_ports:
        out["source_ports"] = list(m.source_ports)
    return out


def network_rbac(rbac: NetworkRbac) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": NETWORK_RBAC, "stat_prefix": rbac.stat_prefix}
    if rbac.rules is not None:
        config["rules"] = export_authz.rules(rbac.rules)
    if rbac.shadow_rules is not None:
        config["shadow_rules"] = export_authz.rules(rbac.shadow_rules)
    if rbac.shadow_rules_stat_prefix:
        config["shadow_rules_stat_prefix"] = rbac.shadow_rules_stat_prefix
    return {"name": "envoy.filters.network.rbac", "typed_config": config}


def _dress(chain: dict[str, Any], fc: FilterChain) -> dict[str, Any]:
    """A chain exported as a plain one, with its match, TLS and network RBAC."""
    if not fc.match.empty():
        chain["filter_chain_match"] = chain_match(fc.match)
    if fc.tls is not None:
        chain["transport_socket"] = downstream(fc.tls)
        if fc.tls.handshake_timeout is not None:
            chain["transport_socket_connect_timeout"] = f"{fc.tls.handshake_timeout:g}s"
    if fc.authz is not None:
        chain["filters"].insert(0, network_rbac(fc.authz))
    if fc.name:
        chain["name"] = fc.name
    return chain


def with_chains(out: dict[str, Any], lis: Listener, plain: Callable[[Listener, str], dict[str, Any]]) -> None:
    """Give the exported listener `out` the chains of `lis`; `plain(listener, chain name)` exports a
    listener of one chain, whose first filter chain is taken."""
    if lis.tls is None and not lis.chains and lis.match.empty() and lis.authz is None:
        return
    if lis.tcp is not None and lis.http is not None:
        out.pop("default_filter_chain", None)  # the sniffing shape: kept only for plaintext listeners
    chains = [_dress(out["filter_chains"][0], lis.own_chain())]
    for fc in lis.chains:
        single = Listener(name=lis.name, address=lis.address, kind=fc.kind, http=fc.http, tcp=fc.tcp)
        chains.append(_dress(plain(single, fc.name)["filter_chains"][0], fc))
    if lis.default_chain:
        out["default_filter_chain"] = chains.pop()
    out["filter_chains"] = chains
    if lis.inspect_tls:
        out.setdefault("listener_filters", []).append(
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
        )
