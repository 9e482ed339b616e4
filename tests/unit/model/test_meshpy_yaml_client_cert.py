"""meshpy YAML's `forward_client_cert` and `client_cert_details` on an http listener."""

from __future__ import annotations

import pytest

from meshpy.errors import ConfigError
from meshpy.model.load import load_text
from meshpy.model.types import HttpOptions

LISTENER = """
listeners:
  - name: {protocol}
    address: 127.0.0.1:8443
    protocol: {protocol}
{keys}
    routes: [{{match: /, cluster: app}}]
clusters: {{app: 127.0.0.1:9000}}
"""


def http(keys: str) -> HttpOptions:
    found = load_text(LISTENER.format(protocol="http", keys=keys)).listeners[0].http
    assert found is not None
    return found


def issues(keys: str, protocol: str = "http") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(LISTENER.format(protocol=protocol, keys=keys))
    return [f"{i.path}: {i.reason}" for i in info.value.issues]


def test_sanitize_is_the_default() -> None:
    h = http("")
    assert (h.forward_client_cert, h.client_cert_details) == ("sanitize", ())


def test_every_mode_and_details_in_envoys_order() -> None:
    for mode in ("sanitize", "forward_only", "append_forward", "sanitize_set", "always_forward_only"):
        assert http(f"    forward_client_cert: {mode}").forward_client_cert == mode
    h = http("    forward_client_cert: sanitize_set\n"
             "    client_cert_details: [dns, uri, subject, chain, cert]")
    assert h.client_cert_details == ("cert", "chain", "subject", "uri", "dns")


def test_bad_values_name_their_path() -> None:
    assert issues("    forward_client_cert: append") == [
        "listeners[0].forward_client_cert: must be one of sanitize, forward_only, append_forward, "
        "sanitize_set, always_forward_only, got 'append'"
    ]
    assert issues("    forward_client_cert: append_forward\n    client_cert_details: [uri, san, uri]") == [
        "listeners[0].client_cert_details[1]: must be one of cert, chain, subject, uri, dns, got 'san'",
        "listeners[0].client_cert_details[2]: uri is listed twice",
    ]
    assert issues("    forward_client_cert: sanitize_set\n    client_cert_details: uri") == [
        "listeners[0].client_cert_details: expected a list, got a string"
    ]


def test_details_need_a_mode_that_writes_them() -> None:
    assert issues("    client_cert_details: [uri]") == [
        "listeners[0].client_cert_details: needs forward_client_cert: append_forward or sanitize_set "
        "to be written"
    ]
    assert issues("    forward_client_cert: forward_only\n    client_cert_details: [uri]") == [
        "listeners[0].client_cert_details: only used by forward_client_cert append_forward or "
        "sanitize_set, not forward_only"
    ]


def test_only_http_listeners_have_them() -> None:
    text = """
listeners:
  - address: 127.0.0.1:8443
    protocol: tcp
    cluster: app
    forward_client_cert: sanitize_set
clusters: {app: 127.0.0.1:9000}
"""
    with pytest.raises(ConfigError, match="forward_client_cert: only applies to http listeners"):
        load_text(text)
