"""Certificates and keys as TLS contexts need them: read from files or given as bytes, checked before
use, and described for the admin's /certs and the expiry gauges.

Python's ssl loads a certificate chain and key only from files. Bytes that are not a file (inline
PEM, a secret from SDS, a key made in this process) go through an anonymous in-memory file
(memfd_create), so a private key never touches a disk.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import ssl
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshpy.errors import ConfigError, ConfigIssue
from meshpy.model.tls import Certificate, Pem

if TYPE_CHECKING:
    from cryptography import x509

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# A key that users other than its owner (and its group) may replace: refused. One that anybody may
# read: served with a warning, since that is how a Kubernetes secret volume mounts files by default
# (defaultMode 0644); docs/tls.md says to mount keys 0400.
_WRITABLE = stat.S_IWOTH | stat.S_IWGRP
_READABLE = stat.S_IROTH
log = logging.getLogger("meshpy")


class MaterialError(ConfigError):
    """A certificate, key or CA bundle that cannot be used: the path names the config field."""

    def __init__(self, path: str, reason: str, counter: str = "ssl_material_error") -> None:
        super().__init__([ConfigIssue(path, reason)])
        self.counter = counter


def read_pem(pem: Pem, path: str, key: bool = False) -> bytes:
    """The bytes of `pem`; a key file must be readable by its owner only (or its group)."""
    if pem.inline is not None:
        return pem.inline
    if pem.path is None:
        raise MaterialError(path, "no file and no inline value")
    try:
        if key:
            mode = os.stat(pem.path).st_mode
            if mode & _WRITABLE:
                raise MaterialError(path, f"{pem.path}: other users may replace the private key (mode "
                                    f"{stat.S_IMODE(mode):04o}); only its owner may write it (0600 or 0400)",
                                    "ssl_key_permissions")
            if mode & _READABLE:
                log.warning("%s: %s: any user may read the private key (mode %04o); 0600 or 0400 is safer",
                            path, pem.path, stat.S_IMODE(mode))
        with open(pem.path, "rb") as f:
            return f.read()
    except OSError as err:
        raise MaterialError(path, f"cannot read {pem.path}: {err.strerror or err}") from err


@dataclass(frozen=True, slots=True)
class CertInfo:
    """One certificate as /certs shows it."""

    subject: str
    serial: str
    dns: tuple[str, ...]
    uris: tuple[str, ...]
    ips: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str = ""  # which CA signed it: during a root rotation, whether a leaf is from the old or new

    def days_until_expiry(self, now: datetime.datetime | None = None) -> int:
        now = now or datetime.datetime.now(datetime.UTC)
        return max(0, (self.not_after - now).days)


@dataclass(frozen=True, slots=True)
class Sans:
    """A certificate's subject alternative names, by kind."""

    dns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


_NO_SANS = Sans()


def sans_of(cert: x509.Certificate) -> Sans:
    """The one place SANs are read: /certs, the peer's names in TlsInfo, RBAC and XFCC all use it."""
    # cryptography is imported where a certificate is read, never at start: it is ~14 MiB of memory a
    # proxy without TLS would carry for nothing.
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return _NO_SANS
    return Sans(
        dns=tuple(ext.get_values_for_type(x509.DNSName)),
        uris=tuple(ext.get_values_for_type(x509.UniformResourceIdentifier)),
        ips=tuple(str(ip) for ip in ext.get_values_for_type(x509.IPAddress)),
        emails=tuple(ext.get_values_for_type(x509.RFC822Name)),
    )


def describe(cert: x509.Certificate) -> CertInfo:
    sans = sans_of(cert)
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        dns=sans.dns,
        uris=sans.uris,
        ips=sans.ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string(),
    )


def certificates(pem: bytes, path: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (at least one)."""
    from cryptography import x509

    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise MaterialError(path, "no PEM certificate found")
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError as err:
        raise MaterialError(path, f"not a valid certificate: {err}") from err


def common_name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("latin-1")


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate chain and its key, read and checked, ready to load into contexts."""

    chain: bytes
    key: bytes
    leaf: CertInfo
    chain_info: tuple[CertInfo, ...]
    source: str  # for /certs: the file, "<inline>" or "sds:<name>"
    sni_names: tuple[str, ...] = ()

    def load_into(self, ctx: ssl.SSLContext, path: str) -> None:
        chain_fd, key_fd = _memfd("meshpy-chain", self.chain), _memfd("meshpy-key", self.key)
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}")
        except ssl.SSLError as err:
            if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in str(err):
                raise MaterialError(
                    path, "the private key does not match the certificate", "ssl_key_mismatch"
                ) from err
            raise MaterialError(path, f"cannot use the certificate or key: {err.reason or err}") from err
        finally:
            os.close(chain_fd)
            os.close(key_fd)

    def names(self) -> tuple[str, ...]:
        """The DNS names this certificate serves (its SANs; its CN when it has none), lower case."""
        return self.sni_names


def key_pair(cert: Certificate, path: str, sds: dict[str, tuple[bytes, bytes]] | None = None) -> KeyPair:
    """Read `cert` (files or inline; a named secret from `sds`) and check it: a chain that parses and
    a key that matches it (checked by loading both into a throwaway context)."""
    if cert.secret is not None:
        found = (sds or {}).get(cert.secret)
        if found is None:
            raise MaterialError(path, f"secret {cert.secret!r} has not arrived", "ssl_secret_missing")
        chain, key = found
        source = f"sds:{cert.secret}"
    else:
        assert cert.chain is not None and cert.key is not None
        chain = read_pem(cert.chain, f"{path}.certificate_chain")
        key = read_pem(cert.key, f"{path}.private_key", key=True)
        source = cert.chain.describe()
    if b"PRIVATE KEY-----" not in key:
        raise MaterialError(f"{path}.private_key", "no PEM private key found")
    parsed = certificates(chain, f"{path}.certificate_chain")
    infos = tuple(describe(c) for c in parsed)
    leaf = infos[0]
    # The names SNI picks this certificate by: its DNS SANs, else (an old-style certificate) its CN.
    cn = common_name(parsed[0])
    names = tuple(n.lower() for n in leaf.dns) or ((cn.lower(),) if cn else ())
    pair = KeyPair(chain=chain, key=key, leaf=leaf, chain_info=infos, source=source, sni_names=names)
    pair.load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), path)
    return pair


def ca_bundle(pem: bytes, path: str) -> tuple[str, tuple[CertInfo, ...]]:
    """A CA bundle as text for SSLContext.load_verify_locations(cadata=...), and its certificates."""
    parsed = certificates(pem, path)
    return pem.decode("ascii", "replace"), tuple(describe(c) for c in parsed)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
