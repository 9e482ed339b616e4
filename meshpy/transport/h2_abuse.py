"""What one HTTP/2 client connection does that only an attacker does, counted with no I/O: the
connection (meshpy.transport.downstream_http2) asks after each event and sends GOAWAY on a yes.

- rapid reset (CVE-2023-44487): once the client opened PREMATURE_STREAMS streams and reset at least
  half of them before their answer and within PREMATURE_AGE of opening them (Envoy's rule and numbers:
  a client whose gRPC deadlines expire resets streams too, and must not be taken for an attacker);
- PING and SETTINGS floods: more than CONTROL_FLOOD such frames in a second;
- a header block that grows past what the HPACK decoder would ever accept (CONTINUATION floods: h2
  holds a block whole until END_HEADERS, up to 64 frames of 16 KiB).
"""

from __future__ import annotations

import h2.connection

PREMATURE_STREAMS = 500  # Envoy's premature_reset_total_stream_count
PREMATURE_AGE = 1.0  # Envoy's premature_reset_min_stream_lifetime_seconds
CONTROL_FLOOD = 1000  # PING + SETTINGS frames per second (Envoy: max_outbound_control_frames 1000)


class H2Abuse:
    __slots__ = ("_control", "_control_since", "_premature")

    def __init__(self) -> None:
        self._control = 0
        self._control_since = 0.0
        self._premature = 0

    def control_frame(self, now: float) -> bool:
        if now - self._control_since > 1.0:
            self._control_since = now
            self._control = 0
        self._control += 1
        return self._control > CONTROL_FLOOD

    def reset_by_client(self, age: float, opened: int) -> bool:
        """A stream the client reset before its answer, `age` seconds after it opened."""
        if age >= PREMATURE_AGE:
            return False
        self._premature += 1
        return opened >= PREMATURE_STREAMS and 2 * self._premature >= opened

    @staticmethod
    def header_block_too_large(conn: h2.connection.H2Connection) -> bool:
        """More compressed bytes waiting for END_HEADERS than the decoder accepts decoded (twice the
        header limit: see Http2Downstream.connection_made). A legitimate block compresses smaller."""
        block = conn.incoming_buffer._headers_buffer
        return sum(len(f.data) for f in block) > conn.decoder.max_header_list_size
