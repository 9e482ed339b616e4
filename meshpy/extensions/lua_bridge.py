"""The Lua handle's calls that read and change the exchange: header maps, stream info, connection and
TLS, route metadata, dynamic metadata, logs, base64, timestamps and public keys (Envoy's
source/extensions/filters/http/lua/wrappers.cc and filters/common/lua/wrappers.cc).

A script sees the request's headers as Envoy's filters do: the pseudo-headers first (`:authority`,
`:path`, `:method`, `:scheme`; no `host`), then the client's headers, then `x-forwarded-proto` where
the proxy adds it. Changes go into the request itself: `:path`, `:method` and `:authority` can be
replaced (the request goes upstream so; it is not routed again), other names added, replaced (the
old fields removed, the new one last, as Envoy) or removed, except the framing and connection
fields, which are the proxy's. A response's headers start with `:status`, which cannot change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from meshpy.extensions.lua_runtime import Bridge, lua_values
from meshpy.extensions.lua_stream import BRIDGE as STREAM_BRIDGE
from meshpy.extensions.lua_stream import Stream
from meshpy.stack.forwarding import request_id

if TYPE_CHECKING:
    from meshpy.ports import TlsInfo

log = logging.getLogger("meshpy.lua")

# The proxy's own fields: a change would misframe the message or its connection.
_REQUEST_KEPT = frozenset({b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade",
                           b"expect", b"te", b"keep-alive", b"proxy-connection"})
_RESPONSE_KEPT = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade",
                            b"keep-alive", b"proxy-connection"})
_LEVELS = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
_HASHES = {b"sha1": "SHA1", b"sha224": "SHA224", b"sha256": "SHA256", b"sha384": "SHA384",
           b"sha512": "SHA512"}


# -- header maps (which: 0 the stream's headers, 1 its trailers) --------------------------------------
def view(s: Stream) -> list[tuple[bytes, bytes]]:
    """The stream's headers as the script sees them."""
    response = s.response
    if response is not None:
        return [(b":status", b"%d" % response.status), *response.headers._fields]
    ex = s.request._ex
    out = [(b":authority", ex.authority.encode("latin-1")), (b":path", ex.path.encode("latin-1")),
           (b":method", ex.method), (b":scheme", ex.cfg.scheme)]
    out += [h for h in ex.headers if h[0] != b"host"]
    return out


def settle_request_headers(ex: Any) -> None:
    """What Envoy's connection manager adds before any filter runs, added now rather than as the
    request goes upstream, so that a script sees (and may change) them: x-forwarded-proto, and the
    x-request-id the proxy makes for a request without one. (An edge proxy that replaces clients'
    ids makes its own as the request goes upstream, after the script.)"""
    cfg = ex.cfg
    if cfg.forwarded_proto and all(h[0] != b"x-forwarded-proto" for h in ex.headers):
        ex.headers.append((b"x-forwarded-proto", cfg.scheme))
    facts = ex.facts
    if cfg.generate_rid and facts.request_id is None and not cfg.replace_rid:
        rid = ex.rid or request_id()
        ex.headers.append((b"x-request-id", rid))
        facts.request_id = ex.rid = rid


def _trailers(s: Stream) -> list[tuple[bytes, bytes]]:
    """The response's trailers (the request's are not shown to filters)."""
    return (s.request._ex.trailers or []) if s.response is not None else []


def _fields(s: Stream, which: int) -> list[tuple[bytes, bytes]]:
    return _trailers(s) if which else view(s)


def hget(s: Stream, which: int, name: bytes) -> bytes | None:
    name = name.lower()
    values = [v for k, v in _fields(s, which) if k == name]
    return b",".join(values) if values else None


def hat(s: Stream, which: int, name: bytes, index: int) -> bytes | None:
    if index < 0:
        return None
    name = name.lower()
    values = [v for k, v in _fields(s, which) if k == name]
    return values[index] if index < len(values) else None


