"""Upstream response heads handled as raw bytes.

httptools calls back into Python once per header, and most responses need nothing done to their
headers but dropping `Connection: keep-alive`. So the upstream parser takes no header callbacks:
the head's bytes are cut out of the stream (`split_head`), and a common-case head passes through
with one regex search (`passthrough`); any other head is split into a header list (`parse_fields`)
for the general path. llhttp has already validated the head's syntax when these run.

A "fields block" is the head after its status line: it starts with the status line's CRLF and ends
with the blank line, so every header line is preceded by "\r\n" and a search for "\r\nname:" in the
lowercased block finds a header exactly.
"""

from __future__ import annotations

import re

# llhttp sets no limit of its own on a response head; 64 KiB is the limit meshpy applies to requests.
MAX_HEAD = 64 * 1024

# Any hop-by-hop header (RFC 9110 7.6.1; see meshpy.stack.headers.HOP_BY_HOP), in a lowercased block.
_HOP = re.compile(rb"\r\n(?:connection|keep-alive|proxy-connection|te|transfer-encoding|upgrade"
                  rb"|http2-settings):")
# The one hop-by-hop header that passes the fast path: Connection naming no other header.
_CONN_PLAIN = re.compile(rb"\r\nconnection:[ \t]*(?:keep-alive|close)[ \t]*(?=\r\n)")


def split_head(buf: bytes) -> tuple[bytes, bytes] | None:
    """(fields block, bytes after the head) when `buf` starts with a complete head, else None.
    llhttp refuses bare LF line ends in responses, so a head always ends with CRLF CRLF here. It does
    skip empty lines before the status line (a stray CRLF after the previous response's body is a
    common upstream bug), and so must this: else the status line would be read as a header, or the
    first blank line as the end of the head (found by fuzzing)."""
    start = 0
    while buf[start:start + 1] in (b"\r", b"\n"):
        start += 1
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        return None
    return buf[buf.find(b"\r\n", start):end + 4], buf[end + 4:]


def passthrough(fields: bytes) -> tuple[bytes, bool] | None:
    """(the block to send on, has a Date header) for a head the fast path may forward: no hop-by-hop
    header but a plain Connection (removed here), and a Content-Length. None: use the general path."""
    low = fields.lower()
    if b"\r\ncontent-length:" not in low:
        return None  # chunked or close-delimited: the client side needs new framing
    hop = _HOP.search(low)
    if hop is not None:
        conn = _CONN_PLAIN.match(low, hop.start())
        if conn is None or _HOP.search(low, conn.end()) is not None:
            return None
        fields = fields[:conn.start()] + fields[conn.end():]
    return fields, b"\r\ndate:" in low


def parse_fields(fields: bytes) -> list[tuple[bytes, bytes]]:
    """The block as (lowercased name, value) pairs; an obs-fold line continues the previous value."""
    out: list[tuple[bytes, bytes]] = []
    for line in fields.split(b"\r\n"):
        if not line:
            continue
        if line[0] in b" \t":
            if out:
                name, value = out[-1]
                out[-1] = (name, value + b" " + line.strip())
            continue
        name, _, value = line.partition(b":")
        out.append((name.strip().lower(), value.strip()))
    return out
