"""Host header and absolute-form target checks (meshpy.codec.http1): RFC 9112 3.2 and 3.2.2."""

from __future__ import annotations

import pytest

from meshpy.codec.http1 import split_absolute_form, valid_authority
from meshpy.errors import BadRequest


@pytest.mark.parametrize("value", [b"a.example", b"a.example:8080", b"[::1]:80", b"10.1.2.3", b"",
                                   b"under_score.example", b"xn--d1acufc.example", b"%41.example",
                                   b"[::1]", b"[2001:db8::7]:", b"a.example:", b"[::ffff:10.0.0.1]:443"])
def test_valid(value: bytes) -> None:
    assert valid_authority(value)


@pytest.mark.parametrize("value", [b"a,b", b"a/b", b"a b", b"a#b", b"a?b", b"u@h", b"a\\b", b"a\tb",
                                   b"a\x00", b"\xc3\xa9.example", b'a"b', b"a<b",
                                   b"a.test:80x", b"[zz]", b"[zz]:80", b"a:b:c", b"[::1]x", b"[::1]:8x",
                                   b"a]", b"a[::1]", b"[::1", b":80", b"[1.2.3.4]", b"a:8080]"])
def test_invalid(value: bytes) -> None:
    assert not valid_authority(value)


@pytest.mark.parametrize(("target", "authority", "path"), [
    (b"http://a.example/p?q", b"a.example", b"/p?q"),
    (b"HTTPS://a.example:8443", b"a.example:8443", b"/"),
    (b"http://evil.local?x", b"evil.local", b"/?x"),  # the authority ends at `?`
    (b"http://h#f", b"h", b"/#f"),  # (the fragment itself is refused by the exchange)
])
def test_absolute_form(target: bytes, authority: bytes, path: bytes) -> None:
    assert split_absolute_form(target) == (authority, path)


@pytest.mark.parametrize("target", [b"ftp://x/", b"http://u@h/", b"http:///p", b"x", b"http//h/",
                                    b"http://a b/"])
def test_absolute_form_refused(target: bytes) -> None:
    with pytest.raises(BadRequest):
        split_absolute_form(target)
