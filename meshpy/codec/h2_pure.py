"""The portable HTTP/2 codec: the pure-Python h2 library behind meshpy's codec seam
(meshpy.codec.h2session), used where libnghttp2 cannot load or where `codec: h2` asks for it.

h2's inbound header validation and normalisation cost about a quarter of its per-request time, so they
are off: meshpy checks what RFC 9113 8.2 and 8.3 require itself (meshpy.codec.http2), in the pass over
the header list that the translation makes anyway. Outbound validation is off too: the headers meshpy
sends were built by meshpy, with connection-specific fields already removed.
"""

from __future__ import annotations

import functools

import h2.config
import h2.connection
import h2.events as ev
import h2.exceptions
import h2.settings
import hpack.hpack
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, Event
from h2.exceptions import InvalidBodyLengthError
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from meshpy.codec.h2session import (
    DATA,
    END,
    GOAWAY,
    PING,
    PING_ACK,
    REQUEST,
    RESET,
    RESPONSE,
    SETTINGS,
    STREAM_ERROR,
    TRAILERS,
    WINDOW,
    Fields,
    SessionError,
    StreamGone,
    send_message_in_parts,
)
from meshpy.codec.h2session import Event as CodecEvent
from meshpy.model.types import Http2Options


class _QuietLog:
    """hpack logs every header it encodes or decodes at debug level through the logging module: some
    75 calls per proxied gRPC call, about a tenth of the proxy's time (benchmarks/h2_bench.py, profiled).
    meshpy never wants those lines, so hpack's module logger is replaced by one that drops them unread."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass


hpack.hpack.log = _QuietLog()  # type: ignore[assignment]


class _BodyLengthMismatch(Event):
    """A request's DATA went past its content-length, or ended short of it: h2 has reset the stream."""

    stream_id: int = 0


