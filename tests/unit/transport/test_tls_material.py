"""Certificates and keys are checked before any connection uses them: unsafe key permissions, a key
that does not match its certificate, files that are not PEM; each refused with the path and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pki import make_ca

from meshpy.model.tls import Certificate, Pem, ServerTls
from meshpy.transport.tls_contexts import server_contexts
from meshpy.transport.tls_material import MaterialError, key_pair


def files(cert: Path, key: Path) -> Certificate:
    return Certificate(chain=Pem(path=str(cert)), key=Pem(path=str(key)))


def test_a_good_pair_is_described(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    leaf = ca.issue("a.example.com", dns=("a.example.com",), uris=("spiffe://x/ns/a/sa/b",))
    pair = key_pair(files(leaf.cert, leaf.key), "tls")
    assert pair.leaf.dns == ("a.example.com",) and pair.leaf.uris == ("spiffe://x/ns/a/sa/b",)
    assert pair.names() == ("a.example.com",) and pair.leaf.days_until_expiry() == 0
    inline = key_pair(Certificate(chain=Pem(inline=leaf.cert_pem), key=Pem(inline=leaf.key_pem)), "tls")
    assert inline.source == "<inline>" and inline.leaf.serial == pair.leaf.serial


@pytest.mark.parametrize("mode", [0o602, 0o620, 0o666, 0o622])
def test_keys_others_may_replace_are_refused(tmp_path: Path, mode: int) -> None:
    leaf = make_ca(tmp_path).issue("a")
    os.chmod(leaf.key, mode)
    with pytest.raises(MaterialError) as info:
        key_pair(files(leaf.cert, leaf.key), "tls.tls_certificates[0]")
    assert "tls.tls_certificates[0].private_key" in str(info.value) and f"{mode:04o}" in str(info.value)
    assert info.value.counter == "ssl_key_permissions"


def test_readable_keys_are_served_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As a Kubernetes secret volume mounts them by default (0644)."""
    leaf = make_ca(tmp_path).issue("a")
    os.chmod(leaf.key, 0o644)
    assert key_pair(files(leaf.cert, leaf.key), "tls").leaf
    assert "any user may read the private key (mode 0644)" in caplog.text
    caplog.clear()
    os.chmod(leaf.key, 0o640)
    assert key_pair(files(leaf.cert, leaf.key), "tls").leaf
    assert "private key" not in caplog.text


def test_a_key_that_does_not_match_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    one, other = ca.issue("one"), ca.issue("other")
    with pytest.raises(MaterialError, match="the private key does not match the certificate"):
        key_pair(files(one.cert, other.key), "tls")


def test_not_pem_and_missing_files(tmp_path: Path) -> None:
    leaf = make_ca(tmp_path).issue("a")
    with pytest.raises(MaterialError, match="no PEM certificate found"):
        key_pair(Certificate(chain=Pem(inline=b"junk"), key=Pem(path=str(leaf.key))), "tls")
    with pytest.raises(MaterialError, match=r"cannot read .*nope\.pem"):
        key_pair(files(tmp_path / "nope.pem", leaf.key), "tls")


def test_server_contexts_pick_by_sni_and_check_settings(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    a, b = ca.issue("a", dns=("a.example.com",)), ca.issue("b", dns=("*.b.example.com",))
    tls = ServerTls(certificates=(files(a.cert, a.key), files(b.cert, b.key)))
    contexts = server_contexts(tls, "tls")
    first, second = contexts.contexts[0][1], contexts.contexts[1][1]
    assert contexts.for_name("x.b.example.com") is second
    assert contexts.for_name("b.example.com") is first  # a wildcard covers one label only
    assert contexts.for_name("a.example.com") is first and contexts.for_name("") is first
    with pytest.raises(MaterialError, match="needs a validation context"):
        server_contexts(ServerTls(certificates=tls.certificates[:1], require_client_certificate=True), "tls")
