"""meshpy YAML for TLS: `tls:` on a listener (terminate) and on a cluster (originate), and `sni:` on a
TCP listener (TLS passthrough: route by the server name without terminating).

    listeners:
      - address: 0.0.0.0:10443
        tls:
          certificates: [{cert: certs/edge.pem, key: certs/edge.key}]
          client_certificates: {ca: certs/clients-ca.pem, subject_alt_names: [{uri: spiffe://shop/orders}]}
          plaintext: allow        # PERMISSIVE: plaintext clients too, told apart by their first bytes
      - address: 0.0.0.0:8443
        protocol: tcp
        sni:
          - {server_names: [api.example.com, "*.api.example.com"], cluster: api}
        cluster: fallback         # optional: what no name matched
    clusters:
      payments: {endpoints: [10.0.0.7:443], tls: {sni: payments.internal}}
"""

from __future__ import annotations

from dataclasses import replace

from meshpy.model.meshpy_yaml_matches import string_match
from meshpy.model.routes import StringMatch
from meshpy.model.tls import (
    AUTO_ALPN,
    DEFAULT_HANDSHAKE_TIMEOUT,
    TLS_VERSIONS,
    Certificate,
    ChainMatch,
    ClientTls,
    FilterChain,
    Pem,
    SanMatch,
    ServerTls,
    TlsParams,
    TlsVersion,
    Validation,
)
from meshpy.model.types import HttpCodec, Listener
from meshpy.model.yaml_reader import (
    Fields,
    Reader,
    as_bool,
    as_name,
    as_optional_timeout,
    as_str,
    child,
    item,
)

LISTENER_TLS_KEYS = ("tls", "sni", "mtls")
# The sidecar's own identity from the mesh's CA (meshpy run --identity): the secrets it offers.
MESH_CERTIFICATE, MESH_ROOTS = "default", "ROOTCA"
_SERVER_KEYS = (
    "certificates",
    "cert",
    "key",
    "secret",
    "client_certificates",
    "min_version",
    "max_version",
    "ciphers",
    "curves",
    "alpn",
    "session_tickets",
    "session_ticket_keys",
    "handshake_timeout",
    "plaintext",
)
_CLIENT_KEYS = (
    "sni",
    "ca",
    "ca_secret",
    "secret",
    "verify",
    "verify_hostname",
    "subject_alt_names",
    "cert",
    "key",
    "min_version",
    "max_version",
    "ciphers",
    "curves",
    "alpn",
)
_ALPN = {"auto": AUTO_ALPN, "http1": ("http/1.1",), "http2": ("h2",)}
_SAN_KINDS = ("uri", "dns", "email", "ip")


def _version(value: object) -> TlsVersion:
    text = as_str(value).strip()
    name = text if text.startswith("TLSv") else f"TLSv{text}"
    if name not in TLS_VERSIONS:
        raise ValueError(f"must be one of 1.0, 1.1, 1.2, 1.3, got {value!r}")
    return name


