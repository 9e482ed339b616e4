"""HTTP/1.1 requests end to end: the input's bytes go to the in-process proxy over a real socket (split
into TCP writes where the input says `|SEG|`), the client half-closes and reads until the proxy closes.

Properties: no exception escapes into the loop or the log, and none is hidden behind a 400; the proxy
closes the connection within the time bound (no hang); what it sends back starts as an HTTP/1.1
response and never says 500; afterwards a plain request on a new connection is answered by the origin,
and no connection or request is left active (no leak).
"""

from __future__ import annotations

import re

import fuzz_world
from fuzz_http1_request import DICTIONARY, SEGMENT
from fuzz_http2 import PREFACE
from fuzzkit import Finding, Target

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def check_answer(got: bytes, upstream_500: bool = False) -> None:
    """`upstream_500`: the origin itself may have said 500, which the proxy passes on."""
    if got and not got.startswith(b"HTTP/1.1 "):
        raise Finding(f"answer is not HTTP/1.1: {got[:200]!r}")
    starts = list(STATUS.finditer(got))
    for i, m in enumerate(starts):
        if m.group(1) == b"500" and not upstream_500:
            raise Finding(f"500 from the proxy: {got[:400]!r}")
        head = got[m.start():got.find(b"\r\n\r\n", m.start())].lower()
        if b"\r\nconnection: close" in head and i + 1 < len(starts) and m.group(1) != b"101":
            # The proxy's own error answers close the connection: one after it answers a request the
            # client will take for another (an origin's body may hold a status line: rare, and worth a look).
            raise Finding(f"an answer after a Connection: close one (out of order?): {got[:400]!r}")


def run(data: bytes) -> None:
    w = fuzz_world.current()
    w.clean()
    parts = [p for p in data.split(SEGMENT) if p]
    got = w.run(w.converse(parts, 4.0), 6.0) if parts else b""
    w.check_errors()
    if not data.startswith(PREFACE[:4]):  # (the listener sniffs: `PRI ` is HTTP/2, answered as such)
        check_answer(got)
    w.run(w.healthy(), 6.0)
    w.check_errors()


TARGET = Target(name="http1_e2e", run=run, dictionary=DICTIONARY, max_len=8192, time_limit=15.0,
                context=fuzz_world.shared_world, corpus="http1_request")
