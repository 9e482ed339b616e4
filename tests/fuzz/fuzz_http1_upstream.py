"""HTTP/1.1 responses end to end: a plain request goes through the in-process proxy to an origin that
answers with the input's bytes (in TCP writes split at `|SEG|`) and closes.

Properties: no exception in the loop or the log; the client gets an answer that starts as HTTP/1.1,
without a 500 (an upstream that breaks the protocol is a 502, a silent one a 503 or 504) and without a
101 (the request asked for no upgrade), and the
connection closes within the time bound; the proxy still serves a plain request afterwards and holds
no connection or request (no leak).
"""

from __future__ import annotations

import re

import fuzz_world
import httptools
from fuzz_http1_e2e import check_answer
from fuzz_http1_response import DICTIONARY, SEGMENT
from fuzzkit import Finding, Target

REQUEST = b"GET /resp HTTP/1.1\r\nhost: " + fuzz_world.HOST + b"\r\n\r\n"


class _Client:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)


def check_parses(got: bytes) -> None:
    """The client's parser takes what the proxy sent (whatever the upstream did, the proxy's answer is
    HTTP/1.1); a 101 switches protocols and ends what can be checked."""
    try:
        _Client().parser.feed_data(got)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as err:
        if b"HTTP/1.1 101 " not in got:  # (llhttp refuses a 101 without Upgrade: the known 101 finding)
            raise Finding(f"the client cannot parse the proxy's answer ({err}): {got[:300]!r}") from None


def run(data: bytes) -> None:
    w = fuzz_world.current()
    w.clean()
    w.script[:] = data.split(SEGMENT)
    try:
        got = w.run(w.converse([REQUEST], 4.0), 6.0)
    finally:
        w.script[:] = [b""]
    w.check_errors()
    check_answer(got, upstream_500=b"500" in data)
    # The status lines of the answer's heads: any interim ones, then the final one (not a body's bytes,
    # which may say anything).
    statuses, at = [], 0
    while (end := got.find(b"\r\n\r\n", at)) >= 0:
        statuses.append(got[at:got.find(b"\r\n", at)])
        if not re.match(rb"HTTP/1\.1 1\d\d ", statuses[-1]):
            break
        at = end + 4
    if any(re.match(rb"HTTP/1\.1 \d{1,2} ", line) for line in statuses):
        raise Finding(f"status below 100 forwarded (not refused as a protocol error): {got[:300]!r}")
    if any(line.startswith(b"HTTP/1.1 101 ") for line in statuses):  # the request asked for no upgrade
        raise Finding(f"unsolicited 101 forwarded to a client that asked for no upgrade: {got[:300]!r}")
    pos = 0
    while re.match(rb"HTTP/1\.1 1\d\d ", got[pos:pos + 13]):  # the interim heads the answer starts with
        end = got.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        if re.search(rb"(?i)\r\n(content-length|transfer-encoding):", got[pos:end + 2]):
            raise Finding(f"an interim answer forwarded with framing headers: {got[:300]!r}")
        pos = end + 4
    check_parses(got)
    if not got:
        raise Finding("no answer at all to a request whose upstream misbehaved")
    w.run(w.healthy(), 6.0)
    w.check_errors()


TARGET = Target(name="http1_upstream", run=run, dictionary=DICTIONARY, max_len=8192, time_limit=15.0,
                context=fuzz_world.shared_world, corpus="http1_response")