def _names(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(as_str(v).strip() for v in items)


def _params(f: Fields) -> TlsParams:
    return TlsParams(
        min_version=f.get("min_version", _version, "TLSv1.2"),
        max_version=f.get("max_version", _version, "TLSv1.3"),
        ciphers=f.get("ciphers", _names, ()),
        curves=f.get("curves", _names, ()),
    )


def _pem(value: object) -> Pem:
    text = as_str(value)
    if "-----BEGIN" in text:
        return Pem(inline=text.encode())
    return Pem(path=text)


def _certificate(r: Reader, node: object, path: str) -> Certificate | None:
    f = r.mapping(node, path, ("cert", "key"))
    if f is None:
        return None
    return Certificate(chain=f.require("cert", _pem, Pem()), key=f.require("key", _pem, Pem()))


def _sans(r: Reader, node: object, path: str) -> tuple[SanMatch, ...]:
    found = []
    for i, entry in enumerate(r.sequence(node, path, allow_single=True)):
        at = item(path, i)
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in _SAN_KINDS:
            r.error(
                at, f"expected one of {{uri: ...}}, {{dns: ...}}, {{email: ...}}, {{ip: ...}}, got {entry!r}"
            )
            continue
        kind, spec = next(iter(entry.items()))
        match, _ = string_match(r, spec, child(at, kind), allow_invert=False)
        found.append(SanMatch(kind=kind, match=match))
    return tuple(found)


def server_tls(r: Reader, node: object, path: str, codec: HttpCodec | None) -> ServerTls | None:
    """A listener's `tls:`; `codec`: the listener's (None for TCP), which picks the default ALPN."""
    f = r.mapping(node, path, _SERVER_KEYS)
    if f is None:
        return None
    certs: list[Certificate] = []
    if "certificates" in f:
        for i, entry in enumerate(r.sequence(f.raw("certificates"), f.at("certificates"), allow_single=True)):
            cert = _certificate(r, entry, item(f.at("certificates"), i))
            if cert is not None:
                certs.append(cert)
        for key in f.present("cert", "key", "secret"):
            r.error(f.at(key), "give either certificates: [...], cert and key, or secret")
    elif "secret" in f:
        certs.append(Certificate(secret=f.require("secret", as_name, "")))
        for key in f.present("cert", "key"):
            r.error(f.at(key), "give either cert and key or secret")
    elif "cert" in f or "key" in f:
        certs.append(Certificate(chain=f.require("cert", _pem, Pem()), key=f.require("key", _pem, Pem())))
    else:
        r.error(path, "missing required key 'certificates' (or cert and key, or secret)")
    validation, required = None, False
    if "client_certificates" in f:
        c = r.mapping(f.raw("client_certificates"), f.at("client_certificates"),
                      ("ca", "ca_secret", "required", "subject_alt_names"))
        if c is not None:
            if "ca_secret" in c and "ca" in c:
                r.error(c.at("ca_secret"), "give either ca or ca_secret")
            validation = Validation(
                ca=None if "ca_secret" in c else c.require("ca", _pem, Pem()),
                ca_secret=c.get("ca_secret", as_name, None),
                san=_sans(r, c.raw("subject_alt_names"), c.at("subject_alt_names"))
                if "subject_alt_names" in c
                else (),
            )
            required = c.get("required", as_bool, True)
    tickets = f.get("session_tickets", as_bool, True)
    # Files of 80 random bytes (`openssl rand 80`), as Envoy's session_ticket_keys: replicas given the
    # same files resume each other's sessions; the first encrypts new tickets, the others still decrypt.
    keys = tuple(Pem(path=name) for name in f.get("session_ticket_keys", _names, ()))
    if keys and not tickets:
        r.error(f.at("session_ticket_keys"), "cannot be used with session_tickets: false")
    return ServerTls(
        certificates=tuple(certs),
        validation=validation,
        require_client_certificate=required,
        params=_params(f),
        alpn=f.get("alpn", _names, _ALPN.get(codec or "", ())),
        session_tickets=tickets,
        ticket_keys=keys,
        handshake_timeout=f.get("handshake_timeout", as_optional_timeout, DEFAULT_HANDSHAKE_TIMEOUT),
    )


def plaintext_allowed(r: Reader, f: Fields) -> bool:
    raw = f.raw("tls")
    value = raw.get("plaintext", "refuse") if isinstance(raw, dict) else "refuse"
    if value not in ("refuse", "allow"):
        r.error(child(f.at("tls"), "plaintext"), f"must be refuse or allow, got {value!r}")
        return False
    return value == "allow"


def _mesh_server(r: Reader, f: Fields, codec: HttpCodec | None) -> tuple[ServerTls, bool] | None:
    """`mtls: strict | permissive`: mutual TLS with the mesh's identities (the secrets `default` and
    `ROOTCA`); permissive takes plaintext clients too, as Istio's PeerAuthentication modes."""
    mode = f.raw("mtls")
    if mode not in ("strict", "permissive"):
        r.error(f.at("mtls"), f"must be strict or permissive, got {mode!r}")
        return None
    if "tls" in f:
        r.error(f.at("mtls"), "give either tls: or mtls:")
        return None
    tls = ServerTls(certificates=(Certificate(secret=MESH_CERTIFICATE),),
                    validation=Validation(ca_secret=MESH_ROOTS), require_client_certificate=True,
                    alpn=_ALPN.get(codec or "", ()), handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT)
    return tls, mode == "permissive"


def with_listener_tls(r: Reader, f: Fields, listener: Listener) -> Listener:
    """`tls:`, `mtls:` and `sni:` applied to a listener read without them."""
    if "sni" in f:
        listener = _sni_routes(r, f.raw("sni"), f.at("sni"), listener, "cluster" in f)
    codec = listener.http.codec if listener.http is not None else None
    if "mtls" in f:
        mesh = _mesh_server(r, f, codec)
        if mesh is None:
            return listener
        tls, plaintext = mesh
    elif "tls" in f:
        found = server_tls(r, f.raw("tls"), f.at("tls"), codec)
        if found is None:
            return listener
        tls, plaintext = found, plaintext_allowed(r, f)
    else:
        return listener
    if not plaintext:
        return replace(listener, tls=tls)
    # PERMISSIVE: the same service for plaintext, picked by the client's first bytes.
    plain = FilterChain(
        name=f"{listener.name}-plaintext",
        match=ChainMatch(transport_protocol="raw_buffer"),
        kind=listener.kind,
        http=listener.http,
        tcp=listener.tcp,
    )
    return replace(
        listener, tls=tls, match=ChainMatch(transport_protocol="tls"), chains=(plain,), inspect_tls=True
    )


def _sni_routes(r: Reader, node: object, path: str, listener: Listener, has_default: bool) -> Listener:
    if listener.kind != "tcp" or listener.tcp is None:
        r.error(path, "only applies to tcp listeners (TLS passthrough by server name)")
        return listener
    chains: list[FilterChain] = []
    for i, entry in enumerate(r.sequence(node, path)):
        at = item(path, i)
        e = r.mapping(entry, at, ("server_names", "cluster", "idle_timeout"))
        if e is None:
            continue
        names = e.require("server_names", _server_names, ())
        tcp = replace(listener.tcp, cluster=e.require("cluster", as_name, ""))
        if "idle_timeout" in e:
            tcp = replace(tcp, idle_timeout=e.get("idle_timeout", as_optional_timeout, tcp.idle_timeout))
        chains.append(
            FilterChain(
                name=f"{listener.name}-sni-{i}", match=ChainMatch(server_names=names), kind="tcp", tcp=tcp
            )
        )
    if not chains:
        return listener
    if has_default:
        return replace(listener, chains=tuple(chains), inspect_tls=True)
    first = chains[0]
    return replace(listener, tcp=first.tcp, match=first.match, chains=tuple(chains[1:]), inspect_tls=True)


def _server_names(value: object) -> tuple[str, ...]:
    names = _names(value)
    for name in names:
        if not name or (name.startswith("*") and not name.startswith("*.")) or "*" in name[1:]:
            raise ValueError(f"{name!r}: a server name is exact or *.suffix")
    return tuple(n.lower() for n in names)


def mesh_client(r: Reader, node: object, path: str, protocol: object) -> ClientTls | None:
    """A cluster's `mtls:`: mutual TLS with the mesh's identities, to endpoints that must prove one of
    the SPIFFE IDs given (`true`: any identity the mesh's CA signed)."""
    if node is True:
        ids: list[str] = []
    else:
        ids = []
        for i, value in enumerate(r.sequence(node, path, allow_single=True)):
            text = str(value) if isinstance(value, str) else ""
            if not text.startswith("spiffe://"):
                r.error(item(path, i) if isinstance(node, list) else path,
                        f"expected true or SPIFFE IDs (spiffe://...), got {value!r}")
                continue
            ids.append(text)
    sans = tuple(SanMatch(kind="uri", match=StringMatch(kind="exact", value=x)) for x in ids)
    return ClientTls(certificate=Certificate(secret=MESH_CERTIFICATE),
                     validation=Validation(ca_secret=MESH_ROOTS, san=sans), alpn=_client_alpn(protocol))


def _client_alpn(protocol: object) -> tuple[str, ...]:
    """What a cluster offers by default: what its `protocol:` speaks (auto: both, HTTP/2 first).
    `protocol` is as written (checked where it is read): anything else gets HTTP/1.1's."""
    return _ALPN.get(protocol if isinstance(protocol, str) else "http1", _ALPN["http1"])


def client_tls(r: Reader, node: object, path: str, protocol: object) -> ClientTls | None:
    """A cluster's `tls:` (true: TLS with every default: the system's CAs, no SNI); `protocol`: the
    cluster's, which ALPN offers unless `alpn` says otherwise."""
    if node is True:
        node = {}
    f = r.mapping(node, path, _CLIENT_KEYS)
    if f is None:
        return None
    sni = f.get("sni", as_name, "")
    verify = f.get("verify", as_bool, True)
    validation = None
    if verify:
        sans = (
            _sans(r, f.raw("subject_alt_names"), f.at("subject_alt_names"))
            if "subject_alt_names" in f
            else ()
        )
        if "ca_secret" in f and "ca" in f:
            r.error(f.at("ca_secret"), "give either ca or ca_secret")
        validation = Validation(ca=f.get("ca", _pem, None), ca_secret=f.get("ca_secret", as_name, None),
                                system=not f.present("ca", "ca_secret"), san=sans)
    elif f.present("ca", "ca_secret", "subject_alt_names"):
        r.error(f.at("verify"), "verify: false checks nothing: drop ca, ca_secret and subject_alt_names")
    certificate = None
    if "secret" in f:
        certificate = Certificate(secret=f.require("secret", as_name, ""))
        for key in f.present("cert", "key"):
            r.error(f.at(key), "give either cert and key or secret")
    elif "cert" in f or "key" in f:
        certificate = Certificate(chain=f.require("cert", _pem, Pem()), key=f.require("key", _pem, Pem()))
    hostname = f.get("verify_hostname", as_bool, bool(sni) and verify)
    if hostname and not sni:
        r.error(f.at("verify_hostname"), "needs sni: the name the certificate must carry")
    return ClientTls(
        sni=sni,
        certificate=certificate,
        validation=validation,
        params=_params(f),
        alpn=_auto_alpn(r, f) if protocol == "auto" else f.get("alpn", _names, _client_alpn(protocol)),
        verify_hostname=hostname,
    )


def _auto_alpn(r: Reader, f: Fields) -> tuple[str, ...]:
    """An auto cluster's `alpn:`: the answer picks the protocol, so the offer cannot be empty (Envoy
    would offer its default then, where meshpy would offer nothing)."""
    alpn = f.get("alpn", _names, AUTO_ALPN)
    if not alpn or not all(alpn):
        r.error(f.at("alpn"), "protocol: auto lets ALPN choose, so offer h2 and/or http/1.1 (or leave "
                "alpn out for both)")
        return AUTO_ALPN
    return alpn
