"""What meshpy.codec.http2.read_request refuses because it would mean something else once written as
HTTP/1.1 (RFC 9113 8.1.1, 8.2.1, 8.3): each case was a way to smuggle a request or a header."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpy.codec.http1 import request_head
from meshpy.codec.http2 import Malformed, read_request

Headers = list[tuple[bytes, bytes]]
METHOD, SCHEME, PATH = (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")
AUTH = (b":authority", b"a")


def _with(*extra: tuple[bytes, bytes], method: bytes = b"GET", path: bytes = b"/",
          authority: bytes | None = b"a") -> Headers:
    head = [(b":method", method), SCHEME, (b":path", path)]
    if authority is not None:
        head.append((b":authority", authority))
    return [*head, *extra]


@pytest.mark.parametrize("name", [
    b"x-a: 1\r\ntransfer-encoding: chunked\r\nx-b",  # CRLF in a lowercase name
    b"transfer-encoding ", b"x y", b"x:y", b"x\x00", b"x\x7f", b"x\xff", b"x(", b'x"', b"x@", b"",
    b"X-Upper",
])
def test_names_must_be_lowercase_tokens(name: bytes) -> None:
    with pytest.raises(Malformed):
        read_request(_with((name, b"1")))


@pytest.mark.parametrize("value", [b"a\r\nb", b"a\nb", b"a\x00", b" a", b"a ", b"\ta", b"a\t", b"a\x01b",
                                   b"a\x7fb", b"\x1b[31m"])
def test_values_without_line_ends_nul_or_edge_whitespace(value: bytes) -> None:
    with pytest.raises(Malformed):
        read_request(_with((b"x-v", value)))


def test_token_names_and_inner_whitespace_pass() -> None:
    head = read_request(_with((b"x-a!#$%&'*+-.^_`|~9", b"a b\tc"), (b"x-empty", b"")))
    assert (b"x-a!#$%&'*+-.^_`|~9", b"a b\tc") in head.fields and (b"x-empty", b"") in head.fields


@pytest.mark.parametrize("authority", [b"u@h", b"a b", b"a/b", b"", b"a,b", b"a?b", b"a#b", b"a\\b"])
def test_authority_must_be_a_plain_host_and_port(authority: bytes) -> None:
    with pytest.raises(Malformed):
        read_request(_with(authority=authority))
    with pytest.raises(Malformed):  # the same for a Host standing in for :authority
        read_request(_with((b"host", authority), authority=None))


@pytest.mark.parametrize("authority", [b"a.example:8080", b"[::1]:80", b"10.0.0.1", b"xn--bcher-kva.example"])
def test_good_authorities(authority: bytes) -> None:
    assert read_request(_with(authority=authority)).authority == authority


def test_two_host_headers_without_authority() -> None:
    with pytest.raises(Malformed):
        read_request(_with((b"host", b"a"), (b"host", b"b"), authority=None))


@pytest.mark.parametrize(("method", "path"), [
    (b"GE T", b"/"), (b"GET\r\n", b"/"), (b"G(T", b"/"),
    (b"GET", b"/a b"), (b"GET", b"a"), (b"GET", b"*"), (b"GET", b"/\x7f"),
    (b"GET", b"/\xc3\xa9"),
])
def test_method_is_a_token_and_path_a_request_line_target(method: bytes, path: bytes) -> None:
    with pytest.raises(Malformed):
        read_request(_with(method=method, path=path))


def test_a_fragment_is_left_to_the_exchange() -> None:
    """Which answers 400, or cuts it off where Envoy's runtime says so (meshpy.stack.exchange)."""
    assert read_request(_with(path=b"/a#frag")).path == b"/a#frag"


def test_options_star() -> None:
    assert read_request(_with(method=b"OPTIONS", path=b"*")).path == b"*"


def test_protocol_only_on_connect() -> None:
    with pytest.raises(Malformed):
        read_request(_with((b":protocol", b"websocket")))
    head = read_request([(b":method", b"CONNECT"), (b":protocol", b"websocket"), SCHEME, PATH, AUTH])
    assert head.protocol == b"websocket"


def test_scheme_must_be_a_scheme() -> None:
    with pytest.raises(Malformed):
        read_request([METHOD, (b":scheme", b"ht tp"), PATH, AUTH])


def test_content_length_on_a_request_that_ended_in_its_headers() -> None:
    """RFC 9113 8.1.1: END_STREAM on HEADERS with a non-zero content-length is malformed (forwarding it
    held an upstream connection waiting for a body that never comes)."""
    with pytest.raises(Malformed):
        read_request(_with((b"content-length", b"10")), ended=True)
    assert (b"content-length", b"0") in read_request(_with((b"content-length", b"0")), ended=True).fields
    assert (b"content-length", b"10") in read_request(_with((b"content-length", b"10")), ended=False).fields


# Any bytes at all for names, values, the method, the path and the authority: whatever read_request
# lets through must be read back by an HTTP/1.1 parser (llhttp) as exactly the request it was.
_any = st.binary(max_size=12)
_nameish = st.one_of(_any, st.sampled_from([b"x-a", b"content-length", b"transfer-encoding", b"te"]))


@settings(max_examples=400, deadline=None)
@given(method=st.one_of(st.just(b"GET"), _any), path=st.one_of(st.just(b"/p"), _any.map(lambda b: b"/" + b)),
       authority=st.one_of(st.just(b"a.example"), _any),
       fields=st.lists(st.tuples(_nameish, _any), max_size=4))
def test_whatever_passes_is_one_http1_request(method: bytes, path: bytes, authority: bytes,
                                              fields: Headers) -> None:
    try:
        head = read_request([(b":method", method), SCHEME, (b":path", path), (b":authority", authority),
                             *fields])
    except Malformed:
        return
    wire = request_head(head.method, head.path, head.fields)
    seen: dict[str, object] = {"headers": [], "complete": 0}

    class Callbacks:
        def on_url(self, url: bytes) -> None:
            seen["url"] = seen.get("url", b"") + url  # type: ignore[operator]

        def on_header(self, name: bytes, value: bytes) -> None:
            seen["headers"].append((name.lower(), value))  # type: ignore[attr-defined]

        def on_message_complete(self) -> None:
            seen["complete"] += 1  # type: ignore[operator]

    parser = httptools.HttpRequestParser(Callbacks())
    try:
        parser.feed_data(wire)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserInvalidMethodError:
        # llhttp knows only registered methods; any token is a method to RFC 9110 (and to Envoy).
        assert head.method not in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH")
        return
    assert parser.get_method() == head.method
    assert seen["url"] == head.path
    assert seen["headers"] == [(n, v) for n, v in head.fields]
