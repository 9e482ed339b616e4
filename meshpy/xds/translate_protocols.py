"""Envoy's wire-protocol options (`http2_protocol_options`, `codec_type`) into meshpy's model.

A field left unset keeps meshpy's default (see Http2Options), not Envoy's: Envoy's own defaults
(256 MiB windows, 2^31-1 streams) let one connection hold far more memory than a sidecar should.
"""

from __future__ import annotations

from typing import Any

from meshpy.model.types import DEFAULT_HTTP2, H2_MAX_WINDOW, H2_MIN_WINDOW, Http2Options, HttpCodec
from meshpy.xds.translate_base import Issues, child, enum_name, positive_duration, wrapped

_HTTP2_FIELDS = frozenset({"max_concurrent_streams", "initial_stream_window_size",
                           "initial_connection_window_size", "connection_keepalive"})
# HttpConnectionManager.CodecType: AUTO, HTTP1, HTTP2 (HTTP3 is refused by the caller).
_CODECS: dict[int, HttpCodec] = {0: "auto", 1: "http1", 2: "http2"}


def codec(issues: Issues, msg: Any, path: str) -> HttpCodec:
    found = _CODECS.get(msg.codec_type)
    if found is None:
        name = enum_name(msg, "codec_type")
        issues.add(child(path, "codec_type"), f"{name} is not supported (AUTO, HTTP1 and HTTP2 are)")
        return "auto"
    return found


def http2_options(issues: Issues, msg: Any, path: str, downstream: bool = False) -> Http2Options:
    """`msg`: an envoy.config.core.v3.Http2ProtocolOptions at `path`; `downstream`: a listener's,
    where allow_connect (extended CONNECT, offered to clients) applies. Upstream, meshpy sends no
    extended CONNECT (a WebSocket goes upstream as an HTTP/1.1 upgrade), so it stays refused there."""
    issues.fields(msg, path, _HTTP2_FIELDS | {"allow_connect"} if downstream else _HTTP2_FIELDS)
    d = DEFAULT_HTTP2
    streams = wrapped(msg, "max_concurrent_streams", d.max_concurrent_streams)
    if streams < 1:
        issues.add(child(path, "max_concurrent_streams"), "must be at least 1")
    windows = []
    for name, default in (("initial_stream_window_size", d.initial_stream_window_size),
                          ("initial_connection_window_size", d.initial_connection_window_size)):
        size = wrapped(msg, name, default)
        if not H2_MIN_WINDOW <= size <= H2_MAX_WINDOW:
            issues.add(child(path, name), f"must be from {H2_MIN_WINDOW} to {H2_MAX_WINDOW}")
        windows.append(size)
    interval, ka_timeout = d.keepalive_interval, d.keepalive_timeout
    if msg.HasField("connection_keepalive"):
        ka, where = msg.connection_keepalive, child(path, "connection_keepalive")
        issues.fields(ka, where, {"interval", "timeout"})
        interval = positive_duration(issues, ka, "interval", where, 30.0)
        ka_timeout = positive_duration(issues, ka, "timeout", where, d.keepalive_timeout)
        if not ka.HasField("interval"):
            issues.add(child(where, "interval"), "is required")
    return Http2Options(max_concurrent_streams=max(streams, 1), initial_stream_window_size=windows[0],
                        initial_connection_window_size=windows[1], keepalive_interval=interval,
                        keepalive_timeout=ka_timeout, allow_connect=msg.allow_connect or not downstream)


def upgrades(issues: Issues, msg: Any, path: str) -> tuple[str, ...]:
    """HttpConnectionManager.upgrade_configs: the upgrade types tunnelled (none when unset, as in
    Envoy). `enabled: false` lists a type as off; per-type filter chains are not supported. (CONNECT
    is routed whatever this says: a connect_matcher route's own upgrade_configs allow it.)"""
    out: list[str] = []
    for i, u in enumerate(msg.upgrade_configs):
        where = f"{child(path, 'upgrade_configs')}[{i}]"
        issues.fields(u, where, {"upgrade_type", "enabled"})
        if not u.upgrade_type:
            issues.add(child(where, "upgrade_type"), "must not be empty")
        elif wrapped(u, "enabled", True):
            out.append(u.upgrade_type.lower())
    return tuple(dict.fromkeys(out))