class _Connection(h2.connection.H2Connection):
    """h2's connection, except for two things. h2 treats every GOAWAY, sent or received, as the end of
    the connection, while RFC 9113 6.8 lets the streams up to the frame's last stream id run to their
    end: that is how a graceful shutdown drains. So a GOAWAY received with NO_ERROR is reported
    without closing h2's state machine, and a graceful GOAWAY is sent as a raw frame for the same
    reason. And on the server side, a request body that does not match its content-length is a stream
    error (RFC 9113 8.1.1), as from Envoy, not the end of every other stream on the connection."""

    # h2 remembers up to 2**16 closed streams per connection (to tell a frame for a closed stream from
    # one for a stream never opened): some 10 MiB on a connection that lives long enough, the soak's RSS
    # growth. A peer's late frames after 512 newer streams are rare, and harmless as a protocol error.
    MAX_CLOSED_STREAMS = 512

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        # Header values are sent without Huffman coding: it saves the encoder about a fifth of its
        # time (values such as x-request-id are new on every request, so each is coded afresh) for
        # some 20% more header bytes, which between a sidecar and its neighbours costs nothing.
        encoder = self.encoder
        encoder.encode = functools.partial(type(encoder).encode, encoder, huffman=False)  # type: ignore[method-assign]

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[Event]]:
        try:
            return super()._receive_data_frame(frame)
        except InvalidBodyLengthError:
            if self.config.client_side:
                raise  # a response: the upstream connection goes, as before
        # h2 took the frame into its windows before the check: give the connection window back.
        sid = frame.stream_id
        self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
        self.acknowledge_received_data(frame.flow_controlled_length, sid)
        event = _BodyLengthMismatch()
        event.stream_id = sid
        return [], [event]

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Session:
    """meshpy.codec.h2session.Session over h2."""

    __slots__ = ("_client", "_extra", "_max_block", "_server", "conn")
    checks_messages = False  # h2's validation is off: meshpy's read_request checks
    packs_frames = False  # one send_data, one DATA frame

    def __init__(self, client_side: bool, opts: Http2Options, settings: dict[int, int],
                 max_header_list: int) -> None:
        self._client = client_side
        self._server = not client_side
        self.conn = conn = _Connection(config(client_side))
        conn.local_settings = h2.settings.Settings(
            client=client_side, initial_values={h2.settings.SettingCodes(k): v for k, v in settings.items()})
        conn.initiate_connection()
        extra = opts.initial_connection_window_size - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        conn.decoder.max_header_list_size = max_header_list
        self._max_block = max_header_list
        self._extra = b""  # raw frames h2 must not know about (a graceful GOAWAY), sent after its own

    def receive(self, data: bytes) -> list[CodecEvent]:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            # h2 has queued its GOAWAY.
            raise SessionError(str(err), int(getattr(err, "error_code", None) or 1)) from err
        out: list[CodecEvent] = []
        append = out.append
        for e in events:
            kind = type(e)
            if kind is ev.DataReceived:
                append((DATA, e.stream_id, e.data, e.flow_controlled_length))  # type: ignore[attr-defined]
            elif kind is ev.RequestReceived or kind is ev.ResponseReceived or \
                    kind is ev.InformationalResponseReceived:
                ended = getattr(e, "stream_ended", None) is not None
                append((REQUEST if self._server else RESPONSE, e.stream_id, e.headers, ended))  # type: ignore[attr-defined]
            elif kind is ev.StreamEnded:
                append((END, e.stream_id, None, None))  # type: ignore[attr-defined]
            elif kind is ev.TrailersReceived:
                append((TRAILERS, e.stream_id, list(e.headers), None))  # type: ignore[attr-defined]
            elif kind is ev.StreamReset:
                append((RESET, e.stream_id, int(e.error_code), None))  # type: ignore[attr-defined]
            elif kind is ev.WindowUpdated:
                append((WINDOW, e.stream_id, None, None))  # type: ignore[attr-defined]
            elif kind is ev.RemoteSettingsChanged:
                changed = e.changed_settings  # type: ignore[attr-defined]
                mcs = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                append((SETTINGS, 0, None if mcs is None else mcs.new_value, None))
            elif kind is ev.PingReceived:
                append((PING, 0, None, None))
            elif kind is ev.PingAckReceived:
                append((PING_ACK, 0, None, None))
            elif kind is ConnectionTerminated:
                append((GOAWAY, 0, int(e.error_code or 0), e.last_stream_id or 0))  # type: ignore[attr-defined]
            elif kind is _BodyLengthMismatch:
                append((STREAM_ERROR, e.stream_id, int(ErrorCodes.PROTOCOL_ERROR), False))  # type: ignore[attr-defined]
        return out

    def data_to_send(self) -> bytes:
        data = self.conn.data_to_send()
        if self._extra:
            data, self._extra = data + self._extra, b""
        return data

    def chunks_to_send(self) -> list[bytes | memoryview]:
        data = self.data_to_send()
        return [data] if data else []

    def finished(self) -> bool:
        return False  # h2 ends a connection by raising (SessionError), never silently

    def open_stream(self, headers: Fields, end: bool) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end)
        return sid

    def send_headers(self, sid: int, headers: Fields, end: bool) -> None:
        try:
            self.conn.send_headers(sid, headers, end_stream=end)
        except h2.exceptions.ProtocolError as err:
            raise StreamGone(str(err)) from err

    def send_data(self, sid: int, data: bytes, end: bool) -> None:
        try:
            self.conn.send_data(sid, data, end_stream=end)
        except h2.exceptions.ProtocolError as err:
            raise StreamGone(str(err)) from err

    def send_message(self, sid: int, headers: Fields, body: bytes, trailers: Fields | None) -> int:
        return send_message_in_parts(self, sid, headers, body, trailers)

    def end_stream(self, sid: int) -> None:
        try:
            self.conn.end_stream(sid)
        except h2.exceptions.ProtocolError as err:
            raise StreamGone(str(err)) from err

    def send_window(self, sid: int) -> int:
        conn = self.conn
        try:
            return min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        except h2.exceptions.ProtocolError as err:
            raise StreamGone(str(err)) from err

    def reset_stream(self, sid: int, code: int) -> None:
        try:
            self.conn.reset_stream(sid, code)
        except h2.exceptions.ProtocolError as err:
            raise StreamGone(str(err)) from err

    def acknowledge(self, sid: int, n: int) -> None:
        self.conn.acknowledge_received_data(n, sid)

    def ping(self, opaque: bytes) -> None:
        self.conn.ping(opaque)

    def graceful_goaway(self, last_sid: int) -> None:
        self._extra += GoAwayFrame(0, last_stream_id=last_sid, error_code=0).serialize()

    def terminate(self, code: int) -> None:
        self.conn.close_connection(error_code=code)

    def highest_inbound(self) -> int:
        return int(self.conn.highest_inbound_stream_id or 0)

    def header_block_state(self) -> int:
        block = self.conn.incoming_buffer._headers_buffer
        if not block:
            return 0
        # Compressed bytes waiting for END_HEADERS, against what the decoder accepts decoded: a
        # legitimate block compresses smaller.
        return 2 if sum(len(f.data) for f in block) > self._max_block else 1


# For h2 peers outside the proxy's connections (health checks, probes, tests): the same tuning.
Connection = _Connection


def config(client_side: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client_side, header_encoding=None, validate_inbound_headers=False,
        normalize_inbound_headers=False, validate_outbound_headers=False, normalize_outbound_headers=False)
