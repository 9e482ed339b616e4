"""The h2 library behind the same small sans-I/O interface as nghttp2_abi.Connection: the baseline.

Configured as meshpy's codec configures it (meshpy/codec/http2.py): bytes for header fields, and no
validation or normalisation of headers by h2, which meshpy does itself.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events

from .nghttp2_abi import DATA, END, HEADERS, Event, Fields

_DataReceived = h2.events.DataReceived
_StreamEnded = h2.events.StreamEnded
_Headers = (h2.events.RequestReceived, h2.events.ResponseReceived, h2.events.TrailersReceived)


class Connection:
    def __init__(self, client_side: bool) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False,
            normalize_outbound_headers=False)
        self._conn = h2.connection.H2Connection(config)
        self._conn.initiate_connection()

    def send_request(self, headers: Fields, body: bytes = b"", trailers: Fields | None = None) -> int:
        conn = self._conn
        sid: int = conn.get_next_available_stream_id()
        self._send(sid, headers, body, trailers)
        return sid

    def send_response(self, stream_id: int, headers: Fields, body: bytes = b"",
                      trailers: Fields | None = None) -> None:
        self._send(stream_id, headers, body, trailers)

    def _send(self, sid: int, headers: Fields, body: bytes, trailers: Fields | None) -> None:
        conn = self._conn
        conn.send_headers(sid, headers, end_stream=not body and trailers is None)
        if body:
            conn.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            conn.send_headers(sid, trailers, end_stream=True)

    def consume(self, stream_id: int, length: int) -> None:
        self._conn.acknowledge_received_data(length, stream_id)

    def receive(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for event in self._conn.receive_data(data):
            e: Any = event
            if isinstance(e, _DataReceived):
                out.append((DATA, e.stream_id, e.data))
            elif isinstance(e, _Headers):
                out.append((HEADERS, e.stream_id, e.headers))
            if isinstance(e, _StreamEnded):
                out.append((END, e.stream_id, None))
        return out

    def data_to_send(self) -> bytes:
        data: bytes = self._conn.data_to_send()
        return data
