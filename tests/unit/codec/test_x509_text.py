"""Certificate names and PEM as Envoy writes them (meshpy.codec.x509_text). The same strings from real
Envoy: tests/integration/test_xfcc_envoy.py."""

from __future__ import annotations

import urllib.parse

from cryptography import x509
from cryptography.x509.oid import NameOID

from meshpy.codec.x509_text import openssl_name


def name(*rdns: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in rdn]) for rdn in rdns
    ])


def test_last_rdn_first_with_openssl_short_names() -> None:
    n = name([(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, "Shop")],
             [(NameOID.COMMON_NAME, "orders")], [(NameOID.EMAIL_ADDRESS, "o@shop.example")])
    assert openssl_name(n) == "emailAddress=o@shop.example,CN=orders,O=Shop,C=US"
    assert n.rfc4514_string().startswith("1.2.840.113549.1.9.1=")  # why cryptography's text is not used


def test_rfc2253_escapes() -> None:
    specials = name([(NameOID.COMMON_NAME, 'a,b+c"d\\e<f>g;h=i')])
    assert openssl_name(specials) == 'CN=a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h=i'
    assert openssl_name(name([(NameOID.COMMON_NAME, "#1 x ")])) == "CN=\\#1 x\\ "
    assert openssl_name(name([(NameOID.COMMON_NAME, " x#")])) == "CN=\\ x#"
    assert openssl_name(name([(NameOID.COMMON_NAME, "tab\there\x7f")])) == "CN=tab\\09here\\7F"
    assert openssl_name(name([(NameOID.COMMON_NAME, "Zoë 😀")])) == "CN=Zo\\C3\\AB \\F0\\9F\\98\\80"


def test_several_attributes_in_one_rdn_are_reversed_too() -> None:
    n = name([(NameOID.COMMON_NAME, "c")], [(NameOID.ORGANIZATIONAL_UNIT_NAME, "ou"), (NameOID.USER_ID, "u")])
    assert openssl_name(n) == "UID=u+OU=ou,CN=c"


def test_an_oid_without_a_name_is_dumped_as_der() -> None:
    oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
    assert openssl_name(name([(oid, "v=1")])) == "1.3.6.1.4.1.99999.1=#0C03763D31"  # UTF8String "v=1"
    long = "x" * 200  # a length in two bytes
    assert openssl_name(name([(oid, long)])) == "1.3.6.1.4.1.99999.1=#0C81C8" + "78" * 200


def test_pem_percent_encoding_is_urllib_quote_for_pem_text() -> None:
    from meshpy.codec.x509_text import _URL

    text = "-----BEGIN CERTIFICATE-----\nMIIB+/ab==\n-----END CERTIFICATE-----\n"
    assert text.translate(_URL) == urllib.parse.quote(text, safe="-")
