"""Grammar-based fuzzing with hypothesis, beside the mutation targets: requests built from the parts
HTTP/1.1 and HTTP/2 are made of, with odd bytes where parsers disagree (whitespace around names and
values, control characters, obs-text, odd framing). Hypothesis shrinks a failure to its smallest form,
which is what a regression input should be. The properties are the harnesses' own
(fuzz_http1_request.run, fuzz_http2's check of what read_request accepts).

FUZZ_HYPOTHESIS_EXAMPLES sets the examples per property (default 300).
"""

from __future__ import annotations

import os

import fuzz_http1_request
from fuzz_http2 import _check_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpy.codec.http2 import Malformed, read_request

EXAMPLES = int(os.environ.get("FUZZ_HYPOTHESIS_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

ODD = st.sampled_from([b"", b" ", b"\t", b"\x00", b"\x0b", b"\x0c", b"\r", b"\x7f", b"\x80", b"\xff", b",",
                       b";", b":", b"\"", b"\\"])
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0129!#$%&'*+.^_`|~", min_size=1, max_size=12)
NAMES = st.one_of(st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                                   b"Upgrade", b"Expect", b"TE", b"X-Forwarded-For", b"X-Request-Id",
                                   b"Keep-Alive", b"Proxy-Connection", b"Cookie"]),
                  TOKEN.map(str.encode))
VALUES = st.one_of(st.sampled_from([b"chunked", b"gzip, chunked", b"0", b"5", b"+5", b"5, 5", b"close",
                                    b"keep-alive, x-a", b"100-continue", b"a.test", b"a.test:80",
                                    b"[::1]:8080", b"a@b", b"websocket", b"h2c", b"trailers"]),
                   st.binary(max_size=12))


@st.composite
def http1_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"get"]))
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"*", b"http://a.test/x", b"https://a.test:8443",
                                   b"http://a@b/", b"a.test:443", b"/#f", b"//x"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 "]))
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name, value = draw(NAMES), draw(VALUES)
        before, after, around = draw(ODD), draw(ODD), draw(ODD)
        lines.append(before + name + after + b":" + around + value + draw(ODD))
    head = method + b" " + target + b" " + version + b"\r\n" + b"".join(ln + b"\r\n" for ln in lines)
    head += b"\r\n"
    body = draw(st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n",
                                 b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n"]))
    return head + body + draw(st.sampled_from([b"", head]))  # sometimes a second, pipelined request


@given(http1_requests())
@SETTINGS
def test_http1_requests_from_a_grammar(data: bytes) -> None:
    fuzz_http1_request.run(data)


PSEUDO = st.sampled_from([b":method", b":path", b":scheme", b":authority", b":protocol", b":x"])
FIELD = st.tuples(st.one_of(NAMES.map(bytes.lower), NAMES, PSEUDO), VALUES)


@given(st.lists(FIELD, max_size=8), st.booleans())
@SETTINGS
def test_http2_header_lists_from_a_grammar(fields: list[tuple[bytes, bytes]], ended: bool) -> None:
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test")]
    try:
        head = read_request(base + fields, ended)
    except Malformed:
        return
    _check_request(head)
