"""HTTP/2 end to end: the client preface and the input's frames go to the in-process proxy over a real
socket (prior knowledge on the listener that sniffs HTTP/1.1 and HTTP/2), the client waits for a
moment of silence so that answers from the origin get back, half-closes and reads until the proxy
closes.

Properties: no exception in the loop or the log; what the proxy sends parses as HTTP/2 frames, and no
RST_STREAM or GOAWAY says INTERNAL_ERROR (meshpy's own failure) and no response says 500; the
connection closes within the time bound; then a plain HTTP/1.1 request on a new connection is served
and no connection or request is left active.
"""

from __future__ import annotations

import fuzz_world
import hpack
from fuzz_http2 import PREFACE, SEGMENT, mutate
from fuzzkit import Finding, Target

INTERNAL_ERROR = 2


def check_frames(got: bytes) -> None:
    """Walk the proxy's frames: GOAWAY (7) and RST_STREAM (3) codes, and :status of HEADERS (1)."""
    decoder = hpack.Decoder()
    # The input may have raised SETTINGS_HEADER_TABLE_SIZE (to 2^32-1, say), which lets the proxy's
    # encoder use a table that large: this decoder stands for that client.
    decoder.max_allowed_table_size = 2**32
    i = 0
    while i + 9 <= len(got):
        n = int.from_bytes(got[i:i + 3], "big")
        kind, flags = got[i + 3], got[i + 4]
        payload = got[i + 9:i + 9 + n]
        if len(payload) < n:
            break  # the last frame was cut by the close: not the proxy's fault
        if kind == 7 and int.from_bytes(payload[4:8], "big") == INTERNAL_ERROR:
            raise Finding(f"GOAWAY INTERNAL_ERROR: {payload[8:200]!r}")
        if kind == 3 and int.from_bytes(payload[:4], "big") == INTERNAL_ERROR:
            raise Finding("RST_STREAM INTERNAL_ERROR")
        if kind == 1 and flags & 0x4:
            block = payload
            if flags & 0x8:
                block = block[1:len(block) - block[0]]
            if flags & 0x20:
                block = block[5:]
            try:
                fields = decoder.decode(block, raw=True)
            except hpack.HPACKError as err:
                raise Finding(f"the proxy's header block does not decode: {err}") from None
            if (b":status", b"500") in fields:
                raise Finding(f"500 from the proxy: {fields!r}")
        i += 9 + n


def run(data: bytes) -> None:
    w = fuzz_world.current()
    w.clean()
    parts = [p for p in data.split(SEGMENT) if p]
    got = w.run(w.converse([PREFACE, *parts], 4.0, quiet=0.05), 8.0)
    w.check_errors()
    check_frames(got)
    w.run(w.healthy(), 6.0)
    w.check_errors()


TARGET = Target(name="http2_e2e", run=run, mutate=mutate, max_len=32768, time_limit=15.0,
                context=fuzz_world.shared_world, corpus="http2")