def hnum(s: Stream, which: int, name: bytes) -> int:
    name = name.lower()
    return sum(1 for k, _ in _fields(s, which) if k == name)


def hlist(s: Stream, which: int) -> Any:
    return s.flt.script.flat(_fields(s, which))


def hedit(s: Stream, which: int, op: int, name: bytes, value: bytes) -> bytes | None:
    """add (op 0), replace (1), remove (2): None, or why not."""
    if s.headers_continued and not which:
        return b"header map can no longer be modified"
    name = name.lower()
    if b"\r" in value or b"\n" in value or b"\0" in value:
        return b"meshpy: a header value cannot hold CR, LF or NUL"
    if not name or name.translate(None, b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz:"):
        return b"meshpy: '" + name + b"' is not a header name"
    if which:
        fields = _trailers(s)
        if name.startswith(b":") or not fields:
            return b"meshpy: '" + name + b"' cannot be set in these trailers"
    elif s.response is not None:
        if name.startswith(b":") or name in _RESPONSE_KEPT:
            return b"meshpy: the response's '" + name + b"' cannot be changed by a script"
        fields = s.response.headers._fields
    else:
        ex = s.request._ex
        if name in (b":path", b":method", b":authority") and op == 1:
            if name == b":path":
                ex.path = value.decode("latin-1")
                ex.target = value
            elif name == b":method":
                ex.method = value
            else:
                ex.facts_set_authority(value)
                ex.authority = value.decode("latin-1")
            return None
        if name.startswith(b":") or name in _REQUEST_KEPT:
            return b"meshpy: the request's '" + name + b"' cannot be changed by a script"
        fields = ex.headers
    if op != 0:
        fields[:] = [h for h in fields if h[0] != name]
    if op != 2:
        fields.append((name, value))
    return None


# -- stream info and the connection ---------------------------------------------------------------
def _address(host: str, port: int) -> bytes:
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()


def info(s: Stream, what: bytes) -> Any:
    request = s.request
    if what == b"protocol":
        return request.protocol.encode()
    if what == b"route":
        route = request._ex.route
        return route.name.encode() if route is not None else b""
    if what == b"drain":
        request._ex.keep_alive = False
        return None
    conn = request.connection
    if what == b"local":
        return _address(conn.local, conn.local_port)
    if what == b"peer":
        return _address(conn.peer, conn.peer_port)
    if what == b"sni":
        return conn.tls.sni.encode() if conn.tls is not None else b""
    # downstreamRemoteAddress: without use_remote_address, Envoy trusts x-forwarded-for's last entry.
    ex = request._ex
    if not ex.cfg.use_remote_address:
        forwarded = [v for k, v in ex.headers if k == b"x-forwarded-for"]
        if forwarded:
            last = forwarded[-1].rsplit(b",", 1)[-1].strip().decode("latin-1")
            return _address(last, 0)
    return _address(conn.peer, conn.peer_port)


def tls(s: Stream) -> bool:
    return s.request.connection.tls is not None


def ssl(s: Stream, name: bytes) -> Any:
    t: TlsInfo | None = s.request.connection.tls
    if t is None:
        return None
    script = s.flt.script
    if name in (b"peerCertificatePresented", b"peerCertificateValidated"):
        return bool(t.peer_certificate)
    if name == b"uriSanPeerCertificate":
        return script.table(lua_values(list(t.peer_uris)))
    if name == b"uriSanLocalCertificate":
        return script.table(lua_values(list(t.local_uris)))
    if name == b"dnsSansPeerCertificate":
        return script.table(lua_values(list(t.peer_dns)))
    if name == b"dnsSansLocalCertificate":
        return script.table([])
    if name == b"subjectPeerCertificate":
        return t.peer_subject.encode()
    if name == b"sha256PeerCertificateDigest":
        return hashlib.sha256(t.peer_certificate).hexdigest().encode() if t.peer_certificate else b""
    if name == b"tlsVersion":
        return t.version.encode()
    if name == b"ciphersuiteString":
        return t.cipher.encode()
    if name == b"urlEncodedPemEncodedPeerCertificate":
        if not t.peer_certificate:
            return b""
        import ssl as std_ssl
        from urllib.parse import quote
        return quote(std_ssl.DER_cert_to_PEM_cert(t.peer_certificate), safe="").encode()
    return None


# -- metadata ------------------------------------------------------------------------------------
def metadata(s: Stream, which: int) -> Any:
    """The route's (0) or virtual host's (1) filter_metadata under the filter's name (else under
    envoy.filters.http.lua, as Envoy), or the per-route filter_context (2); a Lua table, made once
    per config and script."""
    flt = s.flt
    if which == 2:
        return flt.lua_table(flt.context)
    route = s.request._ex.route
    if route is None:
        return None
    entries = route.route.metadata if which == 0 else route.virtual_host.virtual_host.metadata \
        if route.virtual_host.virtual_host is not None else ()
    found = dict(entries)
    raw = found.get(flt.name_for(s.request)) or found.get("envoy.filters.http.lua")
    return flt.lua_table(raw) if raw else None


def dynamic(s: Stream) -> Any:
    """The request's dynamic metadata (a Lua table shared by its request and response scripts)."""
    key = s.flt.key + ".dynamic"
    table = s.request.state.get(key)
    if table is None:
        table = s.request.state[key] = s.flt.script.table({})
    return table


# -- the rest ------------------------------------------------------------------------------------
def log_line(s: Stream, level: int, message: bytes) -> None:
    log.log(_LEVELS[level], "script log: %s", message.decode("utf-8", "replace"))


def base64_escape(value: bytes) -> bytes:
    return base64.b64encode(value)


def timestamp(unit: bytes | None, as_string: bool) -> tuple[Any, bytes | None]:
    now = time.time_ns()
    if unit in (None, b"", b"0"):
        ms = now // 1_000_000
        return (str(ms).encode() if as_string else float(ms)), None
    if as_string and unit == b"1":
        return str(now // 1000).encode(), None
    if as_string:
        return None, b"timestamp format must be MILLISECOND or MICROSECOND."
    return None, b"timestamp format must be MILLISECOND."


def import_key(s: Stream, der: bytes, length: int) -> bytes:
    """importPublicKey(): the key's bytes, which verifySignature names it by; b"" when they are no
    public key (the wrapper's get() is then nil)."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    der = der[:length]
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError):
        return b""
    if s.keys is None:
        s.keys = {}
    s.keys[der] = key
    return der


def verify(s: Stream, hash_name: bytes, key_der: bytes, signature: bytes, sig_len: int, text: bytes,
           text_len: int) -> tuple[bool | None, bytes | None]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = (s.keys or {}).get(key_der)
    if key is None:
        return None, b"invalid public key"
    algorithm = _HASHES.get(hash_name.lower())
    if algorithm is None:
        return False, hash_name + b" is not supported."
    digest = getattr(hashes, algorithm)()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature[:sig_len], text[:text_len], padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature[:sig_len], text[:text_len], ec.ECDSA(digest))
        else:
            return False, b"Failed to verify digest. Error code: 0"
    except (InvalidSignature, ValueError, binascii.Error):
        return False, b"Failed to verify digest. Error code: 0"
    return True, None


def json_struct(text: str) -> Any:
    return json.loads(text)


BRIDGE: Bridge = {**STREAM_BRIDGE, "hget": hget, "hat": hat, "hnum": hnum, "hlist": hlist, "hedit": hedit,
          "info": info, "tls": tls, "ssl": ssl, "metadata": metadata, "dynamic": dynamic, "log": log_line,
          "base64": base64_escape, "timestamp": timestamp, "importkey": import_key, "verify": verify}
