"""Certificates written as Envoy writes them in headers and access logs: a subject as OpenSSL prints it
(RFC 2253 flags), and PEM percent-encoded for a header value.

A codec module: text in, text out. Envoy's own spellings are kept because what reads them
(x-forwarded-client-cert parsers, log pipelines, RBAC rules written against Envoy) compares strings:
`cryptography`'s RFC 4514 text differs from OpenSSL's for `emailAddress` and for values outside ASCII.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is loaded when a certificate is read: ~14 MiB a proxy without TLS never pays
    from cryptography import x509

# OpenSSL's short names (OBJ_nid2sn), which XN_FLAG_FN_SN prints; other OIDs print dotted, with
# their value dumped as #hex of its DER (XN_FLAG_DUMP_UNKNOWN_FIELDS).
_SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.13": "description",
    "2.5.4.15": "businessCategory",
    "2.5.4.16": "postalAddress",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.45": "x500UniqueIdentifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}
# RFC 2253 specials, escaped with a backslash (ASN1_STRFLGS_ESC_2253).
_SPECIAL = frozenset(b',+"\\<>;')
# What PEM text holds that a header value must not carry raw: as Envoy's
# PercentEncoding::urlEncode writes it (letters, digits and `-` stay).
_URL = str.maketrans({"\n": "%0A", " ": "%20", "+": "%2B", "/": "%2F", "=": "%3D"})


def _value(text: str) -> str:
    """An attribute value as OpenSSL's RFC 2253 printing escapes it: UTF-8, each byte above 0x7f and
    each control character as \\XX, specials with a backslash, a leading `#` or space and a trailing
    space with a backslash."""
    raw = text.encode("utf-8")
    out: list[str] = []
    last = len(raw) - 1
    for i, b in enumerate(raw):
        if b > 0x7E or b < 0x20:
            out.append(f"\\{b:02X}")
        elif b in _SPECIAL or (i == 0 and b in b"# ") or (i == last and b == 0x20):
            out.append("\\" + chr(b))
        else:
            out.append(chr(b))
    return "".join(out)


def _dumped(attr: x509.NameAttribute[str | bytes]) -> str:
    """#hex of a value's DER (tag, length, bytes), as OpenSSL prints an attribute it has no name for."""
    value = attr.value
    data = value if isinstance(value, bytes) else value.encode("utf-8")
    tag = getattr(getattr(attr, "_type", None), "value", 12)  # UTF8String when unknown
    n = len(data)
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    length = bytes([n]) if n < 0x80 else bytes([0x80 | len(size)]) + size  # DER: short or long form
    return "#" + (bytes([tag]) + length + data).hex().upper()


def openssl_name(name: x509.Name) -> str:
    """`name` as Envoy prints a certificate's subject or issuer (X509_NAME_print_ex, XN_FLAG_RFC2253):
    the attributes in reverse order (XN_FLAG_DN_REV reverses OpenSSL's flat list of them, so the
    attributes within one RDN too), RDNs joined by `,`, the attributes of one RDN by `+`."""
    rdns = []
    for rdn in reversed(list(name.rdns)):
        parts = []
        for attr in reversed(list(rdn)):
            oid = attr.oid.dotted_string
            short = _SHORT_NAMES.get(oid)
            if short is None:
                parts.append(f"{oid}={_dumped(attr)}")
            else:
                value = attr.value
                text = value if isinstance(value, str) else value.decode("latin-1")
                parts.append(f"{short}={_value(text)}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def url_encoded_pem(*ders: bytes) -> str:
    """Certificates as PEM, one after the other, percent-encoded for a header value (Envoy's
    urlEncodedPemEncodedPeerCertificate and ...Chain)."""
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import load_der_x509_certificate

    return "".join(
        load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii")
        for der in ders
    ).translate(_URL)
