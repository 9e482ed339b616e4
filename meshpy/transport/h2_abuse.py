"""What one HTTP/2 client connection does that only an attacker does, counted with no I/O: the
connection (meshpy.transport.downstream_http2) asks after each event and sends GOAWAY on a yes.

- rapid reset (CVE-2023-44487): once the client opened PREMATURE_STREAMS streams and reset at least
  half of them before their answer and within PREMATURE_AGE of opening them (Envoy's rule and numbers:
  a client whose gRPC deadlines expire resets streams too, and must not be taken for an attacker);
- PING and SETTINGS floods: more than CONTROL_FLOOD such frames in a second;
- a header block that grows past what the codec would ever accept (CONTINUATION floods, HPACK bombs):
  the codec says so (Session.header_block_state), this connection acts on it.
"""

from __future__ import annotations

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
