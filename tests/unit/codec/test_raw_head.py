"""Upstream response heads as raw bytes: cutting them out, the pass-through test, the general split."""

from __future__ import annotations

import pytest

from meshpy.codec.raw_head import parse_fields, passthrough, split_head

HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 30 Nov 2026 23:00:00 GMT\r\n"
        b"Content-Length: 2\r\nConnection: keep-alive\r\nETag: \"x\"\r\n\r\n")


def test_split_head_returns_fields_and_rest() -> None:
    split = split_head(HEAD + b"ok" + b"HTTP/1.1")
    assert split is not None
    fields, rest = split
    assert fields.startswith(b"\r\nServer: nginx\r\n") and fields.endswith(b"ETag: \"x\"\r\n\r\n")
    assert rest == b"okHTTP/1.1"


def test_split_head_needs_crlf_line_ends() -> None:
    # llhttp refuses bare LF in a response before this runs; a head without CRLF CRLF is incomplete.
    assert split_head(b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok") is None


def test_split_head_incomplete() -> None:
    assert split_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") is None


def fields_of(head: bytes) -> bytes:
    split = split_head(head)
    assert split is not None
    return split[0]


def test_passthrough_drops_plain_connection_and_keeps_the_rest() -> None:
    result = passthrough(fields_of(HEAD))
    assert result is not None
    block, has_date = result
    assert has_date
    assert b"onnection" not in block
    assert block == b"\r\nServer: nginx\r\nDate: Mon, 30 Nov 2026 23:00:00 GMT\r\nContent-Length: 2\r\n" \
                    b"ETag: \"x\"\r\n\r\n"


@pytest.mark.parametrize("conn", [b"close", b"Keep-Alive", b"  keep-alive  "])
def test_passthrough_plain_connection_values(conn: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: " + conn + b"\r\ncontent-length: 0\r\n\r\n"
    result = passthrough(fields_of(head))
    assert result == (b"\r\ncontent-length: 0\r\n\r\n", False)


@pytest.mark.parametrize("extra", [
    b"Connection: x-secret\r\nX-Secret: 1\r\n",  # names another header: must be dropped too
    b"Connection: keep-alive, x-secret\r\n",
    b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n",
    b"Keep-Alive: timeout=5\r\n",
    b"Upgrade: websocket\r\n",
    b"Proxy-Connection: keep-alive\r\n",
    b"TE: trailers\r\n",
])
def test_passthrough_refuses_other_hop_by_hop(extra: bytes) -> None:
    assert passthrough(fields_of(b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: 2\r\n\r\n")) is None


def test_passthrough_needs_content_length() -> None:
    assert passthrough(fields_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) is None
    assert passthrough(fields_of(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n")) is None  # close-delimited
    # A value that merely contains the name is not the header.
    assert passthrough(fields_of(b"HTTP/1.1 200 OK\r\nX-A: content-length: 3\r\n\r\n")) is None


def test_passthrough_date_is_a_header_not_a_substring() -> None:
    result = passthrough(fields_of(b"HTTP/1.1 200 OK\r\nX-Update: date: never\r\nContent-Length: 0\r\n\r\n"))
    assert result is not None and result[1] is False


def test_parse_fields() -> None:
    fields = fields_of(b"HTTP/1.1 200 OK\r\nServer:  nginx \r\nX-Long: a\r\n  b\r\nX-Empty:\r\n\r\n")
    assert parse_fields(fields) == [(b"server", b"nginx"), (b"x-long", b"a b"), (b"x-empty", b"")]
